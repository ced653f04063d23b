"""consul.service_*, consul.check_* and consul.health_* against a real Consul agent."""

import uuid

import pytest
from conftest import wait_for as _wait
from salt.exceptions import CommandExecutionError, SaltInvocationError


@pytest.fixture
def consul(module_loaders):
    return module_loaders.modules.consul


@pytest.fixture
def uniq(consul_agent):
    """A unique name prefix; services and checks with it are removed afterwards."""
    name = "t" + uuid.uuid4().hex[:8]
    yield name
    for sid in consul_agent.api_json("GET", "/v1/agent/services"):
        if sid.startswith(name):
            consul_agent.api("PUT", f"/v1/agent/service/deregister/{sid}")
    for cid in consul_agent.api_json("GET", "/v1/agent/checks"):
        if cid.startswith(name):
            consul_agent.api("PUT", f"/v1/agent/check/deregister/{cid}")


def test_service_register_full(consul, consul_agent, uniq):
    host, port = consul_agent.http_addr.rsplit("/", 1)[1].split(":")
    assert consul.service_register(
        uniq,
        id=f"{uniq}-1",
        tags=["prod", "gg"],
        address="127.0.0.2",
        port=5432,
        meta={"version": "13", "role": "primary"},
        enable_tag_override=True,
        weights={"passing": 10, "warning": 2},
        checks=[
            {"id": f"{uniq}-ttl", "name": "ttl", "ttl": "30s", "status": "passing", "notes": "pushed by cron"},
            {"id": f"{uniq}-tcp", "name": "tcp", "tcp": f"{host}:{port}", "interval": "1s", "timeout": "1s"},
            {
                "id": f"{uniq}-http",
                "name": "http",
                "http": f"{consul_agent.http_addr}/v1/status/leader",
                "interval": 1,
                "method": "GET",
                "header": {"X-Probe": "salt"},
                "tls_skip_verify": True,
                "deregister_critical_service_after": "90m",
            },
        ],
    ) is True
    real = consul_agent.api_json("GET", f"/v1/agent/service/{uniq}-1")
    assert real["Service"] == uniq
    assert real["Tags"] == ["prod", "gg"]
    assert real["Address"] == "127.0.0.2"
    assert real["Port"] == 5432
    assert real["Meta"] == {"version": "13", "role": "primary"}
    assert real["EnableTagOverride"] is True
    assert real["Weights"] == {"Passing": 10, "Warning": 2}
    checks = consul_agent.api_json("GET", "/v1/agent/checks")
    mine = {cid: c for cid, c in checks.items() if cid.startswith(uniq)}
    assert set(mine) == {f"{uniq}-ttl", f"{uniq}-tcp", f"{uniq}-http"}
    assert {c["ServiceID"] for c in mine.values()} == {f"{uniq}-1"}
    assert {cid: c["Type"] for cid, c in mine.items()} == {
        f"{uniq}-ttl": "ttl", f"{uniq}-tcp": "tcp", f"{uniq}-http": "http",
    }
    assert mine[f"{uniq}-ttl"]["Status"] == "passing"
    assert mine[f"{uniq}-ttl"]["Notes"] == "pushed by cron"
    # The agent really runs the tcp and http checks against the agent's own port.
    assert _wait(lambda: consul_agent.api_json("GET", "/v1/agent/checks")[f"{uniq}-tcp"]["Status"] == "passing")
    assert _wait(lambda: consul_agent.api_json("GET", "/v1/agent/checks")[f"{uniq}-http"]["Status"] == "passing")
    # Module views are Consul's own shapes.
    assert consul.service_get(f"{uniq}-1")["Meta"] == real["Meta"]
    assert f"{uniq}-1" in consul.service_list()
    assert list(consul.service_list(filter=f'Service == "{uniq}"')) == [f"{uniq}-1"]
    assert set(consul.check_list(filter=f'ServiceID == "{uniq}-1"')) == set(mine)


def test_service_reregister_replaces_checks(consul, consul_agent, uniq):
    consul.service_register(uniq, checks=[{"id": f"{uniq}-a", "ttl": "30s"}, {"id": f"{uniq}-b", "ttl": "30s"}])
    consul.service_register(uniq, checks=[{"id": f"{uniq}-a", "ttl": "30s"}], replace_existing_checks=True)
    checks = consul_agent.api_json("GET", "/v1/agent/checks")
    assert f"{uniq}-a" in checks and f"{uniq}-b" not in checks


def test_service_deregister_maintenance_and_not_found(consul, consul_agent, uniq):
    consul.service_register(uniq, id=f"{uniq}-m", port=80)
    assert consul.service_maintenance(f"{uniq}-m", True, reason="disk swap") is True
    maint = [c for c in consul_agent.api_json("GET", "/v1/agent/checks").values() if c["ServiceID"] == f"{uniq}-m"]
    assert [c["Status"] for c in maint] == ["critical"]
    assert maint[0]["Notes"] == "disk swap"
    assert consul.service_maintenance(f"{uniq}-m", False) is True
    assert not [c for c in consul_agent.api_json("GET", "/v1/agent/checks").values() if c["ServiceID"] == f"{uniq}-m"]
    assert consul.service_deregister(f"{uniq}-m") is True
    assert consul_agent.api("GET", f"/v1/agent/service/{uniq}-m")[0] == 404
    assert consul.service_get(f"{uniq}-m") is None
    assert consul.service_deregister(f"{uniq}-m") is True  # already gone: same end state
    with pytest.raises(CommandExecutionError, match="service_maintenance failed: not found"):
        consul.service_maintenance(f"{uniq}-m", True)


def test_check_register_ttl_updates_and_deregister(consul, consul_agent, uniq):
    consul.service_register(uniq, id=f"{uniq}-svc")
    assert consul.check_register(f"{uniq}-c", service_id=f"{uniq}-svc", ttl="60s", notes="n") is True
    real = consul_agent.api_json("GET", "/v1/agent/checks")[f"{uniq}-c"]
    assert (real["ServiceID"], real["Type"], real["Status"], real["Notes"]) == (f"{uniq}-svc", "ttl", "critical", "n")
    for fn, status in ((consul.check_pass, "passing"), (consul.check_warn, "warning"), (consul.check_fail, "critical")):
        assert fn(f"{uniq}-c", note=f"now {status}") is True
        real = consul_agent.api_json("GET", "/v1/agent/checks")[f"{uniq}-c"]
        assert (real["Status"], real["Output"]) == (status, f"now {status}")
    assert f"{uniq}-c" in consul.check_list()
    assert consul.check_deregister(f"{uniq}-c") is True
    assert f"{uniq}-c" not in consul_agent.api_json("GET", "/v1/agent/checks")
    with pytest.raises(CommandExecutionError, match="check_pass failed: not found"):
        consul.check_pass(f"{uniq}-c")
    assert consul.check_deregister(f"{uniq}-c") is True
    consul.check_register(f"{uniq}-h", http="http://127.0.0.1:1/", interval="10s")
    with pytest.raises(CommandExecutionError, match="not a TTL check"):
        consul.check_pass(f"{uniq}-h")


def test_node_check_register_with_initial_status(consul, consul_agent, uniq):
    consul.check_register(f"{uniq}-node", id=f"{uniq}-node", ttl=30, status="warning")
    real = consul_agent.api_json("GET", "/v1/agent/checks")[f"{uniq}-node"]
    assert (real["ServiceID"], real["Status"]) == ("", "warning")


def test_health_service_node_checks_state(consul, consul_agent, uniq):
    for idx, status in ((1, "passing"), (2, "critical")):
        consul.service_register(
            uniq, id=f"{uniq}-{idx}", tags=["prod", f"n{idx}"], port=1000 + idx,
            checks=[{"id": f"{uniq}-{idx}-ttl", "ttl": "60s", "status": status}],
        )
    ids = lambda entries: sorted(e["Service"]["ID"] for e in entries)  # noqa: E731
    # The agent syncs to the catalog asynchronously: wait (bounded) until it has.
    assert _wait(lambda: len(consul_agent.api_json("GET", f"/v1/health/checks/{uniq}")) == 2)
    assert ids(consul.health_service(uniq)) == [f"{uniq}-1", f"{uniq}-2"]
    assert ids(consul.health_service(uniq, passing=True)) == [f"{uniq}-1"]
    assert ids(consul.health_service(uniq, tag="n2")) == [f"{uniq}-2"]
    assert ids(consul.health_service(uniq, near="_agent")) == [f"{uniq}-1", f"{uniq}-2"]
    assert consul.health_service(uniq + "-none") == []
    checks = consul.health_checks(uniq)
    assert sorted(c["CheckID"] for c in checks) == [f"{uniq}-1-ttl", f"{uniq}-2-ttl"]
    node_checks = consul.health_node(consul_agent.node_name)
    assert {f"{uniq}-1-ttl", "serfHealth"} <= {c["CheckID"] for c in node_checks}
    assert f"{uniq}-2-ttl" in {c["CheckID"] for c in consul.health_state("critical")}
    assert f"{uniq}-2-ttl" not in {c["CheckID"] for c in consul.health_state("passing")}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"checks": [{"ttl": "10s", "tcp": "127.0.0.1:1"}]},  # two types
        {"checks": [{"http": "http://127.0.0.1:1/"}]},  # no interval
        {"checks": [{"ttl": "ten"}]},
        {"checks": [{"ttl": "10s", "status": "fine"}]},
        {"checks": [{"ttl": "10s", "Interval": "10s"}]},  # CamelCase keys are not ours
        {"port": 70000},
        {"meta": {"bad key": "v"}},
        {"weights": {"heavy": 1}},
        {"tags": 5},
    ],
)
def test_service_register_bad_arguments_write_nothing(consul, consul_agent, uniq, kwargs):
    with pytest.raises(SaltInvocationError):
        consul.service_register(uniq, **kwargs)
    assert uniq not in consul_agent.api_json("GET", "/v1/agent/services")


def test_script_check_needs_agent_permission(consul, consul_agent, uniq):
    # Our agent (like a hardened production one) refuses script checks over HTTP:
    # the error says so plainly and nothing is registered.
    with pytest.raises(CommandExecutionError, match="enable_script_checks"):
        consul.service_register(uniq, checks=[{"id": f"{uniq}-args", "args": ["true"], "interval": "10s"}])
    assert uniq not in consul_agent.api_json("GET", "/v1/agent/services")


def test_script_check_on_agent_that_allows_it(minion_opts, tmp_path):
    import localconsul
    from saltfactories.utils.functional import Loaders

    agent = localconsul.LocalConsul(
        "scripts", extra_config={"enable_script_checks": True}, log_dir=str(tmp_path)
    ).start()
    try:
        minion_opts["consul"]["address"] = agent.http_addr
        ld = Loaders(minion_opts)
        try:
            ld.modules.consul.service_register(
                "scripted", checks=[{"id": "scripted-args", "args": ["/bin/true"], "interval": "1s"}]
            )
            ld.modules.consul.check_register("node-args", args=["/bin/false"], interval="1s")
        finally:
            ld.reset_state()
        checks = agent.api_json("GET", "/v1/agent/checks")
        assert checks["scripted-args"]["Type"] == "script"
        assert _wait(lambda: agent.api_json("GET", "/v1/agent/checks")["scripted-args"]["Status"] == "passing")
        assert checks["node-args"]["Type"] == "script"
    finally:
        agent.cleanup()
