"""
ACLs across datacenters, as ``formulas/consul/acl.sls`` and ``docs/acl.md``
say to run them: ``consul.acl`` is applied once, in the primary datacenter,
and the policies and tokens replicate from there; a secondary datacenter
whose primary goes down keeps working.

Two real Consul datacenters (``tools/cluster.py``: 3 servers and a client
agent per node in each), default-deny ACLs, ``dc1`` the primary and ``dc2``
replicating its tokens (``enable_token_replication``). Every Salt command is
a masterless ``salt-call --local`` on a node's own client agent (the master
would be in one of the datacenters; the point is the other one), minions on
the ``salt-minion`` token the formula made:

* ``consul.acl`` with the management token in dc1; the minion token is known
  in dc2 once replicated, with no second apply there;
* ``consul.register`` on a dc1 minion and on a dc2 minion, each through its
  own agent; the dc2 minion finds the service only dc1 has with
  ``failover=['dc1']`` (its token is valid in dc1 too: a global token);
* every server of dc1 killed -9 (the *primary* datacenter down): in dc2,
  ``consul.register`` applies again with no change, ``consul.primary`` takes
  its environment's lock (a session and a KV write); a new node of dc2 whose
  token dc2 has never used (only replication can have told dc2 of it; a
  cached remote lookup cannot) registers and stands by; discovery of dc2's
  own services answers; asking dc1 fails with a clear error naming dc1,
  never a traceback or an empty list;
* no token secret in any output.
"""

import base64
import json
import pathlib
import stat

import pytest
from cluster import Cluster
from conftest import REPO, consul_opts, loader_dir_opts
from test_acl import MINION_PILLAR_FORMAT

WEB01 = "web01.prod.gg.mydc1.example.com"
WEB02 = "web02.prod.gg.mydc2.example.com"
WEB03 = "web03.prod.gg.mydc2.example.com"  # a new node of dc2, first seen while dc1 is down
NODES = {WEB01: ("dc1", "web01"), WEB02: ("dc2", "web02"), WEB03: ("dc2", "web03")}
# What each minion registers (its own pillar; masterless): api only in dc1.
SERVICES = {WEB01: "api", WEB02: "web", WEB03: "web"}
# Token files the formula writes: {token description: policies}. web03's token
# is made with the others but first used in dc2 after dc1 is gone, so only
# token replication (not a cached remote lookup) can let dc2 know it.
TOKENS = {"salt-master": ["salt-master"], "salt-minion": ["salt-minion"], "salt-minion-web03": ["salt-minion"]}
ACL_PILLAR = {"minion": {"services": ["api", "web", "db"], "dns_services": []}, "dns_anonymous": False}


@pytest.fixture(scope="module")
def dcs(tmp_path_factory):
    logs = str(tmp_path_factory.mktemp("multidc-acl-logs"))
    with Cluster(nodes=["admin", "web01"], datacenter="dc1", acl=True, log_dir=logs) as dc1:
        with Cluster(nodes=["web02", "web03"], datacenter="dc2", acl=True, log_dir=logs, wan_join=dc1) as dc2:
            yield {"dc1": dc1, "dc2": dc2}


def agent_of(dcs, mid):
    dc, node = NODES[mid]
    return dcs[dc].client(node)


@pytest.fixture(scope="module")
def tokens(salt_factories, dcs, tmp_path_factory):
    """``consul.acl`` applied once, in dc1, with the management token: {token: secret file}."""
    root = tmp_path_factory.mktemp("multidc-acl-admin")
    files = {name: str(root / "tokens" / f"{name}.token") for name in TOKENS}
    pillar = dict(ACL_PILLAR, tokens={
        name: {"policies": policies, "secret_file": files[name]} for name, policies in TOKENS.items()
    })
    agent = dcs["dc1"].client("admin")
    admin = salt_factories.salt_minion_daemon(
        "multidc-acl-admin",
        overrides=dict(
            loader_dir_opts(),
            file_client="local",
            file_roots={"base": [str(REPO / "formulas")]},
            pillar_roots={"base": [str(root)]},
            consul=consul_opts(agent, token=dcs["dc1"].master_token),
        ),
    )
    ret = admin.salt_call_cli(timeout=120).run("--local", "state.apply", "consul.acl", f"pillar={json.dumps({'consul_acl': pillar})}")
    assert ret.returncode == 0, ret
    assert ret.data and all(s["result"] is True for s in ret.data.values()), ret.data
    for path in files.values():
        assert stat.S_IMODE(pathlib.Path(path).stat().st_mode) == 0o600
    return files


def secret(path):
    return pathlib.Path(path).read_text().strip()


@pytest.fixture(scope="module")
def minions(salt_factories, dcs, tokens, tmp_path_factory):
    """A masterless salt-call per minion on its own node's agent, on the salt-minion token (token_file)."""
    out = {}
    for mid in NODES:
        service = SERVICES[mid]
        pillar = tmp_path_factory.mktemp(f"pillar-{mid.split('.')[0]}")
        (pillar / "top.sls").write_text("base:\n  '*':\n    - services\n")
        (pillar / "services.sls").write_text(MINION_PILLAR_FORMAT.format(service=service))
        factory = salt_factories.salt_minion_daemon(
            mid,
            overrides=dict(
                loader_dir_opts(),
                file_client="local",
                file_roots={"base": [str(REPO / "formulas")]},
                pillar_roots={"base": [str(pillar)]},
                consul=consul_opts(
                    agent_of(dcs, mid),
                    token_file=tokens["salt-minion-web03" if mid == WEB03 else "salt-minion"],
                    timeout=5,
                    connect_timeout=2,
                ),
            ),
        )
        out[mid] = factory.salt_call_cli(timeout=120)
    return out


OUTPUTS = []  # every command's stdout and stderr, searched for secrets at the end


def call(minions, mid, *args):
    ret = minions[mid].run("--local", *args)
    OUTPUTS.append(ret.stdout + ret.stderr)
    assert "Traceback" not in ret.stdout + ret.stderr, ret
    return ret


def apply(minions, mid, sls):
    """``state.apply sls``: {state id: (result, changes)}, every state True."""
    ret = call(minions, mid, "state.apply", sls)
    assert isinstance(ret.data, dict) and ret.data, ret
    assert ret.returncode == 0, {s["__id__"]: (s["result"], s["comment"]) for s in ret.data.values()}
    results = {s["__id__"]: (s["result"], s["changes"]) for s in ret.data.values()}
    assert all(result is True for result, _ in results.values()), ret.data
    return results


def catalog_ids(cluster, service):
    return sorted(e["ServiceID"] for e in cluster.live_server().api_json("GET", f"/v1/catalog/service/{service}"))


def test_replicated_tokens_work_in_both_and_survive_the_primary(dcs, tokens, minions):
    dc1, dc2 = dcs["dc1"], dcs["dc2"]
    minion_token = secret(tokens["salt-minion"])
    # The formula ran in dc1 only: dc2 knows the tokens once its replication has them.
    dc2.wait_acl_replicated(token=minion_token, timeout=60)
    dc2.wait_acl_replicated(token=secret(tokens["salt-minion-web03"]), timeout=60)

    for mid in (WEB01, WEB02):
        apply(minions, mid, "consul.register")
    assert catalog_ids(dc1, "api") == [f"api@{WEB01}"] and catalog_ids(dc1, "web") == []
    assert catalog_ids(dc2, "web") == [f"web@{WEB02}"] and catalog_ids(dc2, "api") == []

    # dc2 has no api: failover asks dc1 with the same (global) token.
    ret = call(minions, WEB02, "consul.discover", "api", "failover=['dc1']")
    assert ret.returncode == 0, ret
    assert [(i["id"], i["datacenter"], i["remote"]) for i in ret.data] == [(f"api@{WEB01}", "dc1", True)], ret.data

    # The primary datacenter goes down: every server of dc1 killed -9.
    dc1.kill_servers()

    # dc2 resolves the token from its replica: its minion keeps working.
    results = apply(minions, WEB02, "consul.register")
    assert all(not changes for _, changes in results.values()), results
    results = apply(minions, WEB02, "consul.primary")
    assert any(changes for _, changes in results.values()), results
    (entry,) = dc2.live_server().api_json("GET", "/v1/kv/locks/db/prod.gg.mydc2/leader")
    assert entry.get("Session") and WEB02 in base64.b64decode(entry["Value"]).decode(), entry
    assert catalog_ids(dc2, "db") == [f"db@{WEB02}"]
    # A second apply while dc1 is still down: the holder keeps the lock, nothing changes.
    results = apply(minions, WEB02, "consul.primary")
    assert all(not changes for _, changes in results.values()), results

    # A new node comes up in dc2 while dc1 is down, on a token dc2 never used
    # before: it registers, stands by for db (True, no change) and is found.
    apply(minions, WEB03, "consul.register")
    assert catalog_ids(dc2, "web") == [f"web@{WEB02}", f"web@{WEB03}"]
    results = apply(minions, WEB03, "consul.primary")
    assert all(not changes for _, changes in results.values()), results
    assert catalog_ids(dc2, "db") == [f"db@{WEB02}"]

    ret = call(minions, WEB02, "consul.discover", "web")
    assert ret.returncode == 0, ret
    assert [(i["id"], i["datacenter"], i["remote"]) for i in ret.data] == [
        (f"web@{WEB02}", "dc2", False), (f"web@{WEB03}", "dc2", False)
    ], ret.data

    # Asking the dead datacenter: a clear error that names it, never an empty answer.
    for args in (("consul.discover", "api", "dc=dc1"), ("consul.discover", "api", "failover=['dc1']")):
        ret = call(minions, WEB02, *args)
        assert ret.returncode != 0, ret
        assert "dc1" in ret.stdout + ret.stderr, ret

    # No secret anywhere in what the commands printed.
    secrets = [*(secret(path) for path in tokens.values()), dc1.master_token, *dc1.agent_tokens.values(), *dc2.agent_tokens.values()]
    for text in OUTPUTS:
        for value in secrets:
            assert value not in text
