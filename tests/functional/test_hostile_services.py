"""
Hostile service definitions, fuzzed with hypothesis, through
``consul.service_register`` (execution module) and ``consul.service_present``
(state) against the real Consul agent: bad ports, names Consul or DNS reject,
duplicate check IDs, bad intervals, huge or malformed meta, odd types.

No crash (only Salt's own errors, or a state return), a clear error, and
nothing registered on rejection (checked in ``/v1/agent/services`` and
``/v1/agent/checks`` directly). What is accepted is registered exactly as
declared, every declared check included.
"""

import re
import urllib.parse
import uuid

import pytest
import salt.loader
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from salt.exceptions import CommandExecutionError, SaltInvocationError

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DNS_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")

names = st.one_of(
    st.from_regex(DNS_LABEL, fullmatch=True),
    st.sampled_from(["", "a b", "a/b", "..", "web_app", "a.b", "-web", "web-", "ünï", "x" * 64, "ok\n", "a\x00b"]),
    st.text(max_size=70),
    st.integers(),
    st.none(),
)
ports = st.one_of(
    st.none(),
    st.integers(min_value=-5, max_value=70000),
    st.sampled_from([0, 65535, 65536, -1, "80", "abc", True, 1.5, [80]]),
)
tags = st.one_of(
    st.none(),
    st.lists(st.text(max_size=30), max_size=3),
    st.sampled_from(["not-a-list", [1, 2], [""], ["a" * 5000]]),
)
meta = st.one_of(
    st.none(),
    st.dictionaries(st.text(max_size=140), st.text(max_size=600), max_size=3),
    st.sampled_from(
        [
            {f"k{i}": "v" for i in range(65)},
            {"consul-reserved": "1"},
            {"k": "v" * 513},
            {"k" * 129: "v"},
            {"version": "1.2", "n": 3},
            "not-a-dict",
            {"k": ["list"]},
        ]
    ),
)
intervals = st.sampled_from(["10s", "1m30s", "1.5s", "0s", "-1s", "abc", "10", 10, 0, -3, None, "", True])


@st.composite
def checks(draw):
    kind = draw(st.sampled_from(["ttl", "http", "tcp", "none", "two"]))
    check = {}
    name = draw(st.sampled_from([None, "alive", "alive", "port", "", "a b", 7]))
    if name is not None:
        check["name"] = name
    check_id = draw(st.sampled_from([None, None, "c1", "c1", "c2", "", "a/b"]))
    if check_id is not None:
        check["id"] = check_id
    if kind in ("ttl", "two"):
        check["ttl"] = draw(st.sampled_from(["30s", "0s", "abc", 30, None]))
    if kind in ("http", "two"):
        check["http"] = draw(st.sampled_from(["http://127.0.0.1:1/health", "", "not a url"]))
    if kind == "tcp":
        check["tcp"] = "127.0.0.1:1"
    if kind in ("http", "tcp", "two") or draw(st.booleans()):
        interval = draw(intervals)
        if interval is not None:
            check["interval"] = interval
    if draw(st.booleans()):
        check["status"] = draw(st.sampled_from(["passing", "critical", "bogus", 1]))
    if draw(st.booleans()):
        check["deregister_critical_service_after"] = draw(st.sampled_from(["10m", "zz", -1]))
    return check


check_lists = st.one_of(st.none(), st.lists(checks(), max_size=3), st.sampled_from(["not-a-list", [1], [{}]]))


def _registered(agent, sid):
    """(service or None, {check_id: check}) for service ID ``sid``, read directly from Consul."""
    services = agent.api_json("GET", "/v1/agent/services")
    found = {cid: c for cid, c in agent.api_json("GET", "/v1/agent/checks").items() if c.get("ServiceID") == sid}
    return services.get(sid), found


def _deregister(agent, sid):
    agent.api("PUT", "/v1/agent/service/deregister/" + urllib.parse.quote(sid, safe=""))


def _explicit_ids(check_list):
    if not isinstance(check_list, list):
        return []
    return [c.get("id") for c in check_list if isinstance(c, dict) and c.get("id")]


# --------------------------------------------------------------------------- execution module


@FUZZ
@given(name=names, port=ports, tags=tags, meta=meta, check_list=check_lists)
def test_service_register_fuzz(module_loaders, consul_agent, name, port, tags, meta, check_list):
    ids = _explicit_ids(check_list)
    # Duplicate explicit check IDs: see test_service_register_duplicate_check_ids.
    assume(len(ids) == len(set(ids)))
    sid = f"hz-{uuid.uuid4().hex[:10]}"
    consul = module_loaders.modules.consul
    try:
        try:
            assert consul.service_register(name, id=sid, port=port, tags=tags, meta=meta, checks=check_list) is True
        except (SaltInvocationError, CommandExecutionError) as err:
            message = str(err)
            assert message.strip()
            if isinstance(err, CommandExecutionError):
                assert message.startswith("consul.service_register failed:"), message
            service, found = _registered(consul_agent, sid)
            assert service is None and found == {}, (message, service, found)
            event(f"refused: {type(err).__name__}")
            return
        event("registered")
        service, found = _registered(consul_agent, sid)
        assert service is not None
        assert service["Service"] == name
        assert service["Port"] == (port or 0)
        # A single tag string is one tag (documented).
        assert service["Tags"] == ([tags] if isinstance(tags, str) else tags or [])
        assert len(found) == len(check_list or []), (check_list, found)
    finally:
        _deregister(consul_agent, sid)


def test_service_register_duplicate_check_ids(module_loaders, consul_agent):
    """Consul 1.8.7 accepts two checks with one ID and silently keeps the last:
    a half-applied definition. It must be refused before anything is sent."""
    sid = f"hz-{uuid.uuid4().hex[:10]}"
    try:
        with pytest.raises(SaltInvocationError):
            module_loaders.modules.consul.service_register(
                "web", id=sid, checks=[{"id": "c1", "name": "a", "ttl": "30s"}, {"id": "c1", "name": "b", "ttl": "9s"}]
            )
    finally:
        service, _ = _registered(consul_agent, sid)
        _deregister(consul_agent, sid)
    assert service is None


# --------------------------------------------------------------------------- state


def _states(loaders, test=False):
    return salt.loader.states(
        dict(loaders.opts, test=test),
        functions=loaders.modules,
        utils=loaders.utils,
        serializers=loaders.serializers,
        context=loaders.context,
    )


@FUZZ
@given(name=names, port=ports, tags=tags, meta=meta, check_list=check_lists)
def test_service_present_fuzz(module_loaders, consul_agent, name, port, tags, meta, check_list):
    sid = f"hz-{uuid.uuid4().hex[:10]}"
    states = _states(module_loaders)
    try:
        ret = states["consul.service_present"](
            name, service_id=sid, port=port, tags=tags, meta=meta, checks=check_list
        )
        assert set(ret) >= {"name", "result", "changes", "comment"}
        service, found = _registered(consul_agent, sid)
        if ret["result"] is not True:
            assert ret["result"] is False and ret["changes"] == {}
            assert ret["comment"].startswith(f"Service {sid}:") and len(ret["comment"]) > len(sid) + 10
            assert service is None and found == {}, (ret["comment"], service, found)
            event("refused")
            return
        event("registered")
        # Accepted: a DNS-resolvable name, registered exactly, every check there.
        assert isinstance(name, str) and DNS_LABEL.match(name), name
        assert service is not None and service["Service"] == name
        assert service["Port"] == int(port or 0)
        assert len(found) == len(check_list or [])
        # ...and a re-run is compliant.
        again = states["consul.service_present"](
            name, service_id=sid, port=port, tags=tags, meta=meta, checks=check_list
        )
        assert again["result"] is True and again["changes"] == {}, again
    finally:
        _deregister(consul_agent, sid)


@pytest.mark.parametrize(
    "name, why",
    [("web_app", "DNS label"), ("a.b", "DNS label"), ("x" * 64, "DNS label"), ("ünï", "DNS label")],
)
def test_service_present_refuses_names_dns_cannot_resolve(module_loaders, consul_agent, name, why):
    sid = f"hz-{uuid.uuid4().hex[:10]}"
    ret = _states(module_loaders)["consul.service_present"](name, service_id=sid, port=1)
    assert ret["result"] is False and why in ret["comment"]
    assert _registered(consul_agent, sid) == (None, {})


# --------------------------------------------------------------------------- test mode predicts the apply

# Definitions the state and the module once judged differently (issue 12):
# reserved meta keys, non-Go durations, alias checks, odd check fields.
odd_checks = st.one_of(
    checks(),
    st.sampled_from(
        [
            {"name": "alias", "alias_service": "db"},
            {"name": "h", "http": "http://127.0.0.1:1/h", "interval": "10 seconds"},
            {"name": "h", "http": "http://127.0.0.1:1/h", "interval": "1m0s", "timeout": "2s"},
            {"name": "g", "grpc": "127.0.0.1:1", "interval": "5s", "grpc_use_tls": True},
            {"name": "t", "ttl": "30s", "success_before_passing": 2, "failures_before_critical": -1},
            {"name": "t", "ttl": "30s", "bogus_field": 1},
            {"name": "h", "http": "http://127.0.0.1:1/h", "interval": "5s", "header": {"X-A": "b"}},
            {"name": "h", "http": "http://127.0.0.1:1/h", "interval": "5s", "header": "x"},
            {"name": "t", "ttl": "30s", "notes": 5},
        ]
    ),
)
odd_meta = st.one_of(meta, st.sampled_from([{"consul-x": "1"}, {"ok": "1", "managed_by": "me"}, {"n": None}]))


@FUZZ
@given(
    name=names,
    port=ports,
    tags=tags,
    meta=odd_meta,
    check_list=st.one_of(st.none(), st.lists(odd_checks, max_size=3)),
    weights=st.sampled_from([None, {"passing": 3}, {"Passing": 2, "warning": 1}, {"bogus": 1}, {"passing": -1}]),
)
def test_service_present_test_mode_predicts_the_apply(
    module_loaders, consul_agent, name, port, tags, meta, check_list, weights
):
    """
    For every definition: test=True returns None exactly when the apply returns
    True (a new service, so there is always something to do), and False exactly
    when the apply returns False, with the same message. Consul is checked:
    test mode wrote nothing; a refused apply wrote nothing either.
    """
    sid = f"hp-{uuid.uuid4().hex[:10]}"
    kwargs = dict(service_id=sid, port=port, tags=tags, meta=meta, checks=check_list, weights=weights)
    try:
        predicted = _states(module_loaders, test=True)["consul.service_present"](name, **kwargs)
        assert _registered(consul_agent, sid) == (None, {})
        applied = _states(module_loaders)["consul.service_present"](name, **kwargs)
        service, _ = _registered(consul_agent, sid)
        if applied["result"] is True:
            event("registered")
            assert predicted["result"] is None, (predicted, applied)
            assert predicted["changes"] == applied["changes"]
            assert service is not None
        else:
            event("refused")
            assert applied["result"] is False, applied
            assert predicted["result"] is False, (predicted, applied)
            assert predicted["comment"] == applied["comment"]
            assert service is None
    finally:
        _deregister(consul_agent, sid)
