"""
saltext-consul's ext_pillar configuration on a real salt-master: the string
form and a ``consul.*`` profile, unchanged from a saltext-consul master config,
give the minion its pillar (minus saltext-consul's documented bugs, see
docs/migration.md), with one warning naming the native form.
"""

import uuid

import pytest
import salt.version
from conftest import synced_master, synced_minion

MINION = "app01.prod.gg.mydc1.example.com"
PREFIX = f"saltextd-{uuid.uuid4().hex[:6]}"
UNMASK = ["unmask=True"] if salt.version.__saltstack_version__.info >= (3008,) else []

KV = {
    f"{PREFIX}/salt/{MINION}/db/port": "5432",
    f"{PREFIX}/salt/{MINION}/db/hosts": "- dbhost-alpha\n- dbhost-beta",
    f"{PREFIX}/salt/{MINION}/db/bad": "a: b: c",
    f"{PREFIX}/env/prod/tier": "prod-only",
    f"{PREFIX}/env/dev/tier": "dev",
}


@pytest.fixture(scope="module")
def legacy_kv(consul_agent):
    for key, value in KV.items():
        assert consul_agent.api("PUT", f"/v1/kv/{key}", value.encode())[0] == 200
    yield
    consul_agent.api("DELETE", f"/v1/kv/{PREFIX}?recurse")


@pytest.fixture(scope="module")
def legacy_master(salt_factories, consul_agent, state_tree, pillar_tree, legacy_kv):
    host, port = consul_agent.http_addr.split("://", 1)[1].rsplit(":", 1)
    with synced_master(
        salt_factories,
        "saltext-master",
        consul_agent,
        state_tree,
        pillar_tree,
        # what a saltext-consul master config holds; consul: points nowhere
        consul={"address": "http://127.0.0.1:1", "retries": 0},
        my_consul_config={"consul.host": host, "consul.port": int(port)},
        ext_pillar=[
            {"consul": f"my_consul_config root={PREFIX}/salt/%(minion_id)s pillar_root=legacy"},
            {"consul": f"my_consul_config root={PREFIX}/env/%(environment)s pillar_root=legacy/env"},
        ],
    ) as factory:
        yield factory


@pytest.fixture(scope="module")
def legacy_minion(legacy_master, consul_agent):
    # its grains claim the dev environment; the ID says prod
    with synced_minion(legacy_master, consul_agent, MINION, grains={"environment": "dev"}) as factory:
        yield factory


def test_saltext_form_on_a_real_master(legacy_master, legacy_minion):
    cli = legacy_master.salt_cli(timeout=120)
    ret = cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=MINION)
    assert ret.returncode == 0 and ret.data is True, ret
    with open(legacy_master.config["log_file"], encoding="utf-8") as fh:
        log_text = fh.read()
    assert "saltext-consul's configuration form" in log_text
    assert "layers: [" + PREFIX + "/salt/{minion_id}]" in log_text
    # the compile logged no value (the unmasked pillar.get below is logged by Salt itself)
    assert "prod-only" not in log_text and "dbhost-alpha" not in log_text
    ret = cli.run("pillar.get", "legacy", *UNMASK, minion_tgt=MINION)
    assert ret.returncode == 0, ret
    assert ret.data == {
        # exact string (saltext-consul: 5432), YAML list expanded, the bad value
        # kept instead of failing the whole pillar
        "db": {"port": "5432", "hosts": ["dbhost-alpha", "dbhost-beta"], "bad": "a: b: c"},
        # %(environment)s from the minion ID, not the minion's grain
        "env": {"tier": "prod-only"},
    }
