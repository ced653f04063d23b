"""
Watch Consul with blocking queries and report what changed, in quiet bursts.

The loop logic shared by the ``consul_watch`` engine (master side, blocking)
and the ``consul_watch`` beacon (minion side, one short query per interval):

.. code-block:: python

    import saltconsul_watch

    watcher = saltconsul_watch.Watcher(client, saltconsul_watch.KVWatch("config/"))
    while not stop.is_set():
        for tag, payload in watcher.step():
            fire(payload, tag)
        stop.wait(watcher.pause())

What a watch guarantees:

* **Only what changed, never values.** A KV watch keeps ``{key: ModifyIndex}``
  and reports keys ``added`` / ``changed`` / ``deleted`` (plus the environment
  each key's path names); a service watch keeps the set of healthy instances and
  reports the new healthy list with ``added`` / ``removed`` instance IDs. KV
  values are never read into an event (Consul returns them in a recursive GET;
  they are dropped at once).
* **One event per burst.** After the first change the watcher waits until
  nothing has changed for ``min_wait`` seconds, or ``max_wait`` seconds have
  passed since the first change, then reports the net difference against what
  it reported last. A key written ten times, or added and deleted again within
  a burst, yields one event (or none).
* **No busy loop.** Consecutive queries are at least ``min_interval`` apart,
  whatever Consul answers (it may return at once with the same index).
* **Survives Consul restarts.** A failed query backs off exponentially (bounded
  by ``backoff_max``); the next query after a failure is a plain (non-blocking)
  re-read, so an agent that came back with a lower index (data lost, or a new
  agent) resets the index instead of blocking on an index it will never reach.
  A lower index on any answer also resets.

Index, reset, pacing, backoff and stop are the blocking-query loop of
``saltconsul_blocking`` (shared with the pillar cache's index watch); this
module adds what a watch reports and when (snapshots, diffs, bursts).

The ``step``/``pause`` split keeps sleeping out of this module, so the engine
can wait on a stop event and the beacon can return immediately.
"""

import logging
import time

from salt.exceptions import SaltInvocationError

import saltconsul_blocking
import saltconsul_kv
import saltconsul_layers
import saltconsul_pillar
from saltconsul_errors import ConsulError, ConsulNotFound
from saltconsul_layers import DEFAULT_LAYERS

log = logging.getLogger(__name__)

TAG_PREFIX = "salt/consul"
# Bound the key lists an event carries; a larger burst says ``truncated``.
MAX_KEYS = 500
# Matching a KV key back to a layer lives in saltconsul_layers (one definition).
compile_layers = saltconsul_layers.compile_layers
layer_matches = saltconsul_layers.layer_matches
known_values = saltconsul_layers.known_values
key_env = saltconsul_layers.key_env


def _norm_prefix(prefix):
    """A watched KV prefix, checked by the one key/prefix rule (saltconsul_kv.check_key); ValueError if bad."""
    prefix = str(prefix or "").strip().lstrip("/")
    if not prefix:
        raise ValueError("bad KV prefix '': the whole KV is never watched")
    try:
        return saltconsul_kv.check_key(prefix, what="prefix")
    except SaltInvocationError as err:
        raise ValueError(f"bad KV prefix: {err}") from None


def tag_for(kind, name, tag_prefix=TAG_PREFIX):
    """``salt/consul/kv/config`` or ``salt/consul/service/db`` (no trailing slash)."""
    return f"{tag_prefix.rstrip('/')}/{kind}/{name.strip('/')}"


# --------------------------------------------------------------------------- layers


def configured_layers(opts):
    """``consul:watch_layers`` if set, else the ext_pillar's layers (:func:`pillar_layers`)."""
    # Not ``opts or {}``: Salt 3008's OptsDict answers truthiness by counting its parent chain.
    layers = (({} if opts is None else opts).get("consul") or {}).get("watch_layers")
    if layers:
        return [item.get("path") if isinstance(item, dict) else item for item in layers if item]
    return pillar_layers(opts)


def pillar_layers(opts):
    """
    The layer templates the master's ``consul`` ext_pillar reads, from the
    ext_pillar's own parser (``saltconsul_pillar``: its entry's ``layers``,
    else ``consul:pillar:layers``, else the default). A configuration the
    ext_pillar would refuse gives the default layers and a warning.
    """
    try:
        kwargs, _count = saltconsul_pillar.ext_pillar_kwargs(opts)
        layers = saltconsul_pillar.parse_config(opts, kwargs)["layers"]
    except (SaltInvocationError, ValueError) as err:
        log.warning("consul watch: the consul ext_pillar configuration is invalid (%s); using the default layers", err)
        return list(DEFAULT_LAYERS)
    return [spec.template for spec in layers]


# --------------------------------------------------------------------------- watches


class KVWatch:
    """
    Watch every key under a KV prefix.

    prefix
        The prefix (``config/``); a trailing ``/`` watches a folder, without it
        any key starting with the text.
    dc
        Datacenter to watch (default: the client's).
    layers / types
        Layer templates and environment types used to name the environment of
        each changed key in the event (``envs``).
    known
        Optional callable returning :func:`known_values` (the master knows its
        minions' environments); without it ``envs`` takes the most specific
        matching layer, which may read a nested key as a datacenter.
    """

    kind = "kv"

    def __init__(self, prefix, dc=None, layers=None, types=None, tag_prefix=TAG_PREFIX, known=None):
        self.prefix = _norm_prefix(prefix)
        self.dc = dc
        self.known = known
        self.layers = compile_layers(layers, types)
        self.tag = tag_for("kv", self.prefix, tag_prefix)
        self.name = self.prefix

    def fetch(self, client, index=None, wait=None):
        """``(index, {key: modify_index})``; values are dropped as they arrive."""
        try:
            resp = client.request(
                "GET", f"/v1/kv/{self.prefix}", params={"recurse": True}, dc=self.dc, index=index, wait=wait
            )
        except ConsulNotFound as err:
            # Nothing under the prefix. Consul's 404 still carries the index, so
            # the next query blocks until a key appears; an answer without one
            # (None) makes the caller poll every poll_interval instead.
            return err.index, {}
        entries = resp.json() or []
        return resp.index, {e["Key"]: e["ModifyIndex"] for e in entries}

    def diff(self, old, new):
        """Net change from snapshot ``old`` to ``new``, or None if there is none."""
        added = sorted(k for k in new if k not in old)
        deleted = sorted(k for k in old if k not in new)
        changed = sorted(k for k in new if k in old and new[k] != old[k])
        if not (added or deleted or changed):
            return None
        envs = []
        known = self.known() if self.known else None
        for key in added + changed + deleted:
            env = key_env(key, self.layers, known)
            if env and env not in envs:
                envs.append(env)
        total = len(added) + len(changed) + len(deleted)
        return {
            "prefix": self.prefix,
            "dc": self.dc,
            "added": added[:MAX_KEYS],
            "changed": changed[:MAX_KEYS],
            "deleted": deleted[:MAX_KEYS],
            "count": total,
            "truncated": max(len(added), len(changed), len(deleted)) > MAX_KEYS,
            "envs": envs[:MAX_KEYS],
        }


class ServiceWatch:
    """
    Watch the healthy (passing) instances of one service.

    service
        Service name.
    dc
        Datacenter (default: the client's).
    tag
        Only instances with this tag.
    passing
        True (default): only instances whose checks all pass count as healthy.
    """

    kind = "service"

    def __init__(self, service, dc=None, tag=None, passing=True, tag_prefix=TAG_PREFIX):
        service = str(service or "").strip()
        if not service or "/" in service:
            raise ValueError(f"bad service name {service!r}")
        self.service = self.name = service
        self.dc = dc
        self.filter_tag = tag
        self.passing = passing
        self.tag = tag_for("service", service, tag_prefix)

    def fetch(self, client, index=None, wait=None):
        """``(index, {instance_id: instance})`` for the healthy instances."""
        resp = client.request(
            "GET",
            f"/v1/health/service/{self.service}",
            params={"passing": self.passing, "tag": self.filter_tag},
            dc=self.dc,
            index=index,
            wait=wait,
        )
        snapshot = {}
        for entry in resp.json() or []:
            svc, node = entry.get("Service") or {}, entry.get("Node") or {}
            inst = {
                "id": svc.get("ID"),
                "node": node.get("Node"),
                "address": svc.get("Address") or node.get("Address"),
                "port": svc.get("Port"),
                "tags": sorted(svc.get("Tags") or []),
                "datacenter": node.get("Datacenter") or self.dc,
            }
            snapshot[f"{inst['node']}/{inst['id']}"] = inst
        return resp.index, snapshot

    def diff(self, old, new):
        # Check output or index churn without a change in the healthy set is no event.
        if old == new:
            return None
        return {
            "service": self.service,
            "dc": self.dc,
            "healthy": [new[k] for k in sorted(new)],
            "added": sorted(k for k in new if k not in old),
            "removed": sorted(k for k in old if k not in new),
        }


# --------------------------------------------------------------------------- watcher


class Watcher:
    """
    One watch's bursts on top of the blocking-query loop
    (``saltconsul_blocking.BlockingQuery``: index, reset, pacing, backoff).

    client
        A ``saltconsul_client.ConsulClient`` (one per thread for the engine).
    watch
        A :class:`KVWatch` or :class:`ServiceWatch`.
    wait
        Longest blocking query while idle (seconds; Consul caps it at 600).
    min_wait / max_wait
        Quiet period: report once nothing changed for ``min_wait`` seconds, or
        ``max_wait`` after the first change of a burst at the latest.
    min_interval
        Least time between two queries (the guard against busy loops).
    poll_interval
        Time between plain reads while there is no index to block on (an empty
        KV prefix answers 404, and the client does not pass on its index).
    backoff / backoff_max
        First and longest pause after a failed query (doubling, with jitter).
    initial
        ``"baseline"`` (default): the first successful read is the baseline and
        reports nothing. ``"report"``: the first read is reported as all added
        (for a beacon that must tell about what it finds on start).
    """

    def __init__(
        self,
        client,
        watch,
        wait=300.0,
        min_wait=2.0,
        max_wait=30.0,
        min_interval=0.5,
        poll_interval=2.0,
        backoff=1.0,
        backoff_max=30.0,
        initial="baseline",
        clock=time.monotonic,
    ):
        if min_wait < 0 or max_wait < min_wait:
            raise ValueError("need 0 <= min_wait <= max_wait")
        self.client = client
        self.watch = watch
        self.loop = saltconsul_blocking.BlockingQuery(
            f"consul watch {watch.name}",
            min_interval=min_interval,
            poll_interval=poll_interval,
            backoff=backoff,
            backoff_max=backoff_max,
            clock=clock,
        )
        self.wait = float(wait)
        self.min_wait = float(min_wait)
        self.max_wait = float(max_wait)
        self.clock = clock
        self.reported = {} if initial == "report" else None  # snapshot last reported
        self.current = None  # snapshot last read
        self.first_change = None  # when the pending burst began
        self.last_change = None
        # The loop's counters (queries, errors, resets) plus the events reported.
        self.stats = self.loop.stats
        self.stats["events"] = 0

    # The loop's state, under the names callers and tests have always read.
    index = property(lambda self: self.loop.index)
    resync = property(lambda self: self.loop.resync)
    failures = property(lambda self: self.loop.failures)

    @property
    def not_before(self):
        return self.loop.not_before

    @not_before.setter
    def not_before(self, value):
        self.loop.not_before = value

    @property
    def pending(self):
        return self.first_change is not None

    def pause(self):
        """Seconds to wait before the next :meth:`step` (0 if it may run now)."""
        return self.loop.pause()

    def _block_for(self, now, limit):
        """How long the next blocking query may wait: idle, or until the burst must be reported."""
        wait = self.wait if limit is None else min(self.wait, limit)
        if self.pending:
            quiet_left = self.last_change + self.min_wait - now
            max_left = self.first_change + self.max_wait - now
            wait = min(wait, quiet_left, max_left)
        return max(wait, 0.0)

    def _due(self, now):
        return self.pending and (
            now - self.last_change >= self.min_wait or now - self.first_change >= self.max_wait
        )

    def _report(self):
        """The pending burst as ``[(tag, payload)]`` (empty if it cancelled out)."""
        self.first_change = self.last_change = None
        change = self.watch.diff(self.reported or {}, self.current)
        self.reported = self.current
        if change is None:
            return []
        change["index"] = self.index
        self.stats["events"] += 1
        return [(self.watch.tag, change)]

    def _fetch(self, index=None, wait=None):
        return self.watch.fetch(self.client, index=index, wait=wait)

    def step(self, max_block=None):
        """
        Run at most one query (blocking up to ``max_block`` seconds, or the
        configured ``wait``) and return the events due now as ``[(tag, payload)]``.
        Never sleeps by itself: call :meth:`pause` for how long to wait next.
        """
        now = self.clock()
        if now < self.loop.not_before:
            return []
        if self._due(now):
            return self._report()
        try:
            snapshot = self.loop.query(self._fetch, wait=self._block_for(now, max_block))
        except ConsulError:
            return []  # recorded by the loop: backoff, then a plain re-read
        now = self.clock()
        if self.reported is None:
            # First successful read: the baseline, nothing to report.
            self.reported = self.current = snapshot
        elif snapshot != self.current:
            self.current = snapshot
            if self.first_change is None:
                self.first_change = now
            self.last_change = now
        if self._due(now):
            return self._report()
        return []

    def run(self, emit, stop=None, deadline=None, max_steps=None):
        """
        Drive :meth:`step` until ``stop`` (a ``threading.Event``) is set, the
        ``deadline`` (clock time) passes or ``max_steps`` steps ran; call
        ``emit(tag, payload)`` for each event. Waits happen on ``stop`` so a
        stop request is honoured at once (``BlockingQuery.run``).
        """

        def one(limit):
            for tag, payload in self.step(max_block=limit):
                emit(tag, payload)

        self.loop.run(one, stop=stop, deadline=deadline, max_steps=max_steps)


def build_watches(config, tag_prefix=TAG_PREFIX, layers=None, types=None, known=None):
    """
    Watches from engine/beacon config::

        kv:
          - config/                      # a prefix, or a mapping:
          - {prefix: nodes/, dc: dc2}
        services:
          - db                           # a name, or a mapping:
          - {name: web, tag: prod, dc: dc1, passing: true}
          - {name: db, min_wait: 0.2}    # an entry's own Watcher timing

    Each watch carries ``options``: the :data:`WATCHER_OPTIONS` its own entry
    sets, which override the engine's or beacon's (``dict(shared, **watch.options)``).
    Raises ValueError on a malformed entry.
    """
    watches = []
    for entry in config.get("kv") or []:
        if isinstance(entry, str):
            entry = {"prefix": entry}
        if not isinstance(entry, dict) or "prefix" not in entry:
            raise ValueError(f"kv watch needs a prefix: {entry!r}")
        watch = KVWatch(
            entry["prefix"], dc=entry.get("dc"), layers=layers, types=types, tag_prefix=tag_prefix, known=known
        )
        watch.options = watcher_options(entry)
        watches.append(watch)
    for entry in config.get("services") or []:
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or "name" not in entry:
            raise ValueError(f"service watch needs a name: {entry!r}")
        watch = ServiceWatch(
            entry["name"],
            dc=entry.get("dc"),
            tag=entry.get("tag"),
            passing=entry.get("passing", True),
            tag_prefix=tag_prefix,
        )
        watch.options = watcher_options(entry)
        watches.append(watch)
    return watches


WATCHER_OPTIONS = ("wait", "min_wait", "max_wait", "min_interval", "poll_interval", "backoff", "backoff_max")


def watcher_options(config):
    """The :class:`Watcher` keyword arguments present in ``config``, as floats."""
    return {k: float(config[k]) for k in WATCHER_OPTIONS if config.get(k) is not None}
