"""
Beacon ``consul_watch``: minion-side watch of Consul KV prefixes and service
health, one short query per watch per beacon interval (it never blocks the
minion for long; use the ``consul_watch`` engine on the master for real
blocking queries).

.. code-block:: yaml

    # minion config (or pillar)
    beacons:
      consul_watch:
        - interval: 10          # seconds between beacon runs
        - kv:
            - config/group/prod.gg/
        - services:
            - db
        - min_wait: 5           # quiet period, measured across beacon runs
        - max_wait: 60
        - query_wait: 0         # seconds one query may block (0: a plain read)

Events arrive on the master as ``salt/beacon/<minion_id>/consul_watch/kv/<prefix>``
and ``salt/beacon/<minion_id>/consul_watch/service/<name>`` with the same
payload as the engine's events (keys and healthy instances, never values).

Salt's beacons loader (3006 to 3008) does not put the utils dirs on ``sys.path`` the
way the engines, runners and execution-module loaders do, so this beacon adds
``<extension_modules>/utils`` (where ``saltutil.sync_utils`` puts our utils)
and any ``utils_dirs`` itself before importing ``saltconsul_*``.
"""

import logging
import os
import sys

import salt.utils.beacons

log = logging.getLogger(__name__)

__virtualname__ = "consul_watch"
_CONTEXT_KEY = "consul_watch.watchers"
_TIMING = ("min_wait", "max_wait", "min_interval", "poll_interval", "backoff", "backoff_max")

saltconsul_client = None  # pylint: disable=invalid-name
saltconsul_env = None  # pylint: disable=invalid-name
saltconsul_watch = None  # pylint: disable=invalid-name


def _import_utils():
    """Import the shared utils, putting the synced utils dirs on sys.path first if needed."""
    global saltconsul_client, saltconsul_env, saltconsul_watch  # pylint: disable=global-statement
    if saltconsul_watch is not None:
        return True
    dirs = [os.path.join(__opts__.get("extension_modules") or "", "utils")]
    dirs += list(__opts__.get("utils_dirs") or [])
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
        for key in _TIMING + ("query_wait",):
            if key in conf and float(conf[key]) < 0:
                return False, f"consul_watch beacon: {key} must not be negative"
    except (ValueError, TypeError) as err:
        return False, f"consul_watch beacon: {err}"
    return True, "Valid beacon configuration"


def _watchers(conf):
    """The watchers for this configuration, kept across beacon runs in ``__context__``."""
    key = repr(sorted((k, repr(v)) for k, v in conf.items()))
    cache = __context__.setdefault(_CONTEXT_KEY, {})
    if key not in cache:
        cache.clear()  # configuration changed: start afresh
        client = saltconsul_client.get_client(__opts__, __context__)
        types = saltconsul_env.env_config(__opts__).get("types")
        options = {k: float(conf[k]) for k in _TIMING if conf.get(k) is not None}
        layers = saltconsul_watch.configured_layers(__opts__)
        watches = saltconsul_watch.build_watches(conf, tag_prefix="", layers=layers, types=types)
        cache[key] = [saltconsul_watch.Watcher(client, watch, **options) for watch in watches]
    return cache[key]


def beacon(config):
    """
    Run one query per watch (blocking at most ``query_wait`` seconds) and
    return the events whose quiet period has passed.
    """
    if not _import_utils():
        return []
    conf = salt.utils.beacons.list_to_dict(config)
    query_wait = float(conf.get("query_wait", 0))
    events = []
    for watcher in _watchers(conf):
        if watcher.pause() > 0:
            continue  # backing off after a failure, or min_interval not yet over
        for tag, payload in watcher.step(max_block=query_wait):
            events.append(dict(payload, tag=tag.strip("/")))
    return events
