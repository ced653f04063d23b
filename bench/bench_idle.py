"""
Bench section ``idle``: what a quiet fleet costs Consul.

A real ``salt-master`` and five real ``salt-minion`` processes (the demo's
``Fleet`` on the failover rig's raw daemons), configured as the docs say:

* the master: the ``consul`` ext_pillar (layered, ``revalidate: watch``, its
  cache), the ``consul_watch`` engine on a KV prefix and the ``db`` service
  (formulas/reactor/README.md) and the reactor entries;
* each minion: the ``consul_watch`` beacon on its environment's group folder
  and the ``db`` service (docs/watch.md, "Beacon (minion)").

Every Salt daemon talks to Consul through ``tools/countingproxy.py``. Once
everything has settled (modules synced, pillar compiled and refreshed, the
watches armed), nothing changes for ``WINDOW`` seconds and every request
Consul receives is counted, blocking queries (``index=``) apart:

* ``idle_consul_requests_per_minion_minute``: non-blocking requests / 5 minions
  / minutes (goal: 0);
* ``idle_consul_blocking_requests_per_minion_minute``: the same for blocking
  queries (the watches' idle cost). A query counts when it arrives, so a
  watch whose ``wait`` is longer than the window (engine and beacons: 300 s)
  may not show in it; the pillar cache's index watch (``watch_wait`` 60 s, one
  per master process that compiled pillar) does;
* ``idle_nonblocking_paths`` / ``idle_blocking_paths``: the requests by
  method and path (query parameter names only), most frequent first, so the
  cause of any non-blocking request is visible;
* ``idle_config``: the settings used.

Every beacon's group folder holds a key (the documented layout: the group's
overrides); ``BENCH_IDLE_EMPTY_GROUP=1`` leaves ``prod.gg``'s empty, which
four of the five beacons watch: Consul answers an empty prefix with 404, whose
``X-Consul-Index`` the watches block on like any other (before that, each of
those watches read the prefix once per beacon interval: 4.8 per minion minute).

``BENCH_IDLE_WINDOW=30 python bench/run.py idle`` shortens the window for a
quick local run (the figure is per minute either way, but short windows
miss slow periodic requests such as the 60 s pillar index watch).
"""

import os
import pathlib
import shutil
import sys
import tempfile
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for extra in (os.path.join(REPO, "tools"), os.path.join(REPO, "_utils")):
    if extra not in sys.path:
        sys.path.insert(0, extra)

import countingproxy  # noqa: E402
import demo  # noqa: E402
import standin_failover as rig  # noqa: E402
from saltconsul_env import parse  # noqa: E402

# The quiet window (seconds); BENCH_IDLE_WINDOW overrides it.
WINDOW = 120.0
# After the pillar refresh: long enough for every beacon to run (its interval)
# and every watch to hold its first blocking query.
SETTLE = 25.0
ROOT = "bench/idle"
LAYERS = [
    f"{ROOT}/global",
    f"{ROOT}/role/{{role}}",
    f"{ROOT}/type/{{type}}",
    f"{ROOT}/group/{{type}}.{{group}}",
    f"{ROOT}/env/{{type}}.{{group}}.{{datacenter}}",
    f"{ROOT}/node/{{minion_id}}",
]
SEED = {
    f"{ROOT}/global/app/name": "shop",
    f"{ROOT}/global/app/db/pool_size": "10",
    f"{ROOT}/type/prod/app/db/pool_size": "50",
    f"{ROOT}/group/dev.gg/app/db/pool_size": "5",
    f"{ROOT}/group/prod.gg/app/db/timeout": "30",
    f"{ROOT}/role/web/app/port": "8080",
    f"{ROOT}/node/{demo.CLIENT}/app/weight": "3",
}
MINIONS = demo.MINIONS
# The documented settings (docs/watch.md, formulas/reactor/README.md, docs/pillar.md).
ENGINE = {"kv": [f"{ROOT}/"], "services": ["db"], "min_wait": 2, "max_wait": 30}
BEACON_INTERVAL = 10
BEACON = {"min_wait": 5, "wait": 300}
PILLAR = {"layers": LAYERS}


def _window():
    return float(os.environ.get("BENCH_IDLE_WINDOW") or WINDOW)


def _seed():
    """The KV seed; ``BENCH_IDLE_EMPTY_GROUP=1`` leaves prod.gg's group folder (4 beacons watch it) empty."""
    if os.environ.get("BENCH_IDLE_EMPTY_GROUP", "") in ("", "0"):
        return dict(SEED)
    return {k: v for k, v in SEED.items() if not k.startswith(f"{ROOT}/group/prod.gg/")}


def _master_opts(root, proxy):
    workdir = pathlib.Path(root) / "work"
    workdir.mkdir(parents=True)
    state_tree, pillar_tree = rig.make_trees(pathlib.Path(root) / "trees", workdir, {})
    for name in ("_pillar", "_beacons"):  # not among the failover rig's loader dirs
        (state_tree / name).symlink_to(pathlib.Path(REPO) / name)
    opts = rig.master_config(state_tree, pillar_tree, proxy)
    opts["engines"] = [{"consul_watch": dict(ENGINE)}]
    opts["ext_pillar"] = [{"consul": dict(PILLAR)}]
    opts["reactor"] = [
        {f"salt/consul/kv/{ROOT}": ["salt://reactor/consul_kv.sls"]},
        {"salt/consul/service/*": ["salt://reactor/consul_service.sls"]},
    ]
    opts["consul_react"] = {"kv": {"sls": "app", "batch_size": 10, "splay": 10}}
    return opts


def _minion_extra(proxy):
    extra = {}
    for mid in MINIONS:
        env = parse(mid, {})
        beacon = [
            {"interval": BEACON_INTERVAL},
            {"kv": [f"{ROOT}/group/{env['type']}.{env['group']}/"]},
            {"services": ["db"]},
        ] + [{k: v} for k, v in BEACON.items()]
        extra[mid] = {"consul": {"address": proxy.http_addr, "retries": 0}, "beacons": {"consul_watch": beacon}}
    return extra


def _empty_groups(seed):
    groups = {f"{parse(mid, {})['type']}.{parse(mid, {})['group']}" for mid in MINIONS}
    return {g for g in groups if not any(k.startswith(f"{ROOT}/group/{g}/") for k in seed)}


def _top(counts, kind, limit=8):
    items = sorted(((n, key) for (k, key), n in counts.items() if k == kind), key=lambda item: (-item[0], item[1]))
    return ", ".join(f"{key}={n}" for n, key in items[:limit]) or "none"


def run(agent):
    window = _window()
    root = tempfile.mkdtemp(prefix="idle-", dir="/tmp")
    proxy = countingproxy.CountingProxy(agent.http_addr)
    fleet = None
    try:
        seed = _seed()
        for key, value in seed.items():
            agent.api("PUT", f"/v1/kv/{key}", value.encode())
        agent.api("PUT", "/v1/agent/service/register", b'{"ID": "db-idle", "Name": "db", "Port": 5432}')
        fleet = demo.Fleet(
            os.path.join(root, "s"), _master_opts(root, types.SimpleNamespace(http_addr=proxy.http_addr)),
            _minion_extra(proxy), proxy,
        )
        fleet.start()
        fleet.run("saltutil.sync_all")
        fleet.salt("*", "saltutil.sync_all", timeout=120)
        fleet.salt("*", "saltutil.refresh_pillar", "wait=True", timeout=120)
        pools = fleet.salt("*", "pillar.get", "app:db:pool_size", *demo.UNMASK)
        if sorted(pools) != sorted(MINIONS) or not all(pools.values()):
            raise RuntimeError(f"pillar not compiled from Consul on every minion: {pools}")
        beacons = fleet.salt("*", "beacons.list", "return_yaml=False")
        missing = [mid for mid in MINIONS if "consul_watch" not in (beacons.get(mid) or {})]
        if missing:
            raise RuntimeError(f"consul_watch beacon not configured on {missing}")
        time.sleep(SETTLE)
        if not any("/group/" in key for (_, key) in proxy.counts()):
            log = pathlib.Path(root) / "s" / "minions" / MINIONS[0] / "minion.log"
            tail = [line for line in log.read_text(errors="replace").splitlines() if "beacon" in line.lower()]
            raise RuntimeError(f"no beacon request reached Consul while settling: {tail[-5:]}")
        proxy.reset()
        started = time.monotonic()
        time.sleep(window)
        counts = proxy.counts()
        minutes = (time.monotonic() - started) / 60.0
    finally:
        if fleet is not None:
            fleet.cleanup()
        proxy.close()
        agent.api("PUT", "/v1/agent/service/deregister/db-idle")
        agent.api("DELETE", f"/v1/kv/{ROOT}/?recurse")
        shutil.rmtree(root, ignore_errors=True)
    nonblocking = sum(n for (kind, _), n in counts.items() if kind == "nonblocking")
    blocking = sum(n for (kind, _), n in counts.items() if kind == "blocking")
    per = len(MINIONS) * minutes
    return [
        ("idle_consul_requests_per_minion_minute", nonblocking / per),
        ("idle_consul_blocking_requests_per_minion_minute", blocking / per),
        ("idle_nonblocking_paths", _top(counts, "nonblocking")),
        ("idle_blocking_paths", _top(counts, "blocking")),
        (
            "idle_config",
            f"minions={len(MINIONS)} window={window:g}s keys={len(seed)} "
            f"empty_group_prefixes={sorted(_empty_groups(seed))} engine(kv={ENGINE['kv']} services={ENGINE['services']} "
            f"wait=300) pillar(revalidate=watch watch_wait=60) beacon(interval={BEACON_INTERVAL} "
            f"wait={BEACON['wait']} min_wait={BEACON['min_wait']})",
        ),
    ]
