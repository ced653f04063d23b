"""
Partition and node death of a DB primary on a real Consul topology
(``tools/cluster.py``; scenarios in ``tools/cluster_failover.py``).

Partition: the primary's node agent stops answering the cluster (SIGSTOP)
while the old primary's database keeps running. The replica takes the lock
and is promoted; the old primary's self-fencing watchdog
(``formulas/failover/files/fence_watchdog.py``) demotes it first, because its
fencing bound (3.75 s) is shorter than the lock delay (5 s). Both databases'
roles are sampled every 10 ms throughout: the time during which both are
primary (would both accept writes) must be 0.

Node death: kill -9 of the primary's client agent and database: gossip marks
the node failed, Consul invalidates its session, the replica's next apply
takes the lock.

The lock is taken with ``consul.single_holder_service`` through each node's
own client agent (Salt's real loaders). Phase durations are printed, never
asserted (``make bench`` reports them).
"""

import cluster_failover
import pytest
from cluster import Cluster
from cluster_failover import PRIMARY, REPLICA


@pytest.fixture
def two_nodes(tmp_path):
    with Cluster(nodes=["db01", "db02"], log_dir=str(tmp_path)) as cluster:
        yield cluster


def _standby_ok(standby):
    return standby["result"] is True and "Standing by" in standby["comment"] and standby["changes"] == {}


def test_partitioned_primary_fences_itself_before_the_replica_is_promoted(two_nodes, tmp_path):
    result = cluster_failover.partition(two_nodes, str(tmp_path))
    assert _standby_ok(result["standby"]), result["standby"]
    assert result["holder"] == REPLICA
    assert "fencing" in result["watchdog_log"] and "demote done" in result["watchdog_log"], result["watchdog_log"]
    # Fenced before the replica even held the lock, and never two primaries.
    assert result["fenced_before_takeover"] is True
    assert result["samples"] > 100
    assert result["overlap"] == 0.0, result["overlap"]
    for name, value in cluster_failover.report("failover_partition", result):
        print(f"{name}: {value:.2f}")
    print(f"split_brain_overlap_seconds: {result['overlap']:.2f}")


def test_node_death_replica_takes_over(two_nodes, tmp_path):
    result = cluster_failover.node_death(two_nodes, str(tmp_path))
    assert _standby_ok(result["standby"]), result["standby"]
    assert result["holder"] == REPLICA
    # Each failed takeover attempt (the lock delay) is a clear False, never a holder elsewhere.
    for ret in result["takeover_returns"][:-1]:
        assert ret["result"] is False and "lock delay" in ret["comment"], ret
    assert PRIMARY not in (result["holder"] or "")
    for name, value in cluster_failover.report("failover_node_death", result):
        print(f"{name}: {value:.2f}")
