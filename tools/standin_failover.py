"""
The failover rig shared by ``tests/integration/test_failover.py`` and
``bench/bench_failover.py``: the pillar and master config of a ``db`` primary,
its replica and a client on one machine, the stand-in database servers
(``tools/standin_db.py``), and, for the bench, real ``salt-master`` /
``salt-minion`` daemons started from this virtualenv (the test uses
pytest-salt-factories for the daemons instead).

Everything listens on loopback; every wait is bounded.
"""

import base64
import contextlib
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

import localconsul

REPO = pathlib.Path(__file__).resolve().parents[1]
STANDIN = REPO / "tools" / "standin_db.py"
PRIMARY = "db01.prod.gg.mydc1.example.com"
REPLICA = "db02.prod.gg.mydc1.example.com"
CLIENT = "web01.prod.gg.mydc1.example.com"
LOCK_KEY = "locks/db/prod.gg.mydc1/leader"
LOADER_DIRS = ("_modules", "_states", "_grains", "_utils", "_runners", "_engines")

# The timing knobs of a failover (docs/failover.md): the check interval and
# timeout decide how fast Consul notices, min_wait how long the engine waits
# for the burst to settle, the lock delay how long nobody may take the lock.
TIMING = {"check_interval": "1s", "check_timeout": "1s", "lock_delay": "1s", "min_wait": 0.5}


def failover_pillar(workdir, ports, timing=None):
    """The pillar SLS (Jinja) for members and clients: one file for every minion, no per-node file."""
    timing = dict(TIMING, **(timing or {}))
    py, standin = sys.executable, STANDIN
    return f"""\
{{%- set ports = {ports!r} %}}
{{%- set port = ports.get(grains['id']) %}}
{{%- set role_file = '{workdir}/' ~ grains['id'] ~ '.role' %}}
consul_failover:
{{%- if port %}}
  services:
    db:
      address: 127.0.0.1
      port: {{{{ port }}}}
      lock_delay: {timing['lock_delay']}
      wait_passing: 5
      checks:
        - name: tcp
          tcp: "127.0.0.1:{{{{ port }}}}"
          interval: {timing['check_interval']}
          timeout: {timing['check_timeout']}
      ready:
        cmd: "{py} -c 'import socket; socket.create_connection((\\"127.0.0.1\\", {{{{ port }}}}), 1)'"
      promote:
        cmd: "{py} {standin} promote --port {{{{ port }}}}"
        unless: "{py} {standin} is-role primary --role-file {{{{ role_file }}}}"
      demote:
        cmd: "{py} {standin} demote --port {{{{ port }}}} --role-file {{{{ role_file }}}}"
        unless: "{py} {standin} is-role replica --role-file {{{{ role_file }}}}"
{{%- endif %}}
  clients:
    db:
      path: "{workdir}/{{minion_id}}.db.conf"
"""


def master_config(state_tree, pillar_tree, consul, timing=None):
    """Master settings: the consul_watch engine, the failover reactor and its orchestration config."""
    timing = dict(TIMING, **(timing or {}))
    return {
        "file_roots": {"base": [str(state_tree)]},
        "pillar_roots": {"base": [str(pillar_tree)]},
        # Master-side code at start (engine) and for the orchestration's
        # render (consul.lock_holder, consul_targets), without a sync first.
        "engines_dirs": [str(REPO / "_engines")],
        "runner_dirs": [str(REPO / "_runners")],
        "module_dirs": [str(REPO / "_modules")],
        "utils_dirs": [str(REPO / "_utils")],
        "consul": {"address": consul.http_addr, "retries": 0},
        "engines": [
            {
                "consul_watch": {
                    "services": ["db"],
                    "kv": ["locks/"],
                    "min_wait": timing["min_wait"],
                    "max_wait": 5,
                    "wait": 30,
                    "min_interval": 0.2,
                    "poll_interval": 0.5,
                    "backoff": 0.5,
                    "backoff_max": 2,
                }
            }
        ],
        "reactor": [
            {"salt/consul/service/db": ["salt://reactor/consul_failover.sls"]},
            {"salt/consul/kv/locks": ["salt://reactor/consul_failover.sls"]},
        ],
        "consul_react": {
            "failover": {"db": {"candidates": {"role": "db"}, "clients": {"role": "web"}, "timeout": 60}}
        },
    }


def make_trees(root, workdir, ports, timing=None):
    """``(state_tree, pillar_tree)`` under ``root``: this checkout's loader dirs and formulas, and the pillar."""
    state_tree = pathlib.Path(root) / "state"
    state_tree.mkdir(parents=True, exist_ok=True)
    for name in LOADER_DIRS:
        (state_tree / name).symlink_to(REPO / name)
    for entry in (REPO / "formulas").iterdir():
        (state_tree / entry.name).symlink_to(entry)
    pillar_tree = pathlib.Path(root) / "pillar"
    pillar_tree.mkdir(parents=True, exist_ok=True)
    (pillar_tree / "top.sls").write_text("base:\n  '*':\n    - failover\n")
    (pillar_tree / "failover.sls").write_text(failover_pillar(workdir, ports, timing))
    return state_tree, pillar_tree


# --------------------------------------------------------------------------- the stand-in databases


class StandIn:
    """One stand-in database server (``tools/standin_db.py serve``) on loopback."""

    def __init__(self, workdir, minion_id, port=None):
        self.port = port or localconsul.free_port()
        self.role_file = pathlib.Path(workdir) / f"{minion_id}.role"
        self.proc = None

    def start(self, role=None, timeout=10):
        if role:
            self.role_file.write_text(role + "\n")
        self.proc = subprocess.Popen(
            [sys.executable, str(STANDIN), "serve", "--port", str(self.port), "--role-file", str(self.role_file)]
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            time.sleep(0.05)
        raise RuntimeError(f"stand-in on port {self.port} did not start in {timeout}s")

    def kill(self):
        """SIGKILL: the database dies, no goodbye."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    @property
    def role(self):
        return self.role_file.read_text().strip() if self.role_file.exists() else None


# --------------------------------------------------------------------------- reading Consul directly


def lock_state(consul, key=LOCK_KEY):
    """``(session, value)`` of the lock key, read from Consul directly (not through salt-consul)."""
    status, body = consul.api("GET", f"/v1/kv/{key}")
    if status != 200:
        return None, None
    entry = json.loads(body)[0]
    value = base64.b64decode(entry["Value"]).decode() if entry.get("Value") else None
    return entry.get("Session"), value


def db_instances(consul, service="db"):
    return sorted(s["ID"] for s in consul.api_json("GET", "/v1/agent/services").values() if s["Service"] == service)


def passing_instances(consul, service="db"):
    return sorted(e["Service"]["ID"] for e in consul.api_json("GET", f"/v1/health/service/{service}?passing"))


def client_conf(workdir, minion_id=CLIENT, service="db"):
    path = pathlib.Path(workdir) / f"{minion_id}.{service}.conf"
    return path.read_text() if path.exists() else ""


def wait_for(predicate, timeout, step=0.5):
    """Poll ``predicate`` until truthy, at most ``timeout`` seconds; return its last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(step)
        value = predicate()
    return value


# --------------------------------------------------------------------------- raw daemons (bench)


def _yaml(data):
    import salt.utils.yaml

    return salt.utils.yaml.safe_dump(data, default_flow_style=False)


class Rig:
    """
    A salt-master and minions as plain processes of this virtualenv's Salt
    (``salt-master -c DIR``), keys auto-accepted, all on loopback, under
    ``root``. ``salt(...)`` / ``run(...)`` call the CLI and return parsed JSON.
    """

    def __init__(self, root, master_opts, minion_ids, consul):
        self.root = pathlib.Path(root)
        self.bin = pathlib.Path(sys.executable).parent
        self.user = getpass.getuser()
        self.ret_port = localconsul.free_port()
        self.pub_port = localconsul.free_port()
        self.master_dir = self.root / "master"
        self.minion_ids = list(minion_ids)
        self.procs = []
        self.master_opts = dict(
            master_opts,
            id="bench-master",
            root_dir=str(self.master_dir),
            conf_file=str(self.master_dir / "master"),
            pki_dir=str(self.master_dir / "pki"),
            cachedir=str(self.master_dir / "cache"),
            sock_dir=str(self.master_dir / "sock"),
            log_file=str(self.master_dir / "master.log"),
            log_level_logfile="info",
            # Epoch seconds in the log: the bench reads event times from it.
            log_fmt_logfile="%(created).3f [%(name)s][%(levelname)s] %(message)s",
            user=self.user,
            interface="127.0.0.1",
            ret_port=self.ret_port,
            publish_port=self.pub_port,
            auto_accept=True,
            worker_threads=3,
        )
        self.consul = consul

    @property
    def master_log(self):
        return pathlib.Path(self.master_opts["log_file"])

    def _minion_opts(self, mid):
        base = self.root / "minions" / mid
        return {
            "id": mid,
            "root_dir": str(base),
            "pki_dir": str(base / "pki"),
            "cachedir": str(base / "cache"),
            "sock_dir": str(base / "sock"),
            "log_file": str(base / "minion.log"),
            "log_level_logfile": "info",
            "user": self.user,
            "master": "127.0.0.1",
            "master_port": self.ret_port,
            "publish_port": self.pub_port,
            "acceptance_wait_time": 1,
            "consul": {"address": self.consul.http_addr, "retries": 0},
        }

    def _spawn(self, args):
        log = open(self.root / f"{pathlib.Path(args[0]).name}-{len(self.procs)}.out", "wb")  # noqa: SIM115
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self, timeout=120):
        self.master_dir.mkdir(parents=True, exist_ok=True)
        (self.master_dir / "master").write_text(_yaml(self.master_opts))
        self._spawn([str(self.bin / "salt-master"), "-c", str(self.master_dir)])
        for mid in self.minion_ids:
            conf_dir = self.root / "minions" / mid
            conf_dir.mkdir(parents=True, exist_ok=True)
            (conf_dir / "minion").write_text(_yaml(self._minion_opts(mid)))
            self._spawn([str(self.bin / "salt-minion"), "-c", str(conf_dir)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # A CLI call that hangs past its timeout (a loaded machine) is one more try.
            with contextlib.suppress(RuntimeError, ValueError, subprocess.TimeoutExpired):
                if set(self.salt("*", "test.ping", timeout=10) or {}) >= set(self.minion_ids):
                    return
            time.sleep(1)
        raise RuntimeError(f"minions {self.minion_ids} did not answer within {timeout}s")

    def _cli(self, tool, args, timeout):
        static = ["--static"] if tool == "salt" else []
        cmd = [str(self.bin / tool), "-c", str(self.master_dir), "--out", "json", *static, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30, check=False)
        if not proc.stdout.strip():
            raise RuntimeError(f"{tool} {' '.join(args)}: no output (rc {proc.returncode}): {proc.stderr[-500:]}")
        return json.loads(proc.stdout)

    def salt(self, tgt, fun, *args, timeout=120):
        return self._cli("salt", ["-t", str(timeout), tgt, fun, *args], timeout)

    def run(self, fun, *args, timeout=120):
        return self._cli("salt-run", ["-t", str(timeout), fun, *args], timeout)

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
