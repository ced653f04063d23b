"""
Ten minions race for one single-holder service (``consul.single_holder_service``)
against a real Consul agent, while the test samples Consul itself.

Each minion is its own forked process with its own minion ID, its own Salt
loaders and its own HTTP client (as ten salt-minions would be), applying the
state over and over. Half-way the holder's health check is failed through the
agent API, so the lock changes hands under contention. At every sample where
the lock did not move while it was read, Consul must show at most one holder
and no passing instance of the service other than the holder's.
"""

import copy
import multiprocessing
import time
import uuid

import pytest
from conftest import lock_state as _lock, state_loader

CONTENDERS = 10
MAX_ROUNDS = 200  # per contender; the parent normally stops them much earlier


def _spec(service, key, minion_id, status="passing"):
    return dict(
        name=service,
        service_id=f"{service}@{minion_id}",
        lock_key=key,
        lock_delay="1s",
        wait_passing=1,
        port=5432,
        checks=[{"name": "alive", "ttl": "120s", "status": status}],
    )


def _contender(base_opts, minion_id, service, key, stop, results, sick):
    """One minion: its own loaders and client, applying the state until told to stop."""
    import salt.loader

    opts = copy.deepcopy(base_opts)
    opts["id"] = minion_id
    context = {}
    utils = salt.loader.utils(opts, context=context)
    funcs = salt.loader.minion_mods(opts, utils=utils, context=context)
    serializers = salt.loader.serializers(opts)
    states = state_loader(opts, funcs, utils, serializers, context)
    ok = 0
    failed = []
    for _ in range(MAX_ROUNDS):
        if stop.is_set():
            break
        # Once failed, a minion stays failed (its database is down): its
        # check is declared critical, so its own re-registration cannot make
        # it healthy again and let it win the lock back.
        status = "critical" if sick.value == int(minion_id[2:4]) else "passing"
        ret = states["consul.single_holder_service"](**_spec(service, key, minion_id, status))
        if ret["result"] is True and "Standing by" not in ret["comment"]:
            ok += 1  # held the lock
        elif ret["result"] is not True:
            failed.append(ret["comment"])
        time.sleep(0.05)
    results.put((minion_id, ok, failed[-20:]))


def _passing(agent, service):
    return sorted(e["Service"]["ID"] for e in agent.api_json("GET", f"/v1/health/service/{service}?passing"))


def _registered(agent, service):
    return sorted(s["ID"] for s in agent.api_json("GET", "/v1/agent/services").values() if s["Service"] == service)


class Sampler:
    """Consistent samples: the lock, then the passing instances, then the lock again."""

    def __init__(self, agent, service, key):
        self.agent, self.service, self.key = agent, service, key
        self.samples = 0
        self.holders = []  # distinct holders in the order seen
        self.violations = []

    def sample(self):
        before = _lock(self.agent, self.key)
        passing = _passing(self.agent, self.service)
        after = _lock(self.agent, self.key)
        if before != after:
            return None  # the lock moved while we looked: not one moment
        self.samples += 1
        session, holder = before
        if session and holder and (not self.holders or self.holders[-1] != holder):
            self.holders.append(holder)
        allowed = [f"{self.service}@{holder}"] if session else []
        if len(passing) > 1 or not set(passing) <= set(allowed):
            self.violations.append({"lock": before, "passing": passing})
        return holder if session else None

    def until(self, predicate, timeout):
        """Sample until ``predicate(holder)`` is true (bounded); returns the holder."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            holder = self.sample()
            if predicate(holder):
                return holder
            time.sleep(0.02)
        raise AssertionError(f"timed out sampling; holders seen {self.holders}, violations {self.violations[:3]}")


@pytest.fixture
def race(consul_agent):
    service = f"race{uuid.uuid4().hex[:6]}"
    key = f"test/race/{service}/leader"
    yield service, key
    for sid in _registered(consul_agent, service):
        consul_agent.api("PUT", f"/v1/agent/service/deregister/{sid}")
    for session in consul_agent.api_json("GET", "/v1/session/list") or []:
        if service in (session.get("Name") or ""):
            consul_agent.api("PUT", f"/v1/session/destroy/{session['ID']}")
    consul_agent.api("DELETE", f"/v1/kv/test/race/{service}?recurse")


def test_ten_minions_one_holder_at_every_sample(functional_minion, consul_agent, race):
    service, key = race
    base = copy.deepcopy(functional_minion.config)
    base["consul"] = {"address": consul_agent.http_addr, "retries": 0}
    minions = [f"db{n:02d}.prod.gg.mydc1.example.com" for n in range(1, CONTENDERS + 1)]
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    results = ctx.Queue()
    sick = ctx.Value("i", -1)
    procs = [ctx.Process(target=_contender, args=(base, m, service, key, stop, results, sick)) for m in minions]
    sampler = Sampler(consul_agent, service, key)
    for proc in procs:
        proc.start()
    try:
        first = sampler.until(lambda holder: holder is not None, timeout=60)
        for _ in range(50):  # a while with a settled holder under contention
            sampler.sample()
        # The holder's health fails (and stays failed): Consul ends its
        # session, and the lock changes hands while ten minions keep applying.
        sick.value = int(first[2:4])
        status, _ = consul_agent.api("PUT", f"/v1/agent/check/fail/service:{service}@{first}:alive")
        assert status == 200
        second = sampler.until(lambda holder: holder not in (None, first), timeout=60)
        # Until the former holder's next apply has removed its stale instance.
        deadline = time.monotonic() + 30
        while _registered(consul_agent, service) != [f"{service}@{second}"] and time.monotonic() < deadline:
            sampler.sample()
        for _ in range(30):
            sampler.sample()
    finally:
        stop.set()
        finished = {}
        for _ in procs:
            minion_id, ok, failed = results.get(timeout=120)
            finished[minion_id] = (ok, failed)
        for proc in procs:
            proc.join(timeout=60)
    assert [proc.exitcode for proc in procs] == [0] * CONTENDERS
    assert sampler.violations == [], sampler.violations[:5]
    assert sampler.samples >= 100
    assert sampler.holders[:1] == [first] and second in sampler.holders
    # Only minions that held the lock ever reported holding it; the others
    # stood by (a success) or failed on the lock delay or their own checks.
    winners = {m for m, (ok, _) in finished.items() if ok}
    assert winners <= set(sampler.holders), (winners, sampler.holders)
    for minion_id, (_, failed) in finished.items():
        for comment in failed:
            assert "is held by" in comment or "lock delay" in comment or "critical" in comment, comment
    # Settled: one holder, one registered instance, and it is the holder's.
    session, holder = _lock(consul_agent, key)
    assert session and holder == second
    assert _registered(consul_agent, service) == [f"{service}@{second}"]
    assert _passing(consul_agent, service) == [f"{service}@{second}"]
