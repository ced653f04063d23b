"""
The blocking-query loop (saltconsul_blocking) both watchers run, and how the
pillar cache's index watch uses it. Pure logic: a fake clock, scripted
answers; the real-Consul behaviour is in tests/functional/test_watch.py and
tests/functional/test_pillar.py.
"""

import threading

import pytest

import saltconsul_blocking as blocking
import saltconsul_pillarcache
from saltconsul_errors import ConsulNotFound, ConsulPermissionDenied, ConsulUnreachable


def test_next_index():
    assert blocking.next_index(None, 10) == (10, False)
    assert blocking.next_index(10, 12) == (12, False)
    assert blocking.next_index(10, 10) == (10, False)
    # An agent back without its data answers a lower index: take it, say so.
    assert blocking.next_index(500, 3) == (3, True)
    # Consul never blocks on 0.
    assert blocking.next_index(None, 0) == (1, False)
    assert blocking.next_index(7, None) == (None, False)


def test_backoff_grows_capped_with_jitter():
    top = [blocking.backoff(n, 0.5, 10, rand=lambda: 1.0) for n in range(1, 8)]
    assert top == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    low = blocking.backoff(3, 0.5, 10, rand=lambda: 0.0)
    assert low == 1.5  # 2.0 * 0.75
    assert blocking.backoff(1, 0.5, 10, permanent=True) == 10


def test_pacing():
    assert blocking.not_before(100.0, 0.25) == 100.25


# --------------------------------------------------------------------------- the loop


class Clock:
    """Monotonic seconds that move only when told (or when the loop sleeps)."""

    def __init__(self, now=1000.0):
        self.now = now
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


class Consul:
    """
    A scripted fetch: each answer is an index (None: no index, as after a
    404), an exception to raise, or ``(index, seconds)`` to answer after the
    clock moved. Records ``(index, wait)`` of every query.
    """

    def __init__(self, clock, answers):
        self.clock = clock
        self.answers = list(answers)
        self.calls = []

    def __call__(self, index=None, wait=None):
        self.calls.append((index, wait))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, tuple):
            answer, took = answer
            self.clock.now += took
        return answer, {"answer": answer}


def make_loop(clock, **kwargs):
    kwargs.setdefault("min_interval", 0.5)
    kwargs.setdefault("backoff", 1.0)
    kwargs.setdefault("backoff_max", 30.0)
    return blocking.BlockingQuery("test loop", clock=clock, sleep=clock.sleep, **kwargs)


def test_first_query_is_plain_then_blocks_on_the_answers_index():
    clock = Clock()
    consul = Consul(clock, [10, 12])
    loop = make_loop(clock)
    assert loop.query(consul, wait=5) == {"answer": 10}
    assert loop.index == 10 and loop.resync is False
    loop.query(consul, wait=5)
    assert consul.calls == [(None, None), (10, 5)]
    assert loop.index == 12


def test_no_wait_means_a_plain_read():
    clock = Clock()
    consul = Consul(clock, [10, 10, 10])
    loop = make_loop(clock)
    loop.query(consul, wait=5)
    loop.query(consul, wait=0)
    loop.query(consul)
    assert consul.calls[1:] == [(None, None), (None, None)]


def test_index_going_backwards_resets_and_blocks_on_the_lower_index():
    clock = Clock()
    consul = Consul(clock, [500, 3, 4])
    loop = make_loop(clock)
    loop.query(consul, wait=5)
    loop.query(consul, wait=5)
    assert loop.index == 3 and loop.stats["resets"] == 1
    loop.query(consul, wait=5)
    assert consul.calls[2] == (3, 5)  # never the old, higher 500
    assert loop.stats["resets"] == 1  # going forward again is no reset


def test_index_below_one_is_blocked_on_as_one():
    clock = Clock()
    consul = Consul(clock, [0, 1])
    loop = make_loop(clock)
    loop.query(consul, wait=5)
    assert loop.index == 1
    loop.query(consul, wait=5)
    assert consul.calls[1] == (1, 5)
    assert loop.stats["resets"] == 0


def test_no_index_polls_every_poll_interval():
    clock = Clock()
    consul = Consul(clock, [None, None])
    loop = make_loop(clock, poll_interval=2.0)
    loop.query(consul, wait=5)
    assert loop.index is None and loop.pause() == 2.0
    clock.now += 2.0
    loop.query(consul, wait=5)
    assert consul.calls == [(None, None), (None, None)]
    # poll_interval is never below min_interval
    assert make_loop(clock, poll_interval=0.1).poll_interval == 0.5


def test_same_index_at_once_is_paced_by_min_interval():
    clock = Clock()
    consul = Consul(clock, [7, 7, (7, 60.0)])
    loop = make_loop(clock)
    loop.query(consul, wait=60)
    assert loop.pause() == 0.5
    clock.now += 0.5
    loop.query(consul, wait=60)  # Consul answered at once with the same index
    assert loop.pause() == 0.5
    clock.now += 0.5
    loop.query(consul, wait=60)  # a blocking query that held 60 s: go again at once
    assert loop.pause() == 0.0


def test_run_never_spins_on_immediate_answers():
    clock = Clock()
    consul = Consul(clock, [7] * 5)
    loop = make_loop(clock)
    loop.run(lambda limit: loop.query(consul, wait=60), max_steps=5)
    assert len(consul.calls) == 5
    assert clock.slept == [0.5] * 5


def test_backoff_grows_to_the_cap_within_jitter_and_resyncs():
    clock = Clock()
    for rand, factor in ((lambda: 1.0, 1.0), (lambda: 0.0, 0.75)):
        loop = make_loop(clock, backoff=1.0, backoff_max=10.0, rand=rand)
        consul = Consul(clock, [10] + [ConsulUnreachable("GET /v1/kv/x: connection refused")] * 6 + [11, 12])
        loop.query(consul, wait=5)
        pauses = []
        for _ in range(6):
            with pytest.raises(ConsulUnreachable):
                loop.query(consul, wait=5)
            assert loop.resync is True
            pauses.append(loop.pause())
            clock.now = loop.not_before
        assert pauses == [factor * d for d in (1.0, 2.0, 4.0, 8.0, 10.0, 10.0)]
        assert loop.failures == 6 and loop.stats["errors"] == 6
        # every retry is a plain re-read; the first success clears the count
        assert consul.calls[1] == (10, 5)
        assert all(call == (None, None) for call in consul.calls[2:7])
        loop.query(consul, wait=5)
        assert consul.calls[7] == (None, None) and loop.failures == 0
        loop.query(consul, wait=5)
        assert consul.calls[8] == (11, 5)
    # real jitter stays within 75-100 % of the doubled delay
    loop = make_loop(clock, backoff=1.0, backoff_max=10.0)
    consul = Consul(clock, [ConsulUnreachable("down")] * 40)
    for n in range(1, 41):
        with pytest.raises(ConsulUnreachable):
            loop.query(consul)
        delay = min(10.0, 2 ** (n - 1))
        assert 0.75 * delay - 1e-9 <= loop.pause() <= delay + 1e-9
        clock.now = loop.not_before


def test_permission_denied_waits_the_cap_at_once():
    clock = Clock()
    loop = make_loop(clock, backoff=1.0, backoff_max=30.0)
    consul = Consul(clock, [ConsulPermissionDenied("GET /v1/kv/x: permission denied")])
    with pytest.raises(ConsulPermissionDenied):
        loop.query(consul, wait=5)
    assert loop.pause() == 30.0 and loop.failures == 1


def test_a_bug_is_not_a_consul_failure():
    clock = Clock()
    loop = make_loop(clock)
    with pytest.raises(KeyError):
        loop.query(Consul(clock, [KeyError("x")]))
    assert loop.failures == 0 and loop.stats["errors"] == 0


def test_bad_timing_is_refused():
    for kwargs in ({"min_interval": 0}, {"backoff": 0}, {"backoff": 5, "backoff_max": 1}):
        with pytest.raises(ValueError):
            make_loop(Clock(), **kwargs)


class Stop:
    """A stop event that records its waits; ``after`` waits, it is set during the wait."""

    def __init__(self, after=None, clock=None):
        self.after = after
        self.clock = clock
        self.waits = []
        self.set_ = False

    def is_set(self):
        return self.set_

    def wait(self, seconds):
        self.waits.append(seconds)
        if self.after is not None and len(self.waits) >= self.after:
            self.set_ = True
        elif self.clock is not None:
            self.clock.now += seconds
        return self.set_


def test_stop_is_honoured_at_once():
    clock = Clock()
    loop = make_loop(clock)
    steps = []
    # already set: not a single query
    stop = Stop()
    stop.set_ = True
    loop.run(steps.append, stop=stop)
    assert steps == [] and stop.waits == []

    # set while backing off for 30 s: the wait on the event returns, the loop ends
    consul = Consul(clock, [ConsulPermissionDenied("denied")] * 3)

    def step(limit):
        steps.append(limit)
        with pytest.raises(ConsulPermissionDenied):
            loop.query(consul)

    stop = Stop(after=1)
    loop.run(step, stop=stop)
    assert steps == [None] and stop.waits == [30.0]
    assert clock.slept == []  # waits happen on the event, never in a sleep

    # set by the step itself: no wait at all
    stop = Stop()

    def stopping(limit):
        steps.append(limit)
        stop.set_ = True

    loop.run(stopping, stop=stop)
    assert stop.waits == []


def test_deadline_bounds_each_query_and_each_wait():
    clock = Clock(now=0.0)
    loop = make_loop(clock, backoff=4.0, backoff_max=4.0, rand=lambda: 1.0)
    consul = Consul(clock, [(5, 3.0), ConsulUnreachable("down"), (6, 1.0), (6, 2.0)])
    limits = []

    def step(limit):
        limits.append(limit)
        try:
            loop.query(consul, wait=min(60, limit))
        except ConsulUnreachable:
            pass

    stop = Stop(clock=clock)
    loop.run(step, stop=stop, deadline=10.0)
    # 0: a plain read taking 3 s; 3: fails, backs off 4 s; 7: a plain re-read
    # taking 1 s; 8: blocks only the 2 s left, then the deadline has passed.
    assert limits == [10.0, 7.0, 3.0, 2.0]
    assert consul.calls == [(None, None), (5, 7.0), (None, None), (6, 2.0)]
    assert stop.waits == [4.0]
    assert clock.now == 10.0

    # a wait never runs past the deadline
    clock = Clock(now=0.0)
    loop = make_loop(clock, backoff=4.0, backoff_max=4.0, rand=lambda: 1.0)
    consul = Consul(clock, [ConsulUnreachable("down")])
    stop = Stop(clock=clock)
    loop.run(step, stop=stop, deadline=2.0)
    assert stop.waits == [2.0] and len(consul.calls) == 1


def test_step_returning_false_ends_the_run():
    clock = Clock()
    loop = make_loop(clock)
    steps = []
    loop.run(lambda limit: steps.append(limit) or len(steps) < 3)
    assert len(steps) == 3


# --------------------------------------------------------------------------- the pillar index watch


class Resp:
    def __init__(self, index):
        self.index = index


def not_found(index=None):
    """Consul's 404 for an empty prefix, as our client raises it (with the answer's index, if any)."""
    err = ConsulNotFound("GET /v1/kv/config/: not found")
    err.index = index
    return err


class PillarConsul:
    """A client for the pillar's index watch: scripted answers (an index, or an exception to raise)."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []
        self.stats = {"requests": 0}
        self.gate = None  # a threading.Event a request waits for, if set

    def request(self, method, path, params=None, index=None, wait=None):
        self.calls.append((index, wait))
        if self.gate is not None:
            assert self.gate.wait(10)
        self.stats["requests"] += 1
        answer = self.answers.pop(0) if self.answers else ConsulUnreachable("script ended")
        if isinstance(answer, Exception):
            raise answer
        return Resp(answer)


def pillar_watcher(answers):
    clock = Clock()
    client = PillarConsul(answers)
    watcher = saltconsul_pillarcache.Watcher(client, "config", 60, clock=clock)
    return watcher, client, clock


def armed(watcher, index):
    """What :meth:`arm` does, without starting the thread (its steps are driven here)."""
    watcher.index = index
    watcher.loop.seed(index)
    watcher._thread = threading.current_thread()  # pylint: disable=protected-access


def test_pillar_watch_idle_makes_only_blocking_queries():
    watcher, client, clock = pillar_watcher([40, 40, 40, (41)])
    armed(watcher, 40)
    for _ in range(3):  # Consul answers at the end of each wait with the same index
        assert watcher._step(None) is True  # pylint: disable=protected-access
        assert watcher.index == 40
        clock.now += 60
    assert watcher._step(None) is True  # pylint: disable=protected-access
    assert watcher.index == 41  # published at once
    assert client.calls == [(40, 60)] * 4  # never a plain (non-blocking) request


def test_pillar_watch_failure_disarms_and_backs_off_restarts():
    watcher, client, clock = pillar_watcher([40, ConsulUnreachable("GET /v1/kv/config/: refused")])
    armed(watcher, 40)
    assert watcher._step(None) is True  # pylint: disable=protected-access
    assert watcher._step(None) is False  # pylint: disable=protected-access
    assert watcher.index is None and watcher._thread is None  # pylint: disable=protected-access
    # the next compile's plain request re-arms, but not while backing off
    pause = watcher.loop.pause()
    assert 0.75 - 1e-9 <= pause <= 1.0 + 1e-9
    watcher.arm(42)
    assert watcher.index is None and watcher._thread is None  # pylint: disable=protected-access
    clock.now += pause
    client.answers = [ConsulPermissionDenied("GET /v1/kv/config/: permission denied")]
    client.gate = threading.Event()  # hold the thread's query until checked
    watcher.arm(42)
    thread = watcher._thread  # pylint: disable=protected-access
    assert watcher.index == 42 and thread is not None and thread.daemon
    client.gate.set()
    thread.join(10)
    assert not thread.is_alive()
    assert client.calls[-1] == (42, 60)  # the thread blocked on the compile's index
    assert watcher.index is None and watcher._thread is None  # pylint: disable=protected-access
    assert watcher.loop.pause() == pytest.approx(saltconsul_pillarcache.BACKOFF_MAX)


def test_pillar_watch_index_backwards_or_no_index_disarms():
    watcher, _client, _clock = pillar_watcher([3])
    armed(watcher, 500)
    assert watcher._step(None) is False  # pylint: disable=protected-access
    # not taken over: the next compile's plain request starts a new cache epoch
    assert watcher.index is None and watcher.loop.pause() <= saltconsul_pillarcache.MIN_INTERVAL
    watcher, _client, _clock = pillar_watcher([not_found(None)])
    armed(watcher, 500)
    assert watcher._step(None) is False  # pylint: disable=protected-access
    assert watcher.index == 0  # a 404 without an index: compiles ask every time


def test_pillar_watch_blocks_on_an_empty_prefix():
    # The prefix empties (404 with the deleted keys' index), stays empty, then a key appears.
    watcher, client, _clock = pillar_watcher([not_found(510), not_found(510), 530])
    armed(watcher, 500)
    for want in (510, 510, 530):
        assert watcher._step(None) is True  # pylint: disable=protected-access
        assert watcher.index == want
    assert client.calls == [(500, 60), (510, 60), (510, 60)]  # blocking queries only
    client.answers = [not_found(7)]
    assert watcher.query() == 7  # a compile's plain read of an empty prefix gives the 404's index


def test_pillar_watch_ends_when_reset():
    watcher, client, _clock = pillar_watcher([])
    armed(watcher, 40)
    watcher.index = None  # saltconsul_pillarcache.reset()
    assert watcher._step(None) is False  # pylint: disable=protected-access
    assert client.calls == []


def test_pillar_arm_without_a_watch():
    watcher, client, _clock = pillar_watcher([])
    watcher.arm(40, background=False)  # revalidate: always
    assert watcher.index == 40 and watcher._thread is None  # pylint: disable=protected-access
    watcher.arm(0)  # no index: never watched
    assert watcher.index == 0 and watcher._thread is None  # pylint: disable=protected-access
    assert client.calls == []
