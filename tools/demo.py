"""
`make demo`: salt-consul on a small real fleet, in about two minutes.

Two Consul datacenters (mydc1, mydc2) with ACLs on (default deny), the
project's least-privilege policies (formulas/consul/acl.sls) and nothing else;
a real salt-master and five real salt-minions in two environments and both
datacenters; stand-in database servers for a primary and its replica. Each
section prints lines a person can check. Everything started here (Consul
agents, Salt daemons, stand-ins) is stopped at the end, whatever happens.
"""

import contextlib
import inspect
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

import dnsquery  # noqa: E402
import docs_run  # noqa: E402
import localconsul  # noqa: E402
import standin_failover as rigs  # noqa: E402
import salt.modules.pillar  # noqa: E402
import yaml  # noqa: E402

# Salt 3008 masks pillar values in command output unless asked not to; 3006 has no such option.
UNMASK = ("unmask=True",) if "unmask" in inspect.signature(salt.modules.pillar.get).parameters else ()

PRIMARY, REPLICA, CLIENT = rigs.PRIMARY, rigs.REPLICA, rigs.CLIENT  # db01/db02/web01 .prod.gg.mydc1
SPOOFER = "web01.dev.gg.mydc1.example.com"  # claims prod in its grains and its own config
REMOTE = "web01.prod.gg.mydc2.example.com"  # a minion of the second datacenter
MINIONS = [PRIMARY, REPLICA, CLIENT, SPOOFER, REMOTE]
ADMIN = "admin01"  # applies consul.acl (docs/acl.md), on a token that may only write ACLs
# The ext_pillar's default layers plus a role layer (docs/pillar.md says why it
# is not a default), so each role's services are declared once for every environment.
LAYERS = [
    "config/global",
    "config/role/{role}",
    "config/dc/{datacenter}",
    "config/type/{type}",
    "config/group/{type}.{group}",
    "config/env/{type}.{group}.{datacenter}",
    "config/node/{minion_id}",
]
TTL_CHECK = {"name": "alive", "ttl": "1h", "status": "passing"}
SEED = {
    "config/global/pillar_demo/name": "shop",
    "config/global/pillar_demo/db/pool_size": "10",
    "config/type/prod/pillar_demo/db/pool_size": "50",
    "config/group/dev.gg/pillar_demo/db/pool_size": "5",
    "config/type/prod/secrets/db_password": "prod-only-s3cret",
    "config/role/web/consul_register": json.dumps({"services": {"web": {"port": 8080, "checks": [TTL_CHECK]}}}),
    "config/global/consul_dns": json.dumps({"services": ["db", "web"], "ttl": "0s"}),
    # Addresses that tell the instances apart in discovery and DNS answers.
    f"config/node/{SPOOFER}/consul_register/services/web/address": "127.0.0.3",
    f"config/node/{REMOTE}/consul_register/services/web/address": "127.0.0.2",
}
ACL_PILLAR = {
    # replicate_prefixes: docs/multidc.md's consul_replicate.kv, run by the documented-commands section.
    "master": {"pillar_prefixes": ["config/"], "watch_prefixes": ["locks/"], "replicate_prefixes": ["config/", "nodes/"]},
    "minion": {"services": ["web", "db"], "dns_services": ["db", "web"]},
    "config": {"prefixes": ["config/"]},  # salt-config: the operator's `consul kv put config/...`
    "dns_anonymous": True,
}
TOKEN_ROLES = ("master", "minion", "config")
# The documented highstate (`salt -I 'consul_env:type:prod' state.apply`): every formula a node's role takes.
TOP_SLS = """base:
  '*':
    - consul.register
  'I@consul_env:role:db':
    - match: compound
    - failover
  'I@consul_env:role:web':
    - match: compound
    - failover.client
"""
LOADER_OPTS = {
    "module_dirs": [str(REPO / "_modules")],
    "states_dirs": [str(REPO / "_states")],
    "grains_dirs": [str(REPO / "_grains")],
    "utils_dirs": [str(REPO / "_utils")],
}
T0 = time.monotonic()


def heading(text):
    print(f"\n== [{time.monotonic() - T0:5.1f}s] {text}", flush=True)


def line(text):
    print(f"  {text}", flush=True)


class Fleet(rigs.Rig):
    """The failover rig's raw daemons, each minion with its own Consul agent address, token and extras."""

    def __init__(self, root, master_opts, minion_extra, consul):
        super().__init__(root, master_opts, list(minion_extra), consul)
        self.minion_extra = minion_extra

    def _minion_opts(self, mid):
        opts = super()._minion_opts(mid)
        opts.update(self.minion_extra[mid])
        return opts

    def target(self, flag, expression, fun="test.ping", timeout=30):
        return self._cli("salt", ["-t", str(timeout), flag, expression, fun], timeout)


def summary(ret):
    """``N states, M changed`` of one minion's state.apply; raises if a state failed."""
    if not isinstance(ret, dict):
        raise RuntimeError(f"state.apply returned {ret!r}")
    failed = [r.get("comment") for r in ret.values() if r.get("result") is False]
    if failed:
        raise RuntimeError(f"state.apply failed: {failed}")
    return f"{len(ret)} states, {sum(1 for r in ret.values() if r.get('changes'))} changed"


def apply(fleet, mid, sls):
    return summary(fleet.salt(mid, "state.apply", sls, "queue=True").get(mid))


def acl_bootstrap(workdir, dc1):
    """``salt-call --local state.apply consul.acl`` with the management token, the one time it is used."""
    tokens = pathlib.Path(workdir) / "tokens"
    files = {role: str(tokens / f"salt-{role}.token") for role in TOKEN_ROLES}
    pillar = dict(ACL_PILLAR, tokens={f"salt-{r}": {"policies": [f"salt-{r}"], "secret_file": p} for r, p in files.items()})
    conf = pathlib.Path(workdir) / "admin"
    conf.mkdir()
    (conf / "minion").write_text(json.dumps(dict(
        LOADER_OPTS,
        id="admin01.ops.gg.mydc1.example.com",
        root_dir=str(conf / "root"),
        file_client="local",
        file_roots={"base": [str(REPO / "formulas")]},
        pillar_roots={"base": [str(conf / "pillar")]},
        consul={"address": dc1.http_addr, "token": dc1.master_token, "retries": 0},
        log_level="quiet",
    )))
    proc = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "salt-call"), "--local", "-c", str(conf), "--out", "json",
         "--retcode-passthrough", "state.apply", "consul.acl", "pillar=" + json.dumps({"consul_acl": pillar})],
        capture_output=True, text=True, timeout=180, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"consul.acl failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return files, pillar, json.loads(proc.stdout)["local"]


def acl_admin_token(dc1):
    """A token whose only right is ``acl = "write"`` (what consul.acl needs, docs/acl.md); its secret."""
    policy = dc1.api_json("PUT", "/v1/acl/policy", json.dumps({"Name": "acl-admin", "Rules": 'acl = "write"'}).encode())
    body = {"Description": "acl-admin", "Policies": [{"ID": policy["ID"]}]}
    return dc1.api_json("PUT", "/v1/acl/token", json.dumps(body).encode())["SecretID"]


def documented_commands(fleet, dc1, workdir):
    """Every command of the README and docs/ (tools/docs_run.py), as written, on this fleet's tokens."""
    cwd = pathlib.Path(workdir) / "operator"
    cwd.mkdir()
    # docs/bootstrap.md's `consul kv put ... @bootstrap.json`: the operator's file, from the formula's example.
    example = yaml.safe_load((REPO / "formulas" / "bootstrap" / "pillar.example").read_text())
    (cwd / "bootstrap.json").write_text(json.dumps(example["bootstrap"]))
    consul_env = {"CONSUL_BIN": localconsul.consul_binary(), "CONSUL_HTTP_ADDR": dc1.http_addr,
                  "CONSUL_HTTP_TOKEN_FILE": str(pathlib.Path(workdir) / "tokens" / "salt-config.token")}
    commands = [c for c in docs_run.doc_commands() if c not in docs_run.ELSEWHERE]
    for command in commands:
        ok, took, output = docs_run.run(command, fleet.master_dir, fleet.root / "minions" / CLIENT, consul_env, cwd)
        line(f"$ {command[:78]:78} {'ok' if ok else 'FAILED'} ({took:.1f}s)")
        if not ok:
            raise RuntimeError(f"documented command failed: {command}\n{output[-3000:]}")
    return len(commands)


def dns(agent, name):
    rcode, addresses = dnsquery.query(agent.ports["dns"], name)
    return ", ".join(addresses) if rcode == 0 and addresses else ("NXDOMAIN" if rcode == 3 else f"rcode {rcode}")


def main():
    # Short: Salt's unix sockets live below it (a socket path has at most 107 bytes).
    workdir = tempfile.mkdtemp(prefix="scdemo-", dir="/tmp")
    dc1 = localconsul.LocalConsul("mydc1", acl=True, node_name="agent-mydc1", log_dir=workdir)
    dc2 = localconsul.LocalConsul(
        "mydc2", acl=True, master_token=dc1.master_token, node_name="agent-mydc2", log_dir=workdir,
        # A secondary ACL datacenter: tokens and policies are the primary's,
        # replicated (so mydc2 keeps working while mydc1 is down, docs/acl.md).
        extra_config={"primary_datacenter": "mydc1", "retry_join_wan": [dc1.wan_addr]},
        acl_replication_token=dc1.master_token,
    )
    standins = {}
    fleet = None
    try:
        heading("Two Consul datacenters, ACLs on (default deny)")
        dc1.start()
        dc2.start()
        localconsul.wan_join(dc1, dc2)
        line(f"mydc1 (ACL primary) {dc1.http_addr}   mydc2 (ACL secondary) {dc2.http_addr}")
        line(f"datacenters: {', '.join(dc1.api_json('GET', '/v1/catalog/datacenters'))}")
        status, _ = dc1.api("PUT", "/v1/kv/config/global/x", b"v", token="")
        line(f"no token: PUT /v1/kv/config/global/x -> {status} (denied)")

        heading("The shipped least-privilege policies: state.apply consul.acl (management token, once)")
        files, acl_pillar, ret = acl_bootstrap(workdir, dc1)
        line(f"consul.acl: {summary(ret)}")
        for path in files.values():  # made in mydc1: usable in mydc2 once replicated
            dc2.wait_acl_replicated(token=pathlib.Path(path).read_text().strip(), timeout=60)
        line("mydc2 has the tokens by replication: it resolves them without asking mydc1")
        for policy in sorted(p["Name"] for p in dc1.api_json("GET", "/v1/acl/policies") if p["Name"].startswith("salt-")):
            rules = dc1.api_json("GET", f"/v1/acl/policy/name/{policy}")["Rules"]
            kinds = sorted({r.split()[0] for r in rules.splitlines() if r and not r.startswith("#")})
            line(f"policy {policy:12} {len([r for r in rules.splitlines() if r and not r.startswith('#')])} rules ({', '.join(kinds)})")
        for role, path in files.items():
            mode = stat.S_IMODE(os.stat(path).st_mode)
            line(f"token salt-{role:7} secret only in {pathlib.Path(path).name} (mode {mode:o}), never in a return or log")
        anonymous = dc1.api_json("GET", "/v1/acl/token/00000000-0000-0000-0000-000000000002")
        line(f"anonymous token policies: {[p['Name'] for p in anonymous.get('Policies') or []]} (DNS reads)")

        heading("Layered configuration in Consul KV (one copy for every environment)")
        for key, value in SEED.items():
            dc1.api("PUT", f"/v1/kv/{key}", value.encode())
            line(f"{key} = {value if len(value) < 60 else value[:57] + '...'}")

        heading("A real salt-master and five minions (two environments, two datacenters)")
        for mid in (PRIMARY, REPLICA):
            standins[mid] = rigs.StandIn(workdir, mid)
        ports = {mid: s.port for mid, s in standins.items()}
        state_tree, pillar_tree = rigs.make_trees(pathlib.Path(workdir) / "trees", workdir, ports)
        (state_tree / "_pillar").symlink_to(REPO / "_pillar")
        master_opts = rigs.master_config(state_tree, pillar_tree, dc1)
        master_opts["consul"] = {"address": dc1.http_addr, "retries": 0, "timeout": 3, "token_file": files["master"]}
        # revalidate: always, so that the outage below shows on the very next compile
        # (the default, watch, notices a hung agent within watch_wait, 60 s).
        master_opts["ext_pillar"] = [{"consul": {"layers": LAYERS, "revalidate": "always"}}]
        minion_consul = {"address": dc1.http_addr, "retries": 0, "token_file": files["minion"]}
        extra = {mid: {"consul": minion_consul} for mid in MINIONS}
        extra[REMOTE] = {"consul": dict(minion_consul, address=dc2.http_addr)}
        claim = {"type": "prod", "group": "gg", "datacenter": "mydc1", "role": "web", "host": "web01",
                 "postfix": "prod.gg.mydc1"}
        extra[SPOOFER] = {"consul": dict(minion_consul, env={"type": "prod"}), "grains": {"env": claim}}
        # admin01 re-applies consul.acl (docs/acl.md) on a token that may write ACLs and nothing
        # else; the consul_acl pillar goes to it alone.
        admin_token = pathlib.Path(workdir) / "tokens" / "acl-admin.token"
        admin_token.write_text(acl_admin_token(dc1) + "\n")
        admin_token.chmod(0o600)
        extra[ADMIN] = {"consul": dict(minion_consul, token_file=str(admin_token))}
        (pillar_tree / "top.sls").write_text("base:\n  '*':\n    - failover\n  'admin01':\n    - consul_acl\n")
        (pillar_tree / "consul_acl.sls").write_text(json.dumps({"consul_acl": acl_pillar}))
        (state_tree / "top.sls").write_text(TOP_SLS)
        fleet = Fleet(pathlib.Path(workdir) / "s", master_opts, extra, dc1)
        fleet.start()
        fleet.run("saltutil.sync_all")
        synced = fleet.salt("*", "saltutil.sync_all", timeout=120)
        fleet.salt("*", "saltutil.refresh_pillar", "wait=True", timeout=120)
        line(f"minions answering: {len(synced)} ({', '.join(sorted(synced))})")
        line("master on the salt-master token, minions on salt-minion; no management token from here on")

        heading("Layered pillar: the master reads each minion's environment from its ID")
        pools = fleet.salt("*", "pillar.get", "pillar_demo:db:pool_size", *UNMASK)
        envs = fleet.salt("*", "pillar.get", "consul_env:postfix", *UNMASK)
        for mid in MINIONS:
            line(f"{mid:34} env {envs.get(mid) or '-':14} pool_size = {pools.get(mid)}")

        heading("A minion spoofing its environment (grains and its own config say prod)")
        line(f"{SPOOFER}: grains env:type = {fleet.salt(SPOOFER, 'grains.get', 'env:type')[SPOOFER]} (its claim)")
        secret = fleet.salt(SPOOFER, "pillar.get", "secrets:db_password", *UNMASK)[SPOOFER]
        line(f"{SPOOFER}: pillar pool_size = {pools.get(SPOOFER)}, prod's db_password = {secret or '(none)'}")
        by_grains = sorted(fleet.target("-G", "env:type:prod"))
        by_pillar = sorted(fleet.target("-I", "consul_env:type:prod"))
        line(f"salt -G 'env:type:prod'          matches {len(by_grains)}: spoofer included = {SPOOFER in by_grains}")
        line(f"salt -I 'consul_env:type:prod'   matches {len(by_pillar)}: spoofer included = {SPOOFER in by_pillar}")

        heading("Registration, a single DB primary, environment DNS names")
        for mid in (CLIENT, SPOOFER, REMOTE):
            line(f"{mid:34} consul.register: {apply(fleet, mid, 'consul.register')}")
        standins[PRIMARY].start(role="replica")
        standins[REPLICA].start(role="replica")
        for mid in (PRIMARY, REPLICA):
            line(f"{mid:34} failover: {apply(fleet, mid, 'failover')}; stand-in role {standins[mid].role}")
        rigs.wait_for(lambda: rigs.passing_instances(dc1) == [f"db@{PRIMARY}"], 30)
        line(f"{CLIENT:34} failover.client: {apply(fleet, CLIENT, 'failover.client')}")
        for mid in (PRIMARY, REMOTE):  # prepared queries live in each datacenter
            line(f"{mid:34} consul.dns: {apply(fleet, mid, 'consul.dns')}")
        tags = dc1.api_json("GET", "/v1/agent/services")[f"web@{SPOOFER}"]["Tags"]
        line(f"web@{SPOOFER} registered with tags {','.join(tags)} (its real environment)")
        for name in ("db.prod.gg.mydc1.query.consul", "db.dev.gg.mydc1.query.consul",
                     "web.prod.gg.mydc1.query.consul", "web.dev.gg.mydc1.query.consul"):
            line(f"{name:32} -> {dns(dc1, name)}")
        line(f"lock {rigs.LOCK_KEY} held by {rigs.lock_state(dc1)[1]}")

        heading("The documented commands, as written (README, docs/): the shipped tokens")
        count = documented_commands(fleet, dc1, workdir)
        line(f"docs: {count} documented commands run as written, all ok "
             f"(and {len(docs_run.ELSEWHERE)} run elsewhere: {', '.join(docs_run.ELSEWHERE)})")
        line(f"lock {rigs.LOCK_KEY} still held by {rigs.lock_state(dc1)[1]}; passing db: "
             f"{', '.join(rigs.passing_instances(dc1))}")

        heading("The DB primary fails: the replica takes over (no salt command from here)")
        new_conf = f"db_primary = 127.0.0.1:{standins[REPLICA].port}"
        killed = time.monotonic()
        standins[PRIMARY].kill()
        line(f"{PRIMARY} stand-in killed")
        if not rigs.wait_for(lambda: new_conf in rigs.client_conf(workdir), 120, step=0.1):
            raise RuntimeError(f"no failover within 120 s: {rigs.client_conf(workdir)}")
        took = time.monotonic() - killed
        line(f"failover took {took:.1f}s: {CLIENT}'s config now says "
             f"db_primary_node = {REPLICA if f'db_primary_node = {REPLICA}' in rigs.client_conf(workdir) else '?'}")
        rigs.wait_for(lambda: rigs.db_instances(dc1) == [f"db@{REPLICA}"] and standins[PRIMARY].role == "replica", 60)
        line(f"lock held by {rigs.lock_state(dc1)[1]}; stand-in roles: db02 {standins[REPLICA].role}, "
             f"db01 {standins[PRIMARY].role} (fenced: registered db instances {', '.join(rigs.db_instances(dc1))})")
        line(f"db.prod.gg.mydc1.query.consul -> {dns(dc1, 'db.prod.gg.mydc1.query.consul')} "
             f"(passing: {', '.join(rigs.passing_instances(dc1))})")

        heading("Cross-datacenter discovery")
        here = fleet.salt(CLIENT, "consul.discover_hosts", "web")[CLIENT]
        there = fleet.salt(CLIENT, "consul.discover_hosts", "web", "dc=mydc2")[CLIENT]
        line(f"{CLIENT}: web in mydc1 -> {here}")
        line(f"{CLIENT}: web in mydc2 -> {there} (registered by {REMOTE} on mydc2's agent)")
        line(f"web.prod.gg.mydc2.query.consul on mydc2 -> {dns(dc2, 'web.prod.gg.mydc2.query.consul')}")

        heading("Consul outage: the last good pillar, marked stale")
        dc1.pause()
        try:
            fleet.salt(CLIENT, "saltutil.refresh_pillar", "wait=True", timeout=60)
            pool = fleet.salt(CLIENT, "pillar.get", "pillar_demo:db:pool_size", *UNMASK)[CLIENT]
            marker = fleet.salt(CLIENT, "pillar.get", "consul_pillar", *UNMASK)[CLIENT]
            line(f"mydc1 paused (hung): {CLIENT} pool_size = {pool}, consul_pillar = {json.dumps(marker, sort_keys=True)}")
        finally:
            dc1.resume()
        fleet.salt(CLIENT, "saltutil.refresh_pillar", "wait=True", timeout=60)
        marker = fleet.salt(CLIENT, "pillar.get", "consul_pillar", *UNMASK)[CLIENT]
        line(f"mydc1 back: consul_pillar = {json.dumps(marker or None)} (fresh)")

        print(f"\ndemo: ok ({time.monotonic() - T0:.0f}s)", flush=True)
        return 0
    finally:
        if fleet is not None:
            fleet.stop()
        for standin in standins.values():
            standin.kill()
        with contextlib.suppress(Exception):
            dc1.resume()
        dc2.cleanup()
        dc1.cleanup()
        if not os.environ.get("DEMO_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
