"""
Blocking queries: the rules every watcher follows, in one place. The pillar
cache's index watch (``saltconsul_pillarcache``) and the engine/beacon watcher
(``saltconsul_watch``) both call these, so they reset, pace and back off the
same way.

* **Index.** Block on the ``X-Consul-Index`` of the last answer. An index
  that went *backwards* (an agent restarted without its data, a new server)
  is taken as it is and reported as a reset: blocking on the old, higher
  index would hang until the wait expires. Consul never blocks on 0, so an
  index below 1 is used as 1 (the start of history).
* **Pace.** Consul may answer at once with the same index; consecutive
  queries are still at least ``min_interval`` apart, so nothing spins.
* **Backoff.** After a failure, wait ``base * 2**(failures-1)`` seconds,
  capped, with jitter so many watchers do not retry in step; a permission
  error waits the cap at once (it will not fix itself soon).

.. code-block:: python

    index, reset = saltconsul_blocking.next_index(old_index, resp.index)
"""

import random


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
