"""
State module ``consul`` against a real Consul agent, through real Salt loaders.

Each state runs with and without ``test=True`` (the ``testmode`` fixture) and
Consul itself is checked afterwards with plain HTTP (``consul_agent.api``),
never through our client. Write counts come from the shared client's
``stats``: the states are called through a states loader that shares the
execution modules (and so the client) of the ``loaders`` fixture.
"""

import base64
import copy
import uuid

import pytest
from conftest import state_loader, wait_for
from dnsquery import query as dns_query

import saltconsul_client

MINION = "db01.prod.gg.mydc1.example.com"  # the functional minion's ID (tests/conftest.py)
OTHER = "db02.prod.gg.mydc1.example.com"


# --------------------------------------------------------------------------- helpers


class StateCaller:
    """
    Call ``consul.<state>`` functions the way the state system does (loader
    dunders, ``__opts__['test']``), sharing ``loaders.context`` so the test can
    read the client's request/write counters.
    """

    def __init__(self, loaders):
        self.loaders = loaders
        self._by_mode = {}

    def _states(self, test):
        if test not in self._by_mode:
            opts = dict(self.loaders.opts, test=test)
            self._by_mode[test] = state_loader(
                opts,
                self.loaders.modules,
                self.loaders.utils,
                self.loaders.serializers,
                self.loaders.context,
            )
        return self._by_mode[test]

    def __call__(self, fun, test=False, **kwargs):
        return self._states(test)[f"consul.{fun}"](**kwargs)

    @property
    def stats(self):
        return dict(saltconsul_client.get_client(self.loaders.opts, self.loaders.context).stats)


def _loaders(functional_minion, consul_agent, minion_id, cachedir):
    from saltfactories.utils.functional import Loaders

    opts = copy.deepcopy(functional_minion.config)
    opts["consul"] = {"address": consul_agent.http_addr, "retries": 0}
    opts["id"] = minion_id
    opts["cachedir"] = str(cachedir)
    return Loaders(opts)


# Module-scoped: loading every Salt module and grain takes seconds, and these
# tests only ever compare counters before/after, so they can share loaders.
@pytest.fixture(scope="module")
def state_loaders(functional_minion, consul_agent, tmp_path_factory):
    loaders = _loaders(functional_minion, consul_agent, MINION, tmp_path_factory.mktemp("states-cache"))
    try:
        yield loaders
    finally:
        loaders.reset_state()


@pytest.fixture(scope="module")
def other_loaders(functional_minion, consul_agent, tmp_path_factory):
    """A second minion (another ID, same agent): for ownership and single-holder races."""
    loaders = _loaders(functional_minion, consul_agent, OTHER, tmp_path_factory.mktemp("other-cache"))
    try:
        yield loaders
    finally:
        loaders.reset_state()


@pytest.fixture
def loaders(state_loaders):
    return state_loaders


@pytest.fixture
def states(state_loaders):
    return StateCaller(state_loaders)


@pytest.fixture
def other_states(other_loaders):
    return StateCaller(other_loaders)


@pytest.fixture(params=[False, True], ids=["apply", "test-mode"])
def testmode(request):
    return request.param


@pytest.fixture
def unique():
    return uuid.uuid4().hex[:8]


@pytest.fixture
def cleanup(consul_agent):
    """Things to remove from Consul after the test, whatever happened."""
    todo = {"services": [], "checks": [], "queries": [], "kv": []}
    yield todo
    for sid in todo["services"]:
        consul_agent.api("PUT", f"/v1/agent/service/deregister/{sid}")
    for cid in todo["checks"]:
        consul_agent.api("PUT", f"/v1/agent/check/deregister/{cid}")
    for key in todo["kv"]:
        consul_agent.api("DELETE", f"/v1/kv/{key}?recurse")
    if todo["queries"]:
        for query in consul_agent.api_json("GET", "/v1/query") or []:
            if query["Name"] in todo["queries"]:
                consul_agent.api("DELETE", f"/v1/query/{query['ID']}")


def agent_service(consul_agent, sid):
    status, _ = consul_agent.api("GET", f"/v1/agent/service/{sid}")
    return consul_agent.api_json("GET", f"/v1/agent/service/{sid}") if status == 200 else None


def agent_checks(consul_agent, sid):
    return {
        cid: check
        for cid, check in consul_agent.api_json("GET", "/v1/agent/checks").items()
        if check["ServiceID"] == sid
    }


# --------------------------------------------------------------------------- services


def test_service_present(states, consul_agent, testmode, unique, cleanup):
    sid = f"web-{unique}"
    cleanup["services"].append(sid)
    kwargs = dict(
        name=f"web-{unique}",
        service_id=sid,
        port=8080,
        address="127.0.0.5",
        tags=["http"],
        meta={"version": "1.2"},
        env_tags=True,
        checks=[
            {"name": "alive", "ttl": "60s"},
            {"name": "port", "tcp": f"127.0.0.1:{consul_agent.ports['http']}", "interval": "10s"},
        ],
    )
    ret = states("service_present", test=testmode, **kwargs)
    if testmode:
        assert ret["result"] is None, ret
        assert "would be registered" in ret["comment"]
        assert ret["changes"]["new"]["tags"] == ["http", "prod", "gg"]
        assert agent_service(consul_agent, sid) is None
        return
    assert ret["result"] is True, ret
    assert ret["changes"]["old"] is None
    svc = agent_service(consul_agent, sid)
    assert svc["Service"] == f"web-{unique}"
    assert svc["Tags"] == ["http", "prod", "gg"]
    assert (svc["Port"], svc["Address"]) == (8080, "127.0.0.5")
    assert svc["Meta"]["version"] == "1.2"
    assert svc["Meta"]["managed_by"] == "salt-consul"
    assert svc["Meta"]["salt_minion"] == MINION
    checks = agent_checks(consul_agent, sid)
    assert sorted(checks) == [f"service:{sid}:alive", f"service:{sid}:port"]
    assert {c["Type"] for c in checks.values()} == {"ttl", "tcp"}

    before = states.stats
    again = states("service_present", **kwargs)
    assert again["result"] is True, again
    assert again["changes"] == {}
    assert states.stats["writes"] == before["writes"]
    assert states.stats["requests"] - before["requests"] <= 3  # the service, the checks, the env grain needs none
    # test mode on a compliant service: nothing to do either
    assert states("service_present", test=True, **kwargs)["result"] is True


def test_service_present_updates_only_what_differs(states, consul_agent, testmode, unique, cleanup):
    sid = f"api-{unique}"
    cleanup["services"].append(sid)
    base = dict(
        name="api",
        service_id=sid,
        port=9000,
        tags=["v1"],
        checks=[{"name": "alive", "ttl": "60s"}, {"name": "extra", "ttl": "60s"}],
    )
    assert states("service_present", **base)["result"] is True
    consul_agent.api("PUT", f"/v1/agent/check/pass/service:{sid}:alive")

    changed = dict(
        base,
        tags=["v2"],
        checks=[{"name": "alive", "ttl": "60s"}],
        # header values are credentials: never shown in changes
        port=9001,
    )
    ret = states("service_present", test=testmode, **changed)
    assert ret["changes"]["tags"] == {"old": ["v1"], "new": ["v2"]}
    assert ret["changes"]["port"] == {"old": 9000, "new": 9001}
    assert [c["id"] for c in ret["changes"]["checks"]["new"]] == [f"service:{sid}:alive"]
    svc = agent_service(consul_agent, sid)
    checks = agent_checks(consul_agent, sid)
    if testmode:
        assert ret["result"] is None
        assert svc["Tags"] == ["v1"] and svc["Port"] == 9000
        assert sorted(checks) == [f"service:{sid}:alive", f"service:{sid}:extra"]
        return
    assert ret["result"] is True, ret
    assert svc["Tags"] == ["v2"] and svc["Port"] == 9001
    assert sorted(checks) == [f"service:{sid}:alive"]  # the dropped check is gone
    assert checks[f"service:{sid}:alive"]["Status"] == "passing"  # the kept one kept its status

    # A check definition change Consul cannot show us is still detected (fingerprint).
    longer = dict(changed, checks=[{"name": "alive", "ttl": "90s"}])
    before = states.stats["writes"]
    ret = states("service_present", **longer)
    assert ret["result"] is True and "checks" in ret["changes"]
    assert states.stats["writes"] == before + 1
    assert states("service_present", **longer)["changes"] == {}


def test_reapply_keeps_passing_check_passing(states, consul_agent, unique, cleanup):
    """A TTL check starts critical; once passed, re-applying must not reset it (health endpoint)."""
    sid = f"cache-{unique}"
    cleanup["services"].append(sid)
    kwargs = dict(name=f"cache-{unique}", service_id=sid, port=6379, checks=[{"name": "alive", "ttl": "120s"}])
    assert states("service_present", **kwargs)["result"] is True
    health = consul_agent.api_json("GET", f"/v1/health/checks/cache-{unique}")
    assert [c["Status"] for c in health] == ["critical"]
    assert consul_agent.api("PUT", f"/v1/agent/check/pass/service:{sid}:alive")[0] == 200

    def passing():
        checks = consul_agent.api_json("GET", f"/v1/health/checks/cache-{unique}")
        return checks and all(c["Status"] == "passing" for c in checks)

    assert wait_for(passing)
    for _ in range(3):
        ret = states("service_present", **kwargs)
        assert ret["result"] is True and ret["changes"] == {}
    assert passing()
    assert consul_agent.api_json("GET", f"/v1/health/service/cache-{unique}?passing")[0]["Service"]["ID"] == sid


def test_header_values_never_shown(states, consul_agent, unique, cleanup):
    sid = f"hdr-{unique}"
    cleanup["services"].append(sid)
    secret = "Bearer s3cr3t-" + unique
    ret = states(
        "service_present",
        test=True,
        name="hdr",
        service_id=sid,
        checks=[
            {
                "name": "http",
                "http": f"{consul_agent.http_addr}/v1/status/leader",
                "interval": "10s",
                "header": {"Authorization": [secret]},
            }
        ],
    )
    assert ret["result"] is None
    assert secret not in repr(ret)
    assert ret["changes"]["new"]["checks"][0]["header"] == {"Authorization": "<redacted>"}


def test_service_absent(states, consul_agent, testmode, unique, cleanup):
    sid = f"old-{unique}"
    cleanup["services"].append(sid)
    assert states("service_present", name="old", service_id=sid, checks=[{"ttl": "60s"}])["result"] is True
    ret = states("service_absent", test=testmode, name=sid)
    assert ret["changes"] == {"old": {"service": "old", "id": sid}, "new": None}
    if testmode:
        assert ret["result"] is None
        assert agent_service(consul_agent, sid) is not None
        return
    assert ret["result"] is True
    assert agent_service(consul_agent, sid) is None
    assert agent_checks(consul_agent, sid) == {}
    before = states.stats["writes"]
    assert states("service_absent", name=sid)["changes"] == {}
    assert states.stats["writes"] == before


def test_service_present_refuses_others_registrations(states, other_states, consul_agent, unique, cleanup):
    hand = f"hand-{unique}"
    theirs = f"theirs-{unique}"
    cleanup["services"] += [hand, theirs]
    consul_agent.api_json("PUT", "/v1/agent/service/register", {"Name": "hand", "ID": hand, "Port": 1})
    assert other_states("service_present", name="theirs", service_id=theirs, port=2)["result"] is True
    for sid in (hand, theirs):
        ret = states("service_present", name="x", service_id=sid, port=3)
        assert ret["result"] is False and ret["changes"] == {}
        assert "not replacing" in ret["comment"]
    assert agent_service(consul_agent, hand)["Port"] == 1
    assert agent_service(consul_agent, theirs)["Port"] == 2
    ret = states("service_present", name="hand", service_id=hand, port=3, replace=True)
    assert ret["result"] is True
    assert agent_service(consul_agent, hand)["Meta"]["salt_minion"] == MINION


def test_services_pruned_touches_only_own(states, other_states, consul_agent, testmode, unique, cleanup):
    keep, gone, theirs, hand = (f"{n}-{unique}" for n in ("keep", "gone", "theirs", "hand"))
    cleanup["services"] += [keep, gone, theirs, hand]
    assert states("service_present", name="keep", service_id=keep)["result"] is True
    assert states("service_present", name="gone", service_id=gone)["result"] is True
    assert other_states("service_present", name="theirs", service_id=theirs)["result"] is True
    consul_agent.api_json("PUT", "/v1/agent/service/register", {"Name": "hand", "ID": hand})

    ret = states("services_pruned", test=testmode, name="prune", keep=[keep])
    assert ret["changes"] == {"deregistered": [gone]}
    present = set(consul_agent.api_json("GET", "/v1/agent/services"))
    if testmode:
        assert ret["result"] is None
        assert {keep, gone, theirs, hand} <= present
        return
    assert ret["result"] is True
    assert {keep, theirs, hand} <= present and gone not in present
    before = states.stats["writes"]
    assert states("services_pruned", name="prune", keep=[keep])["changes"] == {}
    assert states.stats["writes"] == before


def test_services_pruned_touches_only_its_owners(states, consul_agent, testmode, unique, cleanup):
    """
    Formulas compose: a prune removes only what its own owner registered,
    never a single-holder service (marked with its lock), never a service a
    live session is tied to (an older single holder's, with no mark), and
    ``*`` (bootstrap.leave) every owner but those.
    """
    reg, reg_gone, app, plain, held, legacy = (
        f"{n}-{unique}" for n in ("reg", "reg-gone", "app", "plain", "held", "legacy")
    )
    cleanup["services"] += [reg, reg_gone, app, plain, held, legacy]
    for sid, owner in ((reg, "consul.register"), (reg_gone, "consul.register"), (app, "app"), (plain, None)):
        assert states("service_present", name=sid.split("-")[0], service_id=sid, owner=owner)["result"] is True
    assert agent_service(consul_agent, app)["Meta"]["salt_owner"] == "app"
    assert "salt_owner" not in agent_service(consul_agent, plain)["Meta"]
    ttl = [{"name": "alive", "ttl": "60s", "status": "passing"}]
    # A single holder's instance, marked by the state with its lock ...
    assert states("service_present", name="held", service_id=held, owner="consul.register", checks=ttl)["result"]
    body = dict(agent_service(consul_agent, held), ID=held, Name="held")
    body["Meta"] = dict(body["Meta"], salt_lock="locks/held/leader")
    consul_agent.api_json("PUT", "/v1/agent/service/register", {k: body[k] for k in ("ID", "Name", "Meta")} | {
        "Check": {"CheckID": f"service:{held}:alive", "Name": "alive", "TTL": "60s", "Status": "passing"}})
    # ... and one registered before marks existed, whose check a live session is tied to.
    assert states("service_present", name="legacy", service_id=legacy, owner="consul.register", checks=ttl)["result"]
    session = consul_agent.api_json(
        "PUT", "/v1/session/create", {"Name": f"lock {unique}", "ServiceChecks": [{"ID": f"service:{legacy}:alive"}]}
    )["ID"]
    try:
        ret = states("services_pruned", test=testmode, name="prune", keep=[reg], owner="consul.register")
        assert ret["changes"] == {"deregistered": [reg_gone]}, ret
        assert legacy in ret["comment"], ret
        present = set(consul_agent.api_json("GET", "/v1/agent/services"))
        if testmode:
            assert ret["result"] is None and reg_gone in present
            return
        assert ret["result"] is True
        assert {reg, app, plain, held, legacy} <= present and reg_gone not in present
        # No owner: only what was registered without one.
        assert states("services_pruned", name="prune", keep=[])["changes"] == {"deregistered": [plain]}
        # Every owner (bootstrap.leave): still not the single holder's nor the session-tied one.
        ret = states("services_pruned", name="leave", keep=[], owner="*")
        assert ret["changes"] == {"deregistered": sorted([reg, app])}, ret
        assert {held, legacy} <= set(consul_agent.api_json("GET", "/v1/agent/services"))
        assert states("service_present", name="x", owner="*")["result"] is False
    finally:
        consul_agent.api("PUT", f"/v1/session/destroy/{session}")


def test_bad_arguments_fail_before_any_request(states):
    before = states.stats["requests"]
    for kwargs in (
        {"name": "x", "checks": [{"name": "a"}]},  # no kind
        {"name": "x", "checks": [{"http": "http://127.0.0.1:1/", "ttl": "5s"}]},  # two kinds
        {"name": "x", "checks": [{"http": "http://127.0.0.1:1/"}]},  # no interval
        {"name": "x", "checks": [{"ttl": "5s", "bogus": 1}]},
        {"name": "x", "checks": [{"ttl": "5s"}, {"ttl": "9s"}]},  # same default name/ID
        {"name": "x", "tags": "not-a-list-of-strings".split() + [3]},
    ):
        ret = states("service_present", **kwargs)
        assert ret["result"] is False, kwargs
    ret = states("key_present", name="k", value={"a": 1})  # structure without serializer
    assert ret["result"] is False and "serializer" in ret["comment"]
    assert states.stats["requests"] == before


# --------------------------------------------------------------------------- checks


def test_check_present(states, consul_agent, testmode, unique, cleanup):
    cid = f"disk-{unique}"
    cleanup["checks"].append(cid)
    kwargs = dict(name=f"disk {unique}", check_id=cid, ttl="60s", notes="disk space")
    ret = states("check_present", test=testmode, **kwargs)
    checks = consul_agent.api_json("GET", "/v1/agent/checks")
    if testmode:
        assert ret["result"] is None and ret["changes"]["old"] is None
        assert cid not in checks
        return
    assert ret["result"] is True, ret
    assert checks[cid]["Name"] == f"disk {unique}"
    assert checks[cid]["Type"] == "ttl"
    assert checks[cid]["Notes"].startswith("disk space [salt-consul ")
    consul_agent.api("PUT", f"/v1/agent/check/pass/{cid}")

    before = states.stats
    again = states("check_present", **kwargs)
    assert again["result"] is True and again["changes"] == {}
    assert states.stats["writes"] == before["writes"]
    assert consul_agent.api_json("GET", "/v1/agent/checks")[cid]["Status"] == "passing"

    # An invisible definition change (the TTL) is detected through the fingerprint.
    ret = states("check_present", test=True, **dict(kwargs, ttl="120s"))
    assert ret["result"] is None and "definition" in ret["changes"]
    ret = states("check_present", **dict(kwargs, ttl="120s"))
    assert ret["result"] is True and ret["changes"]
    assert states("check_present", **dict(kwargs, ttl="120s"))["changes"] == {}


def test_check_present_attached_survives_service_reapply(states, consul_agent, unique, cleanup):
    sid = f"svc-{unique}"
    cid = f"extra-{unique}"
    cleanup["services"].append(sid)
    svc = dict(name="svc", service_id=sid, checks=[{"name": "alive", "ttl": "60s"}])
    assert states("service_present", **svc)["result"] is True
    assert states("check_present", name="extra", check_id=cid, service_id=sid, ttl="60s")["result"] is True
    ret = states("service_present", **svc)
    assert ret["changes"] == {}  # the separately managed check is not "stale"
    assert cid in agent_checks(consul_agent, sid)


def test_check_absent(states, consul_agent, testmode, unique, cleanup):
    cid = f"gone-{unique}"
    cleanup["checks"].append(cid)
    assert states("check_present", name="gone", check_id=cid, ttl="60s")["result"] is True
    ret = states("check_absent", test=testmode, name=cid)
    assert ret["changes"]["old"]["id"] == cid
    present = cid in consul_agent.api_json("GET", "/v1/agent/checks")
    if testmode:
        assert ret["result"] is None and present
        return
    assert ret["result"] is True and not present
    assert states("check_absent", name=cid)["changes"] == {}


# --------------------------------------------------------------------------- KV


def kv_raw(consul_agent, key):
    status, raw = consul_agent.api("GET", f"/v1/kv/{key}?raw")
    return raw.decode() if status == 200 else None


def test_key_present_string(states, consul_agent, testmode, kv_prefix):
    key = f"{kv_prefix}/pool_size"
    ret = states("key_present", test=testmode, name=key, value=20)
    assert ret["changes"] == {"value": {"old": None, "new": 20}}
    if testmode:
        assert ret["result"] is None and kv_raw(consul_agent, key) is None
        return
    assert ret["result"] is True
    assert kv_raw(consul_agent, key) == "20"
    before = states.stats
    assert states("key_present", name=key, value="20")["changes"] == {}
    assert states.stats["writes"] == before["writes"]
    ret = states("key_present", name=key, value=30)
    assert ret["changes"] == {"value": {"old": "20", "new": 30}}
    assert kv_raw(consul_agent, key) == "30"


@pytest.mark.parametrize(
    "state, kwargs, message",
    [
        ("key_present", {"value": "x", "flags": -1}, "flags must be a non-negative integer"),
        ("key_present", {"value": "x", "flags": "lots"}, "flags must be a non-negative integer"),
        ("key_present", {"value": "x", "flags": 2**64}, "flags must be at most"),
        ("env_query_present", {"ttl": "soon"}, "ttl"),
        ("env_query_present", {"failover_nearest_n": -2}, "failover_nearest_n must be a non-negative integer"),
        ("env_query_present", {"failover_datacenters": [3]}, "failover_datacenters"),
        ("single_holder_service", {"checks": [{"name": "a", "ttl": "30s"}], "wait_passing": "soon"}, "duration"),
        ("single_holder_service", {"checks": [{"name": "a", "ttl": "30s"}], "lock_wait": [1]}, "duration"),
    ],
)
def test_bad_arguments_fail_alike_in_test_mode_and_apply(states, consul_agent, testmode, kv_prefix, state, kwargs, message):
    """Refused before anything is written, with the same answer that test=True gives (never a traceback)."""
    name = f"{kv_prefix}/bad" if state == "key_present" else f"bad{abs(hash(message)) % 10000}"
    before = states.stats["writes"]
    ret = states(state, test=testmode, name=name, **kwargs)
    assert ret["result"] is False, ret
    assert message in ret["comment"] and ret["changes"] == {}, ret
    assert states.stats["writes"] == before
    if state == "key_present":
        assert kv_raw(consul_agent, name) is None


def test_key_present_structure(states, consul_agent, testmode, kv_prefix):
    key = f"{kv_prefix}/db"
    value = {"hosts": ["a", "b"], "pool": 5}
    ret = states("key_present", test=testmode, name=key, value=value, serializer="json")
    if testmode:
        assert ret["result"] is None and kv_raw(consul_agent, key) is None
        return
    assert ret["result"] is True
    import json

    assert json.loads(kv_raw(consul_agent, key)) == value
    # Same structure, other formatting: compliant, no write.
    consul_agent.api("PUT", f"/v1/kv/{key}", b'{"pool":5,"hosts":["a","b"]}')
    before = states.stats["writes"]
    assert states("key_present", name=key, value=value, serializer="json")["changes"] == {}
    assert states.stats["writes"] == before
    ret = states("key_present", name=f"{key}-yaml", value=value, serializer="yaml")
    assert ret["result"] is True
    assert "hosts:" in kv_raw(consul_agent, f"{key}-yaml")


def test_key_present_secret_never_shown(states, consul_agent, testmode, kv_prefix, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    key = f"{kv_prefix}/db_password"
    old, new = "old-" + uuid.uuid4().hex, "new-" + uuid.uuid4().hex
    consul_agent.api("PUT", f"/v1/kv/{key}", old.encode())
    ret = states("key_present", test=testmode, name=key, value=new, secret=True)
    assert ret["result"] is (None if testmode else True), ret
    assert ret["changes"] == {"value": {"old": "<secret: not shown>", "new": "<secret: not shown>"}}
    for text in (repr(ret), caplog.text):
        assert old not in text and new not in text
    assert kv_raw(consul_agent, key) == (old if testmode else new)


def test_key_present_cas_conflict_not_overwritten(states, loaders, consul_agent, kv_prefix, monkeypatch):
    """
    Another writer changes the key between the state's read and its write: the
    state's check-and-set must lose and say so. The concurrent write is a real
    PUT to Consul, made right after the state's real read.
    """
    key = f"{kv_prefix}/conflict"
    consul_agent.api("PUT", f"/v1/kv/{key}", b"v1")
    assert "consul.kv_get" in loaders.modules  # loads it; below, the raw function (not the name-bound wrapper)
    real_get = loaders.modules._dict["consul.kv_get"]

    def get_then_someone_writes(*args, **kwargs):
        result = real_get(*args, **kwargs)
        consul_agent.api("PUT", f"/v1/kv/{key}", b"theirs")
        return result

    monkeypatch.setitem(loaders.modules._dict, "consul.kv_get", get_then_someone_writes)
    ret = states("key_present", name=key, value="mine")
    assert ret["result"] is False
    assert "CAS conflict" in ret["comment"] and "not overwritten" in ret["comment"]
    assert ret["changes"] == {}
    assert kv_raw(consul_agent, key) == "theirs"


def test_key_absent(states, consul_agent, testmode, kv_prefix):
    consul_agent.api("PUT", f"/v1/kv/{kv_prefix}/a", b"1")
    consul_agent.api("PUT", f"/v1/kv/{kv_prefix}/sub/b", b"2")
    consul_agent.api("PUT", f"/v1/kv/{kv_prefix}/sub/c", b"3")
    one = states("key_absent", test=testmode, name=f"{kv_prefix}/a")
    tree = states("key_absent", test=testmode, name=f"{kv_prefix}/sub", recurse=True)
    assert one["changes"] == {"deleted": [f"{kv_prefix}/a"]}
    assert tree["changes"] == {"deleted": [f"{kv_prefix}/sub/b", f"{kv_prefix}/sub/c"]}
    if testmode:
        assert one["result"] is None and tree["result"] is None
        assert kv_raw(consul_agent, f"{kv_prefix}/a") == "1"
        assert kv_raw(consul_agent, f"{kv_prefix}/sub/c") == "3"
        return
    assert one["result"] is True and tree["result"] is True
    assert kv_raw(consul_agent, f"{kv_prefix}/a") is None
    assert consul_agent.api("GET", f"/v1/kv/{kv_prefix}/sub?recurse")[0] == 404
    before = states.stats["writes"]
    assert states("key_absent", name=f"{kv_prefix}/a")["changes"] == {}
    assert states("key_absent", name=f"{kv_prefix}/sub", recurse=True)["changes"] == {}
    assert states.stats["writes"] == before


# --------------------------------------------------------------------------- single holder


def lock_value(consul_agent, key):
    status, raw = consul_agent.api("GET", f"/v1/kv/{key}")
    if status != 200:
        return None, None
    entry = consul_agent.api_json("GET", f"/v1/kv/{key}")[0]
    value = base64.b64decode(entry["Value"]).decode() if entry.get("Value") else None
    return entry.get("Session"), value


def instances(consul_agent, service):
    return sorted(s["ID"] for s in consul_agent.api_json("GET", "/v1/agent/services").values() if s["Service"] == service)


def test_single_holder_race_and_takeover(states, other_states, consul_agent, unique, cleanup, kv_prefix):
    service = f"pg-{unique}"
    key = f"{kv_prefix}/leader"
    ids = {MINION: f"{service}@{MINION}", OTHER: f"{service}@{OTHER}"}
    cleanup["services"] += list(ids.values())

    def spec(minion):
        return dict(
            name=service,
            service_id=ids[minion],
            lock_key=key,
            lock_delay="1s",
            port=5432,
            checks=[{"name": "alive", "ttl": "60s", "status": "passing"}],
        )

    # test mode while free: would take it, touches nothing
    dry = states("single_holder_service", test=True, **spec(MINION))
    assert dry["result"] is None and dry["changes"]["lock"] == {"old": None, "new": MINION}
    assert instances(consul_agent, service) == [] and lock_value(consul_agent, key) == (None, None)

    first = states("single_holder_service", **spec(MINION))
    assert first["result"] is True, first
    session, holder = lock_value(consul_agent, key)
    assert session and holder == MINION
    info = consul_agent.api_json("GET", f"/v1/session/info/{session}")[0]
    # The session ends when the node's serf health or the service's own check fails.
    assert info.get("NodeChecks") == ["serfHealth"]
    assert [c["ID"] for c in info.get("ServiceChecks") or []] == [f"service:{ids[MINION]}:alive"]

    before = other_states.stats
    second = other_states("single_holder_service", **spec(OTHER))
    # A standby is a success (it must not page anyone), unchanged, naming the holder.
    assert second["result"] is True, second
    assert MINION in second["comment"]
    assert second["changes"] == {}
    assert other_states.stats["writes"] == before["writes"]  # registered nothing
    assert instances(consul_agent, service) == [ids[MINION]]
    assert other_states("single_holder_service", test=True, **spec(OTHER))["result"] is True

    # Re-applying on the holder is a no-op.
    before = states.stats
    again = states("single_holder_service", **spec(MINION))
    assert again["result"] is True and again["changes"] == {}
    assert states.stats["writes"] == before["writes"]

    # The holder's health fails: Consul invalidates its session, the lock is released.
    consul_agent.api("PUT", f"/v1/agent/check/fail/service:{ids[MINION]}:alive")
    assert wait_for(lambda: lock_value(consul_agent, key)[0] is None)

    takeover = other_states("single_holder_service", **spec(OTHER))  # waits out the 1s lock delay
    assert takeover["result"] is True, takeover
    assert lock_value(consul_agent, key)[1] == OTHER

    # The former holder's next apply stands by naming the new holder and removes its stale instance.
    former = states("single_holder_service", **spec(MINION))
    assert former["result"] is True and OTHER in former["comment"]
    assert former["changes"] == {"deregistered": ids[MINION]}
    assert instances(consul_agent, service) == [ids[OTHER]]
    health = consul_agent.api_json("GET", f"/v1/health/service/{service}?passing")
    assert [entry["Service"]["ID"] for entry in health] == [ids[OTHER]]


# --------------------------------------------------------------------------- environment DNS names


def test_env_query_dns(states, consul_agent, testmode, unique, cleanup):
    service = f"db{unique}"
    cleanup["queries"].append(f"{service}.")
    instances_ = {
        "prod": ("127.0.0.21", ["prod", "gg"], "passing"),
        "prod-sick": ("127.0.0.23", ["prod", "gg"], "critical"),
        "dev": ("127.0.0.22", ["dev", "gg"], "passing"),
        "prod-other-group": ("127.0.0.24", ["prod", "zz"], "passing"),
    }
    for label, (address, tags, status) in instances_.items():
        sid = f"{service}-{label}"
        cleanup["services"].append(sid)
        ret = states(
            "service_present",
            name=service,
            service_id=sid,
            address=address,
            port=5432,
            tags=tags,
            checks=[{"name": "alive", "ttl": "120s", "status": status}],
        )
        assert ret["result"] is True, ret

    ret = states("env_query_present", test=testmode, name=service)
    dns = consul_agent.ports["dns"]
    if testmode:
        assert ret["result"] is None and ret["changes"]["old"] is None
        assert not [q for q in consul_agent.api_json("GET", "/v1/query") if q["Name"] == f"{service}."]
        assert dns_query(dns, f"{service}.prod.gg.mydc1.query.consul")[0] == 3  # NXDOMAIN
        return
    assert ret["result"] is True, ret
    assert f"{service}.<type>.<group>.mydc1.query.consul" in ret["comment"]
    query = [q for q in consul_agent.api_json("GET", "/v1/query") if q["Name"] == f"{service}."][0]
    assert query["Template"]["Type"] == "name_prefix_match"

    # The postfix form: service + "." + postfix + ".query.consul"
    assert dns_query(dns, f"{service}.prod.gg.mydc1.query.consul") == (0, ["127.0.0.21"])
    assert dns_query(dns, f"{service}.dev.gg.mydc1.query.consul") == (0, ["127.0.0.22"])
    assert dns_query(dns, f"{service}.prod.zz.mydc1.query.consul") == (0, ["127.0.0.24"])
    # Without the datacenter label: this Consul datacenter.
    assert dns_query(dns, f"{service}.prod.gg.query.consul") == (0, ["127.0.0.21"])
    # Another environment datacenter is not silently answered from this one.
    assert dns_query(dns, f"{service}.prod.gg.mydc2.query.consul")[0] == 3

    before = states.stats["writes"]
    assert states("env_query_present", name=service)["changes"] == {}
    assert states.stats["writes"] == before

    # Changing an option updates the same query in place.
    ret = states("env_query_present", name=service, ttl="5s")
    assert ret["result"] is True and ret["changes"]["new"]["DNS"] == {"TTL": "5s"}
    again = [q for q in consul_agent.api_json("GET", "/v1/query") if q["Name"] == f"{service}."]
    assert [q["ID"] for q in again] == [query["ID"]] and again[0]["DNS"]["TTL"] == "5s"

    gone = states("env_query_absent", name=service)
    assert gone["result"] is True and gone["changes"]["new"] is None
    assert dns_query(dns, f"{service}.prod.gg.mydc1.query.consul")[0] == 3


def test_check_present_takes_the_modules_whole_check_vocabulary(states, consul_agent, unique, cleanup):
    """An alias check (and the counters) through consul.check_present, as consul.check_register takes them."""
    cid = f"alias-{unique}"
    cleanup["checks"].append(cid)
    kwargs = dict(check_id=cid, alias_service="web", success_before_passing=2, failures_before_critical=3)
    predicted = states("check_present", test=True, name="alias", **kwargs)
    assert predicted["result"] is None and predicted["changes"]["new"]["alias_service"] == "web"
    ret = states("check_present", name="alias", **kwargs)
    assert ret["result"] is True and ret["changes"], ret
    check = consul_agent.api_json("GET", "/v1/agent/checks")[cid]
    assert check["Type"] == "alias"
    again = states("check_present", name="alias", **kwargs)
    assert again["result"] is True and again["changes"] == {}
