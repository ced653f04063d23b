"""
``consul_replicate.kv`` through Salt's real runner loader, between two real
WAN-joined Consul datacenters (the master talks to dc1 only; dc2 via ``?dc=``).
Consul's real state is checked in dc2's own agent after every run.
"""

import base64
import copy
import logging
import pathlib
import uuid

import pytest
import salt.loader
from salt.exceptions import CommandExecutionError, SaltInvocationError

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def master_opts(salt_factories, consul_dc_pair):
    dc1, _ = consul_dc_pair
    factory = salt_factories.salt_master_daemon(
        "repl-master", overrides={
            "runner_dirs": [str(REPO / "_runners")],
            "utils_dirs": [str(REPO / "_utils")],
            "consul": {"address": dc1.http_addr, "retries": 0},
        },
    )
    return copy.deepcopy(factory.config)


@pytest.fixture
def runners(master_opts):
    utils = salt.loader.utils(master_opts)
    return salt.loader.runner(master_opts, utils=utils, context={})


@pytest.fixture
def prefix(consul_dc_pair):
    prefix = f"repl-{uuid.uuid4().hex[:8]}/"
    yield prefix
    for agent in consul_dc_pair:
        agent.api("DELETE", f"/v1/kv/{prefix}?recurse")


def _put(agent, key, value, flags=0):
    status, raw = agent.api("PUT", f"/v1/kv/{key}?flags={flags}", value if isinstance(value, bytes) else value.encode())
    assert status == 200 and raw.strip() == b"true"


def _tree(agent, prefix):
    """``{key: (bytes, flags)}`` as Consul itself holds it."""
    status, raw = agent.api("GET", f"/v1/kv/{prefix}?recurse")
    if status == 404:
        return {}
    import json

    return {
        e["Key"]: (base64.b64decode(e["Value"]) if e["Value"] else b"", e["Flags"]) for e in json.loads(raw)
    }


def test_replicates_then_writes_nothing_then_propagates_deletes(consul_dc_pair, runners, prefix, caplog):
    dc1, dc2 = consul_dc_pair
    secret = "pa55-never-logged"
    _put(dc1, f"{prefix}prod/gg/db/pool_size", "20")
    _put(dc1, f"{prefix}prod/gg/db/password", secret, flags=42)
    _put(dc1, f"{prefix}prod/gg/bin", b"\x00\xffraw")
    _put(dc1, f"{prefix}prod/gg/empty", b"")
    _put(dc2, f"{prefix}prod/gg/stale", "only-in-dc2")
    _put(dc2, f"{prefix}prod/gg/db/pool_size", "5")
    _put(dc2, "elsewhere-" + prefix + "x", "outside the prefix")

    with caplog.at_level(logging.DEBUG):
        ret = runners["consul_replicate.kv"](prefix, source="dc1", destinations=["dc2"])
    res = ret["dc2"][prefix]
    assert res["created"] == [f"{prefix}prod/gg/bin", f"{prefix}prod/gg/db/password", f"{prefix}prod/gg/empty"]
    assert res["updated"] == [f"{prefix}prod/gg/db/pool_size"]
    assert res["deleted"] == [f"{prefix}prod/gg/stale"]
    assert res["conflicts"] == []
    assert _tree(dc2, prefix) == _tree(dc1, prefix)
    assert _tree(dc2, prefix)[f"{prefix}prod/gg/db/password"] == (secret.encode(), 42)
    assert secret not in caplog.text and secret not in repr(ret)
    # Outside the prefix nothing was touched.
    assert dc2.api("GET", f"/v1/kv/elsewhere-{prefix}x")[0] == 200
    dc2.api("DELETE", f"/v1/kv/elsewhere-{prefix}x")

    # Idempotent: a second run writes nothing.
    index_before = dc2.api_json("GET", f"/v1/kv/{prefix}prod/gg/db/pool_size")[0]["ModifyIndex"]
    ret = runners["consul_replicate.kv"]([prefix], source="dc1", destinations=["dc2"])
    assert ret["dc2"][prefix] == {"created": [], "updated": [], "deleted": [], "conflicts": [], "unchanged": 4}
    assert dc2.api_json("GET", f"/v1/kv/{prefix}prod/gg/db/pool_size")[0]["ModifyIndex"] == index_before

    # A deletion upstream propagates; test=True first reports and writes nothing.
    dc1.api("DELETE", f"/v1/kv/{prefix}prod/gg/bin")
    ret = runners["consul_replicate.kv"](prefix, source="dc1", destinations=["dc2"], test=True)
    assert ret["dc2"][prefix]["deleted"] == [f"{prefix}prod/gg/bin"]
    assert f"{prefix}prod/gg/bin" in _tree(dc2, prefix)
    ret = runners["consul_replicate.kv"](prefix, source="dc1", destinations=["dc2"])
    assert ret["dc2"][prefix]["deleted"] == [f"{prefix}prod/gg/bin"]
    assert _tree(dc2, prefix) == _tree(dc1, prefix)
    assert f"{prefix}prod/gg/bin" not in _tree(dc2, prefix)


def test_defaults_from_config_and_datacenters(consul_dc_pair, master_opts, prefix):
    dc1, dc2 = consul_dc_pair
    opts = copy.deepcopy(master_opts)
    opts["consul"]["replicate"] = {"prefixes": [prefix]}
    runners = salt.loader.runner(opts, utils=salt.loader.utils(opts), context={})
    _put(dc1, f"{prefix}a", "1")
    # No source/destinations: the agent's own dc is the source, every other dc a destination.
    ret = runners["consul_replicate.kv"]()
    assert list(ret) == ["dc2"]
    assert ret["dc2"][prefix]["created"] == [f"{prefix}a"]
    assert _tree(dc2, prefix) == {f"{prefix}a": (b"1", 0)}


def test_empty_source_is_refused_unless_allowed(consul_dc_pair, runners, prefix):
    _, dc2 = consul_dc_pair
    _put(dc2, f"{prefix}keep", "x")
    with pytest.raises(CommandExecutionError, match="source prefix is empty"):
        runners["consul_replicate.kv"](prefix, source="dc1", destinations=["dc2"])
    assert _tree(dc2, prefix) == {f"{prefix}keep": (b"x", 0)}
    ret = runners["consul_replicate.kv"](prefix, source="dc1", destinations=["dc2"], allow_empty_source=True)
    assert ret["dc2"][prefix]["deleted"] == [f"{prefix}keep"]
    assert _tree(dc2, prefix) == {}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prefixes": ""},
        {"prefixes": ["/"]},
        {"prefixes": ["a/../b"]},
        {"prefixes": ["a/"], "source": "dc1", "destinations": ["dc1"]},
        {"prefixes": ["a/"], "destinations": ["dc2?x=1"]},
    ],
)
def test_bad_arguments_fail_before_any_write(runners, kwargs):
    with pytest.raises(SaltInvocationError):
        runners["consul_replicate.kv"](**kwargs)


def test_one_value_is_the_same_bytes_whoever_stores_it(master_opts, runners, consul_dc_pair, prefix):
    """
    The same structure stored by ``consul.kv_put``, by ``consul.key_present``
    (serializer json) and copied by the replicate runner is byte-identical in
    Consul (one codec: compact JSON, sorted keys).
    """
    dc1, dc2 = consul_dc_pair
    opts = copy.deepcopy(master_opts)
    opts.update(module_dirs=[str(REPO / "_modules")], states_dirs=[str(REPO / "_states")], test=False, grains={})
    context = {}
    utils = salt.loader.utils(opts, context=context)
    funcs = salt.loader.minion_mods(opts, utils=utils, context=context)
    states = salt.loader.states(opts, funcs, utils, salt.loader.serializers(opts), context=context)
    value = {"b": [1, 2, {"c": "ü"}], "a": True, "n": None, "f": 1.5}

    assert funcs["consul.kv_put"](f"{prefix}by-module", value) is True
    ret = states["consul.key_present"](f"{prefix}by-state", value, serializer="json")
    assert ret["result"] is True and ret["changes"], ret
    again = states["consul.key_present"](f"{prefix}by-module", value, serializer="json")
    assert again["result"] is True and again["changes"] == {}, again  # the module's bytes are compliant
    res = runners["consul_replicate.kv"]([prefix], source=dc1.datacenter, destinations=[dc2.datacenter])
    assert res[dc2.datacenter][prefix]["created"] == sorted([f"{prefix}by-module", f"{prefix}by-state"]), res

    src, dst = _tree(dc1, prefix), _tree(dc2, prefix)
    stored = {src[f"{prefix}by-module"][0], src[f"{prefix}by-state"][0], dst[f"{prefix}by-module"][0],
              dst[f"{prefix}by-state"][0]}
    assert stored == {'{"a": true, "b": [1, 2, {"c": "ü"}], "f": 1.5, "n": null}'.encode()}, stored
