"""
Cache ``consul`` on real masters (``cache: consul``): grains and mine data
live in Consul and survive a master restart with an empty local cache dir;
two masters sharing one Consul, with a minion of both, target by grain alike.
"""

import os
import pathlib
import shutil
import time
import uuid

import pytest
import salt.version
from conftest import REPO, consul_opts, synced_master, synced_minion, wait_for

PREFIX = f"cached-{uuid.uuid4().hex[:6]}"
MINION = "cache01.prod.gg.mydc1.example.com"
MINION2 = "cache02.prod.gg.mydc1.example.com"


def cache_config(agent):
    return {
        "cache": "consul",
        # The master loads its cache driver at start, before any sync.
        "cache_dirs": [str(REPO / "_cache")],
        "consul": consul_opts(agent, cache={"prefix": PREFIX}),
        "ext_pillar": [],
        "worker_threads": 2,  # as synced_master (tests/conftest.py)
    }


# Salt 3008 keeps grains and mine in banks of their own; 3006 under minions/<id>.
SALT_3008 = salt.version.__saltstack_version__.info >= (3008,)


def bank_key(what, minion):
    if SALT_3008:
        return f"{what}/{minion}"
    return f"minions/{minion}/{'data' if what == 'grains' else 'mine'}"


def stored(agent, what, minion):
    """Whether Consul holds ``what`` (grains, mine) of ``minion``."""
    return agent.api("GET", f"/v1/kv/{PREFIX}/{bank_key(what, minion)}")[0] == 200


def on_disk(master, what, minion):
    return os.path.exists(os.path.join(master.config["cachedir"], bank_key(what, minion) + ".p"))


@pytest.fixture(scope="module")
def cache_kv(consul_agent):
    yield
    consul_agent.api("DELETE", f"/v1/kv/{PREFIX}?recurse")


@pytest.fixture(scope="module")
def master_a(salt_factories, consul_agent, state_tree, pillar_tree, cache_kv):
    with synced_master(
        salt_factories, "cache-master-a", consul_agent, state_tree, pillar_tree, **cache_config(consul_agent)
    ) as factory:
        yield factory


@pytest.fixture(scope="module")
def master_b(salt_factories, consul_agent, master_a):
    """A second master on the same Consul; the minion's modules come from master_a."""
    factory = salt_factories.salt_master_daemon(
        "cache-master-b", overrides=dict(cache_config(consul_agent), log_level_logfile="debug")
    )
    # Salt's multi-master: every master holds the same key pair (else the
    # minion refuses the second master's key as "changed").
    pki = pathlib.Path(factory.config["pki_dir"])
    pki.mkdir(parents=True, exist_ok=True)
    for name in ("master.pem", "master.pub"):
        shutil.copy2(os.path.join(master_a.config["pki_dir"], name), pki / name)
    with factory.started():
        yield factory


@pytest.fixture(scope="module")
def minion(master_a, consul_agent):
    with synced_minion(master_a, consul_agent, MINION, grains={"cachetest": "restart"}) as factory:
        yield factory


def target(master, grain):
    ret = master.salt_cli(timeout=60).run("-G", grain, "test.ping", minion_tgt="")
    return set(ret.data) if isinstance(ret.data, dict) else set()


def test_grains_and_mine_survive_restart_with_empty_cache_dir(master_a, minion, consul_agent):
    call = minion.salt_call_cli(timeout=120)
    assert call.run("saltutil.refresh_pillar", "wait=True").data is True  # the master stores grains
    ret = call.run("mine.send", "test.echo", "mined-value")
    assert ret.returncode == 0, ret
    assert wait_for(lambda: stored(consul_agent, "grains", MINION))
    assert wait_for(lambda: stored(consul_agent, "mine", MINION))
    cachedir = master_a.config["cachedir"]
    # nothing of it on the master's disk
    assert not on_disk(master_a, "grains", MINION)
    assert not on_disk(master_a, "mine", MINION)
    assert target(master_a, "cachetest:restart") == {MINION}

    master_a.terminate()
    shutil.rmtree(cachedir)
    master_a.start()
    # straight from Consul: the minion has sent nothing since (mine data is only
    # ever sent by mine.send/mine.update)
    run = master_a.salt_run_cli(timeout=60)
    ret = run.run("mine.get", MINION, "test.echo")
    assert ret.returncode == 0, ret
    assert ret.data == {MINION: "mined-value"}
    ret = run.run("cache.grains", tgt=MINION)
    assert ret.data[MINION]["cachetest"] == "restart"
    assert wait_for(lambda: target(master_a, "cachetest:restart") == {MINION}, timeout=60)
    assert not on_disk(master_a, "grains", MINION)


@pytest.fixture(scope="module")
def minion_of_both(master_a, master_b, consul_agent):
    masters = [f"127.0.0.1:{m.config['ret_port']}" for m in (master_a, master_b)]
    factory = master_a.salt_minion_daemon(
        MINION2,
        overrides={
            "master": masters,
            "consul": consul_opts(consul_agent),
            "grains": {"cachetest": "two-masters"},
            "log_level_logfile": "debug",
        },
    )
    with factory.started():
        yield factory


def test_two_masters_target_by_grain_alike(master_a, master_b, minion_of_both, consul_agent):
    call = minion_of_both.salt_call_cli(timeout=120)
    assert call.run("saltutil.refresh_pillar", "wait=True").data is True
    assert wait_for(lambda: stored(consul_agent, "grains", MINION2))
    # one copy in Consul, read by both masters
    deadline = time.monotonic() + 60
    seen = (set(), set())
    while time.monotonic() < deadline:
        seen = (target(master_a, "cachetest:two-masters"), target(master_b, "cachetest:two-masters"))
        if seen == ({MINION2}, {MINION2}):
            break
        time.sleep(1)
    assert seen == ({MINION2}, {MINION2})
    for master in (master_a, master_b):
        assert not on_disk(master, "grains", MINION2)
    # a grain changed through one master is seen by the other at once
    # (a new grain: grains set in the minion config win over grains.setval)
    assert target(master_b, "cachetest2:changed") == set()
    assert call.run("grains.setval", "cachetest2", "changed").returncode == 0
    assert call.run("saltutil.refresh_pillar", "wait=True").data is True
    assert wait_for(lambda: target(master_b, "cachetest2:changed") == {MINION2}, timeout=60)
    assert target(master_a, "cachetest2:changed") == {MINION2}
