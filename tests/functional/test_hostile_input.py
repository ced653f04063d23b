"""
Hostile input, fuzzed with hypothesis, against the real Consul agent: no crash,
a clear error, and nothing written when something is rejected.
"""

import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from salt.exceptions import CommandExecutionError, SaltInvocationError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _raw(agent, key):
    return agent.api("GET", "/v1/kv/" + urllib.parse.quote(key, safe="/") + "?raw")


@FUZZ
@given(value=st.one_of(st.binary(max_size=2048), st.text(max_size=512), st.just(b""), st.just("")))
def test_values_round_trip_exactly(loaders, consul_agent, kv_prefix, value):
    key = f"{kv_prefix}/v"
    consul = loaders.modules.consul
    assert consul.kv_put(key, value) is True
    stored = value if isinstance(value, bytes) else value.encode("utf-8")
    assert _raw(consul_agent, key) == (200, stored)
    got = consul.kv_get(key)
    # Text comes back as the exact string; bytes that are not UTF-8 come back as bytes.
    try:
        assert got == stored.decode("utf-8")
    except UnicodeDecodeError:
        assert got == stored


@FUZZ
@given(key=st.text(min_size=0, max_size=80))
def test_arbitrary_keys_are_stored_exactly_or_refused_with_nothing_written(loaders, consul_agent, kv_prefix, key):
    consul = loaders.modules.consul
    full = f"{kv_prefix}/{key}"
    before = consul_agent.api_json("GET", f"/v1/kv/{kv_prefix}/?keys") if _exists(consul_agent, kv_prefix) else []
    try:
        consul.kv_put(full, "x")
    except (SaltInvocationError, CommandExecutionError) as err:
        # Refused by our validation, or by Consul as an invalid request: either
        # way a clear message naming the key problem, and nothing written.
        assert "key" in str(err) or "invalid request" in str(err)
        after = consul_agent.api_json("GET", f"/v1/kv/{kv_prefix}/?keys") if _exists(consul_agent, kv_prefix) else []
        assert after == before
        return
    # Accepted: it is stored under exactly that name, and reads back.
    keys = consul_agent.api_json("GET", f"/v1/kv/{kv_prefix}/?keys")
    assert full in keys
    assert consul.kv_get(full) == "x"
    consul.kv_delete(full)


def _exists(agent, prefix):
    return agent.api("GET", f"/v1/kv/{prefix}/?keys")[0] == 200


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a/./b", "..", "a\x00b", "a\nb", None, 5, ["a"]])
def test_bad_keys_refused_before_any_request(loaders, key):
    import saltconsul_client

    client = saltconsul_client.get_client(loaders.opts, loaders.context)
    before = client.stats["requests"]
    with pytest.raises(SaltInvocationError):
        loaders.modules.consul.kv_put(key, "x")
    assert client.stats["requests"] == before


def test_oversized_value_refused_and_nothing_written(loaders, consul_agent, kv_prefix):
    key = f"{kv_prefix}/big"
    with pytest.raises(SaltInvocationError, match="524288-byte limit"):
        loaders.modules.consul.kv_put(key, b"x" * (512 * 1024 + 1))
    assert consul_agent.api("GET", f"/v1/kv/{key}")[0] == 404
    # Exactly at the limit is fine.
    assert loaders.modules.consul.kv_put(key, b"x" * (512 * 1024)) is True
    assert len(_raw(consul_agent, key)[1]) == 512 * 1024


def test_malformed_json_value_gives_clear_error_without_the_value(loaders, consul_agent, kv_prefix):
    key = f"{kv_prefix}/bad-json"
    consul_agent.api("PUT", f"/v1/kv/{key}", b'{"password": "s3cr3t-value", ')
    with pytest.raises(CommandExecutionError) as exc:
        loaders.modules.consul.kv_get(key, decode="json")
    assert key in str(exc.value)
    assert "s3cr3t-value" not in str(exc.value)
    # Raw read still returns the exact bytes stored.
    assert loaders.modules.consul.kv_get(key).startswith('{"password"')
