"""consul.kv_* through Salt's loaders against a real Consul agent; state checked with plain HTTP."""

import base64
import json
import logging

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError


@pytest.fixture
def consul(module_loaders):
    return module_loaders.modules.consul


def _raw(agent, key):
    status, body = agent.api("GET", f"/v1/kv/{key}?raw")
    return body if status == 200 else None


def _entry(agent, key):
    return agent.api_json("GET", f"/v1/kv/{key}")[0]


def test_put_get_exact_string(consul, consul_agent, kv_prefix):
    key = f"{kv_prefix}/pool size?#%"  # odd characters are quoted, not lost
    assert consul.kv_put(key, "  20\n") is True
    assert consul_agent.api("GET", f"/v1/kv/{kv_prefix}/pool%20size%3F%23%25?raw") == (200, b"  20\n")
    assert consul.kv_get(key) == "  20\n"


def test_get_missing_default_and_empty_value(consul, consul_agent, kv_prefix):
    assert consul.kv_get(f"{kv_prefix}/missing") is None
    assert consul.kv_get(f"{kv_prefix}/missing", default="d") == "d"
    assert consul.kv_get(f"{kv_prefix}/missing", detail=True, default={}) == {}
    consul_agent.api("PUT", f"/v1/kv/{kv_prefix}/empty")
    assert consul.kv_get(f"{kv_prefix}/empty") == ""


def test_put_types_and_decode(consul, consul_agent, kv_prefix):
    consul.kv_put(f"{kv_prefix}/j", {"b": [1, 2], "a": True})
    assert _raw(consul_agent, f"{kv_prefix}/j") == b'{"a": true, "b": [1, 2]}'
    assert consul.kv_get(f"{kv_prefix}/j", decode="json") == {"a": True, "b": [1, 2]}
    consul.kv_put(f"{kv_prefix}/y", "a: 1\nb: [x]\n")
    assert consul.kv_get(f"{kv_prefix}/y", decode="yaml") == {"a": 1, "b": ["x"]}
    consul.kv_put(f"{kv_prefix}/n", 8)
    consul.kv_put(f"{kv_prefix}/t", False)
    assert _raw(consul_agent, f"{kv_prefix}/n") == b"8"
    assert _raw(consul_agent, f"{kv_prefix}/t") == b"false"
    assert consul.kv_get(f"{kv_prefix}/n", decode="auto") == "8"  # auto only parses structures
    consul.kv_put(f"{kv_prefix}/bin", b"\xff\x00")
    assert consul.kv_get(f"{kv_prefix}/bin") == b"\xff\x00"


def test_decode_error_names_key_not_value(consul, kv_prefix):
    consul.kv_put(f"{kv_prefix}/bad", "{secret-ish: [")
    with pytest.raises(CommandExecutionError) as exc:
        consul.kv_get(f"{kv_prefix}/bad", decode="json")
    assert f"{kv_prefix}/bad" in str(exc.value)
    assert "secret-ish" not in str(exc.value)


def test_detail_and_flags(consul, consul_agent, kv_prefix):
    consul.kv_put(f"{kv_prefix}/d", "v", flags=42)
    real = _entry(consul_agent, f"{kv_prefix}/d")
    assert real["Flags"] == 42
    got = consul.kv_get(f"{kv_prefix}/d", detail=True)
    assert got == {
        "key": f"{kv_prefix}/d",
        "value": "v",
        "modify_index": real["ModifyIndex"],
        "create_index": real["CreateIndex"],
        "lock_index": 0,
        "flags": 42,
        "session": None,
    }
    assert consul.kv_get(f"{kv_prefix}/d", consistency="stale") == "v"


def test_cas_put_and_conflict(consul, consul_agent, kv_prefix):
    key = f"{kv_prefix}/cas"
    assert consul.kv_put(key, "1", cas=0) is True  # create-only
    with pytest.raises(CommandExecutionError, match="CAS conflict"):
        consul.kv_put(key, "2", cas=0)
    index = _entry(consul_agent, key)["ModifyIndex"]
    assert consul.kv_put(key, "3", cas=index) is True
    with pytest.raises(CommandExecutionError, match="CAS conflict") as exc:
        consul.kv_put(key, "value-lost-the-race", cas=index)  # stale index
    assert "value-lost-the-race" not in str(exc.value)
    assert _raw(consul_agent, key) == b"3"


def test_delete_plain_recurse_and_cas(consul, consul_agent, kv_prefix):
    for name in ("a", "b/c", "b/d"):
        consul_agent.api("PUT", f"/v1/kv/{kv_prefix}/{name}", b"x")
    assert consul.kv_delete(f"{kv_prefix}/a") is True
    assert _raw(consul_agent, f"{kv_prefix}/a") is None
    assert consul.kv_delete(f"{kv_prefix}/never-there") is True
    index = _entry(consul_agent, f"{kv_prefix}/b/c")["ModifyIndex"]
    with pytest.raises(CommandExecutionError, match="CAS conflict"):
        consul.kv_delete(f"{kv_prefix}/b/c", cas=index - 1)
    assert _raw(consul_agent, f"{kv_prefix}/b/c") == b"x"
    assert consul.kv_delete(f"{kv_prefix}/b/c", cas=index) is True
    assert _raw(consul_agent, f"{kv_prefix}/b/c") is None
    assert consul.kv_delete(f"{kv_prefix}/b", recurse=True) is True
    assert consul_agent.api("GET", f"/v1/kv/{kv_prefix}/?keys")[0] == 404


def test_keys_and_tree(consul, consul_agent, kv_prefix):
    for name, value in (("app/db/pool", b"20"), ("app/db/conf", b'{"x": 1}'), ("app/web/", b""), ("apple", b"no")):
        consul_agent.api("PUT", f"/v1/kv/{kv_prefix}/{name}", value)
    assert consul.kv_keys(f"{kv_prefix}/app/") == [
        f"{kv_prefix}/app/db/conf", f"{kv_prefix}/app/db/pool", f"{kv_prefix}/app/web/",
    ]
    assert consul.kv_keys(f"{kv_prefix}/", separator="/") == [f"{kv_prefix}/app/", f"{kv_prefix}/apple"]
    assert consul.kv_keys(f"{kv_prefix}/none/") == []
    assert consul.kv_tree(f"{kv_prefix}/app") == {"db": {"pool": "20", "conf": '{"x": 1}'}, "web": {}}
    assert consul.kv_tree(f"{kv_prefix}/app/", decode="auto") == {"db": {"pool": "20", "conf": {"x": 1}}, "web": {}}
    assert consul.kv_tree(f"{kv_prefix}/none") == {}


def test_txn_atomic_and_no_values_for_writes(consul, consul_agent, kv_prefix):
    result = consul.kv_txn(
        [
            {"verb": "set", "key": f"{kv_prefix}/t1", "value": "s3cr3t-txn"},
            {"verb": "set", "key": f"{kv_prefix}/t2", "value": {"a": 1}},
            {"verb": "get", "key": f"{kv_prefix}/t1"},
        ]
    )
    assert result["Errors"] is None
    assert "Value" not in result["Results"][0]["KV"]
    assert result["Results"][2]["KV"]["Value"] == "s3cr3t-txn"
    assert _raw(consul_agent, f"{kv_prefix}/t2") == b'{"a": 1}'
    # A failing index check rolls everything back.
    with pytest.raises(CommandExecutionError, match="CAS conflict"):
        consul.kv_txn(
            [
                {"verb": "set", "key": f"{kv_prefix}/t3", "value": "new"},
                {"verb": "cas", "key": f"{kv_prefix}/t1", "value": "x", "index": 1},
            ]
        )
    assert _raw(consul_agent, f"{kv_prefix}/t3") is None
    assert _raw(consul_agent, f"{kv_prefix}/t1") == b"s3cr3t-txn"
    # Consul's own shape passes through.
    native = {"KV": {"Verb": "set", "Key": f"{kv_prefix}/t4", "Value": base64.b64encode(b"n").decode()}}
    consul.kv_txn([native])
    assert _raw(consul_agent, f"{kv_prefix}/t4") == b"n"


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.kv_get("/leading"),
        lambda c: c.kv_get("a/../b"),
        lambda c: c.kv_get(""),
        lambda c: c.kv_get("a", decode="xml"),
        lambda c: c.kv_put("a", "v", cas=-1),
        lambda c: c.kv_put("a", object()),
        lambda c: c.kv_put("a", "v", value_file="/x"),
        lambda c: c.kv_put("a", "v", acquire="s", release="s"),
        lambda c: c.kv_delete("a", recurse=True, cas=1),
        lambda c: c.kv_txn([]),
        lambda c: c.kv_txn([{"verb": "explode", "key": "a"}]),
        lambda c: c.kv_txn([{"verb": "set", "key": "a"}] * 65),
    ],
)
def test_bad_arguments_before_any_request(consul, module_loaders, call):
    import saltconsul_client

    clients = module_loaders.context.setdefault(saltconsul_client.CONTEXT_KEY, {})
    before = sum(c.stats["requests"] for c in clients.values())
    with pytest.raises(SaltInvocationError):
        call(consul)
    assert sum(c.stats["requests"] for c in clients.values()) == before


def test_value_over_limit_refused_before_sending(minion_opts, consul_agent, kv_prefix):
    minion_opts["consul"]["max_value_size"] = 16
    from saltfactories.utils.functional import Loaders

    small = Loaders(minion_opts)
    try:
        with pytest.raises(SaltInvocationError, match="over the 16-byte limit"):
            small.modules.consul.kv_put(f"{kv_prefix}/big", "x" * 17)
        assert small.modules.consul.kv_put(f"{kv_prefix}/ok", "x" * 16) is True
    finally:
        small.reset_state()
    assert _raw(consul_agent, f"{kv_prefix}/big") is None
    assert _raw(consul_agent, f"{kv_prefix}/ok") == b"x" * 16


def test_put_from_file_and_pillar_never_returns_or_logs_value(
    minion_opts, consul_agent, kv_prefix, tmp_path, caplog
):
    from saltfactories.utils.functional import Loaders

    secret = "pw-" + kv_prefix[-6:] + "-Zq9"
    secret_file = tmp_path / "secret"
    secret_file.write_text(secret)
    minion_opts["pillar"] = {"app": {"db": {"password": secret + "-p"}}}
    caplog.set_level(logging.DEBUG)
    ld = Loaders(minion_opts)
    try:
        consul = ld.modules.consul
        assert consul.kv_put(f"{kv_prefix}/f", value_file=str(secret_file)) is True
        assert consul.kv_put(f"{kv_prefix}/p", value_pillar="app:db:password") is True
        assert consul.kv_put(f"{kv_prefix}/v", secret + "-v") is True
        with pytest.raises(SaltInvocationError, match="app:nope"):
            consul.kv_put(f"{kv_prefix}/x", value_pillar="app:nope")
    finally:
        ld.reset_state()
    assert _raw(consul_agent, f"{kv_prefix}/f") == secret.encode()
    assert _raw(consul_agent, f"{kv_prefix}/p") == (secret + "-p").encode()
    assert _raw(consul_agent, f"{kv_prefix}/v") == (secret + "-v").encode()
    assert secret not in caplog.text


def test_json_roundtrip_matches_consul(consul, consul_agent, kv_prefix):
    data = {"k": ["v", 1, None]}
    consul.kv_put(f"{kv_prefix}/rt", data)
    assert json.loads(_raw(consul_agent, f"{kv_prefix}/rt")) == data


def test_bad_consistency_is_an_argument_error(consul, kv_prefix):
    with pytest.raises(SaltInvocationError):
        consul.kv_get(f"{kv_prefix}/x", consistency="eventual")
    with pytest.raises(SaltInvocationError):
        consul.kv_tree(f"{kv_prefix}", consistency="eventual")
