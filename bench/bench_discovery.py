"""
Bench section ``discovery``: time from one of three ``db`` instances failing
its health check to every client's rendered config no longer naming it,
through the real chain an operator ships

    listener stopped -> Consul TCP check critical -> consul_watch engine
    (service watch on ``db``) event -> reactor/consul_service.sls (targets
    from the minion IDs; one batch, so it publishes the job itself; more
    targets would go through orch/consul_service_rerender.sls) -> state.sls
    app.config on the mapped minions -> app.conf's [db] hosts re-rendered
    from consul.discover

on real daemons: a ``salt-master`` (engine + reactor) and two
``salt-minion`` clients (``web01``/``web02`` in prod/gg), the failover rig's
``Rig`` (``tools/standin_failover.py``), against the bench's Consul agent. The
three ``db`` instances are stand-in servers (``tools/standin_db.py``, the
failover rig's ``StandIn``) on loopback, registered on the agent with a TCP
check each (what an operator gives a database: the port answers or it does
not). A round SIGKILLs one stand-in (connection refused from then on), waits
until every client's config has dropped it, then restarts it and waits until
every config names it again; three rounds, one per instance.

Prints ``discovery_propagation_seconds`` (median round) and where the time
went, from timestamps taken while polling Consul and the files every 50 ms and
from the master log (engine event, published job):

* ``discovery_check_seconds``: stop -> the instance's check is critical in Consul
  (up to one check interval);
* ``discovery_watch_seconds``: critical -> the engine's event (blocking query
  wake-up plus the quiet period ``min_wait``);
* ``discovery_event_to_job_seconds``: event -> the re-render job published to
  the minions (reactor render, targeting runner, publish);
* ``discovery_render_seconds``: job -> the last client's file updated;
* ``discovery_settings``: the check and engine settings used.

Settings default to ``SETTINGS`` below (the engine's as shipped in
``formulas/reactor/README.md``); to see what one costs, override it:
``BENCH_DISCOVERY_SETTINGS="check_interval=5s,min_wait=2" python bench/run.py discovery``.
Figures, not assertions.
"""

import os
import re
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for extra in (os.path.join(REPO, "tools"), os.path.join(REPO, "_utils"), HERE):
    if extra not in sys.path:
        sys.path.insert(0, extra)

import bench_failover  # noqa: E402  (engine event times from the master log, settling)
import standin_failover as rig  # noqa: E402

CLIENTS = ["web01.prod.gg.mydc1.example.com", "web02.prod.gg.mydc1.example.com"]
INSTANCES = ["db-disco-1", "db-disco-2", "db-disco-3"]
ROUNDS = 3
POLL = 0.05
ROUND_TIMEOUT = 120
# Check: TCP, as an operator checks a database port. Engine: the shipped
# example's service watch settings (formulas/reactor/README.md).
SETTINGS = {
    "check_interval": "2s",
    "check_timeout": "1s",
    "min_wait": "0.2",
    "max_wait": "30",
    "min_interval": "0.5",
    "wait": "300",
}


def _settings():
    """``SETTINGS`` with the overrides of ``$BENCH_DISCOVERY_SETTINGS`` (k=v,k=v)."""
    settings = dict(SETTINGS)
    for item in filter(None, os.environ.get("BENCH_DISCOVERY_SETTINGS", "").split(",")):
        key, _, value = (part.strip() for part in item.partition("="))
        if key not in settings:
            raise ValueError(f"BENCH_DISCOVERY_SETTINGS: unknown knob {key!r} (known: {sorted(settings)})")
        settings[key] = value
    return settings


def _master_config(state_tree, pillar_tree, agent, settings):
    """The failover rig's master config with the service watch, its reactor and orchestration mapping."""
    opts = rig.master_config(state_tree, pillar_tree, agent)
    # The service entry's own quiet period, as in the shipped example; the
    # engine-wide timing is what a KV watch beside it would use.
    engine = {"services": [{"name": "db", "min_wait": float(settings["min_wait"])}]}
    engine.update({k: float(settings[k]) for k in ("max_wait", "min_interval", "wait")})
    opts["engines"] = [{"consul_watch": engine}]
    opts["reactor"] = [{"salt/consul/service/db": ["salt://reactor/consul_service.sls"]}]
    opts["consul_react"] = {"services": {"db": {"sls": "app.config", "type": "prod", "group": "gg"}}}
    return opts


def _pillar(workdir):
    """Each client's app root under ``workdir`` (formulas/app pillar)."""
    return "app:\n  root: " + str(workdir) + "/{{ grains['id'] }}\n"


def _register(agent, sid, port, settings):
    service = {
        "Name": "db",
        "ID": sid,
        "Address": "127.0.0.1",
        "Port": port,
        "Tags": ["prod", "gg"],
        "Check": {
            "Name": "tcp",
            "TCP": f"127.0.0.1:{port}",
            "Interval": settings["check_interval"],
            "Timeout": settings["check_timeout"],
        },
    }
    status, body = agent.api("PUT", "/v1/agent/service/register", service)
    if status != 200:
        raise RuntimeError(f"register {sid}: {status} {body!r}")


def _check_status(agent, sid):
    checks = agent.api_json("GET", "/v1/agent/checks")
    return next((c["Status"] for c in checks.values() if c.get("ServiceID") == sid), None)


def _configs(workdir):
    """Each client's rendered app.conf (formulas/app, root ``<workdir>/<minion id>``); "" if not there yet."""
    texts = []
    for mid in CLIENTS:
        try:
            with open(os.path.join(workdir, mid, "app.conf"), encoding="utf-8") as handle:
                texts.append(handle.read())
        except OSError:
            texts.append("")
    return texts


def _named_by(workdir, port):
    """How many clients' configs name ``127.0.0.1:<port>`` in their [db] hosts."""
    needle = f"127.0.0.1:{port}"
    return sum(1 for conf in _configs(workdir) if needle in conf)


def _published_jobs(log_path, fun="state.sls"):
    """Epoch times of the master's 'Published command <fun>' log lines."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    pattern = re.compile(r"^(\d+\.\d+) .*Published command " + re.escape(fun) + " with jid")
    return [float(m.group(1)) for m in map(pattern.match, lines) if m]


def _round(salt_rig, agent, workdir, standin, sid):
    """Stop ``standin``; return the phase timestamps until no client's config names it."""
    marks = {"stop": time.time()}
    standin.kill()
    deadline = time.monotonic() + ROUND_TIMEOUT
    while time.monotonic() < deadline:
        now = time.time()
        if "critical" not in marks and _check_status(agent, sid) == "critical":
            marks["critical"] = now
        if _named_by(workdir, standin.port) == 0:
            marks["clients"] = now
            break
        time.sleep(POLL)
    else:
        raise RuntimeError(f"{sid} still in a client config {ROUND_TIMEOUT}s after its listener stopped")
    since = marks.get("critical", marks["stop"])
    events = [t for t in bench_failover._engine_event_times(salt_rig.master_log) if t >= since]
    if events:
        marks["event"] = min(events)
        jobs = [t for t in _published_jobs(salt_rig.master_log) if t >= marks["event"]]
        if jobs:
            marks["job"] = min(jobs)
    # Back to three healthy instances in every config before the next round.
    standin.start()
    if not rig.wait_for(lambda: _named_by(workdir, standin.port) == len(CLIENTS), 90, step=0.2):
        raise RuntimeError(f"{sid} not back in every client config within 90s")
    bench_failover._settle(salt_rig)
    return marks


def run(agent):
    settings = _settings()
    root = tempfile.mkdtemp(prefix="disco-", dir="/tmp")
    workdir = os.path.join(root, "work")
    os.makedirs(workdir)
    standins = {sid: rig.StandIn(workdir, sid) for sid in INSTANCES}
    state_tree, pillar_tree = rig.make_trees(root, workdir, {})
    (pillar_tree / "top.sls").write_text("base:\n  '*':\n    - disco\n")
    (pillar_tree / "disco.sls").write_text(_pillar(workdir))
    salt_rig = rig.Rig(
        os.path.join(root, "salt"), _master_config(state_tree, pillar_tree, agent, settings), CLIENTS, agent
    )
    rounds = []
    try:
        for sid, standin in standins.items():
            standin.start(role="replica")
            _register(agent, sid, standin.port, settings)
        salt_rig.start()
        salt_rig.salt("*", "saltutil.sync_all")
        if not rig.wait_for(lambda: set(rig.passing_instances(agent)) >= set(INSTANCES), 30, step=0.2):
            raise RuntimeError("the db instances' checks did not pass within 30s")
        salt_rig.salt("*", "state.apply", "app.config", "queue=True")
        for standin in standins.values():
            if _named_by(workdir, standin.port) != len(CLIENTS):
                raise RuntimeError(f"bring-up failed: configs are {_configs(workdir)}")
        bench_failover._settle(salt_rig)
        for sid in INSTANCES[:ROUNDS]:
            rounds.append(_round(salt_rig, agent, workdir, standins[sid], sid))
    finally:
        for standin in standins.values():
            standin.kill()
        salt_rig.cleanup()
        # The bench agent is shared with other sections: leave it clean.
        for sid in INSTANCES:
            agent.api("PUT", f"/v1/agent/service/deregister/{sid}")
        shutil.rmtree(root, ignore_errors=True)

    def median(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else float("nan")

    def phase(marks, start, end):
        return marks[end] - marks[start] if start in marks and end in marks else None

    totals = [m["clients"] - m["stop"] for m in rounds]
    results = [("discovery_propagation_seconds", statistics.median(totals))]
    results += [(f"discovery_round{i}_seconds", total) for i, total in enumerate(totals, 1)]
    phases = (
        ("check", "stop", "critical"),
        ("watch", "critical", "event"),
        ("event_to_job", "event", "job"),
        ("render", "job", "clients"),
    )
    for name, start, end in phases:
        results.append((f"discovery_{name}_seconds", median(phase(m, start, end) for m in rounds)))

    def fmt(value):
        return "?" if value is None else f"{value:.2f}"

    # Medians of phases need not add up to the median total: each round's own split.
    results.append(
        (
            "discovery_rounds_detail",
            "; ".join(
                f"{fmt(m['clients'] - m['stop'])}s = " + " + ".join(f"{name} {fmt(phase(m, a, b))}" for name, a, b in phases)
                for m in rounds
            ),
        )
    )
    results.append(
        (
            "discovery_settings",
            f"check=tcp interval={settings['check_interval']} timeout={settings['check_timeout']} "
            f"engine(min_wait={settings['min_wait']} max_wait={settings['max_wait']} "
            f"min_interval={settings['min_interval']} wait={settings['wait']}) "
            f"react(sls=app.config type=prod group=gg) clients={len(CLIENTS)} instances={len(INSTANCES)} rounds={len(rounds)}",
        )
    )
    return results
