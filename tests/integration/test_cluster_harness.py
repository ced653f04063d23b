"""
The cluster harness itself (``tools/cluster.py``): what the other cluster
tests rely on, checked against Consul's own view.
"""

import os

from cluster import ALIVE, FAILED, Cluster
from conftest import wait_for


def test_topology_faults_and_acl_tokens(tmp_path):
    with Cluster(nodes=["n1", "n2"], acl=True, log_dir=str(tmp_path)) as cluster:
        agents = cluster.agents
        # Each agent on its own loopback address; a leader; everyone alive.
        assert len({agent.bind for agent in agents.values()}) == 5
        assert all(agent.bind.startswith("127.") for agent in agents.values())
        assert cluster.members() == {name: ALIVE for name in agents}
        assert len(cluster.live_server().api_json("GET", "/v1/status/peers")) == 3
        # ACLs: default deny; each agent has a token of its own, limited to its node.
        server = cluster.live_server()
        assert server.api("GET", "/v1/kv/x", token="anonymous")[0] == 403
        assert set(cluster.agent_tokens) == set(agents) and len(set(cluster.agent_tokens.values())) == 5
        assert cluster.master_token not in cluster.agent_tokens.values()
        assert server.api("PUT", "/v1/kv/x", b"1", token=cluster.agent_tokens["n1"])[0] == 403
        # A service registered on n1's client agent reaches the servers (the
        # agent syncs it with its own token).
        n1 = cluster.client("n1")
        assert n1.api("PUT", "/v1/agent/service/register", {"Name": "web", "ID": "web@n1"})[0] == 200
        assert wait_for(lambda: [e["Node"] for e in server.api_json("GET", "/v1/catalog/service/web")] == ["n1"], 20)

        # kill -9 a client: gossip marks it failed; restart: alive, same node.
        cluster.kill("n1")
        assert n1.pid is None
        cluster.wait_members({"n1": FAILED}, timeout=30)
        cluster.restart("n1")
        cluster.wait_members(timeout=30)

        # SIGSTOP / SIGCONT.
        cluster.pause("n2")
        cluster.wait_members({"n2": FAILED}, timeout=30)
        cluster.resume("n2")
        cluster.wait_members(timeout=30)

        # kill -9 the Raft leader: another is elected; restarted, it rejoins.
        old = cluster.kill_leader()
        new = cluster.wait_leader(exclude=old, timeout=60)
        assert new is not old
        cluster.restart(old.node_name)
        cluster.wait_members(timeout=60)
        assert len(cluster.live_server().api_json("GET", "/v1/status/peers")) == 3
        pids = [agent.pid for agent in agents.values()]
    # Stopped by PID: none of them runs any more.
    assert all(not os.path.exists(f"/proc/{pid}") for pid in pids)
