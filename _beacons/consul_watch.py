"""
Beacon ``consul_watch``: minion-side watch of Consul KV prefixes and service
health with real blocking queries, held in a background thread per watch so
the minion's main loop never waits on Consul; each beacon run hands Salt the
events that became due since the last one.

.. code-block:: yaml

    # minion config (or pillar)
    beacons:
      consul_watch:
        - interval: 10          # seconds between beacon runs (how often due events are sent)
        - kv:
            - config/group/prod.gg/
        - services:
            - db
        - min_wait: 5           # quiet period after a change
        - max_wait: 60
        - wait: 300             # longest blocking query while idle

What a quiet minion costs Consul: one blocking query per watch per ``wait``
seconds, and no other request (the first beacon run makes one plain read per
watch, the baseline; after a failure the watcher re-reads once, then blocks
again). An empty KV prefix is watched the same way: Consul's 404 carries the
index to block on. ``query_wait`` (per-run reads
blocking at most that long) is no longer used: a plain read every interval was
a request per watch per interval on every minion, changed or not. It is still
accepted, and ignored.

Events arrive on the master as ``salt/beacon/<minion_id>/consul_watch/kv/<prefix>``
and ``salt/beacon/<minion_id>/consul_watch/service/<name>`` with the same
payload as the engine's events (keys and healthy instances, never values).

Salt's beacons loader (3006 to 3008) does not put the utils dirs on ``sys.path`` the
way the engines, runners and execution-module loaders do, so this beacon adds
``<extension_modules>/utils`` (where ``saltutil.sync_utils`` puts our utils)
and any ``utils_dirs`` itself before importing ``saltconsul_*``.

Threads: one daemon thread per watch, each with its own client connection
(a blocking query holds one). Salt calls :func:`close` when the beacon is
deleted or disabled and before it rebuilds the beacons (module refresh, sync);
a changed configuration, or a beacon loader built without closing the old one,
stops the threads started before (they end when their current query returns).
"""

import collections
import logging
import os
import sys
import threading

import salt.utils.beacons

log = logging.getLogger(__name__)

__virtualname__ = "consul_watch"
_CONTEXT_KEY = "consul_watch.watchers"
# Pause before restarting a watch thread that died on an unexpected error.
_CRASH_PAUSE = 10.0
# Events kept per watch between two beacon runs (the oldest are dropped beyond).
_MAX_QUEUED = 100

saltconsul_client = None  # pylint: disable=invalid-name
saltconsul_env = None  # pylint: disable=invalid-name
saltconsul_watch = None  # pylint: disable=invalid-name


def _import_utils():
    """Import the shared utils, putting the synced utils dirs on sys.path first if needed."""
    global saltconsul_client, saltconsul_env, saltconsul_watch  # pylint: disable=global-statement
    if saltconsul_watch is not None:
        return True
    dirs = [os.path.join(__opts__.get("extension_modules") or "", "utils")]  # noqa: F821
    dirs += list(__opts__.get("utils_dirs") or [])  # noqa: F821
    for path in dirs:
        if path and os.path.isdir(path) and path not in sys.path:
            sys.path.append(path)
    try:
        import saltconsul_client as client_mod  # pylint: disable=import-outside-toplevel
        import saltconsul_env as env_mod  # pylint: disable=import-outside-toplevel
        import saltconsul_watch as watch_mod  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        log.error("consul_watch beacon: salt-consul utils not found (run saltutil.sync_utils): %s", err)
        return False
    saltconsul_client, saltconsul_env, saltconsul_watch = client_mod, env_mod, watch_mod
    return True


def __virtual__():
    if not _import_utils():
        return False, "salt-consul utils (saltconsul_watch) are not importable; sync utils first"
    return __virtualname__


def validate(config):
    """
    Check the beacon configuration: a list of one-key mappings with ``kv``
    and/or ``services`` and optional timing values.
    """
    if not isinstance(config, list):
        return False, "consul_watch beacon configuration must be a list"
    conf = salt.utils.beacons.list_to_dict(config)
    if not conf.get("kv") and not conf.get("services"):
        return False, "consul_watch beacon needs kv and/or services to watch"
    if not _import_utils():
        return False, "salt-consul utils are not importable"
    try:
        saltconsul_watch.build_watches(conf)
        for key in saltconsul_watch.WATCHER_OPTIONS + ("query_wait",):
            if key in conf and float(conf[key]) < 0:
                return False, f"consul_watch beacon: {key} must not be negative"
        if "wait" in conf and float(conf["wait"]) < 1:
            # Below that the watcher would read without blocking: a poll, not a watch.
            return False, "consul_watch beacon: wait must be at least 1 (seconds)"
    except (ValueError, TypeError) as err:
        return False, f"consul_watch beacon: {err}"
    return True, "Valid beacon configuration"


class _Background:
    """
    One watch's blocking queries in a daemon thread; its events wait in a
    queue for the next beacon run. The thread carries its stop event
    (``consul_watch_stop``) so a later beacon loader can stop it.
    """

    def __init__(self, watcher, name):
        self.watcher = watcher
        self.name = name
        self.stop = threading.Event()
        self._events = collections.deque(maxlen=_MAX_QUEUED)
        self._lock = threading.Lock()
        self.thread = None

    def start(self):
        watch = self.watcher.watch
        self.thread = threading.Thread(
            target=self._run, name=f"consul_watch-beacon-{watch.kind}-{watch.name}", daemon=True
        )
        self.thread.consul_watch_stop = self.stop
        self.thread.consul_watch_beacon = self.name
        self.thread.start()

    def _emit(self, tag, payload):
        with self._lock:
            self._events.append((tag, payload))

    def _run(self):
        while not self.stop.is_set():
            try:
                self.watcher.run(self._emit, stop=self.stop)
            except Exception:  # pylint: disable=broad-except
                log.exception("consul_watch beacon: watch of %s crashed; restarting", self.watcher.watch.name)
                self.stop.wait(_CRASH_PAUSE)

    def drain(self):
        with self._lock:
            events = list(self._events)
            self._events.clear()
        return events


def _beacon_name(conf):
    """The beacon entry's name (Salt adds ``_beacon_name``; several entries may use ``beacon_module: consul_watch``)."""
    return str(conf.get("_beacon_name") or __virtualname__)


def _stop_threads(name):
    """Stop the watch threads the beacon entry ``name`` started in this process (any loader, any configuration)."""
    for thread in threading.enumerate():
        stop = getattr(thread, "consul_watch_stop", None)
        if stop is not None and getattr(thread, "consul_watch_beacon", None) == name:
            stop.set()


def _watchers(conf):
    """
    The background watches for this configuration, kept across beacon runs in
    ``__context__``. Created on the first run: one plain read per watch (the
    baseline, so what exists now is not reported as a change), then a thread
    per watch holding blocking queries.
    """
    name = _beacon_name(conf)
    key = repr(sorted((k, repr(v)) for k, v in conf.items() if k != "_beacon_name"))
    cache = __context__.setdefault(_CONTEXT_KEY, {})  # noqa: F821
    if cache.get(name, (None,))[0] != key:
        # First run, or this entry's configuration changed: start afresh
        # (other entries of this beacon module keep their watches).
        cache.pop(name, None)
        _stop_threads(name)
        types = saltconsul_env.env_config(__opts__).get("types")  # noqa: F821
        options = saltconsul_watch.watcher_options(conf)
        layers = saltconsul_watch.configured_layers(__opts__)  # noqa: F821
        watches = saltconsul_watch.build_watches(conf, tag_prefix="", layers=layers, types=types)
        backgrounds = []
        for watch in watches:
            # Its own client (and connection) per thread: a blocking query holds one.
            client = saltconsul_client.get_client(__opts__, {})  # noqa: F821
            watcher = saltconsul_watch.Watcher(client, watch, **dict(options, **watch.options))
            watcher.step()  # the baseline (or a failure the thread backs off from)
            background = _Background(watcher, name)
            background.start()
            backgrounds.append(background)
        cache[name] = (key, backgrounds)
    return cache[name][1]


def beacon(config):
    """
    Return the events the background watches reported since the last run
    (each after its quiet period). Makes no request itself after the first run.
    """
    if not _import_utils():
        return []
    conf = salt.utils.beacons.list_to_dict(config)
    events = []
    for background in _watchers(conf):
        for tag, payload in background.drain():
            events.append(dict(payload, tag=tag.strip("/")))
    return events


def close(config):
    """Stop this beacon entry's watch threads (Salt calls this on delete, disable and beacon refresh)."""
    name = _beacon_name(salt.utils.beacons.list_to_dict(config))
    __context__.get(_CONTEXT_KEY, {}).pop(name, None)  # noqa: F821
    _stop_threads(name)
