"""
On a real Consul topology (3 servers, a client agent per node; see
``tools/cluster.py``) with a real salt-master and two salt-minions, each
minion talking to its own node's client agent:

* registration through a client agent reaches the servers (anti-entropy) and
  discovery through the other node's client agent sees it;
* the Raft leader killed during a ``state.apply`` of many services and keys:
  each state ``True`` (as declared in Consul) or a clear ``False``; a re-run
  converges, and the run after writes nothing;
* the Raft leader killed during pillar compiles (the ext_pillar reads KV
  through the master's client agent): each compile has the right values
  (possibly marked stale) or a clear error; after the election, fresh;
* single holder across nodes, then the holder's whole node dies (kill -9 of
  its client agent and its salt-minion): gossip marks the node failed, Consul
  invalidates its session, the lock is released, and the replica's next apply
  takes it; a standby is ``True`` with no changes.

Phase durations are printed (``cluster_*`` lines) for the record, never
asserted: timings belong in ``make bench``.
"""

import json
import time

import pytest
from cluster import FAILED
from cluster_fixtures import (  # noqa: F401  (fixtures)
    DB01,
    DB02,
    NODES,
    FakeDB,
    cluster_master,
    cluster_minions,
    cluster_pillar,
    consul_cluster,
    kill_minion,
    state_results,
)
from conftest import lock_state, wait_for

N_SERVICES = 12
N_KEYS = 12
LOCK_KEY = "locks/cdb/leader"


def server_json(cluster, path):
    return cluster.live_server().api_json("GET", path)


@pytest.fixture(scope="module")
def salt(cluster_master):
    return cluster_master.salt_cli(timeout=180)


@pytest.fixture(scope="module")
def dbs():
    servers = {mid: FakeDB() for mid in NODES}
    yield servers
    for db in servers.values():
        db.down()


@pytest.fixture(scope="module")
def sls(state_tree, dbs):
    """The SLS files of this module, in the master's state tree."""
    (state_tree / "cluster_web.sls").write_text(
        """
web:
  consul.service_present:
    - service_id: web@{{ opts['id'] }}
    - port: 8080
    - env_tags: true
    - checks:
      - name: alive
        ttl: 600s
        status: passing
"""
    )
    services = "\n".join(
        f"""
svc{n:02d}:
  consul.service_present:
    - service_id: svc{n:02d}@{{{{ opts['id'] }}}}
    - port: {9000 + n}
    - checks:
      - name: alive
        ttl: 600s
        status: passing
"""
        for n in range(N_SERVICES)
    )
    keys = "\n".join(
        f"""
key{n:02d}:
  consul.key_present:
    - name: cluster/{{{{ opts['id'] }}}}/key{n:02d}
    - value: value-{n:02d}
"""
        for n in range(N_KEYS)
    )
    (state_tree / "cluster_many.sls").write_text(services + keys)
    ports = json.dumps({mid: db.port for mid, db in dbs.items()})
    (state_tree / "cluster_holder.sls").write_text(
        f"""
{{% set ports = {ports} %}}
cluster-db:
  consul.single_holder_service:
    - name: cdb
    - service_id: cdb@{{{{ opts['id'] }}}}
    - lock_key: {LOCK_KEY}
    - lock_delay: 2s
    - wait_passing: 5
    - port: {{{{ ports[opts['id']] }}}}
    - checks:
      - name: db
        tcp: 127.0.0.1:{{{{ ports[opts['id']] }}}}
        interval: 1s
        timeout: 1s
"""
    )
    yield
    for name in ("cluster_web", "cluster_many", "cluster_holder"):
        (state_tree / f"{name}.sls").unlink()


def apply(salt, sls_name, minion, **kwargs):
    ret = salt.run("state.sls", sls_name, "queue=True", minion_tgt=minion, **kwargs)
    return ret, state_results(ret)


def test_registration_syncs_to_servers_and_is_discovered_through_clients(consul_cluster, cluster_minions, salt, sls):
    for mid in NODES:
        ret, results = apply(salt, "cluster_web", mid)
        assert ret.returncode == 0 and results["web"][0] is True, ret
    # Each instance was registered with its node's client agent only; the
    # servers know it by anti-entropy, under the client's node name.
    want = {(NODES[mid], f"web@{mid}") for mid in NODES}
    assert wait_for(
        lambda: {(e["Node"], e["ServiceID"]) for e in server_json(consul_cluster, "/v1/catalog/service/web")} == want, 30
    ), server_json(consul_cluster, "/v1/catalog/service/web")
    for mid, node in NODES.items():
        local = consul_cluster.client(node).api_json("GET", "/v1/agent/services")
        assert [sid for sid, s in local.items() if s["Service"] == "web"] == [f"web@{mid}"]
    # Discovery from db02, through its own client agent, sees both nodes.
    ret = salt.run("consul.health_service", "web", "passing=True", minion_tgt=DB02)
    assert ret.returncode == 0, ret
    assert sorted(e["Node"]["Node"] for e in ret.data) == sorted(NODES.values())
    ret = salt.run("consul.discover", "web", minion_tgt=DB02)
    assert ret.returncode == 0 and len(ret.data) == 2, ret
    # A second apply writes nothing.
    for mid in NODES:
        ret, results = apply(salt, "cluster_web", mid)
        assert results["web"][0] is True and results["web"][2] == {}, ret


def test_leader_killed_during_state_apply(consul_cluster, cluster_master, cluster_minions, salt, sls):
    import threading

    box = {}

    def run():
        box["ret"] = apply(salt, "cluster_many", DB02)

    thread = threading.Thread(target=run)
    thread.start()
    # Kill the leader as soon as the run has started writing.
    wait_for(lambda: consul_cluster.live_server().api("GET", f"/v1/kv/cluster/{DB02}?keys")[0] == 200, 120, 0.05)
    killed = consul_cluster.kill_leader()
    started = time.monotonic()
    new_leader = consul_cluster.wait_leader(exclude=killed, timeout=60)
    print(f"cluster_leader_reelection_seconds: {time.monotonic() - started:.2f}")
    thread.join(timeout=240)
    assert not thread.is_alive()
    ret, results = box["ret"]
    assert len(results) == N_SERVICES + N_KEYS, ret
    failed = {sid: comment for sid, (result, comment, _) in results.items() if result is not True}
    for sid, comment in failed.items():
        # A clear failure: Consul's error named, never a traceback.
        assert "Consul" in comment and "Traceback" not in comment, (sid, comment)
    print(f"cluster_leader_loss_failed_states: {len(failed)}")
    # What reported True is in Consul exactly as declared.
    for sid, (result, _, _) in results.items():
        if result is True and sid.startswith("key"):
            status, raw = new_leader.api("GET", f"/v1/kv/cluster/{DB02}/{sid}?raw")
            assert (status, raw) == (200, f"value-{sid[3:]}".encode()), sid
    consul_cluster.restart(killed.node_name)
    consul_cluster.wait_members(timeout=60)
    # A re-run converges, the run after writes nothing.
    ret, results = apply(salt, "cluster_many", DB02)
    assert all(r is True for r, _, _ in results.values()), ret
    ret, results = apply(salt, "cluster_many", DB02)
    assert all(r is True and c == {} for r, _, c in results.values()), ret
    keys = server_json(consul_cluster, f"/v1/kv/cluster/{DB02}?recurse")
    assert {e["Key"].rsplit("/", 1)[1] for e in keys} == {f"key{n:02d}" for n in range(N_KEYS)}
    catalog = server_json(consul_cluster, f"/v1/catalog/node/{NODES[DB02]}")["Services"]
    assert {s["Service"] for s in catalog.values()} >= {f"svc{n:02d}" for n in range(N_SERVICES)}


def test_pillar_compiles_while_the_leader_dies(consul_cluster, cluster_master, cluster_minions, salt):
    """Each compile during the election is the right value (maybe marked stale) or a clear error; then fresh."""
    import threading

    server = consul_cluster.live_server()
    assert server.api("PUT", f"/v1/kv/config/node/{DB02}/cluster/value", b"v1")[0] == 200
    assert server.api("PUT", "/v1/kv/config/global/cluster/site", b"everywhere")[0] == 200
    def compile_pillar():
        """A fresh compile on the master (values unmasked: Salt 3008 masks pillar output by default)."""
        return salt.run("pillar.items", "unmask=True", minion_tgt=DB02).data

    data = compile_pillar()
    assert data["cluster"] == {"value": "v1", "site": "everywhere"}, data
    compiles = []
    stop = threading.Event()

    def compile_loop():
        while not stop.is_set() and len(compiles) < 30:
            compiles.append(compile_pillar())

    thread = threading.Thread(target=compile_loop)
    thread.start()
    time.sleep(1.0)
    killed = consul_cluster.kill_leader()
    consul_cluster.wait_leader(exclude=killed, timeout=60)
    time.sleep(2.0)
    stop.set()
    thread.join(timeout=240)
    assert not thread.is_alive() and compiles
    outcomes = check_compiles(compiles)
    print(f"cluster_leader_loss_pillar_compiles: {outcomes}")
    # After the election a new write is seen by the next compile, unmarked.
    assert consul_cluster.leader().api("PUT", f"/v1/kv/config/node/{DB02}/cluster/value", b"v2")[0] == 200
    data = compile_pillar()
    assert data["cluster"]["value"] == "v2" and not (data.get("consul_pillar") or {}).get("stale"), data
    consul_cluster.restart(killed.node_name)
    consul_cluster.wait_members(timeout=60)


WANT_CLUSTER_PILLAR = {"value": "v1", "site": "everywhere"}


def check_compiles(compiles, want=WANT_CLUSTER_PILLAR):
    """
    Every compile is the last good pillar (``want``: what the last fresh
    compile before the outage returned), fresh or marked stale, or a clear
    error naming Consul; ``{fresh, stale, error}`` counts.

    A stale pillar older than that compile is a defect: each master worker
    process keeps its own in-memory copies of the layers, and one that had not
    compiled since the values were written served its own older copy instead
    of the newer cache file another worker had written (fixed in
    ``saltconsul_pillarcache.Store.last_good``).
    """
    outcomes = {"fresh": 0, "stale": 0, "error": 0}
    for data in compiles:
        assert isinstance(data, dict), data
        if data.get("_errors"):
            assert any("onsul" in str(err) for err in data["_errors"]), data["_errors"]
            outcomes["error"] += 1
            continue
        stale = (data.get("consul_pillar") or {}).get("stale")
        assert data.get("cluster") == want, (outcomes, data)
        outcomes["stale" if stale else "fresh"] += 1
    return outcomes


def test_single_holder_then_node_death(consul_cluster, cluster_minions, salt, sls, dbs):
    ret, results = apply(salt, "cluster_holder", DB01)
    assert results["cluster-db"][0] is True and "Took the lock" in results["cluster-db"][1], ret
    # The replica stands by: green, unchanged, naming the holder.
    ret, results = apply(salt, "cluster_holder", DB02)
    result, comment, changes = results["cluster-db"]
    assert result is True and changes == {} and DB01 in comment, ret
    session, holder = lock_state(consul_cluster.live_server(), LOCK_KEY)
    assert session and holder == DB01
    info = server_json(consul_cluster, f"/v1/session/info/{session}")[0]
    assert info["Node"] == NODES[DB01] and info["NodeChecks"] == ["serfHealth"]
    assert wait_for(lambda: passing(consul_cluster) == [f"cdb@{DB01}"], 30), passing(consul_cluster)

    # The whole node dies: its client agent and its salt-minion, kill -9.
    started = time.monotonic()
    consul_cluster.kill(NODES[DB01])
    kill_minion(cluster_minions[DB01])
    consul_cluster.wait_members({NODES[DB01]: FAILED}, timeout=60)
    detected = time.monotonic()
    assert wait_for(lambda: lock_state(consul_cluster.live_server(), LOCK_KEY)[0] is None, 60)
    released = time.monotonic()
    serf = [
        c for c in server_json(consul_cluster, f"/v1/health/node/{NODES[DB01]}") if c["CheckID"] == "serfHealth"
    ]
    assert serf and serf[0]["Status"] == "critical"
    ret, results = apply(salt, "cluster_holder", DB02)
    taken = time.monotonic()
    assert results["cluster-db"][0] is True and "Took the lock" in results["cluster-db"][1], ret
    session, holder = lock_state(consul_cluster.live_server(), LOCK_KEY)
    assert session and holder == DB02
    assert wait_for(lambda: passing(consul_cluster) == [f"cdb@{DB02}"], 30), passing(consul_cluster)
    print(
        f"cluster_node_death_detect_seconds: {detected - started:.2f}\n"
        f"cluster_node_death_release_seconds: {released - started:.2f}\n"
        f"cluster_node_death_takeover_seconds: {taken - started:.2f}"
    )


def passing(cluster):
    return sorted(e["Service"]["ID"] for e in server_json(cluster, "/v1/health/service/cdb?passing"))


# Last in this module: after every server restarts, a client agent may fail
# one RPC per stale pooled connection ("stream closed"), which the tests above
# are not about.
def test_pillar_compiles_with_every_server_down(consul_cluster, cluster_master, cluster_minions, salt):  # noqa: F811
    """
    The control plane gone (every server killed -9; the master's client agent
    answers at once that it has no server): each compile, whichever master
    worker runs it, is the newest last good pillar marked stale, never an
    older copy; with the servers back, fresh again.
    """
    server = consul_cluster.live_server()
    assert server.api("PUT", f"/v1/kv/config/node/{DB02}/cluster/value", b"v1")[0] == 200
    assert server.api("PUT", "/v1/kv/config/global/cluster/site", b"everywhere")[0] == 200
    # Older copies in several workers' memory: compiles before the last change.
    for _ in range(4):
        salt.run("pillar.items", "unmask=True", minion_tgt=DB02)
    assert server.api("PUT", f"/v1/kv/config/node/{DB02}/cluster/value", b"v3")[0] == 200
    # One fresh compile after it (one worker; it writes the cache files).
    data = salt.run("pillar.items", "unmask=True", minion_tgt=DB02).data
    want = {"value": "v3", "site": "everywhere"}
    assert data["cluster"] == want and not data.get("consul_pillar"), data
    consul_cluster.kill_servers()
    try:
        # More compiles than master workers (worker_threads: 2 in the tests, 5 by default).
        compiles = [salt.run("pillar.items", "unmask=True", minion_tgt=DB02).data for _ in range(8)]
    finally:
        consul_cluster.restart_servers()
    outcomes = check_compiles(compiles, want)
    print(f"cluster_servers_down_pillar_compiles: {outcomes}")
    assert outcomes["stale"] >= 1, outcomes
    # Not wait_members(): db01's node stays dead since the node-death test.
    consul_cluster.wait_leader(timeout=60)
    assert consul_cluster.leader().api("PUT", f"/v1/kv/config/node/{DB02}/cluster/value", b"v4")[0] == 200
    assert wait_for(
        lambda: salt.run("pillar.items", "unmask=True", minion_tgt=DB02).data.get("cluster") == dict(want, value="v4"),
        60,
        1,
    )
