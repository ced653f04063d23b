"""
Two real Consul datacenters, WAN-joined on loopback, and a real salt-master
talking to dc1's agent only:

* ``salt-run consul_replicate.kv`` copies a prefix from dc1 to dc2, writes
  nothing the second time and propagates deletions;
* with the ``consul_watch`` engine on dc1's prefix and the
  ``reactor/consul_replicate.sls`` example, a write or a delete in dc1 reaches
  dc2 by itself.

dc2's state is always read from dc2's own agent.
"""

import json
import pathlib
import uuid

import pytest
from conftest import wait_for as _wait_for

REPO = pathlib.Path(__file__).resolve().parents[2]
MASTER_ID = "multidc-master"
PREFIX = "shared/"
# The engine and reactor replicate only this part, so they never race the salt-run test.
AUTO = "shared/auto/"


@pytest.fixture(scope="module")
def multidc_master(salt_factories, consul_dc_pair):
    dc1, _ = consul_dc_pair
    factory = salt_factories.salt_master_daemon(
        MASTER_ID,
        overrides={
            "file_roots": {"base": [str(REPO / "formulas")]},
            "engines_dirs": [str(REPO / "_engines")],
            "runner_dirs": [str(REPO / "_runners")],
            "utils_dirs": [str(REPO / "_utils")],
            "consul": {
                "address": dc1.http_addr,
                "retries": 0,
                "replicate": {"source": "dc1", "destinations": ["dc2"], "prefixes": [AUTO]},
            },
            "engines": [
                {
                    "consul_watch": {
                        "kv": [{"prefix": AUTO, "dc": "dc1"}],
                        "min_wait": 1,
                        "max_wait": 10,
                        "wait": 30,
                        "min_interval": 0.2,
                        "poll_interval": 1,
                    }
                }
            ],
            "reactor": [{f"salt/consul/kv/{AUTO.rstrip('/')}": ["salt://reactor/consul_replicate.sls"]}],
            "log_level_logfile": "debug",
            "worker_threads": 2,  # as synced_master (tests/conftest.py)
        },
    )
    with factory.started():
        yield factory
    for agent in consul_dc_pair:
        agent.api("DELETE", f"/v1/kv/{PREFIX}?recurse")


def _raw(agent, key):
    status, raw = agent.api("GET", f"/v1/kv/{key}?raw")
    return raw if status == 200 else None


def test_salt_run_replicates_idempotently_and_propagates_deletes(multidc_master, consul_dc_pair):
    dc1, dc2 = consul_dc_pair
    run = multidc_master.salt_run_cli(timeout=120)
    sub = f"{PREFIX}cli-{uuid.uuid4().hex[:6]}/"
    secret = "v4lue-not-in-output"
    for key, value in (("db/host", "db.prod.gg.dc1"), ("db/password", secret), ("feature", "on")):
        assert dc1.api("PUT", f"/v1/kv/{sub}{key}", value.encode())[0] == 200

    ret = run.run("consul_replicate.kv", sub, "source=dc1", "destinations=[dc2]")
    assert ret.returncode == 0, ret
    assert sorted(ret.data["dc2"][sub]["created"]) == [f"{sub}db/host", f"{sub}db/password", f"{sub}feature"]
    assert secret not in ret.stdout
    assert _raw(dc2, f"{sub}db/password") == secret.encode()

    ret = run.run("consul_replicate.kv", sub, "source=dc1", "destinations=[dc2]")
    assert ret.returncode == 0, ret
    assert ret.data["dc2"][sub] == {"created": [], "updated": [], "deleted": [], "conflicts": [], "unchanged": 3}

    assert dc1.api("DELETE", f"/v1/kv/{sub}feature")[0] == 200
    ret = run.run("consul_replicate.kv", sub, "source=dc1", "destinations=[dc2]")
    assert ret.data["dc2"][sub]["deleted"] == [f"{sub}feature"]
    assert _raw(dc2, f"{sub}feature") is None
    assert _raw(dc2, f"{sub}db/host") == b"db.prod.gg.dc1"


def test_engine_and_reactor_replicate_changes_by_themselves(multidc_master, consul_dc_pair):
    dc1, dc2 = consul_dc_pair
    sub = f"{AUTO}{uuid.uuid4().hex[:6]}/"
    assert dc1.api("PUT", f"/v1/kv/{sub}keep", b"k")[0] == 200
    assert dc1.api("PUT", f"/v1/kv/{sub}pool_size", b"20")[0] == 200
    assert _wait_for(lambda: _raw(dc2, f"{sub}pool_size") == b"20", timeout=90), "the write in dc1 never reached dc2"

    assert dc1.api("PUT", f"/v1/kv/{sub}pool_size", b"30")[0] == 200
    assert _wait_for(lambda: _raw(dc2, f"{sub}pool_size") == b"30", timeout=90), "the update in dc1 never reached dc2"

    assert dc1.api("DELETE", f"/v1/kv/{sub}pool_size")[0] == 200
    assert _wait_for(lambda: _raw(dc2, f"{sub}pool_size") is None, timeout=90), "the delete in dc1 never reached dc2"
    assert _raw(dc2, f"{sub}keep") == b"k"


@pytest.fixture(scope="module")
def multidc_minion(multidc_master, consul_dc_pair):
    dc1, _ = consul_dc_pair
    factory = multidc_master.salt_minion_daemon(
        "app01.prod.gg.dc1.example.com",
        overrides={
            "module_dirs": [str(REPO / "_modules")],
            "grains_dirs": [str(REPO / "_grains")],
            "utils_dirs": [str(REPO / "_utils")],
            "consul": {"address": dc1.http_addr, "retries": 0},
        },
    )
    with factory.started():
        yield factory


def test_prepared_query_fails_over_to_the_other_datacenter(multidc_minion, consul_dc_pair):
    """
    The building block for cross-dc discovery: with every ``db`` in dc1
    critical, a prepared query with failover, executed from dc1 through the
    execution module on a real minion, answers with dc2's instances.
    """
    dc1, dc2 = consul_dc_pair
    name = f"db-{uuid.uuid4().hex[:6]}"
    for agent, port in ((dc1, 5432), (dc2, 6432)):
        reg = {"Name": name, "ID": name, "Port": port, "Tags": ["prod", "gg"], "Check": {"TTL": "300s"}}
        assert agent.api("PUT", "/v1/agent/service/register", reg)[0] == 200
    assert dc2.api("PUT", f"/v1/agent/check/pass/service:{name}")[0] == 200
    assert dc1.api("PUT", f"/v1/agent/check/fail/service:{name}")[0] == 200
    call = multidc_minion.salt_call_cli(timeout=60)
    query_id = None
    try:
        assert dc1.api_json("GET", f"/v1/health/service/{name}?passing") == []
        assert len(dc2.api_json("GET", f"/v1/health/service/{name}?passing")) == 1

        definition = {
            "Name": name,
            "Service": {"Service": name, "OnlyPassing": True, "Failover": {"Datacenters": ["dc2"]}},
        }
        ret = call.run("consul.query_create", json.dumps(definition))
        assert ret.returncode == 0, ret
        query_id = ret.data
        ret = call.run("consul.query_execute", name)
        assert ret.returncode == 0, ret
        answer = ret.data
        assert answer["Datacenter"] == "dc2" and answer["Failovers"] == 1
        assert [(n["Node"]["Datacenter"], n["Service"]["Port"]) for n in answer["Nodes"]] == [("dc2", 6432)]
    finally:
        if query_id:
            dc1.api("DELETE", f"/v1/query/{query_id}")
        for agent in (dc1, dc2):
            agent.api("PUT", f"/v1/agent/service/deregister/{name}")


def test_discover_fails_over_to_the_other_datacenter_marked_remote(multidc_minion, consul_dc_pair):
    """
    With every ``db`` of this minion's environment critical in dc1, discovery
    from dc1 (the template helper, on a real minion) returns dc2's healthy
    instances, each marked ``remote``; with dc1 healthy again it is local.
    """
    dc1, dc2 = consul_dc_pair
    name = f"db-{uuid.uuid4().hex[:6]}"
    for agent, port in ((dc1, 5432), (dc2, 6432)):
        reg = {"Name": name, "ID": name, "Port": port, "Tags": ["prod", "gg"], "Check": {"TTL": "300s"}}
        assert agent.api("PUT", "/v1/agent/service/register", reg)[0] == 200
    try:
        assert dc2.api("PUT", f"/v1/agent/check/pass/service:{name}")[0] == 200
        assert dc1.api("PUT", f"/v1/agent/check/fail/service:{name}")[0] == 200
        call = multidc_minion.salt_call_cli(timeout=60)
        ret = call.run("consul.discover", name, "failover=True")
        assert ret.returncode == 0, ret
        assert [(i["port"], i["datacenter"], i["remote"]) for i in ret.data] == [(6432, "dc2", True)]
        # Without failover the local answer is simply empty: nothing remote sneaks in.
        assert call.run("consul.discover", name).data == []
        assert dc1.api("PUT", f"/v1/agent/check/pass/service:{name}")[0] == 200
        ret = call.run("consul.discover", name, "failover=True")
        assert [(i["port"], i["datacenter"], i["remote"]) for i in ret.data] == [(5432, "dc1", False)]
    finally:
        for agent in (dc1, dc2):
            agent.api("PUT", f"/v1/agent/service/deregister/{name}")
