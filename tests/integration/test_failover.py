"""
Failover of a single-holder service end to end, with real daemons: a
salt-master of its own (the ``consul_watch`` engine watching ``db`` and
``locks/``, the failover reactor and orchestration from ``formulas/``), a
Consul agent of its own, and three minions: the ``db`` primary, its replica
and a client. The "database" is ``tools/standin_db.py`` (a stdlib HTTP server
whose role file says ``primary`` or ``replica``), started by the test as a
database would be started outside Salt.

Killing the primary's process must end, with no salt command from the test,
with the replica promoted (role file), registered as the one ``db`` instance
in Consul, holding the lock, and the client's rendered config naming it. The
old primary coming back (process restarted still believing it is primary,
its stale instance re-registered) must not become a second primary.

Waits are bounded polls on the end state; nothing asserts a duration.
"""

import contextlib
import pathlib
import subprocess
import sys
import time

import pytest

import localconsul

REPO = pathlib.Path(__file__).resolve().parents[2]
STANDIN = REPO / "tools" / "standin_db.py"
MASTER_ID = "failover-master"
PRIMARY = "db01.prod.gg.mydc1.example.com"
REPLICA = "db02.prod.gg.mydc1.example.com"
CLIENT = "web01.prod.gg.mydc1.example.com"
LOCK_KEY = "locks/db/prod.gg.mydc1/leader"
LOADER_DIRS = ("_modules", "_states", "_grains", "_utils", "_runners", "_engines")


def failover_pillar(workdir, ports):
    """The pillar SLS (Jinja) for the members and the client: one file for every minion."""
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
      lock_delay: 1s
      wait_passing: 5
      checks:
        - name: tcp
          tcp: "127.0.0.1:{{{{ port }}}}"
          interval: 1s
          timeout: 1s
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


def master_overrides(state_tree, pillar_tree, consul):
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
                    "min_wait": 0.5,
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
        "log_level_logfile": "debug",
    }


def make_state_tree(root):
    """file_roots: this checkout's loader dirs (for saltutil.sync_all) and formulas."""
    root.mkdir(parents=True, exist_ok=True)
    for name in LOADER_DIRS:
        (root / name).symlink_to(REPO / name)
    for entry in (REPO / "formulas").iterdir():
        (root / entry.name).symlink_to(entry)
    return root


class StandIn:
    """One stand-in database server process on loopback."""

    def __init__(self, workdir, minion_id, port):
        self.port = port
        self.role_file = pathlib.Path(workdir) / f"{minion_id}.role"
        self.proc = None

    def start(self, role=None):
        if role:
            self.role_file.write_text(role + "\n")
        self.proc = subprocess.Popen(
            [sys.executable, str(STANDIN), "serve", "--port", str(self.port), "--role-file", str(self.role_file)]
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                import socket

                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            time.sleep(0.05)
        raise RuntimeError(f"stand-in on port {self.port} did not start")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    @property
    def role(self):
        return self.role_file.read_text().strip() if self.role_file.exists() else None


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fo_consul(tmp_path_factory):
    agent = localconsul.LocalConsul("dc1", node_name="failover-dc1", log_dir=str(tmp_path_factory.mktemp("fo-consul")))
    agent.start()
    yield agent
    agent.cleanup()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("failover")


@pytest.fixture(scope="module")
def standins(workdir):
    servers = {
        PRIMARY: StandIn(workdir, PRIMARY, localconsul.free_port()),
        REPLICA: StandIn(workdir, REPLICA, localconsul.free_port()),
    }
    try:
        yield servers
    finally:
        for server in servers.values():
            server.kill()


@pytest.fixture(scope="module")
def fo_master(salt_factories, fo_consul, workdir, standins, tmp_path_factory):
    state_tree = make_state_tree(tmp_path_factory.mktemp("fo-tree") / "base")
    pillar_tree = tmp_path_factory.mktemp("fo-pillar")
    (pillar_tree / "top.sls").write_text("base:\n  '*':\n    - failover\n")
    ports = {mid: server.port for mid, server in standins.items()}
    (pillar_tree / "failover.sls").write_text(failover_pillar(workdir, ports))
    factory = salt_factories.salt_master_daemon(
        MASTER_ID, overrides=master_overrides(state_tree, pillar_tree, fo_consul)
    )
    with factory.started():
        yield factory


@pytest.fixture(scope="module")
def fo_minions(fo_master, fo_consul):
    with contextlib.ExitStack() as stack:
        minions = {}
        for mid in (PRIMARY, REPLICA, CLIENT):
            factory = fo_master.salt_minion_daemon(
                mid,
                overrides={"consul": {"address": fo_consul.http_addr, "retries": 0}, "log_level_logfile": "debug"},
            )
            stack.enter_context(factory.started())
            minions[mid] = factory
        ret = fo_master.salt_cli(timeout=120).run("saltutil.sync_all", minion_tgt="*")
        assert ret.returncode == 0, ret
        yield minions


# --------------------------------------------------------------------------- helpers


def wait_for(predicate, timeout, step=0.5):
    """Poll ``predicate`` until truthy, at most ``timeout`` seconds; return its last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(step)
        value = predicate()
    return value


def lock_state(consul):
    """(session, value) of the lock key, read from Consul directly."""
    status, _ = consul.api("GET", f"/v1/kv/{LOCK_KEY}")
    if status != 200:
        return None, None
    entry = consul.api_json("GET", f"/v1/kv/{LOCK_KEY}")[0]
    import base64

    return entry.get("Session"), base64.b64decode(entry["Value"]).decode() if entry.get("Value") else None


def db_instances(consul):
    return sorted(s["ID"] for s in consul.api_json("GET", "/v1/agent/services").values() if s["Service"] == "db")


def passing_db(consul):
    return sorted(e["Service"]["ID"] for e in consul.api_json("GET", "/v1/health/service/db?passing"))


def client_conf(workdir):
    path = workdir / f"{CLIENT}.db.conf"
    return path.read_text() if path.exists() else ""


def state_results(ret):
    """{state id: result} of a ``state.apply`` return."""
    data = ret.data if isinstance(ret.data, dict) else {}
    return {v.get("__id__"): v.get("result") for v in data.values() if isinstance(v, dict)}


# --------------------------------------------------------------------------- test


def test_primary_dies_replica_takes_over_and_old_primary_stays_out(fo_master, fo_minions, fo_consul, standins, workdir):
    cli = fo_master.salt_cli(timeout=120)
    primary, replica = standins[PRIMARY], standins[REPLICA]
    primary.start(role="replica")
    replica.start(role="replica")

    # Bring-up: the first member to apply takes the lock and is promoted by
    # the formula; the second finds it held and stays a replica.
    ret = cli.run("state.apply", "failover", "queue=True", minion_tgt=PRIMARY)
    assert ret.returncode == 0, ret
    assert primary.role == "primary"
    ret = cli.run("state.apply", "failover", "queue=True", minion_tgt=REPLICA)
    assert ret.returncode == 0, ret
    assert state_results(ret).get("failover-db-replica") is True
    assert replica.role == "replica"
    assert lock_state(fo_consul)[1] == PRIMARY
    assert wait_for(lambda: passing_db(fo_consul) == [f"db@{PRIMARY}"], 30), passing_db(fo_consul)
    ret = cli.run("state.apply", "failover.client", "queue=True", minion_tgt=CLIENT)
    assert ret.returncode == 0, ret
    assert f"db_primary = 127.0.0.1:{primary.port}" in client_conf(workdir)
    assert f"db_primary_node = {PRIMARY}" in client_conf(workdir)

    # The primary's server dies. From here on the test runs no salt command:
    # check critical -> session invalidated -> lock released -> engine event
    # -> reactor -> orchestration (promote the replica, re-render clients,
    # fence the former primary).
    primary.kill()
    new_conf = f"db_primary = 127.0.0.1:{replica.port}"
    assert wait_for(lambda: new_conf in client_conf(workdir), 120), client_conf(workdir)
    assert f"db_primary_node = {REPLICA}" in client_conf(workdir)
    session, holder = lock_state(fo_consul)
    assert session and holder == REPLICA
    assert replica.role == "primary"
    # The orchestration's last step fenced the former primary: its instance is
    # deregistered and it was demoted while down.
    assert wait_for(lambda: db_instances(fo_consul) == [f"db@{REPLICA}"], 60), db_instances(fo_consul)
    assert wait_for(lambda: primary.role == "replica", 60)
    assert passing_db(fo_consul) == [f"db@{REPLICA}"]

    # The old primary comes back still believing it is primary, and its
    # agent restores its old registration (a node rebooting with its service
    # definitions): a second healthy db instance appears. The engine sees the
    # healthy set change; the orchestration fences it again.
    primary.start(role="primary")
    reg = {
        "Name": "db",
        "ID": f"db@{PRIMARY}",
        "Port": primary.port,
        "Address": "127.0.0.1",
        "Tags": ["prod", "gg"],
        "Meta": {"managed_by": "salt-consul", "salt_minion": PRIMARY},
        "Check": {"TCP": f"127.0.0.1:{primary.port}", "Interval": "1s"},
    }
    assert fo_consul.api("PUT", "/v1/agent/service/register", reg)[0] == 200
    assert wait_for(lambda: db_instances(fo_consul) == [f"db@{REPLICA}"] and primary.role == "replica", 90), (
        db_instances(fo_consul),
        primary.role,
    )

    # And its own next apply (highstate, startup_states) finds the lock held:
    # it neither registers nor takes the lock, and stays a replica.
    primary.role_file.write_text("primary\n")
    ret = cli.run("state.apply", "failover", "queue=True", minion_tgt=PRIMARY)
    assert ret.returncode == 0, ret
    results = state_results(ret)
    assert results.get("failover-db-replica") is True and "failover-db-lock" not in results, results
    assert primary.role == "replica"
    assert lock_state(fo_consul)[1] == REPLICA
    assert db_instances(fo_consul) == [f"db@{REPLICA}"]
    assert passing_db(fo_consul) == [f"db@{REPLICA}"]
    assert f"db_primary_node = {REPLICA}" in client_conf(workdir)
