"""
The ``consul`` ext_pillar on a master of its own, with a Consul of its own
(stopping it must not disturb the shared session agent): a minion whose grains
claim another environment, Consul outages (last good pillar, marked stale) and
a never-seen minion during an outage (a clear pillar error; no highstate).
"""

import os

import pytest
from conftest import UNMASK, consul_opts, own_consul, synced_master, synced_minion

SPOOF = "web02.prod.gg.mydc1.example.com"
NEVER_SEEN = "web09.prod.gg.mydc1.example.com"

KV = {
    "config/global/pillar_demo/name": "shop",
    "config/global/pillar_demo/db/pool_size": "10",
    "config/type/prod/pillar_demo/db/pool_size": "50",
    "config/type/prod/pillar_demo/db/password": "prod-only-s3cret",
    "config/type/dev/pillar_demo/db/pool_size": "2",
}


@pytest.fixture(scope="module")
def outage_consul(tmp_path_factory):
    with own_consul("outage", tmp_path_factory, kv=KV) as agent:
        yield agent


@pytest.fixture(scope="module")
def outage_master(salt_factories, outage_consul, state_tree, pillar_tree):
    with synced_master(salt_factories, "outage-master", outage_consul, state_tree, pillar_tree) as factory:
        yield factory


@pytest.fixture(scope="module")
def spoof_minion(outage_master, outage_consul):
    """A prod minion (by ID) whose grains claim dev."""
    with synced_minion(
        outage_master,
        outage_consul,
        SPOOF,
        grains={"env": {"type": "dev", "group": "gg", "datacenter": "mydc1", "postfix": "dev.gg.mydc1"}},
    ) as factory:
        yield factory


def _call(minion, *args):
    return minion.salt_call_cli(timeout=120).run(*args)


def test_grains_claiming_another_env_get_the_ids_env(spoof_minion):
    assert _call(spoof_minion, "grains.get", "env:type").data == "dev"
    assert _call(spoof_minion, "saltutil.refresh_pillar", "wait=True").data is True
    demo = _call(spoof_minion, "pillar.get", "pillar_demo", *UNMASK).data
    assert demo["db"]["pool_size"] == "50"
    assert demo["db"]["password"] == "prod-only-s3cret"
    ret = _call(spoof_minion, "state.apply", "pillar_demo")
    assert ret.returncode == 0, ret
    with open(os.path.join(spoof_minion.config["cachedir"], "pillar_demo", "app.conf"), encoding="utf-8") as fh:
        assert "pool_size = 50\n" in fh.read()


def test_consul_down_serves_last_good_marked_stale(outage_master, outage_consul, spoof_minion):
    assert _call(spoof_minion, "saltutil.refresh_pillar", "wait=True").data is True
    fresh = _call(spoof_minion, "pillar.items", *UNMASK).data
    assert "consul_pillar" not in fresh and fresh["pillar_demo"]["db"]["pool_size"] == "50"

    # the last good copies on the master: mode 0600
    cache_dir = os.path.join(outage_master.config["cachedir"], "consul_pillar")
    names = [n for n in os.listdir(cache_dir) if n.endswith(".p")]
    assert names
    for name in names:
        assert os.stat(os.path.join(cache_dir, name)).st_mode & 0o777 == 0o600

    outage_consul.stop()
    assert _call(spoof_minion, "saltutil.refresh_pillar", "wait=True").data is True
    stale = _call(spoof_minion, "pillar.items", *UNMASK).data
    assert stale["consul_pillar"]["stale"] is True
    assert stale["consul_pillar"]["age"] >= 0
    assert stale["pillar_demo"] == fresh["pillar_demo"]
    assert "_errors" not in stale
    ret = _call(spoof_minion, "state.apply", "pillar_demo")
    assert ret.returncode == 0, ret
    with open(os.path.join(spoof_minion.config["cachedir"], "pillar_demo", "app.conf"), encoding="utf-8") as fh:
        assert "stale = true\n" in fh.read()
    # the master logged the outage, and our code and its HTTP stack never a
    # value (Salt's own event debug lines carry job returns, pillar.get's included)
    ours = ("[saltconsul", "[salt.loaded.ext.pillar.consul", "[httpx", "[httpcore")
    with open(outage_master.config["log_file"], encoding="utf-8", errors="replace") as fh:
        lines = [line for line in fh if any(tag in line for tag in ours)]
    assert any("serving the last good pillar" in line for line in lines)
    assert not [line for line in lines if "prod-only-s3cret" in line]


def test_never_seen_minion_gets_a_clear_pillar_error(outage_master, outage_consul, spoof_minion):
    assert outage_consul.proc is None  # still down (previous test)
    show = outage_master.salt_run_cli(timeout=120).run("pillar.show_pillar", NEVER_SEEN)
    assert any("no last good copy" in err for err in show.data.get("_errors", [])), show.data

    # Started during the outage, so no sync (nothing it needs is synced anyway).
    factory = outage_master.salt_minion_daemon(NEVER_SEEN, overrides={"consul": consul_opts(outage_consul)})
    with factory.started():
        items = _call(factory, "pillar.items", *UNMASK).data
        errors = items.get("_errors") or []
        assert any("Failed to load ext_pillar consul" in e and "no last good copy" in e for e in errors), items
        assert "pillar_demo" not in items
        ret = _call(factory, "state.apply", "pillar_demo")
        assert ret.returncode != 0
        assert "Pillar failed to render" in str(ret.data)
        assert not os.path.exists(os.path.join(factory.config["cachedir"], "pillar_demo", "app.conf"))
