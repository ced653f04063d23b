"""
A minion that claims another environment: its ID says dev
(``web01.dev.gg.mydc1.example.com``), but its grains say prod and its own
config sets ``consul:env:type: prod`` (the minion-side "specified in Salt"
override). With a real salt-master (ext_pillar ``consul`` with ``env_key:
consul_env``), a real minion and a real Consul of this module's own:

* it gets no pillar from prod (prod's secret never reaches it), only dev's;
* ``state.apply consul.register`` registers its services tagged dev (the
  environment the master derives from its authenticated ID), not prod, so
  prod's discovery never finds it.

The opposite direction (a prod minion whose grains claim dev still gets prod
pillar) is in ``test_pillar_outage.py``.
"""

import pytest

from conftest import UNMASK, consul_opts, own_consul, synced_master, synced_minion

SPOOF = "web01.dev.gg.mydc1.example.com"
CLAIM = {"type": "prod", "group": "gg", "datacenter": "mydc1", "postfix": "prod.gg.mydc1"}

KV = {
    "config/global/spoofdemo/name": "shop",
    "config/type/prod/spoofdemo/db_password": "prod-only-s3cret",
    "config/type/prod/spoofdemo/pool": "50",
    "config/type/dev/spoofdemo/pool": "2",
}
REGISTER_PILLAR = """
consul_register:
  services:
    spoofweb:
      port: 8080
      tags: [http]
      checks:
        - name: alive
          ttl: 120s
          status: passing
"""


@pytest.fixture(scope="module")
def spoof_consul(tmp_path_factory):
    with own_consul("spoof", tmp_path_factory, kv=KV) as agent:
        yield agent


@pytest.fixture(scope="module")
def spoof_master(salt_factories, spoof_consul, state_tree, tmp_path_factory):
    pillar_root = tmp_path_factory.mktemp("spoof-pillar")
    (pillar_root / "top.sls").write_text("base:\n  '*':\n    - register\n")
    (pillar_root / "register.sls").write_text(REGISTER_PILLAR)
    with synced_master(salt_factories, "spoof-master", spoof_consul, state_tree, pillar_root) as factory:
        yield factory


@pytest.fixture(scope="module")
def spoofer(spoof_master, spoof_consul):
    # The claim: prod in its own grains and in its own consul:env config.
    with synced_minion(
        spoof_master, spoof_consul, SPOOF, consul=consul_opts(spoof_consul, env={"type": "prod"}), grains={"env": CLAIM}
    ) as factory:
        yield factory


def _call(minion, *args):
    ret = minion.salt_call_cli(timeout=120).run(*args)
    assert ret.returncode == 0, ret
    return ret.data


def test_claimed_environment_gets_no_pillar_and_cannot_register(spoofer, spoof_consul):
    # The claim is in effect in the minion's own grains...
    assert _call(spoofer, "grains.get", "env:type") == "prod"
    # ...but the master derives the environment from the authenticated ID, and
    # consul.env (what formulas, states and discovery use) follows the master.
    env = _call(spoofer, "consul.env")
    assert (env["type"], env["sources"]["type"]) == ("dev", "master")
    assert _call(spoofer, "saltutil.refresh_pillar", "wait=True") is True
    pillar = _call(spoofer, "pillar.items", *UNMASK)
    assert pillar["consul_env"]["type"] == "dev" and pillar["consul_env"]["postfix"] == "dev.gg.mydc1"
    assert pillar["consul_env"]["minion_id"] == SPOOF
    assert pillar["spoofdemo"] == {"name": "shop", "pool": "2"}
    assert "prod-only-s3cret" not in str(pillar)

    data = _call(spoofer, "state.apply", "consul.register")
    assert all(state["result"] is True for state in data.values()), data
    services = spoof_consul.api_json("GET", "/v1/agent/services")
    mine = services[f"spoofweb@{SPOOF}"]
    assert mine["Tags"] == ["http", "dev", "gg"]
    assert mine["Meta"]["env"] == "dev.gg.mydc1" and mine["Meta"]["salt_minion"] == SPOOF
    # prod's discovery (by the environment tags) does not see it; dev's does.
    assert spoof_consul.api_json("GET", "/v1/health/service/spoofweb?tag=prod") == []
    dev = spoof_consul.api_json("GET", "/v1/health/service/spoofweb?tag=dev")
    assert [entry["Service"]["ID"] for entry in dev] == [f"spoofweb@{SPOOF}"]
    # A re-run changes nothing.
    again = _call(spoofer, "state.apply", "consul.register")
    assert [state["changes"] for state in again.values()] == [{} for _ in again]
