"""
``consul.primary`` right after every Consul server restarted, on the cluster
topology (3 servers, a client agent per node) with a real salt-master and a
salt-minion on its node's client agent, with the product's default retries.

After the servers restart, a client agent's pooled connection to each old
server process fails once ("rpc error making call: stream closed", a 500)
before it redials. A read is retried by the client; a session create is not
safe to repeat blindly, because the failed call may have created the session
on the servers. ``single_holder_service`` destroys any session of its own
name (nobody else's) before it tries again, and an acquire by the same
session is idempotent, so the first apply after the restart converges and no
orphan session is left.

The minion reaches its agent through a pass-through proxy
(``tools/countingproxy.py``) that records the agent's own 5xx answers, and
that, in the second test, answers a session create and a lock acquire that
did reach Consul with the same 500: the worst case, made deterministic.
"""

import contextlib
import json
import os

import pytest
from cluster_fixtures import MASTER_NODE, state_results
from conftest import synced_master, synced_minion, wait_for

import countingproxy
import localconsul
from cluster import Cluster

DB01 = "db01.prod.gg.mydc1.example.com"
LOCK_KEY = "locks/db/prod.gg.mydc1/leader"
SESSION_NAME = f"salt-consul db {DB01}"


@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    with Cluster(nodes=[MASTER_NODE, "db01"], log_dir=str(tmp_path_factory.mktemp("restart-logs"))) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def db_port():
    target = localconsul.TcpTarget()
    yield target.port
    target.down()


@pytest.fixture(scope="module")
def proxy(topology):
    with countingproxy.CountingProxy(topology.client("db01").http_addr) as running:
        yield running


@pytest.fixture(scope="module")
def minion(salt_factories, topology, state_tree, tmp_path_factory, db_port, proxy):
    pillar = tmp_path_factory.mktemp("restart-pillar")
    (pillar / "top.sls").write_text("base:\n  '*':\n    - primary\n")
    (pillar / "primary.sls").write_text(
        f"""
consul_primary:
  services:
    db:
      port: {db_port}
      lock_delay: 1s
      wait_passing: 15
      checks:
        - name: pg
          tcp: 127.0.0.1:{db_port}
          interval: 1s
          timeout: 1s
"""
    )
    master_id = f"restart-master-{os.urandom(3).hex()}"
    with contextlib.ExitStack() as stack:
        master = stack.enter_context(
            synced_master(salt_factories, master_id, topology.client(MASTER_NODE), state_tree, pillar)
        )
        # The product's defaults (retries: 2), not the tests' usual retries: 0.
        factory = stack.enter_context(synced_minion(master, None, DB01, consul={"address": proxy.http_addr}))
        yield master.salt_cli(timeout=180), factory


def apply_primary(salt):
    ret = salt.run("state.apply", "consul.primary", "queue=True", minion_tgt=DB01)
    return ret, state_results(ret).get("consul-primary-db")


def sessions(topology):
    return [s for s in topology.live_server().api_json("GET", "/v1/session/list") or [] if s.get("Name") == SESSION_NAME]


def holder(topology):
    status, raw = topology.live_server().api("GET", f"/v1/kv/{LOCK_KEY}")
    return None if status != 200 else json.loads(raw)[0].get("Session")


def release(topology):
    """Free the lock as a dead holder would: its session destroyed (the lock delay then runs)."""
    for found in sessions(topology):
        topology.live_server().api("PUT", f"/v1/session/destroy/{found['ID']}")
    assert wait_for(lambda: holder(topology) is None, 30)


def assert_converged(topology, ret, result):
    assert result is not None, ret
    assert result[0] is True and "Took the lock" in result[1], ret
    owned = sessions(topology)
    assert [s["ID"] for s in owned] == [holder(topology)], owned  # one session: the holder, no orphan


def test_primary_converges_right_after_every_server_restarted(topology, minion, proxy):
    salt, _ = minion
    ret, result = apply_primary(salt)
    assert result and result[0] is True and "Took the lock" in result[1], ret
    release(topology)
    topology.kill_servers()
    topology.restart_servers(settle=False)
    proxy.upstream_errors.clear()
    ret, result = apply_primary(salt)
    assert_converged(topology, ret, result)
    # Which call meets a stale connection is up to the client agent: printed, not asserted.
    print(f"cluster_restart_first_apply_agent_5xx: {proxy.upstream_errors}")
    again, result = apply_primary(salt)
    assert result[0] is True and result[2] == {}, again


def test_create_and_acquire_lost_in_transit(topology, minion, proxy):
    salt, _ = minion
    topology.wait_clients_serving()
    release(topology)
    proxy.faulted.clear()
    proxy.fail_after_forward("PUT", "/v1/session/create", times=1)
    proxy.fail_after_forward("PUT", f"/v1/kv/{LOCK_KEY}", times=1)
    ret, result = apply_primary(salt)
    assert proxy.faulted == ["PUT /v1/session/create", f"PUT /v1/kv/{LOCK_KEY}"], proxy.faulted
    assert_converged(topology, ret, result)
    again, result = apply_primary(salt)
    assert result[0] is True and result[2] == {}, again
