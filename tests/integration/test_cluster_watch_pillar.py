"""
The watch/reactor and pillar scenarios on a real Consul topology
(``tools/cluster.py``: 3 servers, a client agent per node), as production runs
them: the salt-master's ``consul_watch`` engine and ext_pillar talk to the
master node's own client agent; KV is written and services are registered
through *other* nodes' client agents (anti-entropy carries registrations to
the servers); the Raft leader dies between two changes.

* a KV burst under ``config/group/prod.gg/``, written through a prod node's
  agent: one event on the master, the app state re-applied once on exactly
  the prod minions (never the dev one);
* the leader killed -9: the engine's blocking query is answered by the new
  leader and the next change is handled like any other;
* ``db`` registered on a node's client agent and turned healthy: the configs
  listing it are re-rendered on the prod minions with exactly its port;
* pillar by environment, compiled through the master's agent from KV written
  through a node's agent: exact values per minion.

Uses the reactor examples in ``formulas/`` and the app state of
``test_watch_react.py`` (same fixtures).
"""

import contextlib
import pathlib
import time

import pytest
from cluster import Cluster
from conftest import consul_opts, synced_minion
from test_watch_react import (  # noqa: F401  (fixtures)
    _applies as applies,
    _kv_events,
    _wait_orchestrations,
    _wait_rerenders,
    applied_dir,
    react_master_overrides,
    react_tree,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
MASTER_ID = "cluster-react-master"
MASTER_NODE = "saltmaster"
PROD = {"web01.prod.gg.mydc1.example.com": "web01", "web02.prod.gg.mydc1.example.com": "web02"}
DEV = "web03.dev.gg.mydc1.example.com"
NODES = dict(PROD, **{DEV: "web03"})
KV_TAG = "salt/consul/kv/config"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with Cluster(nodes=[MASTER_NODE, *NODES.values()], log_dir=str(tmp_path_factory.mktemp("cluster-react-logs"))) as c:
        yield c


@pytest.fixture(scope="module")
def master(salt_factories, cluster, react_tree, tmp_path_factory):  # noqa: F811
    pillar_root = tmp_path_factory.mktemp("cluster-react-pillar")
    (pillar_root / "top.sls").write_text("base: {}\n")
    factory = salt_factories.salt_master_daemon(
        MASTER_ID,
        overrides=react_master_overrides(
            react_tree,
            # The master node's own client agent, as in production.
            consul_opts(cluster.client(MASTER_NODE)),
            ["db"],
            {"db": {"sls": "consulapp.config", "type": "prod", "group": "gg"}},
            pillar_roots={"base": [str(pillar_root)]},
            pillar_dirs=[str(REPO / "_pillar")],
            ext_pillar=[{"consul": {}}],
        ),
    )
    with factory.started():
        yield factory


@pytest.fixture(scope="module")
def minions(master, cluster):
    with contextlib.ExitStack() as stack:
        yield {mid: stack.enter_context(synced_minion(master, cluster.client(node), mid)) for mid, node in NODES.items()}


def kv_events(event_listener, after):
    return _kv_events(event_listener, after, master_id=MASTER_ID)


def wait_orchestrations(event_listener, after, marker):
    return _wait_orchestrations(event_listener, after, marker, master_id=MASTER_ID)


def wait_engine_live(agent, event_listener):
    """A probe key (no environment), written until the engine reports it and its orchestration is over."""
    for attempt in range(8):
        after = time.time()
        assert agent.api("PUT", "/v1/kv/config/_probe", str(attempt).encode())[0] == 200
        if event_listener.wait_for_events([(MASTER_ID, KV_TAG)], timeout=10, after_time=after).found_all_events:
            wait_orchestrations(event_listener, after, "config/_probe")
            return
    pytest.fail("the consul_watch engine never reported the probe key")


def test_kv_burst_through_a_node_agent_reapplies_exactly_prod(cluster, minions, applied_dir, event_listener):  # noqa: F811
    writer = cluster.client("web01")  # not the master's agent
    wait_engine_live(writer, event_listener)
    before = {mid: applies(applied_dir, mid) for mid in NODES}
    after = time.time()
    for value in range(5):
        assert writer.api("PUT", "/v1/kv/config/group/prod.gg/app/version", str(value).encode())[0] == 200
    assert writer.api("PUT", "/v1/kv/config/group/prod.gg/app/feature", b"on")[0] == 200
    rets = wait_orchestrations(event_listener, after, "config/group/prod.gg/app/feature")
    events = kv_events(event_listener, after)
    assert len(events) == 1, [e.data for e in events]
    assert events[0].data["added"] == ["config/group/prod.gg/app/feature", "config/group/prod.gg/app/version"]
    assert events[0].data["envs"] == [{"layer": "config/group/{type}.{group}", "type": "prod", "group": "gg"}]
    assert rets[0].data.get("success") is True, rets[0].data
    assert {mid: applies(applied_dir, mid) - before[mid] for mid in NODES} == {**{m: 1 for m in PROD}, DEV: 0}


def test_engine_follows_a_new_leader(cluster, minions, applied_dir, event_listener):  # noqa: F811
    writer = cluster.client("web03")
    wait_engine_live(writer, event_listener)
    killed = cluster.kill_leader()
    cluster.wait_leader(exclude=killed, timeout=60)
    before = {mid: applies(applied_dir, mid) for mid in NODES}
    after = time.time()
    # The first write may meet the election: retried (bounded) until acknowledged.
    deadline = time.monotonic() + 60
    while writer.api("PUT", "/v1/kv/config/group/dev.gg/app/version", b"7")[0] != 200:
        assert time.monotonic() < deadline, "no KV write accepted after the election"
        time.sleep(0.5)
    wait_orchestrations(event_listener, after, "config/group/dev.gg/app/version")
    events = kv_events(event_listener, after)
    assert [e.data["added"] for e in events] == [["config/group/dev.gg/app/version"]], [e.data for e in events]
    assert {mid: applies(applied_dir, mid) - before[mid] for mid in NODES} == {**{m: 0 for m in PROD}, DEV: 1}
    cluster.restart(killed.node_name)
    cluster.wait_members(timeout=60)


def test_service_turning_healthy_on_a_node_rerenders_prod_configs(cluster, minions, applied_dir, event_listener):  # noqa: F811
    agent = cluster.client("web02")  # registered with the node's own agent only
    conf = {mid: applied_dir / f"{mid}.db.conf" for mid in NODES}
    reg = {"Name": "db", "ID": "db-1", "Port": 5432, "Tags": ["prod", "gg"], "Check": {"TTL": "120s"}}
    assert agent.api("PUT", "/v1/agent/service/register", reg)[0] == 200
    try:
        after = time.time()
        assert agent.api("PUT", "/v1/agent/check/pass/service:db-1")[0] == 200
        assert event_listener.wait_for_events(
            [(MASTER_ID, "salt/consul/service/db")], timeout=60, after_time=after
        ).found_all_events
        # One batch of targets: the reactor publishes the re-render job itself.
        _wait_rerenders(event_listener, after, '"port": 5432', minions=tuple(PROD), master_id=MASTER_ID)
        for mid in PROD:
            assert conf[mid].read_text().strip() == "db=5432"
        assert not conf[DEV].exists()
        # The servers know it under the node that registered it (anti-entropy).
        entries = cluster.live_server().api_json("GET", "/v1/health/service/db?passing")
        assert [(e["Node"]["Node"], e["Service"]["ID"]) for e in entries] == [("web02", "db-1")]
    finally:
        agent.api("PUT", "/v1/agent/service/deregister/db-1")


def test_pillar_by_environment_through_client_agents(cluster, master, minions):
    writer = cluster.client("web02")
    values = {
        "config/global/cpillar/site": "everywhere",
        "config/type/prod/cpillar/tier": "prod",
        "config/type/dev/cpillar/tier": "dev",
        f"config/node/{DEV}/cpillar/site": "dev-only",
    }
    for key, value in values.items():
        assert writer.api("PUT", f"/v1/kv/{key}", value.encode())[0] == 200
    salt = master.salt_cli(timeout=120)
    want = {mid: {"site": "everywhere", "tier": "prod"} for mid in PROD}
    want[DEV] = {"site": "dev-only", "tier": "dev"}
    for mid in NODES:
        data = salt.run("pillar.items", "unmask=True", minion_tgt=mid).data
        assert data["cpillar"] == want[mid] and not data.get("consul_pillar"), data
        assert data["consul_env"]["type"] == ("dev" if mid == DEV else "prod")
