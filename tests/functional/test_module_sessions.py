"""consul.session_* and consul.lock_* against a real Consul agent."""

import time

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError


@pytest.fixture
def consul(module_loaders):
    return module_loaders.modules.consul


@pytest.fixture
def sessions(consul_agent):
    made = []
    yield made
    for sid in made:
        consul_agent.api("PUT", f"/v1/session/destroy/{sid}")


def _session(agent, sid):
    found = agent.api_json("GET", f"/v1/session/info/{sid}")
    return found[0] if found else None


def test_session_create_info_renew_list_destroy(consul, consul_agent, sessions):
    sid = consul.session_create(name="db-primary", ttl="30s", lock_delay="1s", behavior="delete", checks=[])
    sessions.append(sid)
    real = _session(consul_agent, sid)
    assert real["Name"] == "db-primary"
    assert real["TTL"] == "30s"
    assert real["Behavior"] == "delete"
    assert real["LockDelay"] == 1_000_000_000
    assert real["NodeChecks"] == []
    assert consul.session_info(sid)["ID"] == sid
    assert consul.session_renew(sid)["ID"] == sid
    assert sid in [s["ID"] for s in consul.session_list()]
    assert sid in [s["ID"] for s in consul.session_list(node=consul_agent.node_name)]
    assert consul.session_destroy(sid) is True
    assert _session(consul_agent, sid) is None
    assert consul.session_info(sid) is None
    with pytest.raises(CommandExecutionError, match="session_renew failed: not found"):
        consul.session_renew(sid)


def test_session_with_service_checks(consul, consul_agent, sessions):
    consul_agent.api_json(
        "PUT",
        "/v1/agent/service/register",
        {"Name": "sess-svc", "ID": "sess-svc-1", "Check": {"CheckID": "sess-svc-ttl", "TTL": "60s", "Status": "passing"}},
    )
    try:
        # Sessions validate checks against the catalog, which the agent syncs asynchronously.
        deadline = time.monotonic() + 10
        while not consul_agent.api_json("GET", "/v1/health/checks/sess-svc") and time.monotonic() < deadline:
            time.sleep(0.05)
        sid = consul.session_create(name="svc", service_checks=["sess-svc-ttl"])
        sessions.append(sid)
        real = _session(consul_agent, sid)
        assert [c["ID"] for c in real["ServiceChecks"]] == ["sess-svc-ttl"]
        assert real["NodeChecks"] == ["serfHealth"]  # Consul's default node check stays
    finally:
        consul_agent.api("PUT", "/v1/agent/service/deregister/sess-svc-1")


def test_lock_acquire_release_holder(consul, consul_agent, sessions, kv_prefix):
    key = f"{kv_prefix}/locks/db/primary"
    first = consul.session_create(name="first", lock_delay="0s")
    second = consul.session_create(name="second", lock_delay="0s")
    sessions.extend([first, second])
    assert consul.lock_holder(key) is None
    assert consul.lock_acquire(key, first, value="db01") is True
    real = consul_agent.api_json("GET", f"/v1/kv/{key}")[0]
    assert real["Session"] == first
    assert consul.lock_acquire(key, second, value="db02") is False
    assert consul_agent.api("GET", f"/v1/kv/{key}?raw") == (200, b"db01")
    assert consul.lock_holder(key) == {
        "session": first, "node": consul_agent.node_name, "name": "first", "value": "db01",
    }
    assert consul.lock_release(key, second) is False
    assert consul.lock_release(key, first) is True
    assert "Session" not in consul_agent.api_json("GET", f"/v1/kv/{key}")[0]
    assert consul.lock_holder(key) is None
    # kv_put's acquire/release are the same primitive.
    assert consul.kv_put(key, "db02", acquire=second) is True
    assert consul_agent.api_json("GET", f"/v1/kv/{key}")[0]["Session"] == second
    assert consul.kv_put(key, "db01", acquire=first) is False
    assert consul.kv_put(key, "", release=second) is True
    # Destroying the holder's session releases the lock.
    assert consul.lock_acquire(key, first, value="db01") is True
    consul.session_destroy(first)
    assert "Session" not in consul_agent.api_json("GET", f"/v1/kv/{key}")[0]


def test_session_bad_arguments(consul):
    with pytest.raises(SaltInvocationError):
        consul.session_create(behavior="explode")
    with pytest.raises(SaltInvocationError):
        consul.session_create(ttl="ten seconds")
    with pytest.raises(SaltInvocationError):
        consul.session_info("")
    with pytest.raises(SaltInvocationError):
        consul.lock_acquire("/bad", "sid")
