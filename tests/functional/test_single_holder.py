"""
``consul.single_holder_service`` when the former holder is unhealthy and keeps
applying (issue 11), against a real Consul agent through real Salt loaders.

Two minions (two IDs, two loaders, two HTTP clients) stand for a DB primary
and its replica. Each one's service check is a TCP check on a port of its own
where a tiny server stands for its database: closing it makes the node's
check critical, as a dead database would, and keeps it critical however
often that minion re-applies (unlike a TTL check, which a re-registration
could reset). While the minions apply, the test samples Consul itself: never
more than one lock holder, never a passing instance other than the holder's.
"""

import copy
import multiprocessing
import threading
import time
import uuid

import pytest
import salt.loader
from conftest import lock_state, wait_for

import localconsul

PRIMARY = "db01.prod.gg.mydc1.example.com"
REPLICA = "db02.prod.gg.mydc1.example.com"
LOCK_DELAY = 1.0
ROUNDS = 10  # per order, as the issue asks


FakeDB = localconsul.TcpTarget  # the DB port a node's check probes


class Minion:
    """One minion's state functions (its own loaders, context and client)."""

    def __init__(self, functional_minion, agent, minion_id, cachedir):
        from saltfactories.utils.functional import Loaders

        opts = copy.deepcopy(functional_minion.config)
        opts["consul"] = {"address": agent.http_addr, "retries": 0}
        opts["id"] = minion_id
        opts["cachedir"] = str(cachedir)
        self.id = minion_id
        self.loaders = Loaders(opts)
        self.db = FakeDB()

    def apply(self, spec, test=False):
        # A fresh (lazy, cheap) states loader per call: a states loader built
        # earlier can see the dunders of one built later for another minion
        # in the same process.
        states = salt.loader.states(
            dict(self.loaders.opts, test=test),
            functions=self.loaders.modules,
            utils=self.loaders.utils,
            serializers=self.loaders.serializers,
            context=self.loaders.context,
        )
        return states["consul.single_holder_service"](**spec(self))


@pytest.fixture(scope="module")
def pair(functional_minion, consul_agent, tmp_path_factory):
    minions = [
        Minion(functional_minion, consul_agent, mid, tmp_path_factory.mktemp(f"sh-{n}"))
        for n, mid in enumerate((PRIMARY, REPLICA))
    ]
    try:
        yield minions
    finally:
        for minion in minions:
            minion.db.down()
            minion.loaders.reset_state()


@pytest.fixture
def service(consul_agent, pair):
    name = f"pg{uuid.uuid4().hex[:6]}"
    key = f"test/single/{name}/leader"

    def spec(minion):
        return dict(
            name=name,
            service_id=f"{name}@{minion.id}",
            lock_key=key,
            lock_delay=f"{LOCK_DELAY:g}s",
            wait_passing=3,
            port=minion.db.port,
            checks=[{"name": "db", "tcp": f"127.0.0.1:{minion.db.port}", "interval": "1s", "timeout": "1s"}],
        )

    yield name, key, spec
    for minion in pair:
        if minion.db.server is None:
            minion.db.up()
    for sid in registered(consul_agent, name):
        consul_agent.api("PUT", f"/v1/agent/service/deregister/{sid}")
    for session in consul_agent.api_json("GET", "/v1/session/list") or []:
        if name in (session.get("Name") or ""):
            consul_agent.api("PUT", f"/v1/session/destroy/{session['ID']}")
    consul_agent.api("DELETE", f"/v1/kv/test/single/{name}?recurse")


def registered(agent, service):
    return sorted(s["ID"] for s in agent.api_json("GET", "/v1/agent/services").values() if s["Service"] == service)


def passing(agent, service):
    return sorted(e["Service"]["ID"] for e in agent.api_json("GET", f"/v1/health/service/{service}?passing"))


def sessions_of(agent, minion_id, service):
    return [s for s in agent.api_json("GET", "/v1/session/list") or [] if f"{service} {minion_id}" in (s.get("Name") or "")]


class Sampler(threading.Thread):
    """Samples Consul until stopped: the lock, the passing instances, the lock again."""

    def __init__(self, agent, service, key):
        super().__init__(daemon=True)
        self.agent, self.service, self.key = agent, service, key
        self.stop = threading.Event()
        self.samples = 0
        self.violations = []

    def run(self):
        while not self.stop.is_set():
            before = lock_state(self.agent, self.key)
            live = passing(self.agent, self.service)
            after = lock_state(self.agent, self.key)
            if before == after:
                self.samples += 1
                session, holder = before
                allowed = [f"{self.service}@{holder}"] if session else []
                if not set(live) <= set(allowed):
                    self.violations.append({"lock": before, "passing": live})
            time.sleep(0.02)


def _apply_child(minion, spec, delay, barrier, results):
    barrier.wait(timeout=30)
    time.sleep(delay)
    results.put((minion.id, minion.apply(spec)))


def apply_in_order(first, second, spec, gap):
    """
    ``first`` applies, ``second`` ``gap`` seconds later (0: both at once); both
    results. Each apply runs in a forked process, as a salt-minion runs a job:
    Salt's loader dunders are per process, not per thread.
    """
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_apply_child, args=(first, spec, 0, barrier, results)),
        ctx.Process(target=_apply_child, args=(second, spec, gap, barrier, results)),
    ]
    for proc in procs:
        proc.start()
    got = dict(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
    assert [proc.exitcode for proc in procs] == [0, 0]
    return got[first.id], got[second.id]


def take(agent, minion, service, key, spec):
    """Make ``minion`` the holder (its database up), checked in Consul."""
    ret = minion.apply(spec)
    assert ret["result"] is True and lock_state(agent, key)[1] == minion.id, ret
    assert wait_for(lambda: passing(agent, service) == [f"{service}@{minion.id}"], timeout=10)


def fail_holder(agent, holder, key):
    """The holder's database dies: its check goes critical, Consul ends its session."""
    holder.db.down()
    assert wait_for(lambda: lock_state(agent, key)[0] is None, timeout=15)


@pytest.mark.parametrize(
    "order, gap",
    [("failed-first", 1.0), ("both-at-once", 0.0), ("healthy-first", 1.0)],
)
def test_healthy_replica_single_holder_on_first_apply(consul_agent, pair, service, order, gap):
    name, key, spec = service
    sampler = Sampler(consul_agent, name, key)
    sampler.start()
    failed, healthy = pair
    try:
        take(consul_agent, failed, name, key, spec)
        for _ in range(ROUNDS):
            fail_holder(consul_agent, failed, key)
            dry = failed.apply(spec, test=True)
            assert dry["result"] is False and dry["changes"] == {} and "critical" in dry["comment"], dry
            if order == "healthy-first":
                got_healthy, got_failed = apply_in_order(healthy, failed, spec, gap)
            else:
                got_failed, got_healthy = apply_in_order(failed, healthy, spec, gap)
            # The replica takes it on its first apply; the failed node never held it.
            assert got_healthy["result"] is True, got_healthy
            assert "Took the lock" in got_healthy["comment"], got_healthy
            assert got_healthy["changes"]["lock"] == {"old": None, "new": healthy.id}
            if got_failed["result"] is False:
                assert "critical" in got_failed["comment"], got_failed
            else:
                # Applied after the replica held it: a standby, whose stale instance goes.
                assert got_failed["changes"] == {"deregistered": f"{name}@{failed.id}"}, got_failed
                assert healthy.id in got_failed["comment"], got_failed
            assert lock_state(consul_agent, key)[1] == healthy.id
            assert sessions_of(consul_agent, failed.id, name) == []
            assert registered(consul_agent, name) == [f"{name}@{healthy.id}"]
            want = [f"{name}@{healthy.id}"]
            assert wait_for(lambda want=want: passing(consul_agent, name) == want, timeout=10)
            # The failed node's database comes back: now it is the replica.
            failed.db.up()
            failed, healthy = healthy, failed
    finally:
        sampler.stop.set()
        sampler.join(timeout=10)
    assert sampler.violations == [], sampler.violations[:5]
    assert sampler.samples > ROUNDS


def test_standby_is_green_and_unchanged(consul_agent, pair, service):
    name, key, spec = service
    holder, standby = pair
    take(consul_agent, holder, name, key, spec)
    writes = consul_agent.api_json("GET", f"/v1/kv/{key}")[0]["ModifyIndex"]
    for test in (True, False):
        ret = standby.apply(spec, test=test)
        assert ret["result"] is True and ret["changes"] == {}, ret
        assert holder.id in ret["comment"] and "Standing by" in ret["comment"], ret
    assert registered(consul_agent, name) == [f"{name}@{holder.id}"]
    assert sessions_of(consul_agent, standby.id, name) == []
    assert consul_agent.api_json("GET", f"/v1/kv/{key}")[0]["ModifyIndex"] == writes
    # The holder's re-apply is compliant too.
    again = holder.apply(spec)
    assert again["result"] is True and again["changes"] == {}, again


def test_unhealthy_candidate_never_takes_a_free_lock(consul_agent, pair, service):
    name, key, spec = service
    sick, _ = pair
    sick.db.down()
    dry = sick.apply(spec, test=True)
    assert dry["result"] is None and lock_state(consul_agent, key) == (None, None), dry
    ret = sick.apply(spec)
    assert ret["result"] is False and "still critical" in ret["comment"], ret
    assert lock_state(consul_agent, key)[0] is None
    assert sessions_of(consul_agent, sick.id, name) == []
    assert registered(consul_agent, name) == []


def test_guard_held_lock_given_up_when_checks_critical(consul_agent, pair, service):
    """A lock held by this minion with a session tied to the node only (an older
    version's guard) is not kept while the minion's own checks are critical."""
    name, key, spec = service
    sick, _ = pair
    sid = f"{name}@{sick.id}"
    sick.db.down()
    body = spec(sick)
    check = body["checks"][0]
    registration = {
        "Name": name,
        "ID": sid,
        "Meta": {"managed_by": "salt-consul", "salt_minion": sick.id},
        "Check": {"CheckID": f"service:{sid}:db", "Name": "db", "TCP": check["tcp"], "Interval": "1s"},
    }
    status, _ = consul_agent.api("PUT", "/v1/agent/service/register", registration)
    assert status == 200
    guard = consul_agent.api_json(
        "PUT", "/v1/session/create", f'{{"Name": "salt-consul {name} {sick.id} (acquiring)", "LockDelay": "1s"}}'.encode()
    )["ID"]
    assert consul_agent.api_json("PUT", f"/v1/kv/{key}?acquire={guard}", sick.id.encode()) is True
    ret = sick.apply(spec)
    assert ret["result"] is False and "critical" in ret["comment"], ret
    assert lock_state(consul_agent, key)[0] is None
    assert consul_agent.api_json("GET", f"/v1/session/info/{guard}") in (None, [])
    assert registered(consul_agent, name) == []


@pytest.mark.parametrize("faults", [1, 3])
def test_session_create_lost_in_transit_is_retried_without_orphans(
    consul_agent, functional_minion, tmp_path, service, faults
):
    """
    A session create that reached Consul but whose answer was lost (a client
    agent's "rpc error making call: stream closed" after a server restart)
    leaves a session nobody knows the ID of. The state destroys it before it
    retries: it takes the lock on the first apply and leaves exactly one
    session, the one holding the lock.
    """
    import types

    import countingproxy

    name, key, spec = service
    with countingproxy.CountingProxy(consul_agent.http_addr) as proxy:
        minion = Minion(functional_minion, types.SimpleNamespace(http_addr=proxy.http_addr), PRIMARY, tmp_path)
        try:
            proxy.fail_after_forward("PUT", "/v1/session/create", times=faults)
            ret = minion.apply(spec)
            assert proxy.faulted == ["PUT /v1/session/create"] * faults
            assert ret["result"] is True and "Took the lock" in ret["comment"], ret
            holder, value = lock_state(consul_agent, key)
            assert value == PRIMARY
            # Every create reached Consul (faults + 1 made); one is left, the one holding the lock.
            assert [s["ID"] for s in sessions_of(consul_agent, PRIMARY, name)] == [holder]
            again = minion.apply(spec)
            assert again["result"] is True and again["changes"] == {}, again
        finally:
            # (its DB going down ends the session: only after the checks above)
            minion.db.down()
            minion.loaders.reset_state()
