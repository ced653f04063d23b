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

import localconsul  # noqa: E402

SALT_CALL = pathlib.Path(sys.executable).parent / "salt-call"
MINIONS = [
    "web01.prod.gg.mydc1.example.com",
    "db01.prod.gg.mydc1.example.com",
    "web01.dev.gg.mydc1.example.com",
    "mydc1-stg-blue-cache01",
]
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
        print(f"  consul.status_peers  -> {fleet.call(MINIONS[0], 'consul.status_peers')}")
        print("\ndemo: ok")
        return 0
    finally:
        consul.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        consul.cleanup()


if __name__ == "__main__":
    sys.exit(main())
