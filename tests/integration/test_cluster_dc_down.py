"""
A whole datacenter down, on two real Consul datacenters (``tools/cluster.py``:
3 servers and a client agent per node in each, dc2's servers WAN-joined to
dc1's), a real salt-master on dc1's ``saltmaster`` node and two salt-minions,
each talking to its own node's client agent: ``web01`` in dc1, ``web02`` in dc2.

Every server of dc2 is killed -9 (its control plane gone; its client agents
keep running, as after a lost server rack), then dc2's client agent too (the
whole datacenter gone). What an operator sees:

* dc1 is unaffected: the pillar (the ext_pillar on the master, reading dc1's
  KV through the master's client agent) has exactly its values for both
  minions, unmarked; a state applied on web01 registers through its client
  agent and reaches dc1's servers; ``consul.discover`` on web01 answers with
  dc1's instance, also with ``failover=['dc2']`` (one request: dc2 is never
  asked when dc1 answers);
* asking dc2 from dc1 (``dc=dc2``) fails at once with an error naming dc2;
  with ``failover`` past a datacenter that cannot answer, the next one is asked;
* on web02 (its agent has no servers) ``consul.discover`` fails with a clear
  error naming each datacenter it could not ask, also with ``failover`` (which
  goes through the same serverless agent); with its agent stopped too, the
  error says Consul is unreachable. Never a traceback, never an empty list
  passed off as "no instance", never a wait past the configured timeouts;
* dc2's servers restarted: web02 discovers its own instance again.

Durations are printed (``cluster_dc_down_*`` lines), never asserted beyond the
bound a hang would break.
"""

import contextlib
import os
import threading
import time

import pytest
from cluster import Cluster
from cluster_failover import minion_opts
from cluster_fixtures import state_results
from conftest import synced_master, synced_minion, wait_for
from salt.exceptions import CommandExecutionError

MASTER_NODE = "saltmaster"
WEB01 = "web01.prod.gg.mydc1.example.com"
WEB02 = "web02.prod.gg.mydc2.example.com"
NODES = {WEB01: ("dc1", "web01"), WEB02: ("dc2", "web02")}
# Each minion's consul: settings; the bound below follows from them.
CONSUL_TIMEOUTS = {"timeout": 5, "connect_timeout": 2, "retries": 1, "retry_backoff": 0.2}
# A call that asks at most this many datacenters must return within
# (tries x (connect + read timeout)) each, plus Salt's own overhead: a hang
# (a blocking wait, an unbounded retry) breaks it by far.
SALT_OVERHEAD = 30


def bound(datacenters):
    per_dc = (1 + CONSUL_TIMEOUTS["retries"]) * (CONSUL_TIMEOUTS["timeout"] + CONSUL_TIMEOUTS["connect_timeout"])
    return datacenters * per_dc + SALT_OVERHEAD


PILLAR = {
    "config/global/dcdown/site": "everywhere",
    "config/dc/mydc1/dcdown/dc": "mydc1",
    "config/dc/mydc2/dcdown/dc": "mydc2",
    f"config/node/{WEB01}/dcdown/name": "web01",
    f"config/node/{WEB02}/dcdown/name": "web02",
}
CHECKS_DIGEST = {}  # minion ID -> its web service's Meta salt_checks (read while both DCs are up)
WANT_PILLAR = {
    WEB01: {"site": "everywhere", "dc": "mydc1", "name": "web01"},
    WEB02: {"site": "everywhere", "dc": "mydc2", "name": "web02"},
}


@pytest.fixture(scope="module")
def dcs(tmp_path_factory):
    logs = str(tmp_path_factory.mktemp("dc-down-logs"))
    with Cluster(nodes=[MASTER_NODE, "web01"], datacenter="dc1", log_dir=logs) as dc1:
        with Cluster(nodes=["web02"], datacenter="dc2", log_dir=logs, wan_join=dc1) as dc2:
            yield {"dc1": dc1, "dc2": dc2}


def agent_of(dcs, mid):
    dc, node = NODES[mid]
    return dcs[dc].client(node)


@pytest.fixture(scope="module")
def master(salt_factories, dcs, state_tree, tmp_path_factory):
    pillar_root = tmp_path_factory.mktemp("dc-down-pillar")
    (pillar_root / "top.sls").write_text("base: {}\n")
    master_id = f"dcdown-master-{os.urandom(3).hex()}"
    with synced_master(salt_factories, master_id, dcs["dc1"].client(MASTER_NODE), state_tree, pillar_root) as factory:
        yield factory


@pytest.fixture(scope="module")
def minions(master, dcs):
    with contextlib.ExitStack() as stack:
        yield {
            mid: stack.enter_context(
                synced_minion(
                    master, agent_of(dcs, mid), mid, consul=dict({"address": agent_of(dcs, mid).http_addr}, **CONSUL_TIMEOUTS)
                )
            )
            for mid in NODES
        }


@pytest.fixture(scope="module")
def salt(master):
    return master.salt_cli(timeout=180)


@pytest.fixture(scope="module")
def sls(state_tree):
    (state_tree / "dcdown_web.sls").write_text(
        """
{% set svc = pillar.get('svc', 'web') %}
{{ svc }}:
  consul.service_present:
    - service_id: {{ svc }}@{{ opts['id'] }}
    - port: 8080
    - env_tags: true
    - checks:
      - name: alive
        ttl: 600s
        status: passing
"""
    )
    yield
    (state_tree / "dcdown_web.sls").unlink()


@pytest.fixture(scope="module")
def ready(dcs, minions, salt, sls):
    """Both datacenters serving: pillar in dc1's KV, ``web`` registered on each minion's own agent."""
    server = dcs["dc1"].live_server()
    for key, value in PILLAR.items():
        assert server.api("PUT", f"/v1/kv/{key}", value.encode())[0] == 200
    for mid in NODES:
        ret = salt.run("state.sls", "dcdown_web", "queue=True", minion_tgt=mid)
        assert state_results(ret)["web"][0] is True, ret
    for dc, mid in (("dc1", WEB01), ("dc2", WEB02)):
        assert wait_for(lambda dc=dc, mid=mid: catalog_ids(dcs[dc], "web") == [f"web@{mid}"], 30), catalog_ids(dcs[dc], "web")
    for mid, (dc, _) in NODES.items():
        # The digest of the checks that the state writes into the service's Meta.
        (entry,) = dcs[dc].live_server().api_json("GET", "/v1/catalog/service/web")
        CHECKS_DIGEST[mid] = entry["ServiceMeta"]["salt_checks"]
        assert discover(salt, mid, "web") == [instance(dcs, mid, remote=False)]
    return True


def catalog_ids(cluster, service):
    return sorted(e["ServiceID"] for e in cluster.live_server().api_json("GET", f"/v1/catalog/service/{service}"))


def instance(dcs, mid, remote, service="web"):
    """The instance ``consul.discover`` must return for ``mid``'s ``service``, exactly."""
    dc, node = NODES[mid]
    return {
        "address": agent_of(dcs, mid).bind,
        "port": 8080,
        "tags": ["prod", "gg"],
        "meta": {"managed_by": "salt-consul", "salt_checks": CHECKS_DIGEST[mid], "salt_minion": mid},
        "node": node,
        "id": f"{service}@{mid}",
        "datacenter": dc,
        "remote": remote,
    }


def discover(salt, mid, *args):
    ret = salt.run("consul.discover", *args, minion_tgt=mid)
    assert ret.returncode == 0, ret
    return ret.data


def failed_call(salt, mid, *args):
    """A call that must fail cleanly: (its error text, seconds it took)."""
    started = time.monotonic()
    ret = salt.run(*args, minion_tgt=mid)
    took = time.monotonic() - started
    text = ret.data if isinstance(ret.data, str) else repr(ret.data)
    assert ret.returncode != 0, ret
    assert "Traceback" not in ret.stdout + ret.stderr and "Traceback" not in text, ret
    return text, took


def pillar_of(salt, mid):
    return salt.run("pillar.items", "unmask=True", minion_tgt=mid).data


@pytest.fixture(scope="module")
def dc2_servers_down(dcs, ready):
    dcs["dc2"].kill_servers()
    # dc2's client agent keeps running with no server to forward to.
    assert dcs["dc2"].client("web02").pid
    status, raw = dcs["dc2"].client("web02").api("GET", "/v1/catalog/services")
    assert status == 500, (status, raw)
    return True


def loaders_call(opts, func, *args, **kwargs):
    """``consul.<func>`` through Salt's loaders in a thread, bounded: (result or exception, requests made)."""
    import salt.loader

    context = {}
    utils = salt.loader.utils(opts, context=context)
    mods = salt.loader.minion_mods(opts, utils=utils, context=context)
    box = {}

    def run():
        try:
            box["ret"] = mods[f"consul.{func}"](*args, **kwargs)
        except CommandExecutionError as err:
            box["ret"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=bound(3))
    assert not thread.is_alive(), f"consul.{func} still running after {bound(3)}s"
    clients = context.get("saltconsul.clients") or {}
    return box["ret"], sum(c.stats["requests"] for c in clients.values())


def test_dc1_pillar_unaffected(dcs, master, salt, dc2_servers_down):
    for mid in NODES:
        # web02's pillar too: the master compiles it from dc1's KV.
        data = pillar_of(salt, mid)
        assert data["dcdown"] == WANT_PILLAR[mid], data
        assert not data.get("consul_pillar") and not data.get("_errors"), data
    # A new value in dc1 is seen by the next compile, unmarked.
    assert dcs["dc1"].live_server().api("PUT", f"/v1/kv/config/node/{WEB01}/dcdown/name", b"web01-v2")[0] == 200
    data = pillar_of(salt, WEB01)
    assert data["dcdown"] == dict(WANT_PILLAR[WEB01], name="web01-v2") and not data.get("consul_pillar"), data
    assert dcs["dc1"].live_server().api("PUT", f"/v1/kv/config/node/{WEB01}/dcdown/name", b"web01")[0] == 200


def test_dc1_states_unaffected(dcs, salt, dc2_servers_down):
    ret = salt.run("state.sls", "dcdown_web", "queue=True", "pillar={svc: api}", minion_tgt=WEB01)
    result, comment, changes = state_results(ret)["api"]
    assert result is True and changes, ret
    assert wait_for(lambda: catalog_ids(dcs["dc1"], "api") == [f"api@{WEB01}"], 30), catalog_ids(dcs["dc1"], "api")
    # Re-applied: unchanged.
    ret = salt.run("state.sls", "dcdown_web", "queue=True", "pillar={svc: api}", minion_tgt=WEB01)
    assert state_results(ret)["api"][0] is True and state_results(ret)["api"][2] == {}, ret


def test_dc1_discovery_unaffected(dcs, salt, dc2_servers_down, tmp_path):
    local = [instance(dcs, WEB01, remote=False)]
    assert discover(salt, WEB01, "web") == local
    assert discover(salt, WEB01, "web", "failover=['dc2']") == local
    assert discover(salt, WEB01, "web", "failover=True") == local
    # Through the loaders: one request, dc2 never asked.
    opts = minion_opts(agent_of(dcs, WEB01).http_addr, WEB01, str(tmp_path))
    opts["consul"].update(CONSUL_TIMEOUTS)
    found, requests = loaders_call(opts, "discover", "web", failover=["dc2"], environment=False)
    assert (found, requests) == (local, 1)


def test_dc1_asking_dc2_fails_clearly(dcs, salt, dc2_servers_down, tmp_path):
    started = time.monotonic()
    text, took = failed_call(salt, WEB01, "consul.discover", "web", "dc=dc2")
    assert "consul.discover failed in datacenter dc2: Consul server error" in text, text
    assert took < bound(1), took
    print(f"cluster_dc_down_ask_dc2_seconds: {time.monotonic() - started:.2f}")
    # Failover past a datacenter that cannot answer: the next one answers.
    opts = minion_opts(agent_of(dcs, WEB01).http_addr, WEB01, str(tmp_path))
    opts["consul"].update(CONSUL_TIMEOUTS)
    found, _ = loaders_call(opts, "discover", "web", dc="dc2", failover=["dc1"], environment=False)
    assert found == [instance(dcs, WEB01, remote=True)]
    # Only dc2 would have it: an error naming dc2, not an empty list.
    err, _ = loaders_call(opts, "discover", "nowhere", failover=["dc2"], environment=False)
    assert isinstance(err, CommandExecutionError), err
    assert str(err).startswith(
        "consul.discover failed: no nowhere instance found and not every datacenter could answer: datacenter dc2: Consul server error"
    ), err


def test_dc2_minion_discovery_degrades_cleanly(dcs, salt, dc2_servers_down):
    unanswered = "consul.discover failed: no web instance found and not every datacenter could answer: "
    cases = (
        (("web",), 1, ["consul.discover failed in the local datacenter: Consul server error"]),
        (
            ("web", "failover=['dc1']"),
            2,
            [unanswered + "the local datacenter: Consul server error", "; datacenter dc1: Consul server error"],
        ),
        (
            ("web", "failover=True"),
            2,
            [unanswered + "the local datacenter: Consul server error", "; the list of datacenters: Consul server error"],
        ),
    )
    for args, asked, wanted in cases:
        text, took = failed_call(salt, WEB02, "consul.discover", *args)
        print(f"cluster_dc_down_dc2_discover_seconds{list(args[1:])}: {took:.2f}")
        assert took < bound(asked), (args, took)
        for part in wanted:
            assert part in text, (part, text)
        # Consul's own reason is passed on (no servers / refused connections to them).
        assert "No known Consul servers" in text or "connection refused" in text, text


def test_dc2_fully_down_then_back(dcs, salt, dc2_servers_down):
    dcs["dc2"].kill("web02")
    text, took = failed_call(salt, WEB02, "consul.discover", "web", "failover=['dc1']")
    assert "consul.discover failed in the local datacenter: Consul unreachable" in text, text
    assert took < bound(1), took
    # dc1 still unaffected.
    assert discover(salt, WEB01, "web", "failover=True") == [instance(dcs, WEB01, remote=False)]
    assert pillar_of(salt, WEB01)["dcdown"] == WANT_PILLAR[WEB01]
    # dc2 back: its servers, then the node's agent; web02 finds its own instance again.
    dcs["dc2"].restart_servers()
    dcs["dc2"].restart("web02")
    dcs["dc2"].wait_members(timeout=60)
    # A restarted agent brings its TTL checks back critical until the
    # application's next heartbeat: here, the heartbeat.
    agent = dcs["dc2"].client("web02")
    for check_id, check in agent.api_json("GET", "/v1/agent/checks").items():
        if check.get("Type") == "ttl":
            assert agent.api("PUT", f"/v1/agent/check/pass/{check_id}")[0] == 200
    # Until web02's instance passes again in dc2, failover answers with dc1's:
    # a discovery that degrades, then recovers by itself.
    assert wait_for(lambda: passing_ids(dcs["dc2"], "web") == [f"web@{WEB02}"], 60), (
        dcs["dc2"].live_server().api_json("GET", "/v1/health/service/web")
    )
    assert discover(salt, WEB02, "web", "failover=['dc1']") == [instance(dcs, WEB02, remote=False)]


def passing_ids(cluster, service):
    return sorted(e["Service"]["ID"] for e in cluster.live_server().api_json("GET", f"/v1/health/service/{service}?passing"))
