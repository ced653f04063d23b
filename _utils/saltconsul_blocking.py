"""
Blocking queries: the one loop every watcher runs. The engine/beacon watcher
(``saltconsul_watch.Watcher``) and the pillar cache's index watch
(``saltconsul_pillarcache.Watcher``) both hold a :class:`BlockingQuery` and
call its :meth:`~BlockingQuery.query` for every request, so they block, reset,
pace, back off and stop the same way. What each does with an answer (bursts
and events; publishing the pillar's watch index) stays in its own module.

* **Index.** Block on the ``X-Consul-Index`` of the last answer. An index
  that went *backwards* (an agent restarted without its data, a new server)
  is taken as it is and reported as a reset: blocking on the old, higher
  index would hang until the wait expires. Consul never blocks on 0, so an
  index below 1 is used as 1 (the start of history). An answer without an
  index (a 404 for an empty KV prefix: our client drops its headers) leaves
  nothing to block on: the next query is a plain read ``poll_interval`` later.
* **Resync.** The first query, and the first after a failure, is a plain
  (non-blocking) read, so an agent that came back with a lower index resets
  the index instead of being asked to block on one it will never reach.
* **Pace.** Consul may answer at once with the same index; consecutive
  queries still start at least ``min_interval`` apart, so nothing spins.
* **Backoff.** After the ``n``-th failure in a row, wait ``base * 2**(n-1)``
  seconds, capped at ``backoff_max``, with jitter (75-100 %) so many watchers
  do not retry in step; a permission error waits the cap at once (it will not
  fix itself soon). A success resets the count.
* **Stop.** :meth:`~BlockingQuery.run` waits on the caller's stop event (a
  ``threading.Event``), so a stop request is honoured at once, and never
  waits past its ``deadline``; no query blocks longer than the time left.

.. code-block:: python

    loop = saltconsul_blocking.BlockingQuery("consul watch config/")

    def step(limit):
        result = loop.query(fetch, wait=min(300, limit or 300))  # fetch(index=, wait=) -> (index, result)
        ...

    loop.run(step, stop=stop_event)
"""

import logging
import random
import time

from saltconsul_errors import ConsulError, ConsulPermissionDenied

log = logging.getLogger(__name__)


def next_index(old, new):
    """
    ``(index, reset)``: the index to block on next after an answer carrying
    ``new`` (None: the answer had none), and whether it went backwards.
    """
    reset = new is not None and old is not None and new < old
    if new is not None and new < 1:
        new = 1
    return new, reset


def not_before(started, min_interval):
    """The earliest clock time for the next query of a loop whose last one started at ``started``."""
    return started + min_interval


def backoff(failures, base, cap, permanent=False, rand=random.random):
    """Seconds to wait after the ``failures``-th failure in a row (>= 1)."""
    if permanent:
        return cap
    delay = min(cap, base * (2 ** min(max(failures, 1) - 1, 16)))
    return delay * (0.75 + rand() * 0.25)


class BlockingQuery:
    """
    The state of one blocking-query loop: the index to block on, whether the
    next query must be a plain re-read (``resync``), the failures in a row and
    the earliest clock time of the next query (``not_before``).

    name
        What log lines call this loop (a path or prefix; never a token).
    min_interval
        Least time between the starts of two queries (the busy-loop guard).
    poll_interval
        Time between plain reads while there is no index to block on
        (default and floor: ``min_interval``).
    backoff / backoff_max
        First and longest pause after a failed query.
    clock / sleep / rand
        Injected for tests (monotonic seconds).
    """

    def __init__(
        self,
        name,
        min_interval=0.5,
        poll_interval=None,
        backoff=1.0,  # pylint: disable=redefined-outer-name
        backoff_max=30.0,
        clock=time.monotonic,
        sleep=time.sleep,
        rand=random.random,
    ):
        if min_interval <= 0 or backoff <= 0 or backoff_max < backoff:
            raise ValueError("min_interval and backoff must be positive, backoff_max >= backoff")
        self.name = name
        self.min_interval = float(min_interval)
        self.poll_interval = max(float(poll_interval or 0), self.min_interval)
        self.backoff_base = float(backoff)
        self.backoff_max = float(backoff_max)
        self.clock = clock
        self.sleep = sleep
        self.rand = rand
        self.index = None
        self.resync = True  # next query is a plain re-read
        self.failures = 0
        self.not_before = 0.0  # no query before this clock time
        self.stats = {"queries": 0, "errors": 0, "resets": 0}

    def seed(self, index):
        """Continue from ``index`` read by a plain request made elsewhere: the next query blocks on it."""
        self.index, _reset = next_index(None, index)
        self.resync = self.index is None

    def pause(self):
        """Seconds until the next query may start (0: now)."""
        return max(0.0, self.not_before - self.clock())

    def query(self, fetch, wait=None):
        """
        One query: ``fetch(index=..., wait=...) -> (index, result)``, blocking
        on the last index for up to ``wait`` seconds, or a plain read (index
        and wait None) when resyncing, when there is no index yet or when
        ``wait`` is not positive. Returns ``result``; the new index, any reset
        and the time of the next query are recorded here.

        A ``ConsulError`` is recorded as a failure (backoff, resync, a log
        line) and raised again for the caller to decide what it means.
        """
        started = self.clock()
        blocking = not self.resync and self.index is not None and wait is not None and wait > 0
        self.stats["queries"] += 1
        try:
            index, result = fetch(index=self.index if blocking else None, wait=wait if blocking else None)
        except ConsulError as err:
            self._failed(err)
            raise
        self.failures = 0
        index, reset = next_index(self.index, index)
        if reset:
            log.info("%s: index went back (%s -> %s), re-read", self.name, self.index, index)
            self.stats["resets"] += 1
        self.index = index
        self.resync = False
        if index is None:
            # Nothing to block on (an empty prefix answers 404): a plain poll.
            self.not_before = self.clock() + self.poll_interval
        else:
            # Whatever Consul did (an immediate answer with the same index
            # must not turn into a tight loop).
            self.not_before = not_before(started, self.min_interval)
        return result

    def _failed(self, err):
        self.failures += 1
        self.stats["errors"] += 1
        self.resync = True
        delay = backoff(
            self.failures,
            self.backoff_base,
            self.backoff_max,
            permanent=isinstance(err, ConsulPermissionDenied),
            rand=self.rand,
        )
        self.not_before = self.clock() + delay
        # The message names method, path and cause; never a token or value.
        level = logging.WARNING if self.failures in (1, 5) or self.failures % 20 == 0 else logging.DEBUG
        log.log(level, "%s: %s (failure %d in a row, next query in %.1fs)", self.name, err, self.failures, delay)

    def run(self, step, stop=None, deadline=None, max_steps=None):
        """
        Call ``step(limit)`` until ``stop`` (a ``threading.Event``) is set,
        the ``deadline`` (clock time) passes, ``max_steps`` steps ran or
        ``step`` returns False. ``limit`` is the time left to the deadline
        (None: no deadline); a step must not block longer. Between steps it
        waits :meth:`pause` (never past the deadline) on ``stop``, so a stop
        request is honoured at once.
        """
        steps = 0
        while True:
            if stop is not None and stop.is_set():
                return
            if deadline is not None and self.clock() >= deadline:
                return
            if max_steps is not None and steps >= max_steps:
                return
            steps += 1
            limit = None if deadline is None else max(deadline - self.clock(), 0.0)
            if step(limit) is False or (stop is not None and stop.is_set()):
                return
            pause = self.pause()
            if deadline is not None:
                pause = min(pause, max(deadline - self.clock(), 0.0))
            if pause > 0:
                if stop is not None:
                    stop.wait(pause)
                else:
                    self.sleep(pause)
