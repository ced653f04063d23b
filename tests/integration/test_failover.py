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

import pytest
from conftest import own_consul

from standin_failover import (
    CLIENT,
    PRIMARY,
    REPLICA,
    StandIn,
    client_conf,
    db_instances,
    lock_state,
    make_trees,
    master_config,
    passing_instances,
    wait_for,
)

MASTER_ID = "failover-master"


@pytest.fixture(scope="module")
def fo_consul(tmp_path_factory):
    with own_consul("dc1", tmp_path_factory, node_name="failover-dc1") as agent:
        yield agent


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("failover")


@pytest.fixture(scope="module")
def standins(workdir):
    servers = {PRIMARY: StandIn(workdir, PRIMARY), REPLICA: StandIn(workdir, REPLICA)}
    try:
        yield servers
    finally:
        for server in servers.values():
            server.kill()


@pytest.fixture(scope="module")
def fo_master(salt_factories, fo_consul, workdir, standins, tmp_path_factory):
    ports = {mid: server.port for mid, server in standins.items()}
    state_tree, pillar_tree = make_trees(tmp_path_factory.mktemp("fo-trees"), workdir, ports)
    overrides = dict(master_config(state_tree, pillar_tree, fo_consul), log_level_logfile="debug", worker_threads=2)
    factory = salt_factories.salt_master_daemon(MASTER_ID, overrides=overrides)
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
    assert wait_for(lambda: passing_instances(fo_consul) == [f"db@{PRIMARY}"], 30), passing_instances(fo_consul)
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
    assert passing_instances(fo_consul) == [f"db@{REPLICA}"]

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
    assert passing_instances(fo_consul) == [f"db@{REPLICA}"]
    assert f"db_primary_node = {REPLICA}" in client_conf(workdir)
