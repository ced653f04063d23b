"""
`make demo`: salt-consul end to end on a local Consul dev agent it starts itself.

Minions from several environments run masterless (`salt-call --local`, each
with its own minion ID and config in a temp dir, no root-owned paths), with
this checkout on their file_roots and `saltutil.sync_all` loading the
extension, exactly as an operator's fleet would. Everything started here is
stopped at the end, whatever happens.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

import dnsquery  # noqa: E402
import localconsul  # noqa: E402

SALT_CALL = pathlib.Path(sys.executable).parent / "salt-call"
MINIONS = [
    "web01.prod.gg.mydc1.example.com",
    "db01.prod.gg.mydc1.example.com",
    "web01.dev.gg.mydc1.example.com",
    "mydc1-dev-gg-db01",
]
# The ext_pillar's default layers, plus one for the role (web, db) right after
# the global one, so a role's services are declared once for every environment.
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
# Configuration lives in Consul KV, layered; nothing per environment in files.
SEED = {
    "config/global/pillar_demo/name": "shop",
    "config/global/pillar_demo/db/pool_size": "10",
    "config/type/prod/pillar_demo/db/pool_size": "50",
    "config/group/dev.gg/pillar_demo/db/pool_size": "5",
    "config/role/web/consul_register": json.dumps({"services": {"web": {"port": 8080, "checks": [TTL_CHECK]}}}),
    "config/role/db/consul_register": json.dumps({"services": {"db": {"port": 5432, "checks": [TTL_CHECK]}}}),
    "config/role/db/consul_dns": json.dumps({"services": ["db", "web"], "ttl": "0s"}),
    "config/node/db01.prod.gg.mydc1.example.com/consul_register/services/db/address": "127.0.0.11",
    "config/node/mydc1-dev-gg-db01/consul_register/services/db/address": "127.0.0.12",
}
LOADER_DIRS = ("_modules", "_states", "_grains", "_pillar", "_utils", "_beacons", "_engines", "_runners")


def heading(text):
    print(f"\n== {text}", flush=True)


class Fleet:
    """Masterless minions sharing one synced extension_modules dir."""

    def __init__(self, workdir, consul):
        self.workdir = pathlib.Path(workdir)
        self.consul = consul
        self.tree = self.workdir / "srv"
        self.tree.mkdir()
        for name in LOADER_DIRS:
            if (REPO / name).is_dir():
                (self.tree / name).symlink_to(REPO / name)
        formulas = REPO / "formulas"
        for entry in formulas.iterdir() if formulas.is_dir() else ():
            (self.tree / entry.name).symlink_to(entry)
        self.extmods = self.workdir / "extmods"
        (self.workdir / "pillar").mkdir()

    def config_dir(self, minion_id, extra=None):
        conf_dir = self.workdir / "conf" / minion_id
        if not conf_dir.exists():
            conf_dir.mkdir(parents=True)
        conf = {
            "id": minion_id,
            # Explicit paths rather than root_dir: Salt would prefix root_dir to
            # extension_modules too, and the minions share one synced copy.
            "pki_dir": str(self.workdir / "root" / minion_id / "pki"),
            "cachedir": str(self.workdir / "root" / minion_id / "cache"),
            "sock_dir": str(self.workdir / "root" / minion_id / "sock"),
            "pidfile": str(self.workdir / "root" / minion_id / "minion.pid"),
            "log_file": str(self.workdir / "root" / minion_id / "minion.log"),
            "extension_modules": str(self.extmods),
            "file_client": "local",
            "file_roots": {"base": [str(self.tree)]},
            "consul": {"address": self.consul.http_addr},
            # Masterless: the minion compiles the ext_pillar itself (with a master,
            # this block goes in the master config and the minion ID decides).
            "ext_pillar": [{"consul": {"layers": LAYERS}}],
            "pillar_roots": {"base": [str(self.workdir / "pillar")]},
            "log_level": "quiet",
        }
        conf.update(extra or {})
        (conf_dir / "minion").write_text(json.dumps(conf))
        return conf_dir

    def call(self, minion_id, *args, check=True):
        proc = subprocess.run(
            [str(SALT_CALL), "--local", "-c", str(self.config_dir(minion_id)), "--out", "json",
             "--retcode-passthrough", *args],
            capture_output=True, text=True, timeout=300, check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"salt-call {' '.join(args)} on {minion_id} failed:\n{proc.stdout}{proc.stderr}")
        return json.loads(proc.stdout)["local"] if proc.stdout.strip() else None


def catalog_index(consul):
    """The catalog's X-Consul-Index: it moves whenever a service or check is (re)registered."""
    import urllib.request

    with urllib.request.urlopen(consul.http_addr + "/v1/catalog/services", timeout=5) as resp:
        return int(resp.headers["X-Consul-Index"])


def apply_summary(ret):
    """``N states, M changed`` for a state.apply return; raises if one failed."""
    if not isinstance(ret, dict):
        raise RuntimeError(f"state.apply returned {ret!r}")
    failed = [r.get("comment") for r in ret.values() if r.get("result") is False]
    if failed:
        raise RuntimeError(f"state.apply failed: {failed}")
    changed = sum(1 for r in ret.values() if r.get("changes"))
    return f"{len(ret)} states, {changed} changed"


def main():
    workdir = tempfile.mkdtemp(prefix="salt-consul-demo-")
    consul = localconsul.LocalConsul("mydc1", node_name="demo-agent", log_dir=workdir)
    try:
        heading(f"Consul {consul.datacenter} dev agent on {consul.http_addr}")
        consul.start()
        fleet = Fleet(workdir, consul)

        heading("saltutil.sync_all (file_roots -> extension_modules)")
        synced = fleet.call(MINIONS[0], "saltutil.sync_all")
        for kind in ("grains", "modules", "states", "utils"):
            print(f"  {kind:8} {', '.join(synced.get(kind) or []) or '-'}")

        heading("Environment derived from each minion ID (grain `env`)")
        print(f"  {'minion id':36} {'type':5} {'group':6} {'dc':6} {'role':6} postfix")
        for minion_id in MINIONS:
            env = fleet.call(minion_id, "grains.get", "env")
            print(
                f"  {minion_id:36} {env['type'] or '-':5} {env['group'] or '-':6} "
                f"{env['datacenter'] or '-':6} {env['role'] or '-':6} {env['postfix'] or '-'}"
            )
            name = fleet.call(minion_id, "consul.service_name", "db")
            print(f"  {'':36} db in this environment -> {name}")

        heading("Round trip to Consul through the execution module")
        print(f"  consul.status_leader -> {fleet.call(MINIONS[0], 'consul.status_leader')}")

        heading("Consul KV: the layered configuration (one copy, every environment)")
        for key, value in SEED.items():
            consul.api("PUT", f"/v1/kv/{key}", value.encode())
            print(f"  {key} = {value if len(value) < 60 else value[:57] + '...'}")

        heading("state.apply pillar_demo,consul.register on every minion (the same SLS everywhere)")
        for minion_id in MINIONS:
            summary = apply_summary(fleet.call(minion_id, "state.apply", "pillar_demo,consul.register"))
            conf = fleet.call(minion_id, "pillar.get", "pillar_demo:db:pool_size")
            print(f"  {minion_id:36} {summary}; rendered pool_size = {conf}")

        heading("state.apply consul.dns on the db minions (environment DNS names)")
        for minion_id in (MINIONS[1], MINIONS[3]):
            print(f"  {minion_id:36} {apply_summary(fleet.call(minion_id, 'state.apply', 'consul.dns'))}")

        heading("What Consul holds now: services by environment")
        services = consul.api_json("GET", "/v1/agent/services")
        by_env = {}
        for sid, svc in sorted(services.items()):
            by_env.setdefault(svc.get("Meta", {}).get("env", "-"), []).append(
                f"{sid} tags={','.join(svc['Tags'])} addr={svc.get('Address') or '(node)'}:{svc['Port']}"
            )
        for env_name, lines in sorted(by_env.items()):
            print(f"  {env_name}")
            for line in lines:
                print(f"    {line}")

        heading("Consul DNS answers for environment names")
        for name in ("db.prod.gg.mydc1.query.consul", "db.dev.gg.mydc1.query.consul", "web.dev.gg.mydc1.query.consul"):
            rcode, addresses = dnsquery.query(consul.ports["dns"], name)
            print(f"  {name:34} -> {', '.join(addresses) if rcode == 0 and addresses else f'rcode {rcode}'}")

        heading("Second state.apply on every minion: nothing to change")
        catalog_before = catalog_index(consul)
        changed_total = 0
        for minion_id in MINIONS:
            ret = fleet.call(minion_id, "state.apply", "pillar_demo,consul.register")
            changed_total += sum(1 for r in ret.values() if r.get("changes"))
            print(f"  {minion_id:36} {apply_summary(ret)}")
        if changed_total:
            raise RuntimeError(f"second apply reported {changed_total} changed states")
        catalog_after = catalog_index(consul)
        print(f"  Consul catalog index before/after: {catalog_before} -> {catalog_after}"
              f" ({'unchanged: nothing was re-registered' if catalog_before == catalog_after else 'CHANGED'})")
        print("\ndemo: ok")
        return 0
    finally:
        consul.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        consul.cleanup()


if __name__ == "__main__":
    sys.exit(main())
