"""
End to end with real daemons: the ``consul_watch`` engine on a salt-master of
its own watches ``config/`` on a Consul agent of its own; the reactor and
orchestrate examples in ``formulas/`` re-apply a small app state on exactly
the minions of the environment whose KV changed, once per burst; the engine
keeps working across a restart of the Consul agent.

The shared ``salt_master`` / ``consul_agent`` fixtures are not used: this
module restarts its agent and its master runs an engine and a reactor.
"""

import contextlib
import json
import pathlib
import time

import pytest
from conftest import own_consul


REPO = pathlib.Path(__file__).resolve().parents[2]
MASTER_ID = "react-master"
PROD = ["web01.prod.gg.mydc1.example.com", "web02.prod.gg.mydc1.example.com"]
DEV = "web01.dev.gg.mydc1.example.com"
KV_TAG = "salt/consul/kv/config"


@pytest.fixture(scope="module")
def react_consul(tmp_path_factory):
    # persist: a restart keeps the data, as a real agent restart does.
    with own_consul("dc1", tmp_path_factory, node_name="react-dc1", persist=True) as agent:
        yield agent


@pytest.fixture(scope="module")
def applied_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("applied")


@pytest.fixture(scope="module")
def react_tree(tmp_path_factory, applied_dir):
    root = tmp_path_factory.mktemp("react-tree")
    (root / "consulapp").mkdir()
    # One line per apply: the file's line count is the number of applies.
    (root / "consulapp" / "init.sls").write_text(
        "consulapp_applied:\n"
        "  cmd.run:\n"
        f"    - name: echo applied >> {applied_dir}/{{{{ grains['id'] }}}}.log\n"
    )
    # The "config that lists <service>": the healthy instances' ports, from the event.
    (root / "consulapp" / "config.sls").write_text(
        "consulapp_db_config:\n"
        "  file.managed:\n"
        f"    - name: {applied_dir}/{{{{ grains['id'] }}}}.{{{{ pillar['consul_service']['name'] }}}}.conf\n"
        "    - contents: \"{{ pillar['consul_service']['name'] }}={{ pillar['consul_service']['healthy'] | map(attribute='port') | join(',') }}\"\n"
    )
    return root


def react_master_overrides(react_tree, consul, services, react_services, **extra):
    """
    A master that runs the ``consul_watch`` engine and the reactor examples
    of ``formulas/``: KV under ``config/`` re-applies ``consulapp``, each of
    ``services`` re-renders ``consulapp.config`` (``react_services``).
    Shared with the cluster scenarios (``test_cluster_watch_pillar.py``).
    """
    return {
        "file_roots": {"base": [str(react_tree), str(REPO / "formulas")]},
        "engines_dirs": [str(REPO / "_engines")],
        "runner_dirs": [str(REPO / "_runners")],
        "utils_dirs": [str(REPO / "_utils")],
        "consul": consul,
        "engines": [
            {
                "consul_watch": {
                    "kv": ["config/"],
                    "services": services,
                    "min_wait": 2,
                    "max_wait": 20,
                    "wait": 30,
                    "min_interval": 0.2,
                    "backoff": 0.5,
                    "backoff_max": 2,
                }
            }
        ],
        "reactor": [
            {KV_TAG: ["salt://reactor/consul_kv.sls"]},
            {"salt/consul/service/*": ["salt://reactor/consul_service.sls"]},
        ],
        "consul_react": {
            "kv": {"sls": "consulapp", "batch_size": 1, "splay": 1},
            "services": react_services,
        },
        "log_level_logfile": "debug",
        "worker_threads": 2,  # as synced_master (tests/conftest.py)
        **extra,
    }


@pytest.fixture(scope="module")
def react_master(salt_factories, react_consul, react_tree):
    factory = salt_factories.salt_master_daemon(
        MASTER_ID,
        overrides=react_master_overrides(
            react_tree,
            {"address": react_consul.http_addr, "retries": 0},
            # db reports after 0.5 s of quiet, KV after 2 s (per-entry timing).
            [{"name": "db", "min_wait": 0.5}, "cache"],
            {
                "db": {"sls": "consulapp.config", "type": "prod", "group": "gg"},
                # More minions than batch_size: rolled out by the orchestration.
                "cache": {"sls": "consulapp.config", "type": "prod", "group": "gg", "batch_size": 1, "splay": 1},
            },
        ),
    )
    with factory.started():
        yield factory


@pytest.fixture(scope="module")
def react_minions(react_master):
    with contextlib.ExitStack() as stack:
        minions = {}
        for mid in PROD + [DEV]:
            factory = react_master.salt_minion_daemon(mid, overrides={"log_level_logfile": "debug"})
            stack.enter_context(factory.started())
            minions[mid] = factory
        yield minions


def _applies(applied_dir, mid):
    path = applied_dir / f"{mid}.log"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _kv_events(event_listener, after, master_id=MASTER_ID):
    return sorted(
        event_listener.get_events([(master_id, KV_TAG)], after_time=after), key=lambda e: e.stamp
    )


def _wait_orchestrations(event_listener, after, marker, count=1, timeout=180, master_id=MASTER_ID):
    """
    Wait until ``count`` orchestrate runs whose arguments (the event handed
    over as pillar) mention ``marker`` returned after ``after``; return them.
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        rets = [
            e
            for e in event_listener.get_events([(master_id, "salt/run/*/ret")], after_time=after)
            if e.data.get("fun") == "runner.state.orchestrate" and marker in json.dumps(e.data.get("fun_args"))
        ]
        if len(rets) >= count:
            return rets
        time.sleep(1)
    pytest.fail(f"{count} orchestration(s) for {marker} did not finish in {timeout}s")


def _wait_rerenders(event_listener, after, marker, minions=tuple(PROD), timeout=180, master_id=MASTER_ID):
    """
    Wait until each of ``minions`` returned a ``state.sls`` job whose arguments
    (the healthy list handed over as pillar) mention ``marker``; return the returns.
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        rets = [
            e
            for e in event_listener.get_events([(master_id, "salt/job/*/ret/*")], after_time=after)
            if e.data.get("fun") == "state.sls" and marker in json.dumps(e.data.get("fun_args"))
        ]
        if {e.data.get("id") for e in rets} >= set(minions):
            return rets
        time.sleep(0.5)
    pytest.fail(f"state.sls with {marker} did not return from {minions} in {timeout}s")


def _orchestrations(event_listener, after, marker):
    return [
        e
        for e in event_listener.get_events([(MASTER_ID, "salt/run/*/ret")], after_time=after)
        if e.data.get("fun") == "runner.state.orchestrate" and marker in json.dumps(e.data.get("fun_args"))
    ]


def _wait_engine_live(react_consul, event_listener):
    """
    Write a probe key (no environment) until the engine reports it and its
    (empty) orchestration is over: the engine is watching, the bus is quiet.
    """
    for attempt in range(8):
        after = time.time()
        react_consul.api("PUT", "/v1/kv/config/_probe", str(attempt).encode())
        if event_listener.wait_for_events([(MASTER_ID, KV_TAG)], timeout=10, after_time=after).found_all_events:
            _wait_orchestrations(event_listener, after, "config/_probe")
            return
    pytest.fail("the consul_watch engine never reported the probe key")


def _burst(agent, keys_values):
    for key, value in keys_values:
        status, _ = agent.api("PUT", f"/v1/kv/{key}", value.encode())
        assert status == 200


def test_kv_change_reapplies_exactly_that_env_once_per_burst(
    react_consul, react_minions, applied_dir, event_listener
):
    _wait_engine_live(react_consul, event_listener)
    before = {mid: _applies(applied_dir, mid) for mid in react_minions}
    after = time.time()
    # A burst: six writes under config/group/prod.gg/ in quick succession.
    _burst(react_consul, [("config/group/prod.gg/app/version", str(i)) for i in range(5)])
    _burst(react_consul, [("config/group/prod.gg/app/feature", "on")])

    rets = _wait_orchestrations(event_listener, after, "config/group/prod.gg/app/feature")
    events = _kv_events(event_listener, after)
    assert len(events) == 1, [e.data for e in events]
    data = events[0].data
    # Net change since the last report: both keys are new (version was written
    # five times within the burst); keys and environments only, no values.
    assert data["added"] == ["config/group/prod.gg/app/feature", "config/group/prod.gg/app/version"]
    assert data["changed"] == [] and data["deleted"] == []
    assert data["envs"] == [{"layer": "config/group/{type}.{group}", "type": "prod", "group": "gg"}]
    assert set(data) == {"prefix", "dc", "added", "changed", "deleted", "count", "truncated", "envs", "index"}
    assert rets[0].data.get("success") is True, rets[0].data

    applied = {mid: _applies(applied_dir, mid) - before[mid] for mid in react_minions}
    assert applied == {PROD[0]: 1, PROD[1]: 1, DEV: 0}
    # Consul really holds what the burst wrote.
    assert react_consul.api_json("GET", "/v1/kv/config/group/prod.gg/app/version?raw") == 4

    # Now dev: only the dev minion.
    before = {mid: _applies(applied_dir, mid) for mid in react_minions}
    after = time.time()
    _burst(react_consul, [("config/group/dev.gg/app/version", "7")])
    _wait_orchestrations(event_listener, after, "config/group/dev.gg/app/version")
    assert len(_kv_events(event_listener, after)) == 1
    applied = {mid: _applies(applied_dir, mid) - before[mid] for mid in react_minions}
    assert applied == {PROD[0]: 0, PROD[1]: 0, DEV: 1}


def test_engine_survives_consul_restart(react_consul, react_minions, applied_dir, event_listener):
    _wait_engine_live(react_consul, event_listener)
    react_consul.restart()
    assert react_consul.api_json("GET", "/v1/kv/config/group/dev.gg/app/version?raw") == 7  # data kept

    before = _applies(applied_dir, DEV)
    after = time.time()
    # The engine reconnects by itself (bounded backoff); the first write after
    # the restart is seen and handled like any other.
    _burst(react_consul, [("config/group/dev.gg/app/after_restart", "1")])
    event_listener.wait_for_events([(MASTER_ID, KV_TAG)], timeout=60, after_time=after)
    events = _kv_events(event_listener, after)
    assert [e.data["added"] for e in events] == [["config/group/dev.gg/app/after_restart"]]
    _wait_orchestrations(event_listener, after, "config/group/dev.gg/app/after_restart")
    assert _applies(applied_dir, DEV) == before + 1
    assert all(_applies(applied_dir, mid) >= 1 for mid in PROD)


def test_healthy_set_change_rerenders_configs_listing_the_service(react_consul, react_minions, applied_dir, event_listener):
    _wait_engine_live(react_consul, event_listener)
    conf = {mid: applied_dir / f"{mid}.db.conf" for mid in react_minions}
    reg = {"Name": "db", "ID": "db-1", "Port": 5432, "Tags": ["prod", "gg"], "Check": {"TTL": "120s"}}
    assert react_consul.api("PUT", "/v1/agent/service/register", reg)[0] == 200
    try:
        # Registered but critical: not healthy yet, so no change in the healthy set.
        after = time.time()
        assert react_consul.api("PUT", "/v1/agent/check/pass/service:db-1")[0] == 200
        assert event_listener.wait_for_events(
            [(MASTER_ID, "salt/consul/service/db")], timeout=60, after_time=after
        ).found_all_events
        rets = _wait_rerenders(event_listener, after, '"port": 5432')
        assert all(e.data.get("success") is True for e in rets), [e.data for e in rets]
        assert conf[PROD[0]].read_text().strip() == "db=5432"
        assert conf[PROD[1]].read_text().strip() == "db=5432"
        assert not conf[DEV].exists()
        # Two targets fit one batch: the reactor published the job itself, in
        # one job for both minions, with no orchestration in between.
        assert len({e.data.get("jid") for e in rets}) == 1
        assert _orchestrations(event_listener, after, '"port": 5432') == []

        # A second instance turns healthy: the configs name both.
        reg2 = dict(reg, ID="db-2", Port=5433)
        assert react_consul.api("PUT", "/v1/agent/service/register", reg2)[0] == 200
        after = time.time()
        assert react_consul.api("PUT", "/v1/agent/check/pass/service:db-2")[0] == 200
        _wait_rerenders(event_listener, after, '"port": 5433')
        assert conf[PROD[0]].read_text().strip() == "db=5432,5433"
        health = react_consul.api_json("GET", "/v1/health/service/db?passing")
        assert sorted(h["Service"]["Port"] for h in health) == [5432, 5433]
    finally:
        react_consul.api("PUT", "/v1/agent/service/deregister/db-1")
        react_consul.api("PUT", "/v1/agent/service/deregister/db-2")


def test_more_targets_than_a_batch_roll_out_through_the_orchestration(
    react_consul, react_minions, applied_dir, event_listener
):
    _wait_engine_live(react_consul, event_listener)
    conf = {mid: applied_dir / f"{mid}.cache.conf" for mid in react_minions}
    reg = {"Name": "cache", "ID": "cache-1", "Port": 6379, "Tags": ["prod", "gg"], "Check": {"TTL": "120s"}}
    assert react_consul.api("PUT", "/v1/agent/service/register", reg)[0] == 200
    try:
        after = time.time()
        assert react_consul.api("PUT", "/v1/agent/check/pass/service:cache-1")[0] == 200
        orch = _wait_orchestrations(event_listener, after, '"port": 6379')
        assert orch[0].data.get("success") is True, orch[0].data
        rets = _wait_rerenders(event_listener, after, '"port": 6379')
        # batch_size 1: one job per prod/gg minion, one after the other; dev untouched.
        assert sorted(e.data["id"] for e in rets) == sorted(PROD)
        assert len({e.data["jid"] for e in rets}) == 2
        assert conf[PROD[0]].read_text().strip() == "cache=6379"
        assert conf[PROD[1]].read_text().strip() == "cache=6379"
        assert not conf[DEV].exists()
    finally:
        react_consul.api("PUT", "/v1/agent/service/deregister/cache-1")
