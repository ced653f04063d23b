"""
The optional policies of the shipped ``consul.acl`` formula
(``formulas/consul/acl.sls``: ``consul_acl:sdb``, ``:cache``, ``:config``), on
a real default-deny Consul agent of this module's own, each proven by the
component it is for, on the token the formula made for it:

* ``salt-sdb``: ``sdb.get`` / ``sdb.set`` / ``sdb.delete`` through Salt's own
  sdb path in its folder; outside it, and with the ``salt-minion`` token,
  permission denied;
* ``salt-cache``: Salt's ``salt.cache`` with ``cache: consul`` stores, fetches,
  lists, flushes; the ``salt-minion`` token may not;
* ``salt-config``: writes the layer folders, nothing else;
* ``dns_anonymous: false`` after ``true`` takes ``salt-dns`` off the anonymous
  token and keeps a policy an operator linked there;
* a second apply changes nothing; no secret in any return.
"""

import copy
import json
import pathlib

import pytest
import salt.cache
from salt.exceptions import CommandExecutionError, SaltCacheError

from conftest import REPO, own_consul

ANONYMOUS = "00000000-0000-0000-0000-000000000002"
ROLES = ("minion", "sdb", "cache", "config")


@pytest.fixture(scope="module")
def deny_agent(tmp_path_factory):
    with own_consul("compdeny", tmp_path_factory, acl=True) as agent:
        yield agent


@pytest.fixture(scope="module")
def admin(functional_minion, deny_agent, tmp_path_factory):
    """Loaders of an admin minion on the management token, with the formulas as file_roots."""
    from saltfactories.utils.functional import Loaders

    opts = copy.deepcopy(functional_minion.config)
    opts["consul"] = {"address": deny_agent.http_addr, "retries": 0, "token": deny_agent.master_token}
    opts["file_roots"] = {"base": [str(REPO / "formulas")]}
    loaders = Loaders(opts)
    try:
        yield loaders
    finally:
        loaders.reset_state()


def _pillar(secret_dir, dns_anonymous, agent_node=("db01", "dc1")):
    node, datacenter = agent_node
    return {"consul_acl": {
        "minion": {"services": ["web"], "dns_services": []},
        "sdb": {"prefixes": ["secrets/salt/"], "write": True},
        "cache": {"prefix": "salt/cache/"},
        "config": {"prefixes": ["config/"]},
        "dns_anonymous": dns_anonymous,
        "tokens": {
            f"salt-{role}": {"policies": [f"salt-{role}"], "secret_file": str(secret_dir / f"salt-{role}.token")}
            for role in ROLES
        } | {
            # A Consul agent's own token, as docs/acl.md shows it: a node identity.
            f"agent {node}": {"node_identities": [{"NodeName": node, "Datacenter": datacenter}],
                              "secret_file": str(secret_dir / f"agent-{node}.token")},
        },
    }}


def _apply(admin, pillar, test=False):
    ret = admin.modules.state.sls("consul.acl", pillar=pillar, test=test).raw
    assert isinstance(ret, dict) and ret, ret
    failed = {k: v["comment"] for k, v in ret.items() if v["result"] is False}
    assert not failed, failed
    return ret


def _loaders(functional_minion, agent, token_file, **extra):
    from saltfactories.utils.functional import Loaders

    opts = copy.deepcopy(functional_minion.config)
    opts["consul"] = {"address": agent.http_addr, "retries": 0, "token_file": token_file}
    opts.update(extra)
    return Loaders(opts)


def test_sdb_cache_config_policies_and_dns_anonymous(admin, deny_agent, functional_minion, tmp_path):
    agent = deny_agent
    secrets = tmp_path / "tokens"
    returns = []

    node = ("db01", agent.api_json("GET", "/v1/agent/self")["Config"]["Datacenter"])
    returns.append(_apply(admin, _pillar(secrets, dns_anonymous=True, agent_node=node)))
    names = {p["Name"] for p in agent.api_json("GET", "/v1/acl/policies")}
    assert {"salt-master", "salt-minion", "salt-dns", "salt-sdb", "salt-cache", "salt-config"} <= names
    files = {role: str(secrets / f"salt-{role}.token") for role in ROLES}
    # A second apply (and its test=True) changes nothing.
    for test in (True, False):
        returns.append(_apply(admin, _pillar(secrets, dns_anonymous=True, agent_node=node), test=test))
        assert all(r["result"] is True and not r["changes"] for r in returns[-1].values()), returns[-1]

    # salt-sdb: the sdb driver on its token, through Salt's sdb path.
    sdb_opts = {"sdb_dirs": [str(REPO / "_sdb")],
                "vault": {"driver": "consul", "prefix": "secrets/salt"},
                "outside": {"driver": "consul", "prefix": "elsewhere"}}
    loaders = _loaders(functional_minion, agent, files["sdb"], **sdb_opts)
    try:
        sdb = loaders.modules.sdb
        assert sdb.set("sdb://vault/db/password", "s3cret-pw") is True
        assert agent.api("GET", "/v1/kv/secrets/salt/db/password?raw") == (200, b"s3cret-pw")
        assert sdb.get("sdb://vault/db/password") == "s3cret-pw"
        assert sdb.delete("sdb://vault/db/password") is True
        assert agent.api("GET", "/v1/kv/secrets/salt/db/password")[0] == 404
        with pytest.raises(CommandExecutionError, match="permission denied"):
            sdb.set("sdb://outside/x", "v")
    finally:
        loaders.reset_state()
    # The minion token may not read the secrets.
    agent.api("PUT", "/v1/kv/secrets/salt/db/password", b"s3cret-pw")
    loaders = _loaders(functional_minion, agent, files["minion"], **sdb_opts)
    try:
        with pytest.raises(CommandExecutionError, match="permission denied"):
            loaders.modules.sdb.get("sdb://vault/db/password")
    finally:
        loaders.reset_state()

    # salt-cache: Salt's cache layer with cache: consul on its token.
    def cache_on(role):
        opts = copy.deepcopy(functional_minion.config)
        opts.update(cache="consul", cache_dirs=[str(REPO / "_cache")],
                    consul={"address": agent.http_addr, "retries": 0, "token_file": files[role]})
        return salt.cache.factory(opts)

    cache = cache_on("cache")
    cache.store("grains", "web01", {"os": "Debian"})
    assert cache.fetch("grains", "web01") == {"os": "Debian"}
    assert cache.list("grains") == ["web01"] and cache.contains("grains", "web01")
    cache.flush("grains", "web01")
    assert not cache.contains("grains", "web01")
    with pytest.raises(SaltCacheError, match="permission denied"):
        cache_on("minion").store("grains", "web01", {"os": "Debian"})
    assert agent.api("GET", "/v1/kv/salt/cache/grains/web01")[0] == 404

    # salt-config: the layer folders, nothing else (what docs/bootstrap.md's `consul kv put` needs).
    config_token = pathlib.Path(files["config"]).read_text().strip()
    assert agent.api("PUT", "/v1/kv/config/group/prod.gg/app/pool_size", b"20", token=config_token)[0] == 200
    assert agent.api("PUT", "/v1/kv/locks/db/x", b"v", token=config_token)[0] == 403
    minion_token = pathlib.Path(files["minion"]).read_text().strip()
    assert agent.api("PUT", "/v1/kv/config/global/x", b"v", token=minion_token)[0] == 403

    # The agent token (node identity): its own node in the catalog, no other.
    agent_token = (secrets / "agent-db01.token").read_text().strip()
    for name, status in (("db01", 200), ("db02", 403)):
        body = {"Node": name, "Address": "127.0.0.1", "Datacenter": node[1]}
        assert agent.api("PUT", "/v1/catalog/register", body, token=agent_token)[0] == status, name
    agent.api("PUT", "/v1/catalog/deregister", {"Node": "db01", "Datacenter": node[1]})

    # dns_anonymous: true gave salt-dns to the anonymous token; false takes it off
    # again and keeps what an operator linked there.
    anonymous = agent.api_json("GET", f"/v1/acl/token/{ANONYMOUS}")
    assert [p["Name"] for p in anonymous["Policies"]] == ["salt-dns"]
    ops = agent.api_json("PUT", "/v1/acl/policy", json.dumps({"Name": "ops-extra", "Rules": 'agent_prefix "" { policy = "read" }'}).encode())
    body = {"Policies": [{"Name": "salt-dns"}, {"Name": "ops-extra"}]}
    assert agent.api("PUT", f"/v1/acl/token/{ANONYMOUS}", json.dumps(body).encode())[0] == 200
    dry = _apply(admin, _pillar(secrets, dns_anonymous=False, agent_node=node), test=True)
    (predicted,) = [r for k, r in dry.items() if "anonymous" in k]
    assert predicted["result"] is None and predicted["changes"]["new"]["Policies"] == ["ops-extra"], predicted
    assert [k for k, r in dry.items() if r["changes"]] == [k for k, r in dry.items() if "anonymous" in k]
    returns.append(_apply(admin, _pillar(secrets, dns_anonymous=False, agent_node=node)))
    (state,) = [r for k, r in returns[-1].items() if "anonymous" in k]
    assert state["result"] is True and state["changes"] == predicted["changes"], state
    anonymous = agent.api_json("GET", f"/v1/acl/token/{ANONYMOUS}")
    assert [p["Name"] for p in anonymous["Policies"]] == ["ops-extra"]
    returns.append(_apply(admin, _pillar(secrets, dns_anonymous=False, agent_node=node)))
    assert all(not r["changes"] for r in returns[-1].values()), returns[-1]
    agent.api("PUT", f"/v1/acl/token/{ANONYMOUS}", json.dumps({"Policies": []}).encode())
    agent.api("DELETE", f"/v1/acl/policy/{ops['ID']}")

    # No secret in any return.
    text = repr(returns)
    for path in [*files.values(), str(secrets / "agent-db01.token")]:
        assert pathlib.Path(path).read_text().strip() not in text
    assert agent.master_token not in text
