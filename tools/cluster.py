"""
A real Consul topology on loopback: three server agents and one client agent
per named node, each agent on its own loopback address, LAN-joined.

    with Cluster(nodes=["db01", "db02"]) as cluster:
        cluster.client("db01").http_addr   # the node's own agent (consul:address)
        cluster.kill("db01")               # kill -9 the node's agent
        cluster.kill_leader()              # kill -9 the current Raft leader

    # A second datacenter, its servers WAN-joined to the first's:
    with Cluster(nodes=["web01"]) as dc1, Cluster(nodes=["web02"], datacenter="dc2", wan_join=dc1) as dc2:
        dc2.kill_servers()                 # the whole of dc2's control plane down

    # The same with ACLs: dc1 is the primary datacenter, dc2 replicates its
    # policies and tokens (acl=True on both):
    with Cluster(acl=True) as dc1, Cluster(datacenter="dc2", acl=True, wan_join=dc1) as dc2:
        dc2.wait_acl_replicated()

What a production deployment is, at test scale: services register with the
node's client agent, anti-entropy syncs them to the servers, a node's death is
seen by gossip (``serfHealth``), and the Raft leader can change under load.

Each agent gets its own address in one random ``127.A.B.0/24`` (servers
``.1``-``.3``, clients from ``.11``), so nodes are distinct to Consul and
clusters of concurrent test runs never share an address; ports are free ports
picked per address. Any address in 127/8 binds on Linux without configuring
the loopback interface.

Timings, tighter than Consul's defaults so failures show in seconds (tests
only; each value is in ``FAST_GOSSIP`` / the agent config below):

* Raft: ``raft_multiplier: 1`` (Consul's production recommendation; leader
  lease 500 ms, election timeout 1 s).
* Serf LAN gossip: probe every 200 ms with a 100 ms timeout, suspicion
  multiplier 3: a killed node is marked ``failed`` (``serfHealth`` critical,
  its sessions invalidated) within about 2 s instead of about 5-10 s.

Every wait is bounded; agents are stopped by PID (their own process group).
Nothing here talks to anything but loopback.
"""

import contextlib
import json
import os
import random
import signal
import tempfile
import time
import urllib.error

from localconsul import LocalConsul

# Serf LAN settings for tests (consul agent config ``gossip_lan``).
FAST_GOSSIP = {
    "probe_interval": "200ms",
    "probe_timeout": "100ms",
    "suspicion_mult": 3,
    "gossip_interval": "100ms",
    "retransmit_mult": 2,
}

ALIVE = 1  # serf member status: 1 alive, 2 leaving, 3 left, 4 failed
FAILED = 4


def _base():
    """A random 127.A.B.0/24 for one cluster (A in 100-199: away from 127.0.0.x)."""
    return f"127.{random.randint(100, 199)}.{random.randint(0, 255)}"


class Cluster:
    """
    ``servers`` Consul servers plus one client agent per name in ``nodes``.

    acl
        Enable ACLs (``default_policy: deny``) with a management token
        (``master_token``). Agents start with it as their agent token; once
        the cluster is up each agent gets a token of its own, limited to its
        node (a Consul *node identity*: node write, service read), set
        through ``/v1/agent/token/agent`` and kept for restarts
        (``agent_tokens``: node name -> secret).
    gossip
        Serf LAN settings (default ``FAST_GOSSIP``; None for Consul's own).
    wan_join
        Another (started) ``Cluster``: this one's servers WAN-join its servers
        (``retry_join_wan``, so a restarted server rejoins by itself) and
        ``start`` waits until every server of both sees both datacenters.
        With ACLs (``acl`` must be the same for both) the joined cluster's
        datacenter is the *primary* one (``primary_datacenter`` of every
        agent here): this cluster shares its management token, replicates
        its policies and (``enable_token_replication``, with the management
        token as replication token: a lab shortcut) its global tokens, and
        gives its own agents *local* tokens (``Local``: they exist only
        here, as Consul requires of tokens made outside the primary).
    """

    def __init__(
        self,
        nodes=("node1", "node2"),
        servers=3,
        datacenter="dc1",
        acl=False,
        gossip=FAST_GOSSIP,
        log_dir=None,
        wan_join=None,
    ):
        if wan_join is not None and bool(acl) != bool(wan_join.acl):
            raise ValueError("WAN-joined clusters need ACLs on both or on neither")
        self.wan_peer = wan_join
        self.datacenter = datacenter
        self.base = _base()
        self.workdir = tempfile.mkdtemp(prefix=f"consul-cluster-{datacenter}-")
        self.log_dir = log_dir or self.workdir
        self.acl = acl
        # With ACLs, a WAN-joined cluster is a secondary of the joined one's primary.
        self.primary_datacenter = wan_join.primary_datacenter if (acl and wan_join) else datacenter
        if acl and wan_join is not None:
            self.master_token = wan_join.master_token
        else:
            self.master_token = ("root-" + os.urandom(8).hex()) if acl else None
        self.agent_tokens = {}
        extra = {"gossip_lan": dict(gossip)} if gossip else {}
        replication = None
        if self.secondary:
            extra["primary_datacenter"] = self.primary_datacenter
            replication = self.master_token
        self.servers = [
            LocalConsul(
                datacenter,
                acl=acl,
                master_token=self.master_token,
                bind=f"{self.base}.{n + 1}",
                node_name=f"{datacenter}-server{n + 1}",
                persist=True,
                extra_config=dict(extra),
                log_dir=self.log_dir,
                bootstrap_expect=servers,
                acl_replication_token=replication,
            )
            for n in range(servers)
        ]
        joins = [server.serf_lan_addr for server in self.servers]
        for server in self.servers:
            server.retry_join = [addr for addr in joins if addr != server.serf_lan_addr]
            if wan_join is not None:
                server.extra_config["retry_join_wan"] = [peer.wan_addr for peer in wan_join.servers]
                server.extra_config["retry_interval_wan"] = "1s"
        self.clients = {
            name: LocalConsul(
                datacenter,
                acl=acl,
                master_token=self.master_token,
                bind=f"{self.base}.{n + 11}",
                node_name=name,
                persist=True,
                extra_config=dict(extra),
                log_dir=self.log_dir,
                server=False,
                retry_join=joins,
            )
            for n, name in enumerate(nodes)
        }

    # ------------------------------------------------------------------ life cycle

    @property
    def secondary(self):
        """True for a WAN-joined cluster with ACLs: its tokens come from the primary datacenter."""
        return bool(self.acl) and self.primary_datacenter != self.datacenter

    @property
    def agents(self):
        """Every agent by node name (servers and clients)."""
        found = {server.node_name: server for server in self.servers}
        found.update(self.clients)
        return found

    def start(self, timeout=90):
        """
        Start every agent, then wait (bounded) for a leader and every member
        alive. With ACLs the servers come first and the client agents only
        once the servers have left ACL legacy mode: a Consul 1.8 client agent
        looks for that with a doubling interval (up to 30 s) and was seen to
        stay in legacy mode for 80 s when started with the servers of a
        secondary datacenter; meanwhile it resolves every token in the
        primary datacenter, so a token it first sees while the primary is
        down is refused although the secondary has it.
        """
        deadline = time.monotonic() + timeout

        def left():
            return max(1.0, deadline - time.monotonic())

        first = self.servers if self.acl else list(self.agents.values())
        for agent in first:
            agent.start(wait=False)
        for agent in first:
            agent.wait_ready(left())
        if self.acl:
            self.wait_members({s.node_name: ALIVE for s in self.servers}, timeout=left())
            if self.wan_peer is not None:
                self.wait_wan(timeout=left())
            self.wait_acl_mode(self.servers, timeout=left())
            for agent in self.clients.values():
                agent.start(wait=False)
            for agent in self.clients.values():
                agent.wait_ready(left())
        self.wait_members(timeout=left())
        if self.wan_peer is not None:
            self.wait_wan(timeout=left())
        if self.acl:
            self._issue_agent_tokens()
            self.wait_acl_mode(self.agents.values(), timeout=left())
        if self.secondary:
            self.wait_acl_replicated(timeout=left())
        return self

    @staticmethod
    def wait_acl_mode(agents, timeout=60):
        """
        Until none of ``agents`` is in ACL legacy mode (its ``/v1/agent/self``
        stats say so on Consul 1.4-1.10; later versions have no legacy mode); bounded.
        """
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = {
                    a.node_name: a.api_json("GET", "/v1/agent/self")["Stats"]["consul"].get("acl")
                    for a in agents
                    if a.pid
                }
                if "legacy" not in last.values():
                    return
            except (OSError, RuntimeError, urllib.error.URLError, ValueError, KeyError) as err:
                last = err
            time.sleep(0.2)
        raise RuntimeError(f"agents still in ACL legacy mode after {timeout}s: {last}")

    def wait_wan(self, timeout=30):
        """Until every live server here and in ``wan_join`` lists both datacenters (bounded)."""
        want = {self.datacenter, self.wan_peer.datacenter}
        servers = [s for s in self.servers + self.wan_peer.servers if s.pid]
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = [set(s.api_json("GET", "/v1/catalog/datacenters") or ()) for s in servers]
                if all(seen >= want for seen in last):
                    return
            except (OSError, RuntimeError, urllib.error.URLError, ValueError) as err:
                last = err
            time.sleep(0.2)
        raise RuntimeError(f"datacenters {sorted(want)} not joined over the WAN after {timeout}s: {last}")

    def wait_acl_ready(self, timeout=60):
        """
        Until the servers have left ACL legacy mode (bounded). A fresh Consul
        1.8 cluster answers the new ACL API with 500 "The ACL system is
        currently in legacy mode." for a while after electing a leader.
        """
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            status, raw = self.live_server().api("GET", "/v1/acl/policies")
            if status == 200:
                return
            last = (status, raw[:120])
            time.sleep(0.25)
        raise RuntimeError(f"ACLs not ready after {timeout}s: {last}")

    def wait_acl_replicated(self, token=None, timeout=60):
        """
        Until every live server of this secondary datacenter replicates
        tokens and (with ``token``) knows that token; bounded
        (``LocalConsul.wait_acl_replicated``).
        """
        deadline = time.monotonic() + timeout
        for server in self.servers:
            if server.pid:
                server.wait_acl_replicated(token, timeout=max(1.0, deadline - time.monotonic()))

    def _issue_agent_tokens(self):
        """A token per agent, limited to its own node; the management token stays with the test."""
        self.wait_acl_ready()
        server = self.live_server()
        for name, agent in self.agents.items():
            token = server.api_json(
                "PUT",
                "/v1/acl/token",
                {
                    "Description": f"agent token of {name}",
                    "NodeIdentities": [{"NodeName": name, "Datacenter": self.datacenter}],
                    # Outside the primary datacenter a token made here must be local.
                    "Local": self.secondary,
                },
            )
            secret = token["SecretID"]
            agent.api_json("PUT", "/v1/agent/token/agent", {"Token": secret})
            agent.acl_agent_token = secret  # the config of its next (re)start
            self.agent_tokens[name] = secret

    def stop(self):
        """Stop every agent by its PID (clients first, then servers)."""
        for agent in list(self.clients.values()) + self.servers:
            with contextlib.suppress(Exception):
                agent.stop()

    def cleanup(self):
        """
        Throw the cluster away: kill -9 every agent (no graceful leave: their
        data dirs go too, and a leave costs seconds per server), then remove
        their dirs.
        """
        for agent in self.agents.values():
            with contextlib.suppress(Exception):
                agent.kill()
        for agent in self.agents.values():
            agent.cleanup()

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc):
        self.cleanup()

    # ------------------------------------------------------------------ reading

    def client(self, node):
        return self.clients[node]

    def live_server(self):
        """A server agent that is running and not paused by us (for reads)."""
        for server in self.servers:
            if server.pid and not getattr(server, "_paused", False):
                return server
        raise RuntimeError("no live server")

    def members(self):
        """{node name: serf status} as a live server sees the LAN."""
        return {m["Name"]: m["Status"] for m in self.live_server().api_json("GET", "/v1/agent/members")}

    def leader(self):
        """The server agent that is the current Raft leader, or None."""
        for server in self.servers:
            if not server.pid or getattr(server, "_paused", False):
                continue
            try:
                addr = server.api_json("GET", "/v1/status/leader")
            except (OSError, RuntimeError, urllib.error.URLError):
                continue
            if addr:
                host = addr.rsplit(":", 1)[0]
                return next((s for s in self.servers if s.bind == host), None)
        return None

    def wait_members(self, expect=None, timeout=30):
        """
        Until a leader exists and every member has the expected serf status
        (default: all alive); bounded. Returns the members.
        """
        expect = expect or {name: ALIVE for name in self.agents}
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.members()
                if self.leader() and all(last.get(name) == status for name, status in expect.items()):
                    return last
            except (OSError, RuntimeError, urllib.error.URLError, ValueError) as err:
                last = err
            time.sleep(0.1)
        raise RuntimeError(f"cluster not as expected after {timeout}s: {last}")

    def wait_leader(self, exclude=None, timeout=30):
        """Until a leader other than ``exclude`` is elected (bounded); returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None and leader is not exclude:
                return leader
            time.sleep(0.1)
        raise RuntimeError(f"no new leader after {timeout}s")

    # ------------------------------------------------------------------ faults

    def kill(self, name):
        """kill -9 one agent (a server or a node's client): no leave is sent."""
        self.agents[name].kill()

    def pause(self, name):
        """SIGSTOP one agent: it holds its sockets and answers nothing (a partition from its side)."""
        agent = self.agents[name]
        os.kill(agent.pid, signal.SIGSTOP)
        agent._paused = True

    def resume(self, name, timeout=20):
        """
        SIGCONT a paused agent and wait (bounded) until every running server
        sees it alive again, nudging with a join as :meth:`restart` does: CI
        saw a resumed client stay failed on every server for over 30 s
        (serf's reconnect interval) when its refutation was lost under load.
        """
        agent = self.agents[name]
        os.kill(agent.pid, signal.SIGCONT)
        agent._paused = False
        self._rejoin(agent, timeout=timeout)

    def restart(self, name, timeout=60):
        """Start a killed or stopped agent again with its data (same node ID); bounded."""
        agent = self.agents[name]
        if agent.pid:
            agent.stop()
        agent._paused = False
        agent.start(timeout=timeout)
        self._rejoin(agent, timeout=min(timeout, 20))
        return agent

    def _rejoin(self, agent, timeout=20, grace=1.0):
        """
        Until every running server sees ``agent`` alive (bounded; the caller
        still checks). A node restarted right after it was killed can come
        back while a server is just marking it failed: seen under CPU load,
        that server kept it failed (the others saw it rejoin) until serf's
        own reconnect, up to 30 s later. A join from that server to the node
        makes the two exchange full state at once (the node refutes its
        death with a newer incarnation).
        """
        deadline = time.monotonic() + timeout
        nudge_after = time.monotonic() + grace
        while time.monotonic() < deadline:
            behind = []
            for server in self.servers:
                if server is agent or not server.pid or getattr(server, "_paused", False):
                    continue
                try:
                    seen = {m["Name"]: m["Status"] for m in server.api_json("GET", "/v1/agent/members")}
                except (OSError, RuntimeError, urllib.error.URLError, ValueError):
                    continue
                if seen.get(agent.node_name) != ALIVE:
                    behind.append(server)
            if not behind:
                return
            if time.monotonic() >= nudge_after:
                for server in behind:
                    server.api("PUT", f"/v1/agent/join/{agent.serf_lan_addr}")
                nudge_after = time.monotonic() + 2.0
            time.sleep(0.2)

    def kill_servers(self):
        """kill -9 every server (a datacenter's control plane down); client agents keep running."""
        for server in self.servers:
            server.kill()
            server._paused = False

    def restart_servers(self, timeout=90, settle=True):
        """
        Start every stopped server again with its data; wait (bounded) for a
        leader, the servers alive and the WAN; with ``settle`` (default) also
        until the client agents have spent their stale connections (see
        ``wait_clients_serving``). ``settle=False`` leaves those to the next
        caller: what a Salt run right after a restart meets.
        """
        deadline = time.monotonic() + timeout
        for server in self.servers:
            if not server.pid:
                server.start(wait=False)
        for server in self.servers:
            server.wait_ready(max(1.0, deadline - time.monotonic()))
        self.wait_members({s.node_name: ALIVE for s in self.servers}, timeout=max(1.0, deadline - time.monotonic()))
        if self.wan_peer is not None:
            self.wait_wan(timeout=max(1.0, deadline - time.monotonic()))
        if settle:
            self.wait_clients_serving(timeout=max(1.0, deadline - time.monotonic()))

    def wait_clients_serving(self, timeout=30, streak=3):
        """
        Until every running client agent has forwarded ``streak`` writes in a
        row (bounded). After the servers restart, a client's pooled
        connections to the old server processes fail once each ("stream
        closed") before it redials: the probe spends those failures here, not
        in the next test. The probe key is deleted again.
        """
        deadline = time.monotonic() + timeout
        for name, client in self.clients.items():
            if not client.pid or getattr(client, "_paused", False):
                continue
            key = f"/v1/kv/_cluster_probe/{name}"
            ok = 0
            while ok < streak:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"client agent {name} not forwarding writes after {timeout}s")
                try:
                    ok = ok + 1 if client.api("PUT", key, b"1")[0] == 200 else 0
                except (OSError, urllib.error.URLError):
                    ok = 0
                if not ok:
                    time.sleep(0.2)
            client.api("DELETE", key)

    def kill_leader(self):
        """kill -9 the current Raft leader; returns the killed server agent."""
        leader = self.leader()
        if leader is None:
            raise RuntimeError("no leader to kill")
        leader.kill()
        return leader

    def describe(self):
        """JSON-able summary: each agent's address, PID and role (for logs and the demo)."""
        return {
            name: {"http": agent.http_addr, "pid": agent.pid, "server": agent.server}
            for name, agent in self.agents.items()
        }


def main():
    """``python tools/cluster.py db01 db02``: start a cluster, print it, stop on Ctrl-C."""
    import sys

    with Cluster(nodes=sys.argv[1:] or ["node1", "node2"]) as cluster:
        print(json.dumps(cluster.describe(), indent=2), flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
