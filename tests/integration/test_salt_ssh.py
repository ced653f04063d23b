"""
salt-ssh, agentless, both install ways (README, "salt-ssh"):

* file_roots: the checkout's ``_*`` folders on the master's ``file_roots``
  (salt-ssh ships them with each call) and ``salt-run saltutil.sync_all`` for
  the master's ext_pillar;
* pip: ``pip install .`` into the master's Python and nothing on file_roots
  but the installed formulas; salt-ssh's thin carries the package.

Either way the HTTP client reaches the target through ``thin_extra_mods``
(``python3 -m saltconsul_ext thin-extra-mods`` prints the value).

Salt 3006 (3006.29) sends no ``_utils`` (``salt.client.ssh.mod_data`` has no
``utils`` among the folders it ships) and its thin carries no extension
(``salt.utils.thin`` has no saltext discovery), so there the value also names
the shared ``saltconsul_*`` modules and the thin carries them flat; the loader
modules come in the ext_mods either way (3006's ``mod_data`` takes the entry
point's folders too). Salt imports each name on the master to build the
thin: from file_roots it finds them in the master's synced utils (on
``sys.path`` from ``salt.config.apply_master_config``), with pip through the
entry point.

The target is this machine through a private ``sshd`` on a loopback port (its
own host key and authorized key; tools/install-sshd.sh fetches Debian's
openssh-server when the system has none) whose sessions find ``python3`` in a
fresh virtualenv with nothing installed: what the target runs came with the
call, and a thin_dir of its own per install way starts it from nothing.
"""

import getpass
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

import localconsul
from conftest import REPO


def _salt_major():
    import salt.version  # pylint: disable=import-outside-toplevel

    return salt.version.__saltstack_version__.major


# Salt 3006's salt-ssh sends the shared saltconsul_* modules in the thin, not as
# synced utils (see the module docstring).
SALT_3006 = _salt_major() < 3008

TARGET = "web01.prod.gg.dc1.example.com"
SERVICE = "sshweb"
BIN = pathlib.Path(sys.executable).parent
SSHD = REPO / "tools" / "bin" / "sshd"


def _wait_port(port, proc, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def target_python(tmp_path_factory):
    """A virtualenv of the base interpreter without pip: the target's clean ``python3``."""
    venv = tmp_path_factory.mktemp("target-python")
    base = getattr(sys, "_base_executable", None) or sys.executable
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    proc = subprocess.run([str(venv / "bin" / "python3"), "-c", "import httpx"], capture_output=True, check=False)
    assert proc.returncode != 0, "the target's Python must not have httpx of its own"
    return venv / "bin"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory, target_python):
    """A private sshd on a loopback port; yields ``(port, client private key, known_hosts file)``."""
    # Installs sshd if missing; always makes sure of what sshd needs to start as
    # root (its privilege separation user and folder). Quick when all is there.
    subprocess.run(["bash", str(REPO / "tools" / "install-sshd.sh")], check=True, timeout=300)
    work = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"salt-consul-test-{name}", "-f", str(work / name)],
            check=True, timeout=60,
        )
    shutil.copy(work / "client_key.pub", work / "authorized_keys")
    (work / "home").mkdir()
    port = localconsul.free_port()
    config = work / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {work / 'host_key'}",
                f"AuthorizedKeysFile {work / 'authorized_keys'}",
                f"PidFile {work / 'sshd.pid'}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                # The key files live in a pytest tmp dir, not a home folder.
                "StrictModes no",
                # scp (how salt-ssh sends the thin) speaks SFTP since OpenSSH 9.0.
                "Subsystem sftp internal-sftp",
                # Sessions find the clean target Python first (see target_python).
                # A HOME of their own: bash run by sshd reads ~/.bashrc, whose
                # PATH (pyenv's, say) would win over this one.
                f"SetEnv PATH={target_python}:/usr/local/bin:/usr/bin:/bin HOME={work / 'home'}",
                "LogLevel VERBOSE",
            ]
        )
        + "\n"
    )
    log = (work / "sshd.log").open("wb")
    # sshd re-executes itself by the absolute path it was started with.
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        assert _wait_port(port, proc), (work / "sshd.log").read_text()
        # The host key, known beforehand as an operator would have it: salt-ssh
        # verifies it (no_host_keys does not reach the calls a state's
        # templates make through salt-ssh; known_hosts_file does).
        host_key = (work / "host_key.pub").read_text().split()
        (work / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
        yield port, work / "client_key", work / "known_hosts"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def pip_site(tmp_path_factory):
    """``pip install .`` of this checkout (no dependencies) into a prefix of its own; its site-packages."""
    build = tmp_path_factory.mktemp("ssh-pip-build")
    src = build / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(".venv*", ".git", "tools", "tests", "bench", "__pycache__", ".bench-venv*",
                                      ".hypothesis"),
    )
    prefix = build / "prefix"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--prefix", str(prefix), str(src)],
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    site = prefix / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    # The distribution is the one package and its metadata, nothing else.
    assert sorted(p.name for p in site.iterdir()) == ["salt_consul-0.1.0.dist-info", "saltconsul_ext"]
    return site


class SaltSSH:
    """One master config dir; each install way rewrites its ``master`` file and gets a root of its own."""

    def __init__(self, conf_dir, work, sshd, agent):
        self.conf_dir, self.work, self.agent = conf_dir, work, agent
        self.port, self.key, self.known_hosts = sshd
        self.env = None

    def configure(self, way, file_roots, pythonpath, kv_prefix, cwd):
        root = self.work / way
        pillar = root / "pillar"
        pillar.mkdir(parents=True)
        # salt-run writes a job file here and, without a salt-master, nothing else makes it.
        (root / "var" / "cache" / "salt" / "master" / "proc").mkdir(parents=True)
        (pillar / "top.sls").write_text("base:\n  '*':\n    - register\n")
        (pillar / "register.sls").write_text(
            json.dumps({"consul_register": {"services": {SERVICE: {"port": 8080, "tags": ["http"]}}}})
        )
        consul = {"address": self.agent.http_addr, "retries": 0}
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        if pythonpath:
            env["PYTHONPATH"] = str(pythonpath)
        self.env = env
        # The value the README tells users to put in the master config,
        # computed by the package itself with the master's Python.
        extra = subprocess.run(
            [sys.executable, "-m", "saltconsul_ext", "thin-extra-mods"],
            capture_output=True, text=True, check=True, env=env, cwd=str(cwd), timeout=60,
        ).stdout.strip()
        assert "httpx" in extra.split(","), extra
        # The shared modules ride in the thin on Salt 3006 only (3008 syncs them).
        assert ("saltconsul_calls" in extra.split(",")) is SALT_3006, extra
        master = {
            "root_dir": str(root),
            "user": getpass.getuser(),
            "file_roots": {"base": [str(p) for p in file_roots]},
            "pillar_roots": {"base": [str(pillar)]},
            "ext_pillar": [{"consul": {"layers": [kv_prefix + "/{type}"]}}],
            "consul": consul,
            "roster_file": str(self.conf_dir / "roster"),
            "known_hosts_file": str(self.known_hosts),
            "thin_extra_mods": extra,
            "log_file": str(root / "master.log"),
            "ssh_log_file": str(root / "ssh.log"),
            "log_level_logfile": "info",
        }
        (self.conf_dir / "master").write_text(json.dumps(master))
        roster = {
            TARGET: {
                "host": "127.0.0.1",
                "port": self.port,
                "user": getpass.getuser(),
                "priv": str(self.key),
                # A fresh thin_dir per install way: the target starts from nothing.
                "thin_dir": str(root / "target-thin"),
                "minion_opts": {"consul": consul},
            }
        }
        (self.conf_dir / "roster").write_text(json.dumps(roster))

    def run(self, *args):
        cmd = [str(BIN / "salt-ssh"), "-c", str(self.conf_dir), "--out", "json"]
        proc = subprocess.run(
            [*cmd, TARGET, *args], capture_output=True, text=True, env=self.env, cwd=str(self.work),
            timeout=240, check=False,
        )
        try:
            data = json.loads(proc.stdout)[TARGET]
        except (ValueError, KeyError):
            raise AssertionError(f"salt-ssh {args}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}") from None
        return proc.returncode, data

    def salt_run(self, *args):
        proc = subprocess.run(
            [str(BIN / "salt-run"), "-c", str(self.conf_dir), "--out", "json", *args],
            capture_output=True, text=True, env=self.env, cwd=str(self.work), timeout=240, check=False,
        )
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def salt_ssh(sshd, consul_agent, tmp_path_factory):
    conf_dir = tmp_path_factory.mktemp("ssh-master-conf")
    work = tmp_path_factory.mktemp("ssh-work")
    return SaltSSH(conf_dir, work, sshd, consul_agent)


def _deregister(agent):
    services = agent.api_json("GET", "/v1/agent/services") or {}
    for sid, svc in services.items():
        if svc.get("Service") == SERVICE:
            agent.api("PUT", f"/v1/agent/service/deregister/{sid}")


def _catalog(agent):
    return agent.api_json("GET", f"/v1/catalog/service/{SERVICE}") or []


def _every_call(salt_ssh, agent, kv_prefix, way):
    """The calls the README shows for salt-ssh, each checked in Consul where it writes."""
    _deregister(agent)
    rc, first = salt_ssh.run("state.apply", "consul.register")
    assert rc == 0 and all(s["result"] is True for s in first.values()), first
    assert any(s["changes"] for s in first.values()), first
    (entry,) = _catalog(agent)
    assert entry["ServiceMeta"]["env"] == "prod.gg.dc1" and {"prod", "gg", "http"} <= set(entry["ServiceTags"])
    rc, second = salt_ssh.run("state.apply", "consul.register")
    assert rc == 0 and all(s["result"] is True and not s["changes"] for s in second.values()), second
    # The re-run wrote nothing: Consul's index of the registration did not move.
    assert _catalog(agent)[0]["ModifyIndex"] == entry["ModifyIndex"]

    rc, found = salt_ssh.run("consul.discover", SERVICE)
    assert rc == 0 and [(i["port"], i["id"]) for i in found] == [(8080, entry["ServiceID"])], found

    key = f"{kv_prefix}/kv/{way}"
    rc, put = salt_ssh.run("consul.kv_put", key, f"from {way}")
    assert (rc, put) == (0, True)
    assert agent.api("GET", f"/v1/kv/{key}?raw") == (200, f"from {way}".encode())
    rc, got = salt_ssh.run("consul.kv_get", key)
    assert (rc, got) == (0, f"from {way}")

    rc, grains = salt_ssh.run("grains.item", "env", "pythonexecutable")
    env = grains["env"]
    assert rc == 0 and (env["type"], env["group"], env["datacenter"], env["role"]) == ("prod", "gg", "dc1", "web"), env
    # The target ran all of the above on the clean Python (no httpx of its own,
    # see target_python): the thin brought the HTTP client and, with pip, salt-consul.
    assert "target-python" in grains["pythonexecutable"], grains

    # The master's ext_pillar, layered by the environment it derived from the target's ID.
    rc, pillar = salt_ssh.run("pillar.get", "app")
    assert (rc, pillar) == (0, {"greeting": f"hello prod via {way}"}), pillar
    _deregister(agent)


def test_file_roots_install(salt_ssh, state_tree, consul_agent, kv_prefix):
    """The checkout on file_roots: salt-ssh ships ``_modules``, ``_utils`` (3006: in the thin), ... with the call."""
    consul_agent.api("PUT", f"/v1/kv/{kv_prefix}/prod/app/greeting", b"hello prod via file_roots")
    salt_ssh.configure("file_roots", [state_tree], None, kv_prefix, REPO)
    # The master's side (the ext_pillar) comes from its extension_modules, as with
    # salt-master; on Salt 3006 the thin's shared modules come from its synced
    # utils too (salt-ssh imports the names in thin_extra_mods; no PYTHONPATH here).
    salt_ssh.salt_run("saltutil.sync_all")
    _every_call(salt_ssh, consul_agent, kv_prefix, "file_roots")
    thin = salt_ssh.work / "file_roots" / "target-thin"
    extmods = thin / "running_data" / "var" / "cache" / "salt" / "minion" / "extmods"
    assert (extmods / "modules" / "consul.py").is_file()
    # Where the shared modules came from: synced utils (3008) or the thin (3006).
    assert (extmods / "utils" / "saltconsul_client.py").is_file() is not SALT_3006
    assert (thin / "py3" / "saltconsul_client.py").is_file() is SALT_3006
    # Nothing of a pip install took part: the thin carried no saltconsul_ext.
    assert not (thin / "py3" / "saltconsul_ext").exists()


def test_pip_install(salt_ssh, pip_site, consul_agent, kv_prefix):
    """
    ``pip install`` on the master only; file_roots hold just its formulas.
    Salt 3008: the thin carries ``saltconsul_ext``. Salt 3006: the ext_mods
    carry the entry point's loader modules, the thin the shared modules.
    """
    consul_agent.api("PUT", f"/v1/kv/{kv_prefix}/prod/app/greeting", b"hello prod via pip")
    formulas = pip_site / "saltconsul_ext" / "formulas"
    salt_ssh.configure("pip", [formulas], pip_site, kv_prefix, pip_site)
    # The path the README has users put on file_roots, from the installed runner.
    assert salt_ssh.salt_run("consul_formulas.path") == str(formulas)
    _every_call(salt_ssh, consul_agent, kv_prefix, "pip")
    # Nothing of the checkout took part (not on file_roots nor on PYTHONPATH):
    # what the target ran came from the pip install, by the way this Salt sends it.
    thin = salt_ssh.work / "pip" / "target-thin"
    extmods = thin / "running_data" / "var" / "cache" / "salt" / "minion" / "extmods"
    if SALT_3006:
        assert (extmods / "modules" / "consul.py").is_file()
        assert (thin / "py3" / "saltconsul_client.py").is_file()
        assert not (thin / "py3" / "saltconsul_ext").exists()
        # ... imported on the master through the entry point: nothing was synced.
        assert not (salt_ssh.work / "pip" / "var" / "cache" / "salt" / "master" / "extmods" / "utils").exists()
    else:
        assert (thin / "py3" / "saltconsul_ext" / "utils" / "saltconsul_client.py").is_file()
        assert not (extmods / "modules" / "consul.py").exists()
