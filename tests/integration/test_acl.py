"""
ACLs end to end, with real Salt daemons against a Consul agent whose ACLs are
default-deny, on the least-privilege policies the project ships
(``formulas/consul/acl.sls``), not management tokens:

* the policies and tokens are made by ``salt-call --local state.apply
  consul.acl`` (the only step with a management token); the secrets land in
  0600 files only;
* the master runs on the ``salt-master`` token (from its config): the
  ext_pillar serves the ``config/`` layers, the master cannot write them;
* minions run on the ``salt-minion`` token, one from a token file, one from
  ``CONSUL_HTTP_TOKEN``: ``consul.register``, ``consul.primary`` and
  ``consul.dns`` all apply; writes outside the policy are denied and say so;
* no token string shows up in the master's job cache, any log, or any return.
"""

import base64
import json
import pathlib
import stat
import textwrap

import pytest
from conftest import REPO, consul_opts, loader_dir_opts, synced_master, synced_minion

PILLAR_ACL = {
    "consul_acl": {
        "minion": {"services": ["web", "db"], "dns_services": ["db"]},
        "dns_anonymous": False,  # the agent is shared by the session; DNS is tested on its own agent
    }
}
# A minion's pillar on the salt-minion token (test_cluster_multidc_acl.py
# formats it with its own service name).
MINION_PILLAR_FORMAT = """
consul_register:
  services:
    {service}:
      port: 8080
      checks:
        - name: alive
          ttl: 120s
          status: passing
consul_primary:
  services:
    db:
      port: 5432
      checks:
        - name: alive
          ttl: 120s
          status: passing
consul_dns:
  services: [db]
"""
FILE_MINION = "web01.prod.gg.acl1.example.com"
ENV_MINION = "web02.prod.gg.acl1.example.com"


@pytest.fixture(scope="module")
def acl_formula(salt_factories, consul_acl_agent, tmp_path_factory):
    """
    ``consul.acl`` applied masterless with the management token (an admin's
    ``salt-call --local``): ``{"master": path, "minion": path}`` of the secret files.
    """
    root = tmp_path_factory.mktemp("acl-admin")
    files = {role: str(root / "tokens" / f"salt-{role}.token") for role in ("master", "minion")}
    pillar = dict(PILLAR_ACL["consul_acl"], tokens={
        f"salt-{role}": {"policies": [f"salt-{role}"], "secret_file": path} for role, path in files.items()
    })
    admin = salt_factories.salt_minion_daemon(
        "acl-admin",
        overrides=dict(
            loader_dir_opts(),
            file_client="local",
            file_roots={"base": [str(REPO / "formulas")]},
            pillar_roots={"base": [str(root)]},
            consul=consul_opts(consul_acl_agent, token=consul_acl_agent.master_token),
        ),
    )
    ret = admin.salt_call_cli(timeout=120).run("--local", "state.apply", "consul.acl", f"pillar={json.dumps({'consul_acl': pillar})}")
    assert ret.returncode == 0, ret
    assert ret.data and all(s["result"] is True for s in ret.data.values()), ret.data
    for path in files.values():
        assert stat.S_IMODE(pathlib.Path(path).stat().st_mode) == 0o600
    names = {p["Name"] for p in consul_acl_agent.api_json("GET", "/v1/acl/policies")}
    assert {"salt-master", "salt-minion", "salt-dns"} <= names
    return files


def _secret(path):
    return pathlib.Path(path).read_text().strip()


@pytest.fixture(scope="module")
def acl_master(salt_factories, consul_acl_agent, acl_formula, state_tree, tmp_path_factory):
    consul_acl_agent.api_json("PUT", "/v1/kv/config/global/acltest/greeting", b"hello")
    pillar = tmp_path_factory.mktemp("acl-pillar")
    (pillar / "top.sls").write_text("base:\n  '*':\n    - minion\n")
    (pillar / "minion.sls").write_text(textwrap.dedent(MINION_PILLAR_FORMAT.format(service="web")))
    # The salt-master token, through the config.
    consul = consul_opts(consul_acl_agent, token=_secret(acl_formula["master"]))
    with synced_master(salt_factories, "acl-master", consul_acl_agent, state_tree, pillar, consul=consul) as factory:
        yield factory
    consul_acl_agent.api("DELETE", "/v1/kv/config/global/acltest?recurse")


@pytest.fixture(scope="module")
def file_minion(acl_master, consul_acl_agent, acl_formula):
    # The salt-minion token, through a token file.
    consul = consul_opts(consul_acl_agent, token_file=acl_formula["minion"])
    with synced_minion(acl_master, consul_acl_agent, FILE_MINION, consul=consul) as factory:
        yield factory


@pytest.fixture(scope="module")
def env_minion(acl_master, consul_acl_agent, acl_formula):
    factory = acl_master.salt_minion_daemon(
        ENV_MINION, overrides={"consul": consul_opts(consul_acl_agent), "log_level_logfile": "debug"},
    )
    # The salt-minion token, through Consul's own environment variable (a copy: the manager's dict is shared).
    factory.environ = dict(factory.environ, CONSUL_HTTP_TOKEN=_secret(acl_formula["minion"]))
    with factory.started():
        assert factory.salt_call_cli(timeout=120).run("saltutil.sync_all").returncode == 0
        yield factory


def _all_text(paths):
    blobs = []
    for root in paths:
        root = pathlib.Path(root)
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in files:
            try:
                blobs.append((str(path), path.read_bytes()))
            except OSError:
                pass
    return blobs


def _apply(cli, sls, minion, returns):
    ret = cli.run("state.apply", sls, minion_tgt=minion)
    returns.append(ret.stdout + ret.stderr)
    assert isinstance(ret.data, dict) and ret.data, ret
    assert ret.returncode == 0, [s["comment"] for s in ret.data.values()]
    assert all(s["result"] is True for s in ret.data.values()), ret.data
    return ret.data


def test_roles_run_on_the_shipped_policies(acl_master, file_minion, env_minion, consul_acl_agent, acl_formula):
    agent = consul_acl_agent
    cli = acl_master.salt_cli(timeout=120)
    returns = []

    # Master (salt-master policy): the ext_pillar reads the config/ layers ...
    ret = cli.run("pillar.item", "acltest", "unmask=True", minion_tgt=FILE_MINION)
    returns.append(ret.stdout + ret.stderr)
    assert ret.data == {"acltest": {"greeting": "hello"}}, ret
    ret = acl_master.salt_run_cli().run("salt.cmd", "consul.kv_get", "config/global/acltest/greeting")
    returns.append(ret.stdout + ret.stderr)
    assert (ret.data or ret.stdout.strip()) == "hello", ret
    # ... and may not write them.
    ret = acl_master.salt_run_cli().run("salt.cmd", "consul.kv_put", "config/global/acltest/x", "v")
    returns.append(ret.stdout + ret.stderr)
    assert "permission denied" in (ret.stdout + ret.stderr).lower(), ret
    assert agent.api("GET", "/v1/kv/config/global/acltest/x")[0] == 404

    # Minion from a token file (salt-minion policy): the formulas apply.
    _apply(cli, "consul.register", FILE_MINION, returns)
    services = agent.api_json("GET", "/v1/agent/services")
    assert f"web@{FILE_MINION}" in services
    assert set(services[f"web@{FILE_MINION}"]["Tags"]) >= {"prod", "gg"}
    _apply(cli, "consul.primary", FILE_MINION, returns)
    assert f"db@{FILE_MINION}" in agent.api_json("GET", "/v1/agent/services")
    (entry,) = agent.api_json("GET", "/v1/kv/locks/db/prod.gg.acl1/leader")
    assert entry.get("Session") and base64.b64decode(entry["Value"]).decode().find(FILE_MINION) >= 0
    # The daily command after the primary took its lock (issue 21): consul.register's
    # prune leaves the single holder's instance and its lock alone; nothing changes.
    lock_before = agent.api_json("GET", "/v1/kv/locks/db/prod.gg.acl1/leader")[0]
    data = _apply(cli, "consul.register", FILE_MINION, returns)
    assert all(not state["changes"] for state in data.values()), data
    assert agent.api_json("GET", "/v1/kv/locks/db/prod.gg.acl1/leader")[0] == lock_before
    assert f"db@{FILE_MINION}" in agent.api_json("GET", "/v1/agent/services")
    # The runners docs/runners.md shows, on the shipped salt-master token.
    run = acl_master.salt_run_cli(timeout=120)
    for args in (
        ("consul_env.overview",),
        ("consul_pillar.explain", FILE_MINION),
        ("consul_pillar.diff", FILE_MINION, ENV_MINION),
    ):
        ret = run.run(*args)
        returns.append(ret.stdout + ret.stderr)
        assert ret.returncode == 0 and isinstance(ret.data, dict), (args, ret)
        assert "permission denied" not in (ret.stdout + ret.stderr).lower(), (args, ret)
    overview = run.run("consul_env.overview").data
    returns.append(json.dumps(overview))
    lock = overview["environments"][f"prod.gg.{agent.datacenter}"]["single_holder"]["db"]
    assert lock["holder"] == FILE_MINION and lock["held"] is True, overview
    _apply(cli, "consul.dns", FILE_MINION, returns)
    assert [q["Name"] for q in agent.api_json("GET", "/v1/query")] == ["db."]
    # The second minion (token from CONSUL_HTTP_TOKEN) is a standby for db: True, names the holder.
    _apply(cli, "consul.register", ENV_MINION, returns)
    assert f"web@{ENV_MINION}" in agent.api_json("GET", "/v1/agent/services")
    ret = cli.run("state.apply", "consul.primary", minion_tgt=ENV_MINION)
    returns.append(ret.stdout + ret.stderr)
    assert f"db@{ENV_MINION}" not in agent.api_json("GET", "/v1/agent/services")

    # Outside the policy: denied, and it says so.
    for args in (
        ("consul.kv_put", "config/global/acltest/y", "v"),
        ("consul.kv_put", "elsewhere/x", "v"),
        ("consul.service_register", "mail"),
    ):
        ret = cli.run(*args, minion_tgt=ENV_MINION)
        returns.append(ret.stdout + ret.stderr)
        assert ret.returncode != 0, ret
        assert "permission denied" in (ret.stdout + ret.stderr).lower(), ret
    assert agent.api("GET", "/v1/kv/config/global/acltest/y")[0] == 404
    assert "mail" not in agent.api_json("GET", "/v1/agent/services")
    # Inside: the lock folder.
    ret = cli.run("consul.kv_put", "locks/acltest/from-env", "v1", minion_tgt=ENV_MINION)
    returns.append(ret.stdout + ret.stderr)
    assert ret.returncode == 0, ret
    assert agent.api("GET", "/v1/kv/locks/acltest/from-env?raw") == (200, b"v1")

    # Nothing anywhere carries a token string.
    secrets = [_secret(acl_formula["master"]), _secret(acl_formula["minion"]), agent.master_token]
    places = [acl_master.config["cachedir"], acl_master.config["log_file"]]
    for minion in (file_minion, env_minion):
        places += [minion.config["log_file"], minion.config["cachedir"]]
    blobs = _all_text(places) + [("returns", "\n".join(returns).encode())]
    assert any(name.endswith("log") for name, _ in blobs)
    for secret in secrets:
        for name, blob in blobs:
            assert secret.encode() not in blob, f"token found in {name}"

    # Tidy the shared agent: the services, the lock and the query this test made.
    for minion in (FILE_MINION, ENV_MINION):
        for service in ("web", "db"):
            agent.api("PUT", f"/v1/agent/service/deregister/{service}@{minion}")
    for query in agent.api_json("GET", "/v1/query"):
        agent.api("DELETE", f"/v1/query/{query['ID']}")
    agent.api("DELETE", "/v1/kv/locks?recurse")
