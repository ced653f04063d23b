"""
The saltext-consul drop-in (the string form of the ``consul`` ext_pillar,
``- consul: <profile> root=...``, translated by ``saltconsul_saltext``) on
the token the shipped ``consul.acl`` formula makes for the master, on a
default-deny Consul agent of this module's own: what docs/migration.md
("Under Consul ACLs: the master's token must read the root") tells the
operator, run as written.

The master config and the ``consul_acl`` pillar are the YAML blocks of that
section, read from the doc (only the agent's address and the token file's
place are this test's); the rest of the pillar is
``formulas/consul/acl.pillar.example``. With the shipped example alone
(``pillar_prefixes: [config/]``) the minion gets none of the root's values,
with no error anywhere; after ``consul.acl`` is applied with the doc's
``pillar_prefixes`` the same token's running master still serves the empty
copy, and after a restart the minion gets the root's values. No token
secret in any return or log line.
"""

import copy
import logging
import pathlib
import re

import pytest
import salt.pillar
import salt.utils.dictupdate
import salt.utils.yaml

import saltconsul_pillarcache
import saltconsul_saltext
from conftest import REPO, own_consul

MINION = "web01.prod.gg.mydc1.example.com"
DOC = REPO / "docs" / "migration.md"
EXAMPLE = REPO / "formulas" / "consul" / "acl.pillar.example"
VALUES = {"app/pool_size": "20", "app/name": "shop"}
KV = {
    **{f"salt/pillar/{MINION}/{key}": value for key, value in VALUES.items()},
    # Outside the granted folder: stays unreadable after the change.
    f"salt/other/{MINION}/app/secret": "not-for-the-master",
}


def _doc_yaml(marker):
    """The one YAML block of docs/migration.md holding ``marker``, parsed."""
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S) if marker in b]
    assert len(blocks) == 1, f"docs/migration.md: {len(blocks)} yaml blocks hold {marker!r}"
    return salt.utils.yaml.safe_load(blocks[0])


@pytest.fixture(scope="module")
def deny_agent(tmp_path_factory):
    with own_consul("sxdeny", tmp_path_factory, kv=KV, acl=True) as agent:
        yield agent


@pytest.fixture(scope="module")
def admin(functional_minion, deny_agent):
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


def _example_pillar(secrets):
    """acl.pillar.example as shipped, each token's secret_file moved into ``secrets``; ``{doc path: our path}``."""
    pillar = salt.utils.yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    moved = {}
    for spec in pillar["consul_acl"]["tokens"].values():
        ours = str(secrets / pathlib.PurePosixPath(spec["secret_file"]).name)
        moved[spec["secret_file"]] = ours
        spec["secret_file"] = ours
    return pillar, moved


def _apply(admin, pillar):
    ret = admin.modules.state.sls("consul.acl", pillar=pillar).raw
    assert isinstance(ret, dict) and ret, ret
    failed = {k: v["comment"] for k, v in ret.items() if v["result"] is False}
    assert not failed, failed
    return ret


def _master_opts(functional_minion, agent, tmp_path, master_conf):
    opts = copy.deepcopy(functional_minion.config)
    opts.pop("consul", None)
    opts.update(copy.deepcopy(master_conf))
    opts["cachedir"] = str(tmp_path / "cache")
    opts["pillar_roots"] = {"base": [str(tmp_path / "pillar")]}
    (tmp_path / "pillar").mkdir(exist_ok=True)
    (tmp_path / "pillar" / "top.sls").write_text("base: {}\n")
    opts["id"] = MINION
    opts["grains"] = {}
    return opts


def _compile(opts, entry=None):
    if entry is not None:
        opts = dict(opts, ext_pillar=[{"consul": entry}])
    return salt.pillar.get_pillar(opts, {}, MINION, saltenv="base").compile_pillar()


def _restart():
    """What a salt-master restart does to the ext_pillar: new processes, no pillar store in memory."""
    saltconsul_pillarcache.reset()
    saltconsul_saltext.WARNED.clear()


@pytest.mark.parametrize("token_in", ["token_file", "profile"])
def test_saltext_root_needs_pillar_prefixes(admin, deny_agent, functional_minion, tmp_path, caplog, token_in):
    agent = deny_agent
    master_conf = _doc_yaml("root=salt/pillar/")
    acl_doc = _doc_yaml("pillar_prefixes")
    ((entry,),) = [item.values() for item in master_conf["ext_pillar"]]
    assert entry == "my_consul_config root=salt/pillar/%(minion_id)s"
    assert acl_doc["consul_acl"]["master"]["pillar_prefixes"] == ["config/", "salt/pillar/"]

    secrets = tmp_path / "tokens"
    shipped, moved = _example_pillar(secrets)
    assert shipped["consul_acl"]["master"]["pillar_prefixes"] == ["config/"]
    # The doc's token_file is the file consul.acl writes for the salt-master token.
    assert master_conf["consul"]["token_file"] in moved
    token_file = moved[master_conf["consul"]["token_file"]]
    assert shipped["consul_acl"]["tokens"]["salt-master"]["secret_file"] == token_file

    returns = [_apply(admin, shipped)]
    secret = pathlib.Path(token_file).read_text().strip()
    master_policy = agent.api_json("GET", "/v1/acl/policy/name/salt-master")
    assert 'key_prefix "salt/pillar/"' not in master_policy["Rules"]

    # The doc's master config on this agent and this test's token file; or,
    # as a saltext-consul profile has it, the secret as the profile's
    # consul.token, which wins over consul:token_file (here the salt-minion
    # token's, which may not read the root either way).
    host, port = agent.http_addr.split("://", 1)[1].rsplit(":", 1)
    master_conf["my_consul_config"].update({"consul.host": host, "consul.port": int(port)})
    master_conf["consul"] = {"token_file": token_file, "retries": 0}
    if token_in == "profile":
        master_conf["consul"]["token_file"] = shipped["consul_acl"]["tokens"]["salt-minion"]["secret_file"]
        master_conf["my_consul_config"]["consul.token"] = secret
    opts = _master_opts(functional_minion, agent, tmp_path, master_conf)

    # Consul's answer to the token without the rule: a recursive read of the
    # root is a 404, as for an empty folder (the keys are filtered out).
    root = f"/v1/kv/salt/pillar/{MINION}/?recurse"
    assert agent.api("GET", root, token=secret)[0] == 404
    assert agent.api("GET", root)[0] == 200

    _restart()
    pillars = []
    with caplog.at_level(logging.DEBUG):
        # Without the pillar_prefixes entry: nothing from the root, and no error.
        start = len(caplog.records)
        pillars.append(_compile(opts))
        assert pillars[-1] == {}, pillars[-1]
        problems = [r.getMessage() for r in caplog.records[start:] if r.levelno >= logging.WARNING]
        (translation,) = problems
        assert "is saltext-consul's configuration form" in translation, problems

        # consul.acl with the doc's pillar: only the salt-master policy changes.
        pillar = salt.utils.dictupdate.update(copy.deepcopy(shipped), acl_doc)
        assert pillar["consul_acl"]["master"]["watch_prefixes"] == shipped["consul_acl"]["master"]["watch_prefixes"]
        returns.append(_apply(admin, pillar))
        changed = sorted(k for k, r in returns[-1].items() if r["changes"])
        assert changed == ["consul_|-consul-acl-policy-salt-master_|-salt-master_|-acl_policy_present"], changed
        master_policy = agent.api_json("GET", "/v1/acl/policy/name/salt-master")
        assert 'key_prefix "salt/pillar/" { policy = "read" }' in master_policy["Rules"]
        assert agent.api("GET", root, token=secret)[0] == 200

        # The running master still serves the empty copy it compiled before.
        pillars.append(_compile(opts))
        assert pillars[-1] == {}, pillars[-1]

        # After a restart the minion gets the root's values.
        _restart()
        pillars.append(_compile(opts))
        assert pillars[-1] == {"app": {"pool_size": "20", "name": "shop"}}, pillars[-1]

        # Nothing outside salt/pillar/ became readable.
        pillars.append(_compile(opts, "my_consul_config root=salt/other/%(minion_id)s"))
        assert pillars[-1] == {}, pillars[-1]
        assert agent.api("GET", f"/v1/kv/salt/other/{MINION}/?recurse", token=secret)[0] == 404

    # Back to the shipped example for the next run (the token, its secret kept).
    returns.append(_apply(admin, shipped))
    assert pathlib.Path(token_file).read_text().strip() == secret

    # No token secret in any return, pillar or log line.
    text = repr(returns) + repr(pillars) + caplog.text
    for path in moved.values():
        assert pathlib.Path(path).read_text().strip() not in text, path
    assert agent.master_token not in text
