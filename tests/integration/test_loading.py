"""
The extension loads both ways a Salt user installs it:

* file_roots + ``saltutil.sync_all`` on a real master and minion;
* ``pip install`` with the ``salt.loader`` entry point and no file_roots at all
  (one package, ``saltconsul_ext``, with everything inside it).

salt-ssh, both ways: test_salt_ssh.py.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import salt.utils.yaml

from conftest import DEV_MINION, PROD_MINION, REPO, UNMASK


def test_sync_all_minion_side(prod_minion, dev_minion, salt_cli):
    ret = salt_cli.run("grains.get", "env", minion_tgt=PROD_MINION)
    assert ret.returncode == 0, ret
    assert ret.data["postfix"] == "prod.gg.mydc1"
    assert ret.data["role"] == "web"
    ret = salt_cli.run("consul.service_name", "db", minion_tgt=DEV_MINION)
    assert ret.data == "db.dev.gg.mydc1"
    # The execution module reached the real Consul through the shared client.
    ret = salt_cli.run("consul.status_leader", minion_tgt=PROD_MINION)
    assert ret.returncode == 0, ret
    assert ret.data.startswith("127.0.0.1:")


def test_grain_targeting(prod_minion, dev_minion, salt_cli):
    ret = salt_cli.run("-G", "env:type:prod", "test.ping", minion_tgt="")
    # salt-factories puts minion_tgt last; an empty one is dropped, so the grain
    # expression above is the target.
    assert ret.returncode == 0, ret
    assert set(ret.data) == {PROD_MINION}


def test_pillar_targeting_follows_the_master_derived_env(prod_minion, dev_minion, salt_cli):
    """The docs' ``salt -I 'consul_env:...'`` commands, as written (Salt 3008 and 3006)."""
    for expression, expected in (
        ("consul_env:type:prod", {PROD_MINION}),
        ("consul_env:type:dev", {DEV_MINION}),
        ("consul_env:role:web", {PROD_MINION, DEV_MINION}),
    ):
        ret = salt_cli.run("-I", expression, "test.ping", minion_tgt="")
        assert ret.returncode == 0, ret
        assert set(ret.data) == expected, (expression, ret.data)
    ret = salt_cli.run("-C", "I@consul_env:type:prod and I@consul_env:group:gg", "test.ping", minion_tgt="")
    assert set(ret.data) == {PROD_MINION}, ret
    # What the environment looks like in pillar, unmasked where Salt masks it (3008).
    ret = salt_cli.run("pillar.get", "consul_env:postfix", *UNMASK, minion_tgt=PROD_MINION)
    assert ret.data == "prod.gg.mydc1", ret


def test_sync_all_master_side(salt_master):
    extmods = pathlib.Path(salt_master.config["extension_modules"])
    assert (extmods / "pillar" / "consul.py").is_file()
    assert (extmods / "utils" / "saltconsul_client.py").is_file()


@pytest.fixture(scope="module")
def pip_prefix(tmp_path_factory):
    """`pip install .` of this checkout into a prefix of its own."""
    prefix = tmp_path_factory.mktemp("pip-prefix")
    build = tmp_path_factory.mktemp("pip-build")
    # Build from a copy so an in-tree build never leaves files in the checkout.
    src = build / "src"
    shutil.copytree(
        REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "tools", "tests", "bench", "__pycache__", ".bench-venv*")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--prefix", str(prefix), str(src)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    site = prefix / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    # One package and its metadata: no top-level modules, nothing under share/.
    assert sorted(p.name for p in site.iterdir()) == ["salt_consul-0.1.0.dist-info", "saltconsul_ext"]
    assert sorted(p.name for p in prefix.iterdir()) == ["lib"]
    assert (site / "saltconsul_ext" / "utils" / "saltconsul_client.py").is_file()
    return site


def test_pip_show_lists_one_package(pip_prefix):
    """``pip show -f salt-consul``: the package (formulas inside it) and its dist-info, nothing else."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "show", "-f", "--disable-pip-version-check", "salt-consul"],
        capture_output=True, text=True, check=False, env=dict(os.environ, PYTHONPATH=str(pip_prefix)),
    )
    assert proc.returncode == 0, proc.stderr
    files = proc.stdout.split("Files:", 1)[1].split()
    assert files and {f.split("/", 1)[0] for f in files} == {"saltconsul_ext", "salt_consul-0.1.0.dist-info"}
    assert "saltconsul_ext/formulas/consul/register.sls" in files


def _salt_call(tmp_path, consul_agent, pythonpath, *args, **conf):
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir(exist_ok=True)
    (conf_dir / "minion").write_text(
        json.dumps(
            dict(
                {
                    "id": "db01.stg.blue.dc7.example.com",
                    "root_dir": str(tmp_path / "root"),
                    "file_client": "local",
                    "file_roots": {"base": [str(tmp_path / "empty")]},
                    "consul": {"address": consul_agent.http_addr},
                    "log_level_logfile": "info",
                },
                **conf,
            )
        )
    )
    (tmp_path / "empty").mkdir(exist_ok=True)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    salt_call = pathlib.Path(sys.executable).parent / "salt-call"
    proc = subprocess.run(
        [str(salt_call), "--local", "-c", str(conf_dir), "--out", "json", "--retcode-passthrough", *args],
        capture_output=True, text=True, env=env, timeout=180, check=False,
    )
    try:
        return proc.returncode, json.loads(proc.stdout)["local"] if proc.stdout.strip() else None, proc
    except ValueError:
        return proc.returncode, None, proc


def test_pip_install_entry_point(pip_prefix, consul_agent, tmp_path):
    rc, env, proc = _salt_call(tmp_path, consul_agent, pip_prefix, "grains.get", "env")
    assert rc == 0, proc.stderr
    assert (env["type"], env["group"], env["datacenter"], env["role"]) == ("stg", "blue", "dc7", "db")
    rc, leader, proc = _salt_call(tmp_path, consul_agent, pip_prefix, "consul.status_leader")
    assert rc == 0, proc.stderr
    assert leader.startswith("127.0.0.1:")
    rc, name, proc = _salt_call(tmp_path, consul_agent, pip_prefix, "consul.service_name", "db")
    assert (rc, name) == (0, "db.stg.blue.dc7"), proc.stderr
    # The ext_pillar comes through the entry point too (masterless: the minion compiles it).
    prefix = f"piptest-{os.getpid()}"
    consul_agent.api("PUT", f"/v1/kv/{prefix}/stg/app/greeting", b"hello stg")
    rc, pillar, proc = _salt_call(
        tmp_path, consul_agent, pip_prefix, "pillar.get", "app", *UNMASK,
        ext_pillar=[{"consul": {"layers": [prefix + "/{type}"]}}],
    )
    consul_agent.api("DELETE", f"/v1/kv/{prefix}?recurse")
    assert (rc, pillar) == (0, {"greeting": "hello stg"}), proc.stderr
    # Control: without the installed package there is no env grain and no such function,
    # so the answers above came from the entry point.
    rc, env, proc = _salt_call(tmp_path, consul_agent, None, "grains.get", "env")
    assert env in ("", None)
    rc, name, proc = _salt_call(tmp_path, consul_agent, None, "consul.service_name", "db")
    assert rc != 0


def test_pip_install_ships_the_formulas(pip_prefix, consul_agent, tmp_path):
    installed = pip_prefix / "saltconsul_ext" / "formulas"
    tracked = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "formulas"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "formulas/consul/acl.sls" in tracked
    missing = [f for f in tracked if not (installed / f.removeprefix("formulas/")).is_file()]
    assert missing == []
    assert (installed / "consul" / "register.sls").read_bytes() == (REPO / "formulas/consul/register.sls").read_bytes()
    env = dict(os.environ, PYTHONPATH=str(pip_prefix))
    # The path, for scripts ...
    proc = subprocess.run(
        [sys.executable, "-m", "saltconsul_ext", "formulas"], capture_output=True, text=True, env=env, check=False,
        # Not from the checkout: `python -m` puts the current folder first, and
        # the checkout's saltconsul_ext (which has no formulas/) would answer.
        cwd=str(tmp_path),
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, str(installed)), proc.stderr
    # ... and from the runner, on a master config of its own (no daemon needed).
    conf = tmp_path / "master-conf"
    conf.mkdir()
    (tmp_path / "master-root" / "var" / "cache" / "salt" / "master" / "proc").mkdir(parents=True)
    (conf / "master").write_text(json.dumps({"root_dir": str(tmp_path / "master-root"), "log_level_logfile": "info"}))
    salt_run = pathlib.Path(sys.executable).parent / "salt-run"
    proc = subprocess.run(
        [str(salt_run), "-c", str(conf), "--out", "json", "consul_formulas.path"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert proc.returncode == 0 and json.loads(proc.stdout) == str(installed), (proc.stdout, proc.stderr)
    # That path on file_roots: the formulas render (masterless), with the shipped pillar example.
    example = salt.utils.yaml.safe_load((installed / "consul" / "acl.pillar.example").read_text())
    rc, sls, proc = _salt_call(
        tmp_path, consul_agent, pip_prefix, "state.show_sls", "consul.acl", f"pillar={json.dumps(example)}",
        file_roots={"base": [str(installed)]},
    )
    assert rc == 0, proc.stderr
    assert "acl_policy_present" in sls["consul-acl-policy-salt-minion"]["consul"], sls
    assert {"consul-acl-token-salt-master", "consul-acl-token-salt-minion", "consul-acl-anonymous-dns"} <= set(sls)
