"""
Every shipped formula on a DB primary and its replica, in several orders and
twice each, on the topology and tokens an operator runs (issue 21, item 2):
pieces that pass alone must not break together.

* Consul: ``tools/cluster.py``, 3 servers and a client agent per node
  (``saltmaster``, ``db01``, ``db02``), ACLs default-deny.
* ``consul.acl`` applied once, masterless, with the management token (the
  only use of it by Salt); a real salt-master on the ``salt-master`` token
  and two real minions, ``db01``/``db02.prod.gg.cmp1.example.com``, each on
  its own node's client agent (through a counting proxy) on the
  ``salt-minion`` token.
* Pillar as the formulas' ``pillar.example`` files give it (``consul_register``:
  web and metrics, ``consul_primary``: db, ``consul_dns``, ``app``,
  ``consul_failover``, ``bootstrap``), with ports of stand-in servers
  (``tools/standin_db.py``) instead of 5432/8080; a top file combining them.
* A sampler thread reads Consul's servers throughout (blocking queries on the
  lock key and on the health of every check) and records every change.

Orders: ``consul.primary`` on db01 first; then db01 goes on primary-first
(register, consul, dns, app, bootstrap, failover) while db02 goes
register-first (register, primary, bootstrap, failover, app, dns, consul) at
the same time; then both minions at once (``salt -L``: failover, primary,
register); then a highstate of both. Each formula is applied twice in a
row: the second apply has ``changes == {}`` on every state (but
``event.send``, which fires its event on every run by design) and writes
nothing to Consul (counted at the proxy: no PUT, POST or DELETE).

Throughout: the lock holder never changes after the first take, and no
discoverable service instance disappears, reappears or goes from passing to
critical.

On the code before the ownership fix (4c8a30d) the sampler saw the lock go
db01 -> none -> db02 -> none -> db01 ... (12 changes after the first take)
and 66 instance flaps; with the ownership fix alone, every highstate still
re-registered the primary's instance twice (consul.primary and failover
each with its own definition), fixed by consul.primary deferring a failover
member to the failover formula (formulas/consul/primary.sls).
"""

import base64
import contextlib
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from conftest import LOADER_DIRS, REPO, apply_consul_acl, consul_opts, synced_master, synced_minion

import countingproxy
import localconsul
from cluster import Cluster
from standin_failover import StandIn

DC = "cmp1"
DB01 = f"db01.prod.gg.{DC}.example.com"
DB02 = f"db02.prod.gg.{DC}.example.com"
MINIONS = {DB01: "db01", DB02: "db02"}  # minion ID -> its Consul node (client agent)
MASTER_NODE = "saltmaster"
LOCK_KEY = f"locks/db/prod.gg.{DC}/leader"
SECRETS_PREFIX = "secrets/demoapp/prod/gg/"
STANDBY_CHECK = "salt-consul-standby:"
WRITES = ("PUT", "POST", "DELETE")
# Not a write to Consul: bootstrap's ready event is fired on every run (formulas/bootstrap).
CHANGES_BY_DESIGN = {"event_|-bootstrap-ready_|-salt/consul/bootstrap/ready_|-send"}
SAMPLER_LIMIT = 600  # seconds: the sampler stops by itself even if the test never stops it

FORMULAS = ("consul", "consul.register", "consul.primary", "consul.dns", "app", "failover", "bootstrap")
ORDER_PRIMARY_FIRST = ("consul.register", "consul", "consul.dns", "app", "bootstrap", "failover")
ORDER_REGISTER_FIRST = ("consul.register", "consul.primary", "bootstrap", "failover", "app", "consul.dns", "consul")
# Both at once: the formulas that hold the lock, or prune (app, consul.dns and
# bootstrap run both at once in the highstate; bootstrap prunes and includes failover).
ORDER_BOTH = ("failover", "consul.primary", "consul.register")

# consul.acl's pillar (formulas/consul/acl.pillar.example): every service the
# formulas below register; the secret folder of the app formula is an extra
# policy an operator adds for the app's environment (formulas/app/pillar.example).
ACL_PILLAR = {
    "minion": {"services": ["web", "metrics", "db", "demoapp", "pgexporter"], "dns_services": ["db", "web"]},
}
APP_SECRETS_POLICY = "demoapp-secrets-prod-gg"


def _pillar(ports, app_roots, workdir):
    """
    The minions' pillar SLS (Jinja, rendered on the master per minion): the
    formulas' pillar.example files, with the stand-ins' ports.
    """
    standin = REPO / "tools" / "standin_db.py"
    py = sys.executable
    return f"""\
{{%- set ports = {ports!r} %}}
{{%- set roots = {app_roots!r} %}}
{{%- set db = ports[grains['id']]['db'] %}}
{{%- set web = ports[grains['id']]['web'] %}}
{{%- set app_port = ports[grains['id']]['app'] %}}
{{%- set role_file = '{workdir}/' ~ grains['id'] ~ '.role' %}}
consul_register:
  id_format: '{{service}}@{{minion_id}}'
  env_tags: true
  prune: true
  services:
    web:
      port: {{{{ web }}}}
      tags: [http]
      meta:
        version: "1.4.2"
      checks:
        - name: http
          http: "http://127.0.0.1:{{{{ web }}}}/health"
          interval: 10s
          timeout: 2s
        - name: port
          tcp: "127.0.0.1:{{{{ web }}}}"
          interval: 30s
    metrics:
      port: 9100
      checks:
        # pillar.example: ttl 90s (something passes it); nothing here does, so
        # it starts passing and outlives the test.
        - name: alive
          ttl: 10m
          status: passing
          deregister_critical_service_after: 10m

consul_primary:
  services:
    db:
      port: {{{{ db }}}}
      lock_delay: 15s
      checks:
        - name: pg
          tcp: "127.0.0.1:{{{{ db }}}}"
          interval: 5s

consul_dns:
  services: [db, web]
  ttl: 10s

app:
  root: {{{{ roots[grains['id']] }}}}
  version: "0.1.0"
  python: python3
  port: {{{{ app_port }}}}
  run: background
  db_service: db
  check_interval: 10s
  id_format: '{{service}}@{{minion_id}}'
  secrets_prefix: secrets/demoapp
  secrets:
    - DB_PASSWORD

consul_failover:
  services:
    db:
      port: {{{{ db }}}}
      tags: [primary]
      lock_delay: 5s
      wait_passing: 10
      checks:
        - name: pg
          tcp: "127.0.0.1:{{{{ db }}}}"
          interval: 2s
          timeout: 1s
      ready:
        cmd: "{py} -c 'import socket; socket.create_connection((\\"127.0.0.1\\", {{{{ db }}}}), 1)'"
      promote:
        cmd: "{py} {standin} promote --port {{{{ db }}}}"
        unless: "{py} {standin} is-role primary --role-file {{{{ role_file }}}}"
      demote:
        cmd: "{py} {standin} demote --port {{{{ db }}}} --role-file {{{{ role_file }}}}"
        unless: "{py} {standin} is-role replica --role-file {{{{ role_file }}}}"

bootstrap:
  deregister_critical_service_after: 10m
  env_tags: true
  ready_event: true
  roles:
    db:
      # pillar.example's db role includes failover; a service of the role's
      # own too, so bootstrap's prune (owner bootstrap) has something to keep.
      services:
        pgexporter:
          port: {{{{ db }}}}
          checks:
            - name: tcp
              tcp: "127.0.0.1:{{{{ db }}}}"
              interval: 10s
      include: [failover]
    default: {{}}
"""


TOP = """\
base:
  'db*':
    - consul
    - consul.register
    - consul.primary
    - consul.dns
    - app
    - failover
    - bootstrap
"""


# --------------------------------------------------------------------------- the sampler


class Sampler:
    """
    Reads Consul's servers throughout (blocking queries, one thread each for
    the lock key and for every health check) and records each change, with
    the time it was seen. Bounded: every query waits at most 2 s and the
    threads stop by themselves after ``limit`` seconds; ``stop()`` joins them.
    """

    def __init__(self, addr, token, key, limit=SAMPLER_LIMIT):
        self.addr, self.token, self.key = addr, token, key
        self.t0 = time.monotonic()
        self.deadline = self.t0 + limit
        self.stopping = threading.Event()
        self.holders = []  # [(t, (session, value))], each a change
        self.instances = []  # [(t, {(node, service id): (status, hidden)})], each a change
        self.errors = []
        self.reads = 0
        self.threads = [
            threading.Thread(target=self._watch, args=(f"/v1/kv/{key}", self._lock_view, self.holders), daemon=True),
            threading.Thread(
                target=self._watch, args=("/v1/health/state/any", self._health_view, self.instances), daemon=True
            ),
        ]

    def _get(self, path, index):
        sep = "&" if "?" in path else "?"
        req = urllib.request.Request(f"{self.addr}{path}{sep}index={index}&wait=2s")
        req.add_header("X-Consul-Token", self.token)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, int(resp.headers.get("X-Consul-Index") or 0), json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, int(err.headers.get("X-Consul-Index") or 0), None

    @staticmethod
    def _lock_view(status, body):
        if status == 404 or not body:
            return (None, None)
        entry = body[0]
        value = base64.b64decode(entry["Value"]).decode() if entry.get("Value") else None
        return (entry.get("Session"), value)

    @staticmethod
    def _health_view(status, body):
        """{(node, service id): (worst status of its own checks, hidden)}; hidden: a standby check is on it."""
        rank = {"passing": 0, "warning": 1, "critical": 2}
        view = {}
        for check in body or []:
            sid = check.get("ServiceID")
            if not sid:
                continue
            inst = (check["Node"], sid)
            worst, hidden = view.get(inst, ("passing", False))
            if check["CheckID"].startswith(STANDBY_CHECK):
                hidden = True
            elif rank.get(check["Status"], 2) > rank[worst]:
                worst = check["Status"]
            view[inst] = (worst, hidden)
        return view

    def _watch(self, path, view_of, changes):
        index, last = 0, object()
        while not self.stopping.is_set() and time.monotonic() < self.deadline:
            try:
                status, new_index, body = self._get(path, index)
            except (OSError, ValueError) as err:
                self.errors.append(f"{path}: {err}")
                time.sleep(0.2)
                continue
            self.reads += 1
            if status not in (200, 404):
                self.errors.append(f"{path}: {status}")
                time.sleep(0.2)
                continue
            # Consul's rule for blocking queries: an index that went back means start over.
            index = new_index if new_index >= index else 0
            view = view_of(status, body)
            if view != last:
                changes.append((round(time.monotonic() - self.t0, 2), view))
                last = view

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def stop(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join(15)
        assert not any(thread.is_alive() for thread in self.threads), "sampler threads still running"

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ verdicts

    def holder_changes(self):
        """Every change of (session, value) of the lock after its first take."""
        taken = [(t, h) for t, h in self.holders if h[0]]
        if not taken:
            return []
        first_t = taken[0][0]
        return [(t, h) for t, h in self.holders if t > first_t]

    def flaps(self):
        """
        Each discoverable instance (no standby check) that disappeared after
        being seen, appeared again after disappearing, or went from passing
        to critical.
        """
        found = []
        seen, gone, passed = set(), set(), set()
        prev = {}
        for t, view in self.instances:
            shown = {inst: st for inst, (st, hidden) in view.items() if not hidden}
            for inst in seen - set(shown):
                if inst not in gone and inst in prev:
                    found.append((t, "disappeared", inst))
                    gone.add(inst)
            for inst, st in shown.items():
                if inst in gone:
                    found.append((t, "reappeared", inst))
                    gone.discard(inst)
                if st == "passing":
                    passed.add(inst)
                elif st == "critical" and inst in passed and prev.get(inst) != "critical":
                    found.append((t, "critical", inst))
            seen |= set(shown)
            prev = shown
        return found

    def summary(self):
        return {
            "reads": self.reads,
            "lock_changes": len(self.holders),
            "instance_changes": len(self.instances),
            "holders": self.holders,
            "errors": self.errors[:5],
        }


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    logs = str(tmp_path_factory.mktemp("composition-logs"))
    with Cluster(nodes=[MASTER_NODE, *MINIONS.values()], datacenter=DC, acl=True, log_dir=logs) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def tokens(salt_factories, cluster, tmp_path_factory):
    """``consul.acl`` applied masterless with the management token: {"master": path, "minion": path}."""
    server = cluster.live_server()
    # The app formula's secret, and the operator's policy for its folder (formulas/app/pillar.example).
    assert server.api("PUT", f"/v1/kv/{SECRETS_PREFIX}DB_PASSWORD", b"s3cret-composition")[0] == 200
    rules = f'key_prefix "{SECRETS_PREFIX}" {{ policy = "read" }}'
    server.api_json("PUT", "/v1/acl/policy", {"Name": APP_SECRETS_POLICY, "Rules": rules})
    root = tmp_path_factory.mktemp("composition-admin")
    files = {role: str(root / "tokens" / f"salt-{role}.token") for role in ("master", "minion")}
    policies = {"master": ["salt-master"], "minion": ["salt-minion", APP_SECRETS_POLICY]}
    pillar = dict(ACL_PILLAR, tokens={
        f"salt-{role}": {"policies": policies[role], "secret_file": path} for role, path in files.items()
    })
    apply_consul_acl(salt_factories, "composition-admin", cluster.client(MASTER_NODE), cluster.master_token, root, pillar)
    return files


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    """A stand-in db server and a stand-in web server per minion: {minion: {"db": StandIn, "web": StandIn}}."""
    workdir = tmp_path_factory.mktemp("composition-standins")
    servers = {mid: {"db": StandIn(workdir, mid), "web": StandIn(workdir, f"{mid}-web")} for mid in MINIONS}
    try:
        for mine in servers.values():
            mine["db"].start(role="replica")
            mine["web"].start(role="replica")
        yield workdir, servers
    finally:
        for mine in servers.values():
            for server in mine.values():
                server.kill()


@pytest.fixture(scope="module")
def trees(tmp_path_factory, standins):
    """``(state_tree, pillar_tree, app_roots)``: this checkout's loader dirs, formulas and the top file; the pillar."""
    workdir, servers = standins
    root = tmp_path_factory.mktemp("composition-trees")
    state_tree = root / "state"
    state_tree.mkdir()
    for name in LOADER_DIRS:
        if (REPO / name).is_dir():
            (state_tree / name).symlink_to(REPO / name)
    for entry in (REPO / "formulas").iterdir():
        (state_tree / entry.name).symlink_to(entry)
    (state_tree / "top.sls").write_text(TOP)
    ports = {
        mid: {"db": s["db"].port, "web": s["web"].port, "app": localconsul.free_port()} for mid, s in servers.items()
    }
    app_roots = {mid: str(root / f"app-{node}") for mid, node in MINIONS.items()}
    pillar_tree = root / "pillar"
    pillar_tree.mkdir()
    (pillar_tree / "top.sls").write_text("base:\n  'db*':\n    - composition\n")
    (pillar_tree / "composition.sls").write_text(_pillar(ports, app_roots, workdir))
    yield state_tree, pillar_tree, app_roots
    for mid, app_root in app_roots.items():
        binary = pathlib.Path(app_root) / "venv" / "bin" / "demoapp"
        if binary.exists():
            subprocess.run([str(binary), "--stop", "--pidfile", f"{app_root}/demoapp.pid"], timeout=30, check=False)


@pytest.fixture(scope="module")
def master(salt_factories, cluster, tokens, trees):
    state_tree, pillar_tree, _ = trees
    token = pathlib.Path(tokens["master"]).read_text().strip()
    consul = consul_opts(cluster.client(MASTER_NODE), token=token)
    master_id = f"composition-master-{os.urandom(3).hex()}"
    agent = cluster.client(MASTER_NODE)
    with synced_master(salt_factories, master_id, agent, state_tree, pillar_tree, consul=consul) as factory:
        yield factory


@pytest.fixture(scope="module")
def minions(master, cluster, tokens):
    """{minion ID: (salt-minion, its counting proxy)}: each on its own node's agent, through the proxy."""
    with contextlib.ExitStack() as stack:
        out = {}
        for mid, node in MINIONS.items():
            proxy = stack.enter_context(countingproxy.CountingProxy(cluster.client(node).http_addr))
            consul = {"address": proxy.http_addr, "token_file": tokens["minion"], "retries": 0}
            # lazy_loader_strict_matching (docs/failover.md): without it every
            # job's first unless/onlyif makes Salt import every state module
            # (1.6-2.9 s a job); this test runs 38 jobs of formulas full of them.
            minion = synced_minion(master, cluster.client(node), mid, consul=consul, lazy_loader_strict_matching=True)
            out[mid] = (stack.enter_context(minion), proxy)
        yield out


# --------------------------------------------------------------------------- applying


def _writes(proxy):
    return {key: n for (_, key), n in proxy.counts().items() if key.split(" ", 1)[0] in WRITES}


class Applier:
    """Runs ``state.apply`` through the master and records what each second apply did."""

    def __init__(self, master, minions):
        self.master = master
        self.minions = minions
        self.log = []  # (what, seconds)
        self.problems = []  # every failed state, second-apply change or write

    def apply(self, targets, sls, second):
        """``state.apply sls`` (highstate if None) on ``targets`` at once; every state True."""
        proxies = [self.minions[mid][1] for mid in targets]
        for proxy in proxies:
            proxy.reset()
        args = ("state.apply", sls) if sls else ("state.apply",)
        start = time.monotonic()
        # A CLI object per call: the factory's keeps the last target, so two
        # threads sharing one would read each other's returns.
        cli = self.master.salt_cli(timeout=180)
        if len(targets) == 1:
            ret = cli.run(*args, minion_tgt=targets[0])
        else:
            # salt -L db01...,db02... state.apply X: one job, both minions at once.
            ret = cli.run(",".join(targets), *args, "--static", minion_tgt="-L")
        what = f"{sls or 'highstate'} {'2nd' if second else '1st'} on {','.join(MINIONS[m] for m in targets)}"
        self.log.append((what, round(time.monotonic() - start, 1)))
        data = ret.data if isinstance(ret.data, dict) else {}
        if len(targets) == 1:
            data = {targets[0]: data}
        for mid in targets:
            states = data.get(mid)
            if not isinstance(states, dict) or not states:
                self.problems.append((what, MINIONS[mid], "no return", (ret.stdout + ret.stderr)[-2000:]))
                continue
            for sid, state in states.items():
                if not isinstance(state, dict):
                    self.problems.append((what, MINIONS[mid], "render error", state))
                    continue
                if state.get("result") is not True:
                    self.problems.append((what, MINIONS[mid], sid, state.get("comment")))
                if second and state.get("changes") and sid not in CHANGES_BY_DESIGN:
                    found = {"changes": state["changes"], "comment": state.get("comment")}
                    self.problems.append((what, MINIONS[mid], sid, found))
            if second:
                writes = _writes(self.minions[mid][1])
                if writes:
                    self.problems.append((what, MINIONS[mid], "writes to Consul", writes))
        return data

    def twice(self, targets, sls):
        self.apply(targets, sls, second=False)
        self.apply(targets, sls, second=True)

    def sequence(self, target, order):
        for sls in order:
            self.twice([target], sls)


# --------------------------------------------------------------------------- the test


def test_every_formula_in_any_order_keeps_the_primary_and_writes_nothing_twice(cluster, master, minions, standins):
    workdir, servers = standins
    server = cluster.live_server()
    applier = Applier(master, minions)
    started = time.monotonic()
    with Sampler(server.http_addr, cluster.master_token, LOCK_KEY) as sampler:
        # 1. db01 takes the primary first (alone: no race for a free lock).
        applier.twice([DB01], "consul.primary")
        # 2. db01 goes on primary-first while db02 goes register-first, at the same time.
        other = threading.Thread(target=applier.sequence, args=(DB02, ORDER_REGISTER_FIRST))
        other.start()
        try:
            applier.sequence(DB01, ORDER_PRIMARY_FIRST)
        finally:
            other.join(600)
        assert not other.is_alive()
        # 3. Both minions at once, another order.
        for sls in ORDER_BOTH:
            applier.twice([DB01, DB02], sls)
        # 4. A highstate combining them all, both at once.
        applier.twice([DB01, DB02], None)
        # Let the sampler see anything the last apply set off (a session
        # invalidated a moment after its checks went, a check going critical).
        time.sleep(3)
    elapsed = round(time.monotonic() - started, 1)

    summary = sampler.summary()
    report = {
        "elapsed": elapsed,
        "applies": len(applier.log),
        "sampler": summary,
        "flaps": sampler.flaps(),
        "holder_changes": sampler.holder_changes(),
        "problems": applier.problems,
        "timings": applier.log,
    }
    print(json.dumps(report, indent=1, default=str))

    # Every shipped formula was applied twice on each minion.
    for sls in FORMULAS:
        for node in MINIONS.values():
            assert sum(1 for what, _ in applier.log if what.startswith(f"{sls} 2nd on") and node in what), (sls, node)
    # The sampler really sampled, and the lock was taken by db01 (step 1).
    assert summary["reads"] > 10 and not summary["errors"], summary
    taken = [h for _, h in sampler.holders if h[0]]
    assert taken and taken[0][1] == DB01, sampler.holders
    # Every formula applies everywhere, and applies again with nothing to do.
    assert not applier.problems, json.dumps(applier.problems, indent=1, default=str)
    # The lock holder never changed after the first take; no instance flapped.
    assert not sampler.holder_changes(), sampler.holders
    assert not sampler.flaps(), json.dumps(sampler.flaps(), default=str)
    # The end state, read from Consul: db01 holds the lock, is the one passing
    # db instance and the promoted stand-in; db02 is the replica.
    (entry,) = server.api_json("GET", f"/v1/kv/{LOCK_KEY}")
    assert base64.b64decode(entry["Value"]).decode() == DB01 and entry["Session"] == taken[0][0]
    passing = sorted(e["Service"]["ID"] for e in server.api_json("GET", "/v1/health/service/db?passing"))
    assert passing == [f"db@{DB01}"], passing
    assert servers[DB01]["db"].role == "primary" and servers[DB02]["db"].role == "replica"
    for mid in MINIONS:
        ids = {e["ID"] for e in server.api_json("GET", f"/v1/catalog/node/{MINIONS[mid]}")["Services"].values()}
        expected = {f"{service}@{mid}" for service in ("web", "metrics", "demoapp", "pgexporter")}
        expected |= {f"db@{mid}"} if mid == DB01 else set()
        assert ids == expected, (mid, ids)
