"""
The example application formula (formulas/app) end to end, with a real master,
real prod and dev minions and a real Consul: one config template for both
environments, settings module from the type, secrets from KV into a 0600 env
file, the app pip-installed into a virtualenv from a pinned requirements file,
running, and registered in Consul with a passing health check.
"""

import json
import os
import stat
import subprocess
import urllib.request
import uuid

import pytest
from conftest import wait_for as _wait_for

import localconsul

PROD = "web01.prod.gg.mydc1.example.com"
DEV = "web01.dev.gg.mydc1.example.com"
PREFIX = "secrets/demoapp-it"


@pytest.fixture
def app_env(consul_agent, tmp_path):
    """Secrets in KV and one healthy db instance per environment; removed afterwards."""
    secrets = {"prod": "p-" + uuid.uuid4().hex, "dev": "d-" + uuid.uuid4().hex}
    for env, secret in secrets.items():
        consul_agent.api("PUT", f"/v1/kv/{PREFIX}/{env}/gg/DB_PASSWORD", secret.encode())
    dbs = {"prod": "127.0.0.41", "dev": "127.0.0.42"}
    for env, address in dbs.items():
        consul_agent.api_json(
            "PUT",
            "/v1/agent/service/register",
            {
                "Name": "db",
                "ID": f"db-app-it-{env}",
                "Address": address,
                "Port": 5432,
                "Tags": [env, "gg"],
                "Check": {"TTL": "300s", "Status": "passing"},
            },
        )
    roots = {PROD: tmp_path / "prod", DEV: tmp_path / "dev"}
    ports = {PROD: localconsul.free_port(), DEV: localconsul.free_port()}
    yield {"secrets": secrets, "dbs": dbs, "roots": roots, "ports": ports}
    for minion, root in roots.items():
        binary = root / "venv" / "bin" / "demoapp"
        if binary.exists():
            subprocess.run([str(binary), "--stop", "--pidfile", str(root / "demoapp.pid")], timeout=30, check=False)
        consul_agent.api("PUT", f"/v1/agent/service/deregister/demoapp@{minion}")
    for env in dbs:
        consul_agent.api("PUT", f"/v1/agent/service/deregister/db-app-it-{env}")
    consul_agent.api("DELETE", f"/v1/kv/{PREFIX}?recurse")


def _apply(salt_cli, minion, app_env):
    pillar = {
        "app": {
            "root": str(app_env["roots"][minion]),
            "port": app_env["ports"][minion],
            "run": "background",
            "check_interval": "1s",
            "secrets_prefix": PREFIX,
        }
    }
    ret = salt_cli.run("state.apply", "app", f"pillar={json.dumps(pillar)}", minion_tgt=minion, _timeout=300)
    assert ret.returncode == 0, ret
    failed = {k: v["comment"] for k, v in ret.data.items() if v["result"] is not True}
    assert not failed, failed
    return ret


def test_app_formula_two_environments(salt_cli, prod_minion, dev_minion, consul_agent, app_env):
    for minion, env, settings, pool in ((PROD, "prod", "settings.prod", 20), (DEV, "dev", "settings.dev", 5)):
        ret = _apply(salt_cli, minion, app_env)
        secret = app_env["secrets"][env]
        assert secret not in ret.stdout and secret not in json.dumps(ret.data)
        root = app_env["roots"][minion]

        conf = (root / "app.conf").read_text()
        assert f"environment = {env}.gg.mydc1" in conf
        assert f"settings_module = {settings}" in conf
        assert f"dns_name = db.{env}.gg.mydc1.query.consul" in conf
        assert f"hosts = {app_env['dbs'][env]}:5432" in conf  # only this environment's db

        env_file = root / "secrets.env"
        assert stat.S_IMODE(os.stat(env_file).st_mode) == 0o600
        assert f"DB_PASSWORD={secret}\n" in env_file.read_text()

        requirements = (root / "requirements.txt").read_text()
        assert "demoapp==0.1.0" in requirements and "--no-index" in requirements
        freeze = subprocess.run(
            [str(root / "venv" / "bin" / "python"), "-m", "pip", "freeze"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
        assert "demoapp==0.1.0" in freeze.split()

        port = app_env["ports"][minion]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            described = json.loads(resp.read())
        assert described["settings_module"] == settings
        assert described["db_pool_size"] == pool
        assert described["db"]["hosts"] == [f"{app_env['dbs'][env]}:5432"]
        assert described["secrets"] == ["DB_PASSWORD"]

        sid = f"demoapp@{minion}"
        service = consul_agent.api_json("GET", f"/v1/agent/service/{sid}")
        assert service["Tags"] == [env, "gg"] and service["Port"] == port
        assert service["Meta"]["settings"] == settings

        def passing(sid=sid):
            checks = [c for c in consul_agent.api_json("GET", "/v1/health/checks/demoapp") if c["ServiceID"] == sid]
            return checks and all(c["Status"] == "passing" for c in checks)

        assert _wait_for(passing, timeout=30), consul_agent.api_json("GET", "/v1/health/checks/demoapp")

    # Nothing changed: the second apply changes nothing and the app keeps passing.
    again = _apply(salt_cli, PROD, app_env)
    changed = {v["__id__"]: v["changes"] for v in again.data.values() if v["changes"]}
    assert changed == {}
    checks = [c for c in consul_agent.api_json("GET", "/v1/health/checks/demoapp") if c["ServiceID"] == f"demoapp@{PROD}"]
    assert [c["Status"] for c in checks] == ["passing"]
