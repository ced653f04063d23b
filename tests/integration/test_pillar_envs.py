"""
The ``consul`` ext_pillar on a real salt-master with two real minions from
different environments running the same SLS (``pillar_demo``), which renders a
config file from pillar.
"""

import os

import pytest

from conftest import UNMASK

PROD = "web01.prod.gg.mydc1.example.com"
DEV = "web01.dev.gg.mydc1.example.com"

KV = {
    "config/global/pillar_demo/name": "shop",
    "config/global/pillar_demo/db/pool_size": "10",
    "config/global/pillar_demo/db/hosts": '["db-global"]',
    "config/type/prod/pillar_demo/db/pool_size": "50",
    "config/type/prod/pillar_demo/db/hosts": '["db01.prod", "db02.prod"]',
    "config/type/dev/pillar_demo/db/pool_size": "2",
    f"config/node/{PROD}/pillar_demo/name": "shop-web01",
}


def put(agent, key, value):
    assert agent.api("PUT", f"/v1/kv/{key}", value.encode())[0] == 200
    assert agent.api("GET", f"/v1/kv/{key}?raw") == (200, value.encode())


@pytest.fixture(scope="module")
def demo_kv(consul_agent):
    for key, value in KV.items():
        put(consul_agent, key, value)
    yield
    for key in KV:
        consul_agent.api("DELETE", f"/v1/kv/{key}")


def conf_path(minion):
    return os.path.join(minion.config["cachedir"], "pillar_demo", "app.conf")


def apply_demo(salt_cli, minion):
    ret = salt_cli.run("state.apply", "pillar_demo", minion_tgt=minion.id)
    assert ret.returncode == 0, ret
    states = ret.data
    assert isinstance(states, dict) and all(s["result"] is True for s in states.values()), states
    with open(conf_path(minion), encoding="utf-8") as fh:
        return fh.read()


def refresh(salt_cli, minion):
    ret = salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=minion.id)
    assert ret.returncode == 0 and ret.data is True, ret


def test_same_sls_different_environments(salt_cli, prod_minion, dev_minion, consul_agent, demo_kv):
    for minion in (prod_minion, dev_minion):
        refresh(salt_cli, minion)

    prod = apply_demo(salt_cli, prod_minion)
    assert "name = shop-web01\n" in prod
    assert "pool_size = 50\n" in prod
    assert "hosts = db01.prod,db02.prod\n" in prod
    assert "stale = false\n" in prod

    dev = apply_demo(salt_cli, dev_minion)
    assert "name = shop\n" in dev
    assert "pool_size = 2\n" in dev
    assert "hosts = db-global\n" in dev

    # exact strings: "50" is not turned into an int, the JSON array is a list
    ret = salt_cli.run("pillar.get", "pillar_demo", *UNMASK, minion_tgt=prod_minion.id)
    assert ret.data["db"] == {"pool_size": "50", "hosts": ["db01.prod", "db02.prod"]}


def test_kv_change_visible_after_refresh_pillar(salt_cli, prod_minion, dev_minion, consul_agent, demo_kv):
    refresh(salt_cli, prod_minion)
    assert salt_cli.run("pillar.get", "pillar_demo:db:pool_size", *UNMASK, minion_tgt=prod_minion.id).data == "50"

    put(consul_agent, "config/type/prod/pillar_demo/db/pool_size", "64")
    try:
        refresh(salt_cli, prod_minion)
        ret = salt_cli.run("pillar.get", "pillar_demo:db:pool_size", *UNMASK, minion_tgt=prod_minion.id)
        assert ret.data == "64"
        assert "pool_size = 64\n" in apply_demo(salt_cli, prod_minion)
        # the other environment did not move
        refresh(salt_cli, dev_minion)
        assert salt_cli.run("pillar.get", "pillar_demo:db:pool_size", *UNMASK, minion_tgt=dev_minion.id).data == "2"
    finally:
        put(consul_agent, "config/type/prod/pillar_demo/db/pool_size", KV["config/type/prod/pillar_demo/db/pool_size"])
