"""
Engine ``consul_watch``: watch Consul KV prefixes and service health with
blocking queries and fire Salt events when they change.

Runs on the master (events go on the master event bus, where the reactor sees
them) or on a minion (events are sent on to the master with ``event.send``).

.. code-block:: yaml

    # /etc/salt/master.d/consul_watch.conf
    engines:
      - consul_watch:
          kv:
            - config/                 # tag salt/consul/kv/config
            - {prefix: nodes/, dc: mydc2}
          services:
            - db                      # tag salt/consul/service/db
            - {name: web, tag: prod}
            - {name: cache, min_wait: 0.5}  # an entry's own timing overrides the engine's
          min_wait: 2                 # quiet period: report a burst after 2s without changes
          max_wait: 30                # ... or 30s after its first change at the latest
          wait: 300                   # longest blocking query while idle
          min_interval: 0.5           # least time between two queries
          backoff_max: 30             # longest pause between reconnect attempts

The Consul address, token and TLS settings come from the master's ``consul:``
config like every other salt-consul module. Events (never KV values)::

    salt/consul/kv/config
      {"prefix": "config/", "dc": null, "index": 123, "count": 2,
       "added": ["config/group/prod.gg/app/feature"], "changed": ["config/group/prod.gg/db/pool_size"],
       "deleted": [], "truncated": false,
       "envs": [{"layer": "config/group/{type}.{group}", "type": "prod", "group": "gg"}]}

    salt/consul/service/db
      {"service": "db", "dc": null, "index": 456,
       "healthy": [{"id": "db", "node": "db01", "address": "10.0.0.5", "port": 5432,
                    "tags": ["prod", "gg"], "datacenter": "mydc1"}],
       "added": ["db01/db"], "removed": ["db02/db"]}

Each watch runs in its own thread with its own client connection; a Consul
restart is survived (bounded backoff, then a re-read). The engine runs until
the master stops.
"""

import logging
import threading

import salt.key
import salt.utils.event

import saltconsul_client
import saltconsul_env
import saltconsul_watch

log = logging.getLogger(__name__)

__virtualname__ = "consul_watch"
# Pause before restarting a watch thread that died on an unexpected error.
_CRASH_PAUSE = 10.0


def __virtual__():
    return __virtualname__


def _emitter(opts):
    """A thread-safe ``emit(tag, data)`` onto the master bus (or via the minion to the master)."""
    lock = threading.Lock()
    if opts.get("__role") == "master":
        bus = salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=False)

        def emit(tag, data):
            with lock:
                bus.fire_event(data, tag)

    else:

        def emit(tag, data):
            with lock:
                __salt__["event.send"](tag, data)

    return emit


def _known(opts):
    """On the master: a provider of the environment values its accepted minion IDs name."""
    if opts.get("__role") != "master":
        return None
    env_conf = saltconsul_env.env_config(opts)

    def known():
        try:
            ids = salt.key.get_key(opts).list_status("accepted").get("minions") or []
        except Exception as err:  # pylint: disable=broad-except
            log.warning("consul_watch: cannot list accepted minions (%s); env hints unchecked", err)
            return None
        return saltconsul_watch.known_values({mid: saltconsul_env.parse(mid, env_conf) for mid in ids})

    return known


def _run_watch(opts, watch, options, emit, stop):
    """One watch, forever: a crash in the loop is logged and the watch restarted."""
    while not stop.is_set():
        try:
            # Its own client (and connection): a blocking query holds one for minutes.
            client = saltconsul_client.get_client(opts, {})
            watcher = saltconsul_watch.Watcher(client, watch, **options)
            log.info("consul_watch: watching %s %s", watch.kind, watch.name)

            def fire(tag, payload):
                emit(tag, payload)
                log.info(
                    "consul_watch: %s changed (%s)",
                    watch.name,
                    ", ".join(f"{k}={len(payload.get(k) or [])}" for k in ("added", "changed", "deleted", "removed") if k in payload),
                )

            watcher.run(fire, stop=stop)
        except Exception:  # pylint: disable=broad-except
            log.exception("consul_watch: watch of %s %s crashed; restarting", watch.kind, watch.name)
            stop.wait(_CRASH_PAUSE)


def start(kv=None, services=None, tag_prefix=saltconsul_watch.TAG_PREFIX, layers=None, **options):
    """
    Run the watches until the process is stopped.

    kv
        KV prefixes to watch: strings, or mappings with ``prefix`` and ``dc``.
    services
        Services whose healthy set to watch: names, or mappings with ``name``,
        ``tag``, ``dc`` and ``passing``.
    tag_prefix
        Event tag prefix (default ``salt/consul``).
    layers
        KV layer templates used to name the environment of a changed key
        (default: ``consul:watch_layers``, else the master's ``consul``
        ext_pillar layers, e.g. ``config/group/{type}.{group}``).
    wait, min_wait, max_wait, min_interval, poll_interval, backoff, backoff_max
        Watcher timing, see ``saltconsul_watch.Watcher``. A ``kv`` or
        ``services`` mapping entry may set any of them for itself (e.g. a short
        ``min_wait`` for a service, whose health changes do not come in bursts
        the way KV writes do, see docs/watch.md).
    """
    types = saltconsul_env.env_config(__opts__).get("types")
    engine_options = saltconsul_watch.watcher_options(options)
    watches = saltconsul_watch.build_watches(
        {"kv": kv, "services": services},
        tag_prefix=tag_prefix,
        layers=layers or saltconsul_watch.configured_layers(__opts__),
        types=types,
        known=_known(__opts__),
    )
    if not watches:
        log.error("consul_watch: nothing to watch (configure kv and/or services)")
        return
    emit = _emitter(__opts__)
    stop = threading.Event()
    threads = []
    for watch in watches:
        thread = threading.Thread(
            target=_run_watch,
            args=(__opts__, watch, dict(engine_options, **watch.options), emit, stop),
            name=f"consul_watch-{watch.kind}-{watch.name}",
            daemon=True,
        )
        thread.start()
        threads.append(thread)
    try:
        for thread in threads:
            thread.join()
    finally:
        stop.set()
