"""
The ext_pillar's cache as several master workers share it: each MWorker
process has its own in-memory layers and all share the cache files. During an
outage a worker must serve the newest copy any worker fetched, not its own
older one (seen on the cluster: ``test_cluster_failures.py``, pillar compiles
while the Raft leader dies).
"""

import os
import uuid

import pytest
from test_pillar import make_opts, master_config, own_consul, put  # noqa: F401  (fixtures)

import saltconsul_kvtree
import saltconsul_pillarcache


def test_last_good_is_the_newest_copy_any_worker_fetched(own_consul, make_opts):  # noqa: F811
    """
    Two workers (two stores of one cache dir): A compiled before a change, B
    after it. Consul then fails: A's stale pillar is B's newer copy from disk,
    not A's own older one in memory; B's newer memory beats an older file.
    """
    prefix = f"p{uuid.uuid4().hex[:6]}"
    put(own_consul, f"{prefix}/global/db/pool", "1")
    opts = make_opts(own_consul, prefix)
    cache_dir = os.path.join(opts["cachedir"], "consul_pillar")
    layers = [(f"{prefix}/global", "auto", saltconsul_kvtree.DEFAULT_LEAF_KEY)]
    worker_a = saltconsul_pillarcache.Store(opts, cache_dir, prefix, "always")
    worker_b = saltconsul_pillarcache.Store(opts, cache_dir, prefix, "always")
    try:
        assert worker_a.trees(layers) == [{"db": {"pool": "1"}}]
        put(own_consul, f"{prefix}/global/db/pool", "2")
        put(own_consul, f"{prefix}/global/db/host", "db2")
        assert worker_b.trees(layers) == [{"db": {"pool": "2", "host": "db2"}}]
        newest = worker_b.layers[worker_b.layer_key(*layers[0])].fetched_at
        own_consul.stop()
        with pytest.raises(saltconsul_pillarcache.ConsulError):
            worker_a.trees(layers)
        assert worker_a.last_good(layers) == ([{"db": {"pool": "2", "host": "db2"}}], newest)
        # A slower worker's late write of an older fetch does not replace the
        # newer file: a third worker (a restarted master) still finds the newest.
        layer_key = worker_a.layer_key(*layers[0])
        worker_a._write_file(layer_key, saltconsul_pillarcache.Layer(
            layers[0][0], 1, newest - 60, saltconsul_pillarcache._dumps({"db": {"pool": "1"}})))
        assert worker_a._read_file(layer_key).fetched_at == newest
        worker_c = saltconsul_pillarcache.Store(opts, cache_dir, prefix, "always")
        assert worker_c.last_good(layers) == ([{"db": {"pool": "2", "host": "db2"}}], newest)
        worker_c.client.close()
        worker_c.watcher.client.close()
        # A newer fetch does replace the file.
        worker_a._write_file(layer_key, saltconsul_pillarcache.Layer(
            layers[0][0], 1, newest + 60, saltconsul_pillarcache._dumps({"db": {"pool": "3"}})))
        assert worker_a._read_file(layer_key).fetched_at == newest + 60
        assert not [name for name in os.listdir(cache_dir) if name.startswith(".tmp-")]
    finally:
        for store in (worker_a, worker_b):
            store.client.close()
            store.watcher.client.close()
