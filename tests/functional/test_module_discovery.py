"""consul.discover*, catalog and members against a real Consul agent; Jinja rendered by Salt."""

import time
import uuid

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

import saltconsul_client


@pytest.fixture
def consul(module_loaders):
    module_loaders.context.pop("saltconsul.discover", None)  # each test is a new "run"
    return module_loaders.modules.consul


@pytest.fixture
def svc(consul_agent):
    """A unique service name; its instances are deregistered afterwards."""
    name = "disc" + uuid.uuid4().hex[:8]
    yield name
    for sid, info in consul_agent.api_json("GET", "/v1/agent/services").items():
        if info["Service"] == name:
            consul_agent.api("PUT", f"/v1/agent/service/deregister/{sid}")


def _synced(agent, name, sid, status):
    """The agent syncs to the catalog asynchronously: wait (bounded) until it has."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        checks = agent.api_json("GET", f"/v1/health/checks/{name}")
        if any(c["ServiceID"] == sid and c["Status"] == status for c in checks):
            return
        time.sleep(0.05)
    raise AssertionError(f"{sid} not {status} in the catalog after 10s")


def _register(agent, name, sid, tags, port, address="", status="passing", meta=None):
    agent.api_json(
        "PUT",
        "/v1/agent/service/register",
        {
            "Name": name, "ID": sid, "Tags": tags, "Port": port, "Address": address, "Meta": meta or {},
            "Check": {"CheckID": f"{sid}-ttl", "TTL": "600s", "Status": status},
        },
    )
    _synced(agent, name, sid, status)


def _requests(loaders):
    return sum(c.stats["requests"] for c in loaders.context.get(saltconsul_client.CONTEXT_KEY, {}).values())


def test_discover_env_filter_address_fallback_and_order(consul, consul_agent, svc):
    # The functional minion is db01.prod.gg.mydc1.example.com: env prod/gg.
    _register(consul_agent, svc, f"{svc}-b", ["prod", "gg", "replica"], 5433, "10.0.0.2", meta={"v": "13"})
    _register(consul_agent, svc, f"{svc}-a", ["prod", "gg", "primary"], 5432)  # no address: node's
    _register(consul_agent, svc, f"{svc}-c", ["stg", "gg"], 5432, "10.0.1.1")
    _register(consul_agent, svc, f"{svc}-d", ["prod", "gg"], 5432, "10.0.0.9", status="critical")
    found = consul.discover(svc)
    assert found == [
        {"address": "10.0.0.2", "port": 5433, "tags": ["prod", "gg", "replica"], "meta": {"v": "13"},
         "node": consul_agent.node_name, "id": f"{svc}-b", "datacenter": "dc1", "remote": False},
        {"address": "127.0.0.1", "port": 5432, "tags": ["prod", "gg", "primary"], "meta": {},
         "node": consul_agent.node_name, "id": f"{svc}-a", "datacenter": "dc1", "remote": False},
    ]
    assert [i["id"] for i in consul.discover(svc, tags="primary")] == [f"{svc}-a"]
    assert [i["id"] for i in consul.discover(svc, environment={"type": "stg"})] == [f"{svc}-c"]
    assert sorted(i["id"] for i in consul.discover(svc, environment=False)) == [f"{svc}-a", f"{svc}-b", f"{svc}-c"]
    assert sorted(i["id"] for i in consul.discover(svc, passing=False)) == [f"{svc}-a", f"{svc}-b", f"{svc}-d"]
    assert [i["id"] for i in consul.discover(svc, near="_agent", tags=["primary"])] == [f"{svc}-a"]
    assert consul.discover_hosts(svc) == ["10.0.0.2:5433", "127.0.0.1:5432"]
    assert consul.discover(svc + "-nothing") == []


def test_discover_hosts_brackets_ipv6(consul, consul_agent, svc):
    _register(consul_agent, svc, f"{svc}-6", ["prod", "gg"], 80, "::1")
    assert consul.discover_hosts(svc) == ["[::1]:80"]


def test_ten_lookups_in_one_template_make_one_request(consul, module_loaders, consul_agent, svc):
    _register(consul_agent, svc, f"{svc}-1", ["prod", "gg", "primary"], 5432, "10.0.0.1")
    _register(consul_agent, svc, f"{svc}-2", ["prod", "gg"], 5432, "10.0.0.2")
    template = "\n".join(
        [f"{{{{ salt['consul.discover_hosts']('{svc}') | join(',') }}}}"] * 5
        + [f"{{{{ salt['consul.discover']('{svc}', tags=['primary'])[0].address }}}}"] * 3
        + [f"{{{{ salt['consul.discover']('{svc}') | length }}}}"] * 2
    )
    before = _requests(module_loaders)
    rendered = module_loaders.modules.file.apply_template_on_contents(
        template, template="jinja", context={}, defaults={}, saltenv="base"
    )
    assert _requests(module_loaders) - before == 1
    assert rendered.splitlines() == ["10.0.0.1:5432,10.0.0.2:5432"] * 5 + ["10.0.0.1"] * 3 + ["2"] * 2
    # A different service, or refresh=True, asks Consul again.
    consul.discover(svc + "-other")
    consul.discover(svc, refresh=True)
    assert _requests(module_loaders) - before == 3


def test_render_omits_instance_whose_check_went_critical(consul, module_loaders, consul_agent, svc):
    for idx in (1, 2):
        _register(consul_agent, svc, f"{svc}-{idx}", ["prod", "gg"], 5432, f"10.0.0.{idx}")
    template = f"{{% for db in salt['consul.discover']('{svc}') %}}{{{{ db.address }}}};{{% endfor %}}"

    def render():
        module_loaders.context.pop("saltconsul.discover", None)  # a new Salt run
        return module_loaders.modules.file.apply_template_on_contents(
            template, template="jinja", context={}, defaults={}, saltenv="base"
        )

    assert render() == "10.0.0.1;10.0.0.2;"
    consul_agent.api_json("PUT", f"/v1/agent/check/fail/{svc}-2-ttl")
    _synced(consul_agent, svc, f"{svc}-2", "critical")
    assert render() == "10.0.0.1;"


def test_catalog_and_members(consul, consul_agent, svc):
    _register(consul_agent, svc, f"{svc}-1", ["prod", "gg"], 1, status="critical")
    assert sorted(consul.catalog_services()[svc]) == ["gg", "prod"]  # Consul does not keep tag order here
    assert svc in consul.catalog_services(tag="gg")
    assert svc not in consul.catalog_services(tag="nope")
    assert [n["Node"] for n in consul.catalog_nodes()] == [consul_agent.node_name]
    assert [n["Node"] for n in consul.catalog_nodes(near="_agent")] == [consul_agent.node_name]
    found = consul.catalog_service(svc, tag="prod")  # catalog includes critical instances
    assert [(s["ServiceID"], s["ServicePort"]) for s in found] == [(f"{svc}-1", 1)]
    assert consul.catalog_service(svc, tag="stg") == []
    assert consul.catalog_datacenters() == ["dc1"]
    members = consul.agent_members()
    assert [(m["Name"], m["Status"]) for m in members] == [(consul_agent.node_name, 1)]
    assert [m["Name"] for m in consul.agent_members(wan=True)] == [f"{consul_agent.node_name}.dc1"]
    assert consul.status_leader() == consul_agent.api_json("GET", "/v1/status/leader")
    assert consul.status_peers() == consul_agent.api_json("GET", "/v1/status/peers")


def test_discover_bad_arguments(consul):
    with pytest.raises(SaltInvocationError):
        consul.discover("")
    with pytest.raises(SaltInvocationError):
        consul.discover("db", environment={"datacenter": "x"})
    with pytest.raises(SaltInvocationError):
        consul.discover("db", environment="prod")
    with pytest.raises(SaltInvocationError):
        consul.discover("db", tags=[1])
    with pytest.raises(CommandExecutionError, match="discover failed"):
        consul.discover("db", dc="no-such-dc")


def test_env_and_service_name(consul):
    # The functional minion's ID is db01.prod.gg.mydc1.example.com.
    own = consul.env()
    assert (own["type"], own["group"], own["datacenter"], own["role"]) == ("prod", "gg", "mydc1", "db")
    other = consul.env(hostname="mydc2-dev-hh-web03")
    assert (other["type"], other["group"], other["datacenter"], other["role"]) == ("dev", "hh", "mydc2", "web")
    assert consul.service_name("db") == "db.prod.gg.mydc1"
    assert consul.service_name("db", hostname="mydc2-dev-hh-web03") == "db.dev.hh.mydc2"
    assert consul.service_name("db", hostname="localhost") is None


def test_memo_is_per_thread(consul, module_loaders, consul_agent, svc):
    import threading

    _register(consul_agent, svc, f"{svc}-1", ["prod", "gg"], 1, "10.0.0.1")
    before = _requests(module_loaders)
    assert len(consul.discover(svc)) == 1
    assert len(consul.discover(svc)) == 1
    assert _requests(module_loaders) - before == 1
    # A job on another thread (a threaded minion) asks Consul itself.
    seen = []
    worker = threading.Thread(target=lambda: seen.append(consul.discover(svc)))
    worker.start()
    worker.join(30)
    assert seen and len(seen[0]) == 1
    assert _requests(module_loaders) - before == 2
