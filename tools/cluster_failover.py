"""
Failover scenarios on a real Consul topology (``tools/cluster.py``), shared by
the cluster tests and ``make bench``: a DB primary and its replica (stand-in
databases, ``tools/standin_db.py``), each node with its own client agent; the
lock is taken and taken over with ``consul.single_holder_service`` through
Salt's real loaders (each apply in a forked process, as a minion job is).

* ``node_death``: kill -9 the primary's client agent and its database (the
  whole node). Marks: killed -> node ``failed`` in gossip -> lock released
  (session invalidated) -> replica holds the lock -> replica promoted.
* ``partition``: SIGSTOP the primary's client agent while its database keeps
  running, with the self-fencing watchdog
  (``formulas/failover/files/fence_watchdog.py``) on the primary. Marks as
  above plus ``fenced`` (old primary demoted); both roles are sampled every
  10 ms and ``overlap`` is the time both were primary.

Each returns ``{"marks": {name: monotonic seconds}, ...}``; callers assert or
print. Every wait is bounded.
"""

import multiprocessing
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

import standin_failover
from cluster import FAILED

REPO = pathlib.Path(__file__).resolve().parents[1]
WATCHDOG_PY = REPO / "formulas" / "failover" / "files" / "fence_watchdog.py"
STANDIN = standin_failover.STANDIN
PRIMARY = standin_failover.PRIMARY
REPLICA = standin_failover.REPLICA

# Fencing bound: fence_after + interval + timeout + demote_timeout = 3.75 s,
# shorter than the lock delay (5 s): see fence_watchdog.py.
WATCHDOG = {"fence_after": 2.0, "interval": 0.25, "timeout": 0.5, "demote_timeout": 1.0}
LOCK_DELAY = 5.0


def minion_opts(address, minion_id, root):
    """Minion opts for Salt's loaders on this checkout, talking to ``address``."""
    import salt.config

    opts = salt.config.minion_config(None)
    root = os.path.join(root, minion_id)
    opts.update(
        {
            "id": minion_id,
            "file_client": "local",
            "root_dir": root,
            "cachedir": os.path.join(root, "cache"),
            "pki_dir": os.path.join(root, "pki"),
            "sock_dir": os.path.join(root, "sock"),
            "log_file": os.path.join(root, "minion.log"),
            "module_dirs": [str(REPO / "_modules")],
            "states_dirs": [str(REPO / "_states")],
            "grains_dirs": [str(REPO / "_grains")],
            "utils_dirs": [str(REPO / "_utils")],
            "consul": {"address": address, "retries": 0, "timeout": 3},
        }
    )
    for key in ("cachedir", "pki_dir", "sock_dir"):
        os.makedirs(opts[key], exist_ok=True)
    return opts


def _apply_child(opts, spec, results):
    import salt.loader

    context = {}
    utils = salt.loader.utils(opts, context=context)
    funcs = salt.loader.minion_mods(opts, utils=utils, context=context)
    serializers = salt.loader.serializers(opts)
    states = salt.loader.states(opts, funcs, utils, serializers, context=context)
    results.put(states["consul.single_holder_service"](**spec))


def holder_spec(service, key, minion_id, port, lock_delay=LOCK_DELAY):
    return dict(
        name=service,
        service_id=f"{service}@{minion_id}",
        lock_key=key,
        lock_delay=f"{lock_delay:g}s",
        wait_passing=5,
        port=port,
        checks=[{"name": "db", "tcp": f"127.0.0.1:{port}", "interval": "1s", "timeout": "1s"}],
    )


def apply_holder(opts, spec, timeout=120):
    """One apply of ``consul.single_holder_service`` in a forked process; its return."""
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    proc = ctx.Process(target=_apply_child, args=(opts, spec, results))
    proc.start()
    try:
        return results.get(timeout=timeout)
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()


class RoleSampler(threading.Thread):
    """Both databases' roles every 10 ms; ``overlap``: seconds both said primary."""

    def __init__(self, dbs, step=0.01):
        super().__init__(daemon=True)
        self.dbs, self.step = dbs, step
        self.stop = threading.Event()
        self.overlap = 0.0
        self.samples = 0
        self.first_seen = {}  # (db index, role) -> first time sampled

    def run(self):
        last = time.monotonic()
        while not self.stop.is_set():
            roles = [db.role for db in self.dbs]
            now = time.monotonic()
            if roles.count("primary") > 1:
                self.overlap += now - last
            for index, role in enumerate(roles):
                self.first_seen.setdefault((index, role), now)
            self.samples += 1
            last = now
            time.sleep(self.step)


def _lock(cluster, key):
    return standin_failover.lock_state(cluster.live_server(), key)


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def _setup(cluster, workdir, service):
    dbs = {mid: standin_failover.StandIn(workdir, mid) for mid in (PRIMARY, REPLICA)}
    dbs[PRIMARY].start(role="primary")
    dbs[REPLICA].start(role="replica")
    key = f"locks/{service}/leader"
    opts = {mid: minion_opts(cluster.client(node).http_addr, mid, workdir) for mid, node in _nodes(cluster).items()}
    ret = apply_holder(opts[PRIMARY], holder_spec(service, key, PRIMARY, dbs[PRIMARY].port))
    if ret["result"] is not True or "Took the lock" not in ret["comment"]:
        raise RuntimeError(f"bring-up: the primary did not take the lock: {ret}")
    standby = apply_holder(opts[REPLICA], holder_spec(service, key, REPLICA, dbs[REPLICA].port))
    return dbs, key, opts, standby


def _nodes(cluster):
    """Minion ID -> node name: the first two client nodes are the primary's and the replica's."""
    names = list(cluster.clients)
    return {PRIMARY: names[0], REPLICA: names[1]}


def _take_over(opts, spec, deadline_s=60):
    """Apply on the replica until it holds the lock (what the orchestration does); time and returns."""
    deadline = time.monotonic() + deadline_s
    rets = []
    while time.monotonic() < deadline:
        ret = apply_holder(opts, spec)
        rets.append(ret)
        if ret["result"] is True and "Took the lock" in ret["comment"]:
            return time.monotonic(), rets
    raise RuntimeError(f"the replica did not take the lock in {deadline_s}s: {rets[-1:]}")


def _promote(db):
    subprocess.run(
        [sys.executable, str(STANDIN), "promote", "--port", str(db.port)],
        timeout=30,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.monotonic()


def node_death(cluster, workdir=None, service="ndb"):
    """kill -9 the primary's node (agent + database); the replica takes over."""
    workdir = workdir or tempfile.mkdtemp(prefix="nd-")
    dbs, key, opts, standby = _setup(cluster, workdir, service)
    nodes = _nodes(cluster)
    marks = {}
    try:
        marks["killed"] = time.monotonic()
        cluster.kill(nodes[PRIMARY])
        dbs[PRIMARY].kill()
        marks["detected"] = _wait(
            lambda: cluster.members().get(nodes[PRIMARY]) == FAILED, 60, "the node marked failed"
        )
        marks["released"] = _wait(lambda: _lock(cluster, key)[0] is None, 60, "the lock released")
        marks["taken"], rets = _take_over(opts[REPLICA], holder_spec(service, key, REPLICA, dbs[REPLICA].port))
        marks["promoted"] = _promote(dbs[REPLICA])
        return {"marks": marks, "standby": standby, "holder": _lock(cluster, key)[1], "takeover_returns": rets}
    finally:
        for db in dbs.values():
            db.kill()


def partition(cluster, workdir=None, service="pdb", watchdog=None):
    """SIGSTOP the primary's agent (its database runs on) with the fencing watchdog; the replica takes over."""
    workdir = workdir or tempfile.mkdtemp(prefix="pt-")
    watchdog = dict(WATCHDOG, **(watchdog or {}))
    dbs, key, opts, standby = _setup(cluster, workdir, service)
    nodes = _nodes(cluster)
    primary, replica = dbs[PRIMARY], dbs[REPLICA]
    demote = f"{sys.executable} {STANDIN} demote --port {primary.port} --role-file {primary.role_file}"
    log_path = pathlib.Path(workdir) / "watchdog.log"
    marks = {}
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [
                sys.executable, str(WATCHDOG_PY),
                "--consul", cluster.client(nodes[PRIMARY]).http_addr,
                "--key", key, "--me", PRIMARY, "--demote", demote,
                "--fence-after", str(watchdog["fence_after"]), "--interval", str(watchdog["interval"]),
                "--timeout", str(watchdog["timeout"]), "--demote-timeout", str(watchdog["demote_timeout"]),
            ],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        sampler = RoleSampler([primary, replica])
        sampler.start()
        try:
            time.sleep(1.0)  # the watchdog confirms the lock a few times
            if proc.poll() is not None or primary.role != "primary":
                raise RuntimeError("the watchdog fenced a healthy primary")
            marks["partitioned"] = time.monotonic()
            cluster.pause(nodes[PRIMARY])
            marks["detected"] = _wait(
                lambda: cluster.members().get(nodes[PRIMARY]) == FAILED, 60, "the node marked failed"
            )
            marks["released"] = _wait(lambda: _lock(cluster, key)[0] is None, 60, "the lock released")
            marks["taken"], rets = _take_over(opts[REPLICA], holder_spec(service, key, REPLICA, replica.port))
            fenced_before = primary.role == "replica"
            marks["promoted"] = _promote(replica)
            _wait(lambda: primary.role == "replica", 30, "the old primary fenced")
            time.sleep(0.5)  # keep sampling a little after the promotion
        finally:
            sampler.stop.set()
            sampler.join(timeout=10)
            if (0, "replica") in sampler.first_seen:
                marks["fenced"] = sampler.first_seen[(0, "replica")]
            proc.terminate()
            proc.wait(timeout=10)
            if getattr(cluster.agents[nodes[PRIMARY]], "_paused", False):
                cluster.resume(nodes[PRIMARY])
            for db in dbs.values():
                db.kill()
    return {
        "marks": marks,
        "overlap": sampler.overlap,
        "samples": sampler.samples,
        "fenced_before_takeover": fenced_before,
        "watchdog_log": log_path.read_text(encoding="utf-8"),
        "standby": standby,
        "holder": _lock(cluster, key)[1],
        "takeover_returns": rets,
        "watchdog": watchdog,
    }


def report(prefix, result):
    """``[(name, seconds)]`` phases of a scenario's marks, for the bench."""
    marks = result["marks"]
    start = marks.get("killed", marks.get("partitioned"))
    lines = [(f"{prefix}_seconds", marks["promoted"] - start)]
    for phase in ("detected", "released", "taken", "fenced", "promoted"):
        if phase in marks:
            lines.append((f"{prefix}_{phase}_seconds", marks[phase] - start))
    return lines
