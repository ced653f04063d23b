"""
The watcher (``_utils/saltconsul_watch.py``) against a real Consul agent:
what it reports, once per burst, never values, no busy loop; and the beacon
through Salt's real beacons loader.
"""

import json
import threading
import time

import pytest

import saltconsul_client
import saltconsul_watch
from conftest import wait_for


@pytest.fixture
def client(consul_agent):
    return saltconsul_client.get_client({"consul": {"address": consul_agent.http_addr, "retries": 0}}, {})


def _put(agent, key, value):
    status, _ = agent.api("PUT", f"/v1/kv/{key}", value.encode())
    assert status == 200


def _run_until_event(watcher, limit=20.0):
    """Drive the watcher until it reports (bounded); return the events."""
    events = []
    deadline = time.monotonic() + limit
    stop = threading.Event()

    def emit(tag, payload):
        events.append((tag, payload))
        stop.set()

    watcher.run(emit, stop=stop, deadline=deadline)
    return events


def test_kv_burst_reports_once_without_values(consul_agent, client, kv_prefix):
    _put(consul_agent, f"{kv_prefix}/config/prod/gg/db/pool_size", "10")
    _put(consul_agent, f"{kv_prefix}/config/prod/gg/old", "x")
    watch = saltconsul_watch.KVWatch(
        f"{kv_prefix}/config/", layers=[f"{kv_prefix}/config/{{type}}/{{group}}", f"{kv_prefix}/config/{{type}}"]
    )
    watcher = saltconsul_watch.Watcher(client, watch, wait=5, min_wait=1.0, max_wait=10, min_interval=0.2)
    assert watcher.step() == []  # the baseline read reports nothing
    assert watcher.index

    secret = "s3cr3t-value-never-in-events"
    writer = threading.Thread(
        target=lambda: [
            _put(consul_agent, f"{kv_prefix}/config/prod/gg/db/pool_size", f"pool-value-{20 + i}") for i in range(5)
        ]
        + [
            _put(consul_agent, f"{kv_prefix}/config/prod/gg/app/password", secret),
            consul_agent.api("DELETE", f"/v1/kv/{kv_prefix}/config/prod/gg/old"),
            # Added and deleted within the burst: no net change, not reported.
            _put(consul_agent, f"{kv_prefix}/config/prod/gg/tmp", "t"),
            consul_agent.api("DELETE", f"/v1/kv/{kv_prefix}/config/prod/gg/tmp"),
        ]
    )
    writer.start()
    events = _run_until_event(watcher)
    writer.join()
    # Let a second, spurious event show itself if the burst were split.
    more = []
    watcher.run(lambda t, p: more.append(p), deadline=time.monotonic() + 2.5)

    assert len(events) == 1, events
    assert more == []
    tag, payload = events[0]
    assert tag == f"salt/consul/kv/{kv_prefix}/config"
    assert payload["added"] == [f"{kv_prefix}/config/prod/gg/app/password"]
    assert payload["changed"] == [f"{kv_prefix}/config/prod/gg/db/pool_size"]
    assert payload["deleted"] == [f"{kv_prefix}/config/prod/gg/old"]
    assert payload["count"] == 3 and payload["truncated"] is False
    assert payload["envs"] == [{"layer": f"{kv_prefix}/config/{{type}}/{{group}}", "type": "prod", "group": "gg"}]
    assert payload["index"] >= watcher.index - 0  # the index the event reflects
    assert secret not in json.dumps(payload)
    # (a marker no key name can hold: the prefix's random hex once contained "20")
    assert "pool-value" not in json.dumps(payload)
    # What Consul really holds agrees with the event.
    status, _ = consul_agent.api("GET", f"/v1/kv/{kv_prefix}/config/prod/gg/old")
    assert status == 404


def test_kv_watch_on_empty_prefix_blocks_until_the_first_key(consul_agent, kv_prefix):
    """
    Consul's 404 for an empty prefix carries X-Consul-Index: the watch blocks
    on it (no polling while the prefix stays empty) and reports the first key.
    """
    import countingproxy

    with countingproxy.CountingProxy(consul_agent.http_addr) as proxy:
        client = saltconsul_client.get_client({"consul": {"address": proxy.http_addr, "retries": 0}}, {})
        watch = saltconsul_watch.KVWatch(f"{kv_prefix}/empty/")
        watcher = saltconsul_watch.Watcher(
            client, watch, wait=30, min_wait=0.3, max_wait=5, min_interval=0.1, poll_interval=0.1
        )
        assert watcher.step() == []
        assert watcher.index  # the 404's index: something to block on
        found = []
        thread = threading.Thread(target=lambda: found.extend(_run_until_event(watcher)), daemon=True)
        thread.start()
        # Many poll intervals pass: the watch holds one blocking query, no plain reads.
        assert wait_for(lambda: proxy.total("blocking") >= 1), proxy.counts()
        time.sleep(1.0)
        assert proxy.total("nonblocking") == 1, proxy.counts()
        _put(consul_agent, f"{kv_prefix}/empty/first", "1")
        thread.join(25)
        assert [p["added"] for _, p in found] == [[f"{kv_prefix}/empty/first"]]
        assert proxy.total("nonblocking") == 1, proxy.counts()


def test_max_wait_bounds_a_continuous_burst(consul_agent, client, kv_prefix):
    watch = saltconsul_watch.KVWatch(f"{kv_prefix}/busy/")
    _put(consul_agent, f"{kv_prefix}/busy/k", "0")
    watcher = saltconsul_watch.Watcher(client, watch, wait=5, min_wait=3.0, max_wait=3.0, min_interval=0.1)
    watcher.step()
    stop = threading.Event()

    def keep_writing():
        for i in range(200):  # bounded: about 10 s at most
            if stop.wait(0.05):
                return
            _put(consul_agent, f"{kv_prefix}/busy/k", str(i))

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        # Writes never pause for min_wait, yet max_wait forces a report.
        events = _run_until_event(watcher, limit=15)
    finally:
        stop.set()
        writer.join()
    assert len(events) == 1
    assert events[0][1]["changed"] == [f"{kv_prefix}/busy/k"]


def test_no_busy_loop_when_consul_answers_at_once(consul_agent, client, kv_prefix):
    """A 0-second blocking wait makes Consul answer at once; min_interval caps the query rate."""
    _put(consul_agent, f"{kv_prefix}/idle/k", "v")
    watch = saltconsul_watch.KVWatch(f"{kv_prefix}/idle/")
    watcher = saltconsul_watch.Watcher(client, watch, wait=0.01, min_wait=0.5, max_wait=1, min_interval=0.25)
    before = client.stats["requests"]
    started = time.monotonic()
    watcher.run(lambda t, p: None, deadline=started + 2.0)
    elapsed = time.monotonic() - started
    requests = client.stats["requests"] - before
    # At most one query per min_interval (plus the first); a busy loop makes hundreds.
    assert 1 <= requests <= elapsed / 0.25 + 2, requests


def test_service_health_change_reports_healthy_list(consul_agent, client):
    name = "watchsvc"
    reg = {"Name": name, "ID": f"{name}-1", "Port": 8001, "Tags": ["prod", "gg"], "Check": {"TTL": "60s"}}
    assert consul_agent.api("PUT", "/v1/agent/service/register", reg)[0] == 200
    reg2 = dict(reg, ID=f"{name}-2", Port=8002)
    assert consul_agent.api("PUT", "/v1/agent/service/register", reg2)[0] == 200
    try:
        assert consul_agent.api("PUT", f"/v1/agent/check/pass/service:{name}-1")[0] == 200
        watch = saltconsul_watch.ServiceWatch(name)
        watcher = saltconsul_watch.Watcher(client, watch, wait=5, min_wait=0.5, max_wait=5, min_interval=0.2)
        watcher.step()
        assert [i["id"] for i in watcher.current.values()] == [f"{name}-1"]

        # A check output change (same health) is no event; instance 2 passing is.
        consul_agent.api("PUT", f"/v1/agent/check/pass/service:{name}-1?note=still-fine")
        consul_agent.api("PUT", f"/v1/agent/check/pass/service:{name}-2")
        events = _run_until_event(watcher)
        assert len(events) == 1
        tag, payload = events[0]
        assert tag == f"salt/consul/service/{name}"
        assert sorted(i["port"] for i in payload["healthy"]) == [8001, 8002]
        assert payload["added"] == [f"{consul_agent.node_name}/{name}-2"]
        assert payload["removed"] == []

        consul_agent.api("PUT", f"/v1/agent/check/fail/service:{name}-1")
        events = _run_until_event(watcher)
        assert [i["id"] for i in events[0][1]["healthy"]] == [f"{name}-2"]
        assert events[0][1]["removed"] == [f"{consul_agent.node_name}/{name}-1"]
        health = consul_agent.api_json("GET", f"/v1/health/service/{name}?passing")
        assert [h["Service"]["ID"] for h in health] == [f"{name}-2"]
    finally:
        consul_agent.api("PUT", f"/v1/agent/service/deregister/{name}-1")
        consul_agent.api("PUT", f"/v1/agent/service/deregister/{name}-2")


def test_unreachable_consul_backs_off(consul_agent):
    """Nothing listens on the address: each failure pauses longer (bounded), no tight retry."""
    import localconsul

    dead = saltconsul_client.get_client(
        {"consul": {"address": f"http://127.0.0.1:{localconsul.free_port()}", "retries": 0, "connect_timeout": 0.5}},
        {},
    )
    watcher = saltconsul_watch.Watcher(
        dead, saltconsul_watch.KVWatch("x/"), backoff=0.2, backoff_max=0.8, min_interval=0.1
    )
    pauses = []
    for _ in range(4):
        assert watcher.step() == []
        pauses.append(watcher.pause())
        watcher.not_before = 0  # skip the actual wait; we check the schedule
    assert watcher.stats["errors"] == 4
    assert all(p > 0 for p in pauses)
    assert pauses[1] > pauses[0] * 1.2 and max(pauses) <= 0.8
    assert watcher.resync is True  # the next successful query is a plain re-read


def test_layers_name_the_environment():
    # The ext_pillar's default layout: no layer folder inside another.
    compiled = saltconsul_watch.compile_layers()
    env = saltconsul_watch.key_env
    assert env("config/group/prod.gg/db/pool", compiled) == {
        "layer": "config/group/{type}.{group}", "type": "prod", "group": "gg"
    }
    assert env("config/env/prod.gg.mydc1/x", compiled) == {
        "layer": "config/env/{type}.{group}.{datacenter}", "type": "prod", "group": "gg", "datacenter": "mydc1"
    }
    assert env("config/type/dev/x", compiled) == {"layer": "config/type/{type}", "type": "dev"}
    assert env("config/dc/mydc1/ntp", compiled) == {"layer": "config/dc/{datacenter}", "datacenter": "mydc1"}
    assert env("config/global/ntp", compiled) == {"layer": "config/global"}
    assert env("config/node/web01.prod.gg.mydc1/x", compiled)["minion_id"] == "web01.prod.gg.mydc1"
    assert env("config/group/nope.gg/x", compiled) is None  # not an environment type
    assert env("other/key", compiled) is None

    # A nested layout is ambiguous; known environments decide.
    nested = saltconsul_watch.compile_layers(
        ["config/{datacenter}", "config/{type}", "config/{type}/{group}", "config/{type}/{group}/{datacenter}"]
    )
    matches = saltconsul_watch.layer_matches("config/prod/gg/db/pool", nested)
    assert [m["layer"] for m in matches] == [
        "config/{type}/{group}/{datacenter}",
        "config/{type}/{group}",
        "config/{type}",
    ]
    known = saltconsul_watch.known_values({"web01.prod.gg.mydc1": {"type": "prod", "group": "gg", "datacenter": "mydc1"}})
    assert env("config/prod/gg/db/pool", nested, known)["layer"] == "config/{type}/{group}"
    assert env("config/prod/gg/mydc1/pool", nested, known)["datacenter"] == "mydc1"
    assert env("config/mydc1/ntp", nested) == {"layer": "config/{datacenter}", "datacenter": "mydc1"}


def test_layers_follow_the_ext_pillar_config():
    opts = {"ext_pillar": [{"git": "x"}, {"consul": {"layers": ["kv/{type}", {"path": "kv/n/{minion_id}", "decode": "raw"}]}}]}
    assert saltconsul_watch.configured_layers(opts) == ["kv/{type}", "kv/n/{minion_id}"]
    opts["consul"] = {"watch_layers": ["w/{group}"]}
    assert saltconsul_watch.configured_layers(opts) == ["w/{group}"]
    assert saltconsul_watch.configured_layers({}) == list(saltconsul_watch.DEFAULT_LAYERS)


def test_index_reset_after_agent_restart_without_data(tmp_path):
    """An agent that comes back empty has a lower index: the watcher re-reads, resets, keeps watching."""
    import localconsul

    agent = localconsul.LocalConsul("dc1", node_name="reset-dc1", log_dir=str(tmp_path))
    try:
        agent.start()
        client = saltconsul_client.get_client({"consul": {"address": agent.http_addr, "retries": 0}}, {})
        for i in range(30):  # push the index well above a fresh agent's
            _put(agent, f"reset/k{i % 3}", str(i))
        watcher = saltconsul_watch.Watcher(
            client, saltconsul_watch.KVWatch("reset/"), wait=3, min_wait=0.3, max_wait=5,
            min_interval=0.1, poll_interval=0.3, backoff=0.2, backoff_max=0.5,
        )
        watcher.step()
        old_index = watcher.index
        assert old_index and len(watcher.current) == 3

        agent.restart()  # in-memory data: KV and index history are gone
        _put(agent, "reset/new", "1")
        events = _run_until_event(watcher, limit=30)
        assert watcher.index is not None and watcher.index < old_index
        assert watcher.stats["resets"] == 1
        payload = events[0][1]
        assert payload["added"] == ["reset/new"]
        assert payload["deleted"] == ["reset/k0", "reset/k1", "reset/k2"]

        # And it blocks on the new index: the next write is seen too.
        _put(agent, "reset/new", "2")
        events = _run_until_event(watcher, limit=20)
        assert events[0][1]["changed"] == ["reset/new"]
        assert agent.api_json("GET", "/v1/kv/reset/new?raw") == 2
    finally:
        agent.cleanup()


def test_beacon_through_salt_loader(consul_agent, minion_opts, kv_prefix):
    """The beacon loads through Salt's beacons loader (which has no utils on sys.path) and reports."""
    import salt.loader

    minion_opts = dict(minion_opts, extension_modules=str(saltconsul_watch.__file__).rsplit("/_utils/", 1)[0])
    context = {}
    beacons = salt.loader.beacons(minion_opts, {}, context=context)
    assert "consul_watch.beacon" in beacons
    config = [{"kv": [f"{kv_prefix}/b/"]}, {"min_wait": 0}, {"min_interval": 0.1}, {"query_wait": 0}]
    assert beacons["consul_watch.validate"](config) == (True, "Valid beacon configuration")
    assert beacons["consul_watch.validate"]([{"min_wait": 1}])[0] is False
    _put(consul_agent, f"{kv_prefix}/b/one", "1")
    assert beacons["consul_watch.beacon"](config) == []  # baseline
    _put(consul_agent, f"{kv_prefix}/b/two", "secret-2")
    events = []
    for _ in range(20):  # bounded: one query per run, like a beacon interval
        events = beacons["consul_watch.beacon"](config)
        if events:
            break
        time.sleep(0.15)
    try:
        assert len(events) == 1
        assert events[0]["tag"] == f"kv/{kv_prefix}/b"
        assert events[0]["added"] == [f"{kv_prefix}/b/two"]
        assert "secret-2" not in json.dumps(events)
    finally:
        beacons["consul_watch.close"](config)


def test_beacon_idle_makes_no_plain_requests(consul_agent, minion_opts, kv_prefix):
    """
    A quiet beacon costs Consul only blocking queries: after the baseline (one
    plain read per watch) any number of beacon runs make no non-blocking
    request; a change still arrives, and close() stops the watch threads.
    Requests are counted by a proxy in front of the agent.
    """
    import salt.loader

    import countingproxy

    _put(consul_agent, f"{kv_prefix}/idle/one", "1")
    with countingproxy.CountingProxy(consul_agent.http_addr) as proxy:
        opts = dict(
            minion_opts,
            consul={"address": proxy.http_addr, "retries": 0},
            extension_modules=str(saltconsul_watch.__file__).rsplit("/_utils/", 1)[0],
        )
        context = {}
        beacons = salt.loader.beacons(opts, {}, context=context)
        config = [
            {"interval": 7},
            {"kv": [f"{kv_prefix}/idle/"]},
            {"services": ["consul"]},
            {"min_wait": 0},
            {"wait": 30},
        ]
        assert beacons["consul_watch.validate"](config)[0] is True
        assert beacons["consul_watch.validate"](config[:3] + [{"wait": 0}])[0] is False
        try:
            assert beacons["consul_watch.beacon"](config) == []  # baseline: one plain read per watch
            assert proxy.total("nonblocking") == 2, proxy.counts()
            # Both watch threads hold a blocking query.
            assert wait_for(lambda: proxy.total("blocking") >= 2), proxy.counts()
            for _ in range(30):  # bounded: many beacon intervals with nothing changing
                assert beacons["consul_watch.beacon"](config) == []
                time.sleep(0.05)
            assert proxy.total("nonblocking") == 2, proxy.counts()
            assert {key for (kind, key) in proxy.counts() if kind == "blocking"} == {
                f"GET /v1/kv/{kv_prefix}/idle/?recurse",
                "GET /v1/health/service/consul?passing",
            }

            _put(consul_agent, f"{kv_prefix}/idle/two", "secret-two")
            events = wait_for(lambda: beacons["consul_watch.beacon"](config))
            assert [(e["tag"], e["added"]) for e in events] == [(f"kv/{kv_prefix}/idle", [f"{kv_prefix}/idle/two"])]
            assert "secret-two" not in json.dumps(events)
            assert proxy.total("nonblocking") == 2, proxy.counts()
        finally:
            beacons["consul_watch.close"](config)
        threads = [t for t in threading.enumerate() if getattr(t, "consul_watch_stop", None) is not None]
        assert threads and all(t.consul_watch_stop.is_set() for t in threads)


def test_two_beacon_entries_keep_their_own_watches(consul_agent, minion_opts, kv_prefix):
    """
    Two entries using ``beacon_module: consul_watch`` (Salt passes each its
    ``_beacon_name``) run side by side: alternating runs start nothing anew
    (no more plain reads after both baselines), and closing one leaves the
    other's watch running.
    """
    import salt.loader

    import countingproxy

    _put(consul_agent, f"{kv_prefix}/a/one", "1")
    _put(consul_agent, f"{kv_prefix}/b/one", "1")
    with countingproxy.CountingProxy(consul_agent.http_addr) as proxy:
        opts = dict(
            minion_opts,
            consul={"address": proxy.http_addr, "retries": 0},
            extension_modules=str(saltconsul_watch.__file__).rsplit("/_utils/", 1)[0],
        )
        beacons = salt.loader.beacons(opts, {}, context={})
        conf_a = [{"kv": [f"{kv_prefix}/a/"]}, {"min_wait": 0}, {"wait": 30}, {"_beacon_name": "watch_a"}]
        conf_b = [{"kv": [f"{kv_prefix}/b/"]}, {"min_wait": 0}, {"wait": 30}, {"_beacon_name": "watch_b"}]

        def threads(name):
            return [t for t in threading.enumerate() if getattr(t, "consul_watch_beacon", None) == name]

        try:
            for _ in range(10):
                assert beacons["consul_watch.beacon"](conf_a) == []
                assert beacons["consul_watch.beacon"](conf_b) == []
            assert proxy.total("nonblocking") == 2, proxy.counts()  # one baseline each, never restarted
            assert len(threads("watch_a")) == 1 and len(threads("watch_b")) == 1
            beacons["consul_watch.close"](conf_a[:-1] + [{"_beacon_name": "watch_a"}])
            assert all(t.consul_watch_stop.is_set() for t in threads("watch_a"))
            assert not any(t.consul_watch_stop.is_set() for t in threads("watch_b"))
            _put(consul_agent, f"{kv_prefix}/b/two", "2")
            events = wait_for(lambda: beacons["consul_watch.beacon"](conf_b))
            assert [e["added"] for e in events] == [[f"{kv_prefix}/b/two"]]
        finally:
            beacons["consul_watch.close"](conf_a)
            beacons["consul_watch.close"](conf_b)
        assert all(t.consul_watch_stop.is_set() for t in threads("watch_a") + threads("watch_b"))
