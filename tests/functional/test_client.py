"""The shared client against a real Consul agent (plain and ACL default-deny)."""

import logging

import pytest

import localconsul
import saltconsul_client
from saltconsul_errors import (
    ConsulInvalidRequest,
    ConsulNotFound,
    ConsulPermissionDenied,
    ConsulUnreachable,
)


def _client(address, **conf):
    return saltconsul_client.get_client({"consul": dict(address=address, **conf)}, {})


def test_round_trip_kv(consul_agent, kv_prefix):
    client = _client(consul_agent.http_addr)
    assert client.put(f"/v1/kv/{kv_prefix}/a", content=b"hello") is True
    resp = client.request("GET", f"/v1/kv/{kv_prefix}/a", params={"raw": True})
    assert resp.content == b"hello"
    assert resp.index and resp.index > 0
    # Consul itself, not through our client:
    assert consul_agent.api("GET", f"/v1/kv/{kv_prefix}/a?raw") == (200, b"hello")
    assert client.stats == {"requests": 2, "writes": 1}


def test_not_found_and_not_found_ok(consul_agent, kv_prefix):
    client = _client(consul_agent.http_addr)
    with pytest.raises(ConsulNotFound) as exc:
        client.get(f"/v1/kv/{kv_prefix}/missing")
    assert f"GET /v1/kv/{kv_prefix}/missing" in str(exc.value)
    assert client.request("GET", f"/v1/kv/{kv_prefix}/missing", not_found_ok=True) is None


def test_invalid_request(consul_agent):
    client = _client(consul_agent.http_addr)
    with pytest.raises(ConsulInvalidRequest):
        client.put("/v1/agent/service/register", json={"Name": "x", "Port": "not-a-port"})


def test_unreachable_is_clear_and_bounded():
    port = localconsul.free_port()
    client = _client(f"http://127.0.0.1:{port}", retries=2, retry_backoff=0.01)
    with pytest.raises(ConsulUnreachable) as exc:
        client.get("/v1/status/leader")
    assert f"127.0.0.1:{port}" in str(exc.value)
    assert client.stats["requests"] == 3  # 1 + 2 retries for a GET
    with pytest.raises(ConsulUnreachable):
        client.put("/v1/kv/x", content=b"1")
    assert client.stats["requests"] == 4  # a PUT is never retried


def test_blocking_query_returns_on_change(consul_agent, kv_prefix):
    import threading
    import time

    client = _client(consul_agent.http_addr)
    client.put(f"/v1/kv/{kv_prefix}/w", content=b"1")
    index = client.request("GET", f"/v1/kv/{kv_prefix}/w").index
    timer = threading.Timer(0.5, lambda: consul_agent.api("PUT", f"/v1/kv/{kv_prefix}/w", b"2"))
    timer.start()
    start = time.monotonic()
    resp = client.request("GET", f"/v1/kv/{kv_prefix}/w", params={"raw": True}, index=index, wait="20s")
    timer.join()
    assert resp.content == b"2"
    assert resp.index > index
    assert time.monotonic() - start < 15  # returned on the change, not at the wait's end


def test_stale_and_consistent_modes(consul_agent):
    client = _client(consul_agent.http_addr)
    assert client.get("/v1/catalog/services", consistency="stale") is not None
    assert client.get("/v1/catalog/services", consistency="consistent") is not None
    with pytest.raises(ConsulInvalidRequest):
        client.get("/v1/catalog/services", consistency="eventual")


def test_client_cached_in_context(consul_agent):
    context = {}
    opts = {"consul": {"address": consul_agent.http_addr}}
    first = saltconsul_client.get_client(opts, context)
    assert saltconsul_client.get_client(opts, context) is first
    assert saltconsul_client.get_client(opts, context, token="other") is not first


def test_wrong_token_is_permission_denied_and_never_leaks(consul_acl_agent, caplog, tmp_path):
    secret = "11111111-2222-3333-4444-555555555555"
    caplog.set_level(logging.DEBUG)
    client = _client(consul_acl_agent.http_addr, token=secret)
    errors = []
    for call in (
        lambda: client.put("/v1/kv/acl/x", content=b"v"),
        lambda: client.get("/v1/kv/acl/x"),
        lambda: client.put("/v1/agent/service/register", json={"Name": "web"}),
        lambda: client.put("/v1/session/create", json={}),
    ):
        with pytest.raises(ConsulPermissionDenied) as exc:
            call()
        errors.append(exc.value)
    for err in errors:
        assert secret not in str(err)
        assert secret not in repr(err)
        assert err.status in (403, 500)
    assert secret not in repr(client)
    assert secret not in caplog.text
    for record in caplog.records:
        assert secret not in record.getMessage()
    # The same request with the real root token works (the token does reach Consul).
    root = _client(consul_acl_agent.http_addr, token=consul_acl_agent.master_token)
    assert root.put("/v1/kv/acl/x", content=b"v") is True
    # ... and a token file is read the same way.
    token_file = tmp_path / "token"
    token_file.write_text(consul_acl_agent.master_token + "\n")
    from_file = _client(consul_acl_agent.http_addr, token_file=str(token_file))
    assert from_file.request("GET", "/v1/kv/acl/x", params={"raw": True}).content == b"v"


def test_compression_is_opt_in(consul_agent, kv_prefix):
    # Enough data for Consul to compress when asked.
    for i in range(40):
        consul_agent.api("PUT", f"/v1/kv/{kv_prefix}/k{i}", b"x" * 200)
    plain = _client(consul_agent.http_addr).request("GET", f"/v1/kv/{kv_prefix}/", params={"recurse": True})
    assert "content-encoding" not in plain.headers
    gz = _client(consul_agent.http_addr, compression=True).request(
        "GET", f"/v1/kv/{kv_prefix}/", params={"recurse": True}
    )
    assert gz.headers.get("content-encoding") == "gzip"
    assert gz.json() == plain.json()
