"""
ACLs end to end, with real Salt daemons against a Consul agent whose ACLs are
default-deny: tokens from the config, from ``CONSUL_HTTP_TOKEN`` and from a
token file; a read-only token cannot write; no token string shows up in the
master's job cache, any log, or any return.
"""

import pathlib
import uuid

import pytest
from conftest import consul_opts, synced_master, synced_minion

RO_TOKEN = str(uuid.uuid4())
RW_TOKEN = str(uuid.uuid4())
PREFIX = "acltest"


def _acl(agent, method, path, body=None):
    return agent.api_json(method, path, body)


@pytest.fixture(scope="module")
def tokens(consul_acl_agent):
    agent = consul_acl_agent
    read = _acl(agent, "PUT", "/v1/acl/policy", {
        "Name": f"ro-{uuid.uuid4().hex[:6]}",
        "Rules": 'key_prefix "" { policy = "read" } node_prefix "" { policy = "read" } '
                 'service_prefix "" { policy = "read" }',
    })
    write = _acl(agent, "PUT", "/v1/acl/policy", {
        "Name": f"rw-{uuid.uuid4().hex[:6]}",
        "Rules": f'key_prefix "{PREFIX}/" {{ policy = "write" }} node_prefix "" {{ policy = "read" }} '
                 'service_prefix "" { policy = "write" } session_prefix "" { policy = "write" }',
    })
    _acl(agent, "PUT", "/v1/acl/token", {"SecretID": RO_TOKEN, "Policies": [{"ID": read["ID"]}]})
    _acl(agent, "PUT", "/v1/acl/token", {"SecretID": RW_TOKEN, "Policies": [{"ID": read["ID"]}, {"ID": write["ID"]}]})
    return {"ro": RO_TOKEN, "rw": RW_TOKEN, "master": agent.master_token}


@pytest.fixture(scope="module")
def acl_master(salt_factories, consul_acl_agent, tokens, state_tree, tmp_path_factory):
    pillar = tmp_path_factory.mktemp("acl-pillar")
    (pillar / "top.sls").write_text("base: {}\n")
    # Token through the config.
    with synced_master(
        salt_factories, "acl-master", consul_acl_agent, state_tree, pillar,
        consul=consul_opts(consul_acl_agent, token=tokens["rw"]), ext_pillar=[],
    ) as factory:
        yield factory


@pytest.fixture(scope="module")
def ro_minion(acl_master, consul_acl_agent, tokens, tmp_path_factory):
    token_file = tmp_path_factory.mktemp("ro-token") / "token"
    token_file.write_text(tokens["ro"] + "\n")
    token_file.chmod(0o600)
    # Token through a token file.
    consul = consul_opts(consul_acl_agent, token_file=str(token_file))
    with synced_minion(acl_master, consul_acl_agent, "app01.prod.gg.acl1.example.com", consul=consul) as factory:
        yield factory


@pytest.fixture(scope="module")
def rw_minion(acl_master, consul_acl_agent, tokens):
    factory = acl_master.salt_minion_daemon(
        "app02.prod.gg.acl1.example.com",
        overrides={"consul": consul_opts(consul_acl_agent), "log_level_logfile": "debug"},
    )
    # Token through Consul's own environment variable (a copy: the manager's dict is shared).
    factory.environ = dict(factory.environ, CONSUL_HTTP_TOKEN=tokens["rw"])
    with factory.started():
        assert factory.salt_call_cli().run("saltutil.sync_all").returncode == 0
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


def test_tokens_from_config_env_and_file(acl_master, ro_minion, rw_minion, consul_acl_agent, tokens):
    cli = acl_master.salt_cli(timeout=120)
    returns = []

    # env-var token (read-write on acltest/): the write lands in Consul.
    ret = cli.run("consul.kv_put", f"{PREFIX}/from-env", "v1", minion_tgt=rw_minion.id)
    returns.append(ret.stdout + ret.stderr)
    assert ret.returncode == 0, ret
    assert consul_acl_agent.api("GET", f"/v1/kv/{PREFIX}/from-env?raw") == (200, b"v1")

    # token-file token (read-only): it can read, and its write is denied and says so.
    ret = cli.run("consul.kv_get", f"{PREFIX}/from-env", minion_tgt=ro_minion.id)
    returns.append(ret.stdout + ret.stderr)
    assert ret.data == "v1"
    ret = cli.run("consul.kv_put", f"{PREFIX}/from-file", "nope", minion_tgt=ro_minion.id)
    returns.append(ret.stdout + ret.stderr)
    assert ret.returncode != 0
    assert "permission denied" in (ret.stdout + ret.stderr).lower()
    assert consul_acl_agent.api("GET", f"/v1/kv/{PREFIX}/from-file")[0] == 404

    # config token on the master side (runner/pillar use the master's consul: section).
    ret = acl_master.salt_run_cli().run("salt.cmd", "consul.kv_get", f"{PREFIX}/from-env")
    returns.append(ret.stdout + ret.stderr)
    assert (ret.data or ret.stdout.strip()) == "v1", ret

    # A call with no usable token is denied, not silently anonymous.
    ret = cli.run("consul.kv_put", "elsewhere/x", "v", minion_tgt=rw_minion.id)
    returns.append(ret.stdout + ret.stderr)
    assert ret.returncode != 0

    # Nothing anywhere carries a token string.
    places = [
        acl_master.config["cachedir"],
        acl_master.config["log_file"],
        ro_minion.config["log_file"],
        rw_minion.config["log_file"],
        ro_minion.config["cachedir"],
        rw_minion.config["cachedir"],
    ]
    blobs = _all_text(places) + [("returns", "\n".join(returns).encode())]
    assert any(name.endswith("log") or "minion" in name for name, _ in blobs)
    for secret in tokens.values():
        for name, blob in blobs:
            assert secret.encode() not in blob, f"token found in {name}"
