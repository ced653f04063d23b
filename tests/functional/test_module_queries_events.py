"""consul.query_* (incl. templates and failover) and consul.event_* against real Consul agents."""

import time
import uuid

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError



@pytest.fixture
def consul(module_loaders):
    return module_loaders.modules.consul


@pytest.fixture
def uniq(consul_agent):
    name = "q" + uuid.uuid4().hex[:8]
    yield name
    for query in consul_agent.api_json("GET", "/v1/query"):
        if query["Name"].startswith(name):
            consul_agent.api("DELETE", f"/v1/query/{query['ID']}")
    for sid, info in consul_agent.api_json("GET", "/v1/agent/services").items():
        if info["Service"].startswith(name):
            consul_agent.api("PUT", f"/v1/agent/service/deregister/{sid}")


def _service(agent, name, sid, tags=()):
    agent.api_json(
        "PUT", "/v1/agent/service/register",
        {"Name": name, "ID": sid, "Tags": list(tags), "Port": 80,
         "Check": {"CheckID": f"{sid}-ttl", "TTL": "600s", "Status": "passing"}},
    )
    # The agent syncs to the catalog asynchronously: wait (bounded) until it has.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(e["Service"]["ID"] == sid for e in agent.api_json("GET", f"/v1/health/service/{name}?passing")):
            return
        time.sleep(0.05)
    raise AssertionError(f"{sid} not in the catalog after 10s")


def test_query_crud_and_execute(consul, consul_agent, uniq):
    _service(consul_agent, uniq, f"{uniq}-1", ["prod"])
    _service(consul_agent, uniq, f"{uniq}-2", ["stg"])
    qid = consul.query_create({"Name": uniq, "Service": {"Service": uniq, "Tags": ["prod"], "OnlyPassing": True}})
    real = consul_agent.api_json("GET", f"/v1/query/{qid}")[0]
    assert (real["Name"], real["Service"]["Tags"], real["Service"]["OnlyPassing"]) == (uniq, ["prod"], True)
    assert consul.query_get(qid)["Service"]["Service"] == uniq
    assert qid in [q["ID"] for q in consul.query_list()]
    result = consul.query_execute(uniq)
    assert [n["Service"]["ID"] for n in result["Nodes"]] == [f"{uniq}-1"]
    assert result["Datacenter"] == "dc1"
    assert consul.query_update(qid, {"Name": uniq, "Service": {"Service": uniq, "Tags": ["stg"]}}) is True
    assert consul_agent.api_json("GET", f"/v1/query/{qid}")[0]["Service"]["Tags"] == ["stg"]
    assert [n["Service"]["ID"] for n in consul.query_execute(qid, near="_agent", limit=1)["Nodes"]] == [f"{uniq}-2"]
    assert consul.query_delete(qid) is True
    assert consul_agent.api("GET", f"/v1/query/{qid}")[0] == 404
    assert consul.query_get(qid) is None
    with pytest.raises(CommandExecutionError, match="query_execute failed: not found"):
        consul.query_execute(qid)


def test_query_template_with_regexp(consul, consul_agent, uniq):
    _service(consul_agent, f"{uniq}-db", f"{uniq}-db-1", ["prod"])
    _service(consul_agent, f"{uniq}-db", f"{uniq}-db-2", ["dev"])
    qid = consul.query_create(
        {
            "Name": f"{uniq}-db-",
            "Template": {"Type": "name_prefix_match", "Regexp": f"^{uniq}-db-(.+)$"},
            "Service": {"Service": f"{uniq}-db", "Tags": ["${match(1)}"]},
        }
    )
    assert consul_agent.api_json("GET", f"/v1/query/{qid}")[0]["Template"]["Regexp"] == f"^{uniq}-db-(.+)$"
    assert [n["Service"]["ID"] for n in consul.query_execute(f"{uniq}-db-prod")["Nodes"]] == [f"{uniq}-db-1"]
    assert [n["Service"]["ID"] for n in consul.query_execute(f"{uniq}-db-dev")["Nodes"]] == [f"{uniq}-db-2"]


def test_query_token_is_hidden(consul, consul_agent, uniq):
    secret = "99999999-8888-7777-6666-" + uuid.uuid4().hex[:12]
    qid = consul.query_create({"Name": uniq, "Token": secret, "Service": {"Service": uniq}})
    # Consul holds it (queried without our module)...
    assert consul_agent.api_json("GET", f"/v1/query/{qid}")[0]["Token"] == secret
    # ...but we never hand it out.
    assert consul.query_get(qid)["Token"] == "<hidden>"
    assert secret not in repr(consul.query_list())


def test_query_and_discover_fail_over_to_other_datacenter(minion_opts, consul_dc_pair):
    from saltfactories.utils.functional import Loaders

    first, second = consul_dc_pair
    name = "pay" + uuid.uuid4().hex[:6]
    _service(second, name, f"{name}-2", ["prod", "gg"])  # only the second datacenter has it
    minion_opts["consul"]["address"] = first.http_addr
    ld = Loaders(minion_opts)
    qid = None
    try:
        consul = ld.modules.consul
        qid = consul.query_create(
            {"Name": name, "Service": {"Service": name, "Failover": {"Datacenters": [second.datacenter]}}}
        )
        assert first.api_json("GET", f"/v1/query/{qid}")[0]["Service"]["Failover"]["Datacenters"] == ["dc2"]
        result = consul.query_execute(name)
        assert (result["Datacenter"], result["Failovers"]) == ("dc2", 1)
        assert [n["Service"]["ID"] for n in result["Nodes"]] == [f"{name}-2"]
        assert sorted(consul.catalog_datacenters()) == ["dc1", "dc2"]
        # dc= reaches the other datacenter directly; discover fails over only when asked.
        assert [i["id"] for i in consul.discover(name, dc="dc2")] == [f"{name}-2"]
        assert consul.discover(name) == []
        for failover in (True, ["dc2"]):
            found = consul.discover(name, failover=failover, refresh=True)
            assert [(i["id"], i["datacenter"], i["remote"]) for i in found] == [(f"{name}-2", "dc2", True)]
        # With a healthy local instance, the local one answers.
        _service(first, name, f"{name}-1", ["prod", "gg"])
        found = consul.discover(name, failover=True, refresh=True)
        assert [(i["id"], i["datacenter"], i["remote"]) for i in found] == [(f"{name}-1", "dc1", False)]
    finally:
        ld.reset_state()
        if qid:
            first.api("DELETE", f"/v1/query/{qid}")
        first.api("PUT", f"/v1/agent/service/deregister/{name}-1")
        second.api("PUT", f"/v1/agent/service/deregister/{name}-2")


def test_query_bad_definitions(consul):
    for bad in ({}, {"Service": "x"}, {"Service": {"Service": ""}}, {"Service": {"Service": "x"}, "Template": {"Type": "regex"}}):
        with pytest.raises(SaltInvocationError):
            consul.query_create(bad)


def test_event_fire_and_list(consul, consul_agent):
    name = "ev" + uuid.uuid4().hex[:8]
    # An agent only records events whose filters match it: target our agent's node.
    eid = consul.event_fire(name, payload="v1.2.3", node=f"^{consul_agent.node_name}$")
    # The event reaches the agent's event list by gossip: poll, bounded.
    deadline = time.monotonic() + 10
    real = []
    while not real and time.monotonic() < deadline:
        real = [e for e in consul_agent.api_json("GET", f"/v1/event/list?name={name}") if e["ID"] == eid]
        time.sleep(0.1)
    assert len(real) == 1
    assert real[0]["NodeFilter"] == f"^{consul_agent.node_name}$"
    listed = consul.event_list(name=name)
    assert [(e["ID"], e["Payload"]) for e in listed] == [(eid, "v1.2.3")]
    with pytest.raises(SaltInvocationError):
        consul.event_fire(name, payload="x" * 513)
