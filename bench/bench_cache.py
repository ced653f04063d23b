"""
The ``consul`` cache driver under Salt's own grain targeting
(``salt.utils.minions.CkMinions.check_minions(..., "grain")``, greedy as for
``salt -G``) over 100 minions whose grains are in the cache, beside Salt's
default ``localfs`` driver as the floor.

Printed:

* ``cache_grain_target_100_minions_requests``: HTTP requests Consul received
  for one targeting (counted by the shared client);
* ``cache_grain_target_100_minions_localfs_reads``: cache driver calls
  (``list`` + ``fetch``, each a directory listing or a file read) ``localfs``
  made for the same targeting: the floor, since Salt asks the driver once per
  minion whatever the driver;
* the same with the bank read-ahead off (``readahead_window: 0``): one
  request per minion;
* per-operation request counts (store, fetch, updated, list) and the time of
  one targeting with each driver (median of 5).
"""

import os
import shutil
import statistics
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MINIONS = [f"web{i:03d}.prod.gg.mydc1.example.com" for i in range(100)]
PREFIX = "bench/cache"


def _grains(i):
    # About the size of real core grains (~5 KB serialized).
    return {
        "id": MINIONS[i],
        "role": "web" if i % 2 == 0 else "db",
        "os": "Debian",
        "osrelease": "12",
        "num_cpus": 4,
        "mem_total": 7936,
        "ipv4": [f"10.0.{i // 250}.{i % 250}", "127.0.0.1"],
        "cpu_flags": [f"flag{n}" for n in range(120)],
        "env": {"type": "prod", "group": "gg", "datacenter": "mydc1", "role": "web"},
        "extra": {f"k{n}": "v" * 20 for n in range(60)},
    }


def _opts(root, driver, address):
    import salt.config  # pylint: disable=import-outside-toplevel

    opts = salt.config.master_config(None)
    opts.update(
        {
            "id": "bench_master",
            "root_dir": root,
            "cachedir": os.path.join(root, "cache"),
            "pki_dir": os.path.join(root, "pki"),
            "cache": driver,
            "cache_dirs": [os.path.join(REPO, "_cache")],
            "minion_data_cache": True,
            "consul": {"address": address, "retries": 0, "cache": {"prefix": PREFIX}},
        }
    )
    os.makedirs(os.path.join(opts["pki_dir"], "minions"), exist_ok=True)
    for minion in MINIONS:
        # Accepted keys: greedy targeting considers every accepted minion.
        with open(os.path.join(opts["pki_dir"], "minions", minion), "w", encoding="utf-8") as fh:
            fh.write("-----BEGIN PUBLIC KEY-----\nbench\n-----END PUBLIC KEY-----\n")
    return opts


class _Counting:
    """Counts driver calls made through ``salt.cache.Cache`` (list, fetch)."""

    def __init__(self):
        import salt.cache  # pylint: disable=import-outside-toplevel

        self.calls = 0
        self._cls = salt.cache.Cache
        self._orig = {name: getattr(self._cls, name) for name in ("list", "fetch")}

    def __enter__(self):
        for name, func in self._orig.items():
            def wrapper(cache, *args, _func=func, **kwargs):
                self.calls += 1
                return _func(cache, *args, **kwargs)

            setattr(self._cls, name, wrapper)
        return self

    def __exit__(self, *exc):
        for name, func in self._orig.items():
            setattr(self._cls, name, func)


def _consul_requests(address):
    import saltconsul_client  # pylint: disable=import-outside-toplevel

    clients = saltconsul_client.PROCESS_CONTEXT.get(saltconsul_client.CONTEXT_KEY, {})
    return sum(c.stats["requests"] for c in clients.values() if c.address == address)


def _target(opts):
    import salt.utils.minions  # pylint: disable=import-outside-toplevel

    ck = salt.utils.minions.CkMinions(opts)
    return ck.check_minions("role:web", "grain")["minions"]


def _measure(opts, address):
    import salt.cache  # pylint: disable=import-outside-toplevel

    cache = salt.cache.factory(opts)
    for i, minion in enumerate(MINIONS):
        cache.store("grains", minion, _grains(i))
    expected = sorted(MINIONS[::2])
    assert sorted(_target(opts)) == expected  # warm the loaders once
    before = _consul_requests(address)
    with _Counting() as counting:
        found = _target(opts)
    requests = _consul_requests(address) - before
    assert sorted(found) == expected, found
    times = []
    for _ in range(5):
        start = time.perf_counter()
        _target(opts)
        times.append(time.perf_counter() - start)
    return requests, counting.calls, statistics.median(times)


def _per_operation(opts, address):
    import salt.cache  # pylint: disable=import-outside-toplevel

    cache = salt.cache.factory(opts)
    counts = []
    for name, call in (
        ("store", lambda: cache.store("mine", MINIONS[0], {"f": [1, 2]})),
        ("fetch", lambda: cache.fetch("mine", MINIONS[0])),
        ("updated", lambda: cache.updated("mine", MINIONS[0])),
        ("list", lambda: cache.list("grains")),
    ):
        before = _consul_requests(address)
        call()
        counts.append((f"cache_{name}_requests", _consul_requests(address) - before))
    return counts


def run(agent):
    address = agent.http_addr
    root = tempfile.mkdtemp(prefix="bench-cache-")
    try:
        consul_opts = _opts(os.path.join(root, "consul"), "consul", address)
        local_opts = _opts(os.path.join(root, "localfs"), "localfs", address)
        consul_requests, consul_calls, consul_s = _measure(consul_opts, address)
        plain_opts = dict(consul_opts, consul=dict(consul_opts["consul"], cache={"prefix": PREFIX, "readahead_window": 0}))
        plain_requests, _, plain_s = _measure(plain_opts, address)
        local_requests, local_calls, local_s = _measure(local_opts, address)
        if local_requests:
            raise RuntimeError(f"localfs sent {local_requests} requests to Consul")
        results = [
            ("cache_grain_target_100_minions_requests", consul_requests),
            ("cache_grain_target_100_minions_consul_driver_calls", consul_calls),
            ("cache_grain_target_100_minions_localfs_reads", local_calls),
            ("cache_grain_target_100_minions_seconds", consul_s),
            ("cache_grain_target_100_minions_localfs_seconds", local_s),
            ("cache_grain_target_100_minions_readahead_off_requests", plain_requests),
            ("cache_grain_target_100_minions_readahead_off_seconds", plain_s),
        ]
        results.extend(_per_operation(consul_opts, address))
        return results
    finally:
        agent.api("DELETE", f"/v1/kv/{PREFIX}?recurse")
        shutil.rmtree(root, ignore_errors=True)
