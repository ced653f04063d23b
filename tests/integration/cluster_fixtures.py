"""
Fixtures for tests on a real Consul topology (``tools/cluster.py``): three
Consul servers and one client agent per node, each on its own loopback
address; a salt-master on its own node's client agent and salt-minions whose
``consul:address`` is their own node's client agent, as in production.

Import the fixtures into a test module:

    from cluster_fixtures import cluster_master, cluster_minions, consul_cluster  # noqa: F401

They are module-scoped: a module that kills a node gets a fresh cluster.
"""

import contextlib
import os
import signal

import pytest
from conftest import synced_master, synced_minion

import localconsul
from cluster import Cluster

DB01 = "db01.prod.gg.mydc1.example.com"
DB02 = "db02.prod.gg.mydc1.example.com"
MASTER_NODE = "saltmaster"
# Consul node name of each minion's own client agent.
NODES = {DB01: "db01", DB02: "db02"}


@pytest.fixture(scope="module")
def consul_cluster(tmp_path_factory):
    with Cluster(nodes=[MASTER_NODE, *NODES.values()], log_dir=str(tmp_path_factory.mktemp("cluster-logs"))) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def cluster_pillar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-pillar")
    (root / "top.sls").write_text("base: {}\n")
    return root


@pytest.fixture(scope="module")
def cluster_master(salt_factories, consul_cluster, state_tree, cluster_pillar):
    """A salt-master whose consul: address is the client agent of its own node."""
    master_id = f"cluster-master-{os.urandom(3).hex()}"
    with synced_master(salt_factories, master_id, consul_cluster.client(MASTER_NODE), state_tree, cluster_pillar) as factory:
        yield factory


@pytest.fixture(scope="module")
def cluster_minions(cluster_master, consul_cluster):
    """{minion ID: salt-minion}, each on its own node's client agent."""
    with contextlib.ExitStack() as stack:
        minions = {
            mid: stack.enter_context(synced_minion(cluster_master, consul_cluster.client(node), mid))
            for mid, node in NODES.items()
        }
        yield minions


def kill_minion(factory):
    """kill -9 a salt-minion and every process it started (the node dies)."""
    import psutil

    try:
        proc = psutil.Process(factory.pid)
    except (psutil.NoSuchProcess, TypeError):
        return
    for child in proc.children(recursive=True) + [proc]:
        with contextlib.suppress(psutil.NoSuchProcess):
            os.kill(child.pid, signal.SIGKILL)


FakeDB = localconsul.TcpTarget  # the DB port a node's check probes


def state_results(ret):
    """{state id: (result, comment, changes)} of a ``state.apply``/``state.sls`` return."""
    data = ret.data if isinstance(ret.data, dict) else {}
    return {
        v.get("__id__"): (v.get("result"), v.get("comment"), v.get("changes"))
        for v in data.values()
        if isinstance(v, dict) and "__id__" in v
    }
