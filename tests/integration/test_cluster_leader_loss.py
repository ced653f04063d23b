"""
Compare-and-set counters through client agents while the Raft leader is
killed (``tools/cluster.py``): no acknowledged KV write is lost.

Four writer processes (two per node, each through its node's own client agent
and Salt's real loaders: ``consul.kv_get`` / ``consul.kv_put(cas=...)``)
increment one counter. Mid-run the leader is killed -9. A write that failed
with an error other than a CAS conflict may or may not have been applied (the
leader may have committed it before dying), so the final counter must lie
between the acknowledged increments and those plus the ambiguous ones; and
every writer finishes its increments once a new leader is elected.
"""

import multiprocessing
import time

from cluster import Cluster
from cluster_failover import minion_opts
from salt.exceptions import CommandExecutionError

KEY = "cluster/counter"
WRITERS_PER_NODE = 2
INCREMENTS = 30


def _writer(opts, results):
    import salt.loader

    context = {}
    utils = salt.loader.utils(opts, context=context)
    consul = salt.loader.minion_mods(opts, utils=utils, context=context)
    done = ambiguous = errors = conflicts = 0
    deadline = time.monotonic() + 180
    while done < INCREMENTS and time.monotonic() < deadline:
        try:
            entry = consul["consul.kv_get"](KEY, detail=True)
        except CommandExecutionError:
            errors += 1
            time.sleep(0.1)
            continue
        try:
            consul["consul.kv_put"](KEY, str(int(entry["value"]) + 1), cas=entry["modify_index"])
            done += 1
        except CommandExecutionError as err:
            if "CAS conflict" in str(err):
                conflicts += 1
            else:
                ambiguous += 1  # the leader may have committed it before answering
                time.sleep(0.1)
    results.put({"done": done, "ambiguous": ambiguous, "errors": errors, "conflicts": conflicts})


def test_no_acknowledged_write_lost_when_the_leader_dies(tmp_path):
    with Cluster(nodes=["n1", "n2"], log_dir=str(tmp_path)) as cluster:
        server = cluster.live_server()
        assert server.api("PUT", f"/v1/kv/{KEY}", b"0")[0] == 200
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()
        procs = []
        for node in ("n1", "n2"):
            for n in range(WRITERS_PER_NODE):
                opts = minion_opts(cluster.client(node).http_addr, f"w{n}.{node}", str(tmp_path))
                procs.append(ctx.Process(target=_writer, args=(opts, results)))
        for proc in procs:
            proc.start()

        def counter():
            status, raw = cluster.live_server().api("GET", f"/v1/kv/{KEY}?raw&stale")
            return int(raw) if status == 200 else 0

        deadline = time.monotonic() + 60
        while counter() < 15 and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = cluster.kill_leader()
        cluster.wait_leader(exclude=killed, timeout=60)
        got = [results.get(timeout=240) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
        final = int(cluster.leader().api("GET", f"/v1/kv/{KEY}?raw")[1])
    done = sum(r["done"] for r in got)
    ambiguous = sum(r["ambiguous"] for r in got)
    print(f"cluster_leader_loss_cas: acknowledged={done} ambiguous={ambiguous} final={final} "
          f"conflicts={sum(r['conflicts'] for r in got)} read_errors={sum(r['errors'] for r in got)}")
    assert [proc.exitcode for proc in procs] == [0] * len(procs)
    assert done == INCREMENTS * len(procs), got  # everyone finished after the election
    assert done <= final <= done + ambiguous, (done, ambiguous, final)
