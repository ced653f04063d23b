"""
Partition of a DB primary on a real Consul topology (``tools/cluster.py``):
the primary's node agent stops answering the cluster (SIGSTOP) while the old
primary's database process keeps running. The replica takes the lock and is
promoted; the old primary's self-fencing watchdog
(``formulas/failover/files/fence_watchdog.py``) demotes it first, because its
fencing bound is shorter than the lock delay. Both databases' roles are
sampled every 10 ms throughout: the time during which both are primary (would
both accept writes) must be 0.

The lock is taken and taken over with ``consul.single_holder_service``
through each node's own client agent (Salt's real loaders, each apply in a
forked process as a minion job is). Phase durations are printed
(``failover_partition_*``), never asserted.
"""

import copy
import multiprocessing
import subprocess
import sys
import threading
import time

import pytest
from conftest import lock_state, wait_for
import salt.loader

from cluster import FAILED, Cluster
from standin_failover import REPO, STANDIN, StandIn

DB01 = "db01.prod.gg.mydc1.example.com"
DB02 = "db02.prod.gg.mydc1.example.com"
NODES = {DB01: "db01", DB02: "db02"}
KEY = "locks/pdb/leader"
LOCK_DELAY = 5.0
# The watchdog's bound: fence_after + interval + timeout + demote_timeout =
# 2 + 0.25 + 0.5 + 1 = 3.75 s < the lock delay (5 s).
WATCHDOG = {"fence_after": 2.0, "interval": 0.25, "timeout": 0.5, "demote_timeout": 1.0}
WATCHDOG_PY = REPO / "formulas" / "failover" / "files" / "fence_watchdog.py"


@pytest.fixture(scope="module")
def pcluster(tmp_path_factory):
    with Cluster(nodes=list(NODES.values()), log_dir=str(tmp_path_factory.mktemp("partition-logs"))) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("partition-db")
    servers = {mid: StandIn(workdir, mid) for mid in NODES}
    yield servers
    for server in servers.values():
        server.kill()


def _apply_child(opts, spec, results):
    from saltfactories.utils.functional import Loaders

    loaders = Loaders(opts)
    states = salt.loader.states(
        opts, functions=loaders.modules, utils=loaders.utils, serializers=loaders.serializers, context=loaders.context
    )
    results.put(states["consul.single_holder_service"](**spec))


def apply_on(functional_minion, cluster, minion_id, port, tmp_path):
    """One apply of the single-holder state on ``minion_id`` (through its node's agent), in a forked process."""
    opts = copy.deepcopy(functional_minion.config)
    opts.update(id=minion_id, cachedir=str(tmp_path / minion_id))
    opts["consul"] = {"address": cluster.client(NODES[minion_id]).http_addr, "retries": 0, "timeout": 3}
    spec = dict(
        name="pdb",
        service_id=f"pdb@{minion_id}",
        lock_key=KEY,
        lock_delay=f"{LOCK_DELAY:g}s",
        wait_passing=5,
        port=port,
        checks=[{"name": "db", "tcp": f"127.0.0.1:{port}", "interval": "1s", "timeout": "1s"}],
    )
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    proc = ctx.Process(target=_apply_child, args=(opts, spec, results))
    proc.start()
    ret = results.get(timeout=120)
    proc.join(timeout=30)
    return ret


class RoleSampler(threading.Thread):
    """Both databases' roles every 10 ms; accumulates the time both were primary."""

    def __init__(self, dbs):
        super().__init__(daemon=True)
        self.dbs = dbs
        self.stop = threading.Event()
        self.overlap = 0.0
        self.samples = 0

    def run(self):
        last = time.monotonic()
        while not self.stop.is_set():
            roles = [db.role for db in self.dbs]
            now = time.monotonic()
            if roles.count("primary") > 1:
                self.overlap += now - last
            self.samples += 1
            last = now
            time.sleep(0.01)


def test_partitioned_primary_fences_itself_before_the_replica_is_promoted(
    pcluster, standins, functional_minion, tmp_path
):
    primary, replica = standins[DB01], standins[DB02]
    primary.start(role="primary")
    replica.start(role="replica")
    ret = apply_on(functional_minion, pcluster, DB01, primary.port, tmp_path)
    assert ret["result"] is True and "Took the lock" in ret["comment"], ret
    ret = apply_on(functional_minion, pcluster, DB02, replica.port, tmp_path)
    assert ret["result"] is True and "Standing by" in ret["comment"] and ret["changes"] == {}, ret
    assert lock_state(pcluster.live_server(), KEY)[1] == DB01

    demote = f"{sys.executable} {STANDIN} demote --port {primary.port} --role-file {primary.role_file}"
    log = open(tmp_path / "watchdog.log", "w")  # noqa: SIM115 (closed below)
    watchdog = subprocess.Popen(
        [
            sys.executable, str(WATCHDOG_PY),
            "--consul", pcluster.client(NODES[DB01]).http_addr,
            "--key", KEY, "--me", DB01, "--demote", demote,
            "--fence-after", str(WATCHDOG["fence_after"]), "--interval", str(WATCHDOG["interval"]),
            "--timeout", str(WATCHDOG["timeout"]), "--demote-timeout", str(WATCHDOG["demote_timeout"]),
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    sampler = RoleSampler([primary, replica])
    sampler.start()
    try:
        time.sleep(1.0)  # the watchdog confirms the lock a few times
        assert watchdog.poll() is None and primary.role == "primary"

        # Partition: the primary's node agent answers nobody; its database runs on.
        started = time.monotonic()
        pcluster.pause(NODES[DB01])
        pcluster.wait_members({NODES[DB01]: FAILED}, timeout=60)
        detected = time.monotonic()
        assert wait_for(lambda: lock_state(pcluster.live_server(), KEY)[0] is None, 60, 0.05)
        released = time.monotonic()
        # The replica's side (the orchestration's job): apply until it holds
        # the lock, then promote.
        taken = None
        deadline = time.monotonic() + 60
        while taken is None and time.monotonic() < deadline:
            ret = apply_on(functional_minion, pcluster, DB02, replica.port, tmp_path)
            if ret["result"] is True and "Took the lock" in ret["comment"]:
                taken = time.monotonic()
        assert taken, ret
        promote = subprocess.run(
            [sys.executable, str(STANDIN), "promote", "--port", str(replica.port)], timeout=30, check=False
        )
        assert promote.returncode == 0
        promoted = time.monotonic()
        assert replica.role == "primary"
        # The old primary had fenced itself before that.
        assert wait_for(lambda: primary.role == "replica", 30, 0.05)
        time.sleep(0.5)
    finally:
        sampler.stop.set()
        sampler.join(timeout=10)
        watchdog.terminate()
        watchdog.wait(timeout=10)
        log.close()
        if pcluster.agents[NODES[DB01]]._paused:
            pcluster.resume(NODES[DB01])
    fence_log = (tmp_path / "watchdog.log").read_text()
    assert "fencing" in fence_log and "demote done" in fence_log, fence_log
    assert sampler.samples > 100
    assert sampler.overlap == 0.0, sampler.overlap
    print(
        f"failover_partition_detect_seconds: {detected - started:.2f}\n"
        f"failover_partition_release_seconds: {released - started:.2f}\n"
        f"failover_partition_takeover_seconds: {taken - started:.2f}\n"
        f"failover_partition_seconds: {promoted - started:.2f}\n"
        f"split_brain_overlap_seconds: {sampler.overlap:.2f}"
    )
    # Consul agrees: one holder, the new primary.
    assert lock_state(pcluster.live_server(), KEY)[1] == DB02
