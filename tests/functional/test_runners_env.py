"""
``consul_env.overview`` through Salt's real runner loader on a Consul of its
own: services registered in two environments the way ``consul.register``
and the ``consul`` states register them (env tags, ``env`` and
``salt_minion`` meta), one check failed, a single-holder lock held and one
released; the counts are checked against Consul's own health API.
"""

import copy
import json
import pathlib
import uuid

import pytest
import salt.loader
import salt.output
from salt.exceptions import CommandExecutionError

from conftest import own_consul

REPO = pathlib.Path(__file__).resolve().parents[2]
WEB1 = "web01.prod.gg.mydc1.example.com"
WEB2 = "web02.prod.gg.mydc1.example.com"
DB1 = "db01.prod.gg.mydc1.example.com"
STG = "web01.stg.gg.mydc1.example.com"
MINIONS = [WEB1, WEB2, DB1, STG, "lonely-host"]


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    with own_consul("overview", tmp_path_factory) as agent:
        yield agent


@pytest.fixture(scope="module")
def master_opts(salt_factories, agent):
    factory = salt_factories.salt_master_daemon(
        "runners-env-master",
        overrides={"runner_dirs": [str(REPO / "_runners")], "utils_dirs": [str(REPO / "_utils")]},
    )
    opts = copy.deepcopy(factory.config)
    opts["consul"] = {"address": agent.http_addr, "retries": 0}
    opts["ext_pillar"] = [{"consul": {}}]
    accepted = pathlib.Path(opts["pki_dir"]) / "minions"
    accepted.mkdir(parents=True, exist_ok=True)
    for mid in MINIONS:
        (accepted / mid).write_text("-----BEGIN PUBLIC KEY-----\n")
    return opts


def runners(opts):
    return salt.loader.runner(opts, utils=salt.loader.utils(opts), context={})


def register(agent, name, sid, tags=(), meta=None, status="passing"):
    body = {
        "Name": name,
        "ID": sid,
        "Port": 8080,
        "Tags": list(tags),
        "Meta": meta or {},
        "Check": {"CheckID": f"service:{sid}", "Name": "ttl", "TTL": "600s", "Status": "passing"},
    }
    assert agent.api("PUT", "/v1/agent/service/register", body)[0] == 200
    if status != "passing":
        verb = {"warning": "warn", "critical": "fail"}[status]
        assert agent.api("PUT", f"/v1/agent/check/{verb}/service:{sid}")[0] == 200


def consul_counts(agent, name):
    """Instances and passing instances of a service, as Consul's health API says."""
    every = agent.api_json("GET", f"/v1/health/service/{name}")
    passing = agent.api_json("GET", f"/v1/health/service/{name}?passing")
    return len(every), len(passing)


@pytest.fixture(scope="module")
def fleet(agent):
    # consul.register: env tags and env meta, and the states' salt_minion meta.
    register(agent, "web", f"web@{WEB1}", ["http", "prod", "gg"], {"env": "prod.gg.mydc1", "salt_minion": WEB1})
    register(agent, "web", f"web@{WEB2}", ["http", "prod", "gg"], {"env": "prod.gg.mydc1", "salt_minion": WEB2},
             status="critical")  # the failed check
    # The consul states without the formula: only salt_minion meta.
    register(agent, "web", f"web@{STG}", ["http"], {"salt_minion": STG})
    # Registered by hand with env tags only.
    register(agent, "db", f"db@{DB1}", ["prod", "gg", "primary"], status="warning")
    register(agent, "cache", "cache-1", [])
    for key, value in {
        "config/global/ntp": "pool.ntp.org",
        "config/group/prod.gg/app/pool": "50",
        "config/env/prod.gg.mydc1/db/host": "db.prod",
        f"config/node/{WEB1}/weight": "3",
        "config/type/stg/app/pool": "8",
    }.items():
        assert agent.api("PUT", f"/v1/kv/{key}", value.encode())[0] == 200
    # A single-holder service's lock (consul.single_holder_service's layout).
    session = agent.api_json("PUT", "/v1/session/create", {"Name": "db-primary", "LockDelay": "1s"})["ID"]
    assert agent.api("PUT", f"/v1/kv/locks/db/prod.gg.mydc1/leader?acquire={session}", DB1.encode()) == (200, b"true")
    # Released: the key stays, nobody holds it.
    assert agent.api("PUT", "/v1/kv/locks/db/stg.gg.mydc1/leader", b"web01.stg.gg.mydc1.example.com")[0] == 200
    return session


def test_overview_counts_match_consul(agent, master_opts, fleet):
    ret = runners(master_opts)["consul_env.overview"]()
    prod = ret["environments"]["prod.gg.mydc1"]
    stg = ret["environments"]["stg.gg.mydc1"]
    assert prod["minions"] == sorted([DB1, WEB1, WEB2])
    assert stg["minions"] == [STG]
    assert ret["unassigned"]["minions"] == ["lonely-host"]
    assert ret["datacenter"] == "overview"  # the agent's own, as Consul names it

    assert prod["services"] == {
        "web": {"instances": 2, "passing": 1, "warning": 0, "critical": 1},
        "db": {"instances": 1, "passing": 0, "warning": 1, "critical": 0},
    }
    assert stg["services"] == {"web": {"instances": 1, "passing": 1, "warning": 0, "critical": 0}}
    assert ret["unassigned"]["services"] == {"cache": {"instances": 1, "passing": 1, "warning": 0, "critical": 0}}
    # The same numbers as Consul's own health API.
    envs = list(ret["environments"].values()) + [ret["unassigned"]]
    for name in ("web", "db", "cache"):
        total = sum(e["services"].get(name, {}).get("instances", 0) for e in envs)
        passing = sum(e["services"].get(name, {}).get("passing", 0) for e in envs)
        assert (total, passing) == consul_counts(agent, name)

    assert prod["single_holder"] == {"db": {"holder": DB1, "held": True}}
    assert stg["single_holder"] == {"db": {"holder": None, "held": False}}

    assert prod["layers"] == {
        "config/global": "present",
        "config/dc/mydc1": "missing",
        "config/type/prod": "missing",
        "config/group/prod.gg": "present",
        "config/env/prod.gg.mydc1": "present",
        "config/node/{minion_id}": "1 of 3 minions",
    }
    assert stg["layers"]["config/type/stg"] == "present"
    assert stg["layers"]["config/group/stg.gg"] == "missing"

    # Plain data: every outputter renders it.
    assert json.loads(json.dumps(ret)) == ret
    for outputter in ("nested", "yaml", "json"):
        text = salt.output.string_format(ret, outputter, opts=dict(master_opts, color=False))
        assert "prod.gg.mydc1" in text and "critical" in text


def test_health_changes_are_seen(agent, master_opts, fleet):
    assert agent.api("PUT", f"/v1/agent/check/pass/service:web@{WEB2}")[0] == 200
    try:
        ret = runners(master_opts)["consul_env.overview"]()
        assert ret["environments"]["prod.gg.mydc1"]["services"]["web"]["passing"] == 2
    finally:
        assert agent.api("PUT", f"/v1/agent/check/fail/service:web@{WEB2}")[0] == 200


def _token(agent, name, rules):
    policy = agent.api_json("PUT", "/v1/acl/policy", {"Name": name, "Rules": rules})
    token = agent.api_json("PUT", "/v1/acl/token", {"Description": name, "Policies": [{"ID": policy["ID"]}]})
    return token["SecretID"], token["AccessorID"], policy["ID"]


OVERVIEW_POLICY = """
key_prefix "config/" { policy = "read" }
key_prefix "locks/" { policy = "read" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
"""


def test_overview_with_the_documented_read_policy_and_without(consul_acl_agent, master_opts):
    acl = consul_acl_agent
    name = "ov-" + uuid.uuid4().hex[:8]
    created = []
    opts = copy.deepcopy(master_opts)
    opts["consul"] = {"address": acl.http_addr, "retries": 0}
    try:
        sid = f"{name}@{WEB1}"
        register(acl, name, sid, ["prod", "gg"], {"env": "prod.gg.mydc1"}, status="critical")
        reader, acc, pol = _token(acl, name + "-read", OVERVIEW_POLICY)
        created.append((acc, pol))
        opts["consul"]["token"] = reader
        ret = runners(opts)["consul_env.overview"]()
        assert ret["environments"]["prod.gg.mydc1"]["services"][name] == {
            "instances": 1, "passing": 0, "warning": 0, "critical": 1,
        }
        # The documented docs/runners.md policy is the one tested here.
        docs = (REPO / "docs" / "runners.md").read_text()
        for line in OVERVIEW_POLICY.strip().splitlines():
            assert line in docs

        kv_only, acc, pol = _token(acl, name + "-kv", 'key_prefix "config/" { policy = "read" }')
        created.append((acc, pol))
        for token in (kv_only, "00000000-0000-4000-8000-" + uuid.uuid4().hex[:12]):
            opts["consul"]["token"] = token
            with pytest.raises(CommandExecutionError) as err:
                runners(opts)["consul_env.overview"]()
            assert "may not read what the overview needs" in str(err.value)
            assert token not in str(err.value)
    finally:
        acl.api("PUT", f"/v1/agent/service/deregister/{name}@{WEB1}")
        for acc, pol in created:
            acl.api("DELETE", f"/v1/acl/token/{acc}")
            acl.api("DELETE", f"/v1/acl/policy/{pol}")


def test_lock_keys_and_instance_environments_pure_logic():
    """The rules the overview applies, without Consul: one lock key layout, the env precedence."""
    import saltconsul_env
    import saltconsul_fleet

    assert saltconsul_env.lock_key("db", "prod.gg.mydc1") == "locks/db/prod.gg.mydc1/leader"
    for key in ("locks/db/prod.gg.mydc1/leader", "locks/db/leader"):
        service, postfix = saltconsul_env.parse_lock_key(key)
        assert saltconsul_env.lock_key(service, postfix) == key
    for key in ("locks/db/prod.gg.mydc1/other", "locks/db/../x/leader", "other/db/leader", "locks/a/b/c/leader"):
        assert saltconsul_env.parse_lock_key(key) is None
    assert saltconsul_env.parse_postfix("prod.gg.mydc1") == {
        "type": "prod", "group": "gg", "datacenter": "mydc1", "postfix": "prod.gg.mydc1",
    }
    for bad in ("web01.prod.gg.mydc1.example.com", "nope.gg.mydc1", "prod.gg", "prod.g/g.mydc1", ""):
        assert saltconsul_env.parse_postfix(bad) is None

    known = {
        "prod.gg.mydc1": {"type": "prod", "group": "gg", "datacenter": "mydc1"},
        "prod.gg.mydc2": {"type": "prod", "group": "gg", "datacenter": "mydc2"},
        "stg.gg.mydc1": {"type": "stg", "group": "gg", "datacenter": "mydc1"},
    }
    env = saltconsul_fleet.instance_env
    # env meta first, then the salt_minion meta's ID, then the env tags.
    assert env({"Meta": {"env": "stg.gg.mydc1", "salt_minion": WEB1}, "Tags": ["prod", "gg"]}, {}, None, known) == "stg.gg.mydc1"
    assert env({"Meta": {"salt_minion": WEB1}, "Tags": ["stg", "gg"]}, {}, None, known) == "prod.gg.mydc1"
    assert env({"Tags": ["stg", "gg"]}, {}, None, known) == "stg.gg.mydc1"
    # Two datacenters have prod/gg: the node's datacenter decides, else nobody.
    assert env({"Tags": ["prod", "gg"]}, {"Datacenter": "mydc2"}, None, known) == "prod.gg.mydc2"
    assert env({"Tags": ["prod", "gg"]}, {"Datacenter": "dc1"}, None, known) is None
    assert env({"Meta": {"env": "../x"}, "Tags": []}, {}, None, known) is None
    assert saltconsul_fleet.instance_status([]) == "passing"
    assert saltconsul_fleet.instance_status([{"Status": "passing"}, {"Status": "warning"}]) == "warning"
    assert saltconsul_fleet.instance_status([{"Status": "warning"}, {"Status": "critical"}]) == "critical"
