"""
Bench section ``failover``: time from a DB primary's death to the client's
config naming the new primary, through the real chain

    stand-in killed -> TCP check critical -> session invalidated, lock released
    -> consul_watch engine event -> reactor -> orchestration
    -> replica takes the lock (after the lock delay), registers, is promoted
    -> client's config re-rendered (file.managed)

on real daemons: a ``salt-master`` (engine + reactor) and three
``salt-minion`` processes of this virtualenv (``tools/standin_failover.Rig``),
against the bench's Consul agent. Two rounds: db01 -> db02, then back.

Prints ``failover_seconds`` (the median round) and where the time went, from
timestamps taken while polling Consul and the files (every 50 ms) and from the
master log (the engine's event):

* ``failover_detect_seconds``: kill -> lock released (check interval + timeout)
* ``failover_event_seconds``: lock released -> engine event (quiet period ``min_wait``)
* ``failover_takeover_seconds``: event -> lock held by the replica (reactor,
  orchestration render, minion job, lock delay, first check of the new instance)
* ``failover_promote_seconds``: lock taken -> role file says primary
* ``failover_clients_seconds``: promoted -> client config re-pointed (a second
  minion job)

On a real topology (``tools/cluster.py``: 3 Consul servers, a client agent per
DB node; scenarios in ``tools/cluster_failover.py``), without Salt daemons
(the state through Salt's loaders, applied on the replica until it holds the
lock, as the orchestration would):

* ``failover_node_death_seconds``: kill -9 of the primary's node (client agent
  and database) -> replica promoted, with ``_detected`` (gossip marks the node
  failed), ``_released`` (session invalidated), ``_taken`` (replica holds the
  lock: the lock delay), ``_promoted``, each from the kill;
* ``failover_partition_seconds``: the primary's agent SIGSTOPped (its database
  runs on) -> replica promoted, same phases plus ``_fenced`` (the old primary's
  watchdog demoted it);
* ``split_brain_overlap_seconds``: time both databases said ``primary``
  (sampled every 10 ms), must be 0;
* ``failover_cluster_config``: the settings used.

Figures, not assertions. The timing knobs default to ``standin_failover.TIMING``
(check interval 1s, lock delay 1s, engine min_wait 0.5s); to see what each one
costs, override them: ``BENCH_FAILOVER_TIMING="lock_delay=5s,check_interval=5s"
python bench/run.py failover``.
"""

import os
import re
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for extra in (os.path.join(REPO, "tools"), os.path.join(REPO, "_utils")):
    if extra not in sys.path:
        sys.path.insert(0, extra)

import standin_failover as rig  # noqa: E402

POLL = 0.05
ROUND_TIMEOUT = 120


def _engine_event_times(log_path):
    """Epoch times of the engine's 'db changed' / 'locks/ changed' log lines."""
    times = []
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return times
    for line in lines:
        match = re.match(r"^(\d+\.\d+) .*consul_watch: (db|locks/) changed", line)
        if match:
            times.append(float(match.group(1)))
    return times


def _settle(salt_rig, timeout=60):
    """Wait (bounded) until no minion job is running: earlier orchestrations are over."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline and quiet < 3:
        active = salt_rig.run("jobs.active", timeout=30)
        quiet = quiet + 1 if not active else 0
        time.sleep(1)


def _round(salt_rig, agent, workdir, old, new, old_id, new_id):
    """Kill ``old``; return the phase timestamps (epoch seconds) until the client names ``new``."""
    marks = {}
    target = f"db_primary = 127.0.0.1:{new.port}"
    marks["kill"] = time.time()
    old.kill()
    deadline = time.monotonic() + ROUND_TIMEOUT
    while time.monotonic() < deadline:
        now = time.time()
        session, holder = rig.lock_state(agent)
        if "released" not in marks and not session:
            marks["released"] = now
        if "acquired" not in marks and session and holder == new_id:
            marks["acquired"] = now
        if "promoted" not in marks and new.role == "primary":
            marks["promoted"] = now
        if target in rig.client_conf(workdir):
            marks["clients"] = now
            break
        time.sleep(POLL)
    else:
        raise RuntimeError(f"client config not re-pointed to {new_id} within {ROUND_TIMEOUT}s")
    after = [t for t in _engine_event_times(salt_rig.master_log) if t >= marks.get("released", marks["kill"])]
    if after:
        marks["event"] = min(after)
    # The old server comes back as a replica (the orchestration demoted it
    # while it was down); wait until it is fenced, so the next round starts clean.
    old.start()
    rig.wait_for(lambda: rig.db_instances(agent) == [f"db@{new_id}"] and old.role == "replica", 60)
    return marks


def _timing():
    """``standin_failover.TIMING`` with the overrides of ``$BENCH_FAILOVER_TIMING`` (k=v,k=v)."""
    timing = dict(rig.TIMING)
    for item in filter(None, os.environ.get("BENCH_FAILOVER_TIMING", "").split(",")):
        key, _, value = item.partition("=")
        if key.strip() not in timing:
            raise ValueError(f"BENCH_FAILOVER_TIMING: unknown knob {key!r} (known: {sorted(timing)})")
        timing[key.strip()] = float(value) if key.strip() == "min_wait" else value.strip()
    return timing


def run(agent):
    timing = _timing()
    root = tempfile.mkdtemp(prefix="fo-", dir="/tmp")
    workdir = os.path.join(root, "work")
    os.makedirs(workdir)
    servers = {rig.PRIMARY: rig.StandIn(workdir, rig.PRIMARY), rig.REPLICA: rig.StandIn(workdir, rig.REPLICA)}
    ports = {mid: s.port for mid, s in servers.items()}
    state_tree, pillar_tree = rig.make_trees(root, workdir, ports, timing)
    salt_rig = rig.Rig(
        os.path.join(root, "salt"),
        rig.master_config(state_tree, pillar_tree, agent, timing),
        [rig.PRIMARY, rig.REPLICA, rig.CLIENT],
        agent,
    )
    try:
        salt_rig.start()
        salt_rig.salt("*", "saltutil.sync_all")
        servers[rig.PRIMARY].start(role="replica")
        servers[rig.REPLICA].start(role="replica")
        for mid, sls in ((rig.PRIMARY, "failover"), (rig.REPLICA, "failover"), (rig.CLIENT, "failover.client")):
            salt_rig.salt(mid, "state.apply", sls, "queue=True")
        if rig.lock_state(agent)[1] != rig.PRIMARY or servers[rig.PRIMARY].role != "primary":
            raise RuntimeError("bring-up failed: db01 is not the primary")
        rounds = []
        order = [(rig.PRIMARY, rig.REPLICA), (rig.REPLICA, rig.PRIMARY)]
        for old_id, new_id in order:
            _settle(salt_rig)
            rounds.append(_round(salt_rig, agent, workdir, servers[old_id], servers[new_id], old_id, new_id))
    finally:
        for server in servers.values():
            server.kill()
        salt_rig.cleanup()
        # The bench agent is shared with other sections: leave it clean.
        for sid in rig.db_instances(agent):
            agent.api("PUT", f"/v1/agent/service/deregister/{sid}")
        agent.api("DELETE", "/v1/kv/locks/db?recurse")

    def phase(marks, start, end):
        if start in marks and end in marks:
            return marks[end] - marks[start]
        return None

    def median(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else float("nan")

    totals = [m["clients"] - m["kill"] for m in rounds]
    results = [("failover_seconds", statistics.median(totals))]
    for i, total in enumerate(totals, 1):
        results.append((f"failover_round{i}_seconds", total))
    for name, start, end in (
        ("detect", "kill", "released"),
        ("event", "released", "event"),
        ("takeover", "event", "acquired"),
        ("promote", "acquired", "promoted"),
        ("clients", "promoted", "clients"),
    ):
        results.append((f"failover_{name}_seconds", median(phase(m, start, end) for m in rounds)))
    results.append(
        (
            "failover_config",
            f"check_interval={timing['check_interval']} lock_delay={timing['lock_delay']} "
            f"min_wait={timing['min_wait']}",
        )
    )
    return results + _cluster_figures()


def _cluster_figures():
    """Node death and partition on a 3-server cluster with a client agent per node."""
    import cluster
    import cluster_failover

    results = []
    with cluster.Cluster(nodes=["db01", "db02"]) as topo:
        results += cluster_failover.report("failover_node_death", cluster_failover.node_death(topo))
    with cluster.Cluster(nodes=["db01", "db02"]) as topo:
        part = cluster_failover.partition(topo)
    results += cluster_failover.report("failover_partition", part)
    results.append(("split_brain_overlap_seconds", part["overlap"]))
    gossip = ",".join(f"{k}={v}" for k, v in cluster.FAST_GOSSIP.items())
    wd = part["watchdog"]
    results.append(
        (
            "failover_cluster_config",
            (
                f"servers=3 raft_multiplier=1 gossip_lan({gossip}) check=tcp/1s "
                f"lock_delay={cluster_failover.LOCK_DELAY:g}s watchdog(fence_after={wd['fence_after']:g}s "
                f"interval={wd['interval']:g}s timeout={wd['timeout']:g}s demote_timeout={wd['demote_timeout']:g}s)"
            ),
        )
    )
    return results


if __name__ == "__main__":
    import localconsul

    consul = localconsul.LocalConsul("bench", log_dir=None)
    consul.start()
    try:
        for key, value in run(consul):
            print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}", flush=True)
    finally:
        consul.cleanup()
