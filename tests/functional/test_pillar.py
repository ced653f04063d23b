"""
The ``consul`` ext_pillar against a real Consul agent, loaded and compiled by
Salt's own pillar machinery (``salt.pillar.Pillar``) with master opts.
"""

import copy
import logging
import os
import pathlib
import stat
import time
import uuid

import pytest

import localconsul
from conftest import wait_for
import saltconsul_pillarcache

REPO = pathlib.Path(__file__).resolve().parents[2]
PROD = "web01.prod.gg.mydc1.example.com"
PROD2 = "web02.prod.gg.mydc1.example.com"
DEV = "web01.dev.gg.mydc1.example.com"


@pytest.fixture(scope="module")
def master_config(salt_factories, tmp_path_factory):
    """Master opts (the daemon is never started) pointing at this checkout's loader dirs."""
    pillar_root = tmp_path_factory.mktemp("func-pillar")
    (pillar_root / "top.sls").write_text("base: {}\n")
    factory = salt_factories.salt_master_daemon(
        "pillar-func-master",
        overrides={
            "pillar_dirs": [str(REPO / "_pillar")],
            "utils_dirs": [str(REPO / "_utils")],
            "pillar_roots": {"base": [str(pillar_root)]},
        },
    )
    return factory.config


def _layers(prefix):
    return [
        f"{prefix}/global",
        f"{prefix}/type/{{type}}",
        f"{prefix}/group/{{type}}.{{group}}",
        f"{prefix}/node/{{minion_id}}",
    ]


@pytest.fixture
def make_opts(master_config, tmp_path):
    """Master opts for one test: its own cache dir, Consul address and ext_pillar options."""
    saltconsul_pillarcache.reset()

    def _make(agent, prefix, **pillar_conf):
        opts = copy.deepcopy(master_config)
        opts["cachedir"] = str(tmp_path / "cache")
        opts["consul"] = {"address": agent.http_addr, "retries": 0}
        conf = {"layers": _layers(prefix)}
        conf.update(pillar_conf)
        opts["ext_pillar"] = [{"consul": conf}]
        return opts

    yield _make
    saltconsul_pillarcache.reset()


def compile_pillar(opts, minion_id, grains=None):
    """What the master does for a minion's pillar request."""
    import salt.pillar

    grains = dict(grains or {}, id=minion_id)
    pillar = salt.pillar.Pillar(copy.deepcopy(opts), grains, minion_id, "base")
    return pillar.compile_pillar()


def put(agent, key, value):
    status, _ = agent.api("PUT", f"/v1/kv/{key}", value.encode() if isinstance(value, str) else value)
    assert status == 200
    assert agent.api("GET", f"/v1/kv/{key}?raw")[0] == 200


def store_of(opts):
    stores = [s for k, s in saltconsul_pillarcache._STORES.items() if k[2].startswith(opts["cachedir"])]
    assert len(stores) == 1
    return stores[0]


def wait_watch_moved(store, old, timeout=10):
    """Until the watch thread has seen Consul's new index (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.watcher.index not in (None, old):
            return
        time.sleep(0.05)
    raise AssertionError("the index watch did not see the change")


def test_our_module_is_loaded_not_salts_consul_pillar(master_config):
    import salt.loader

    funcs = salt.loader.pillars(copy.deepcopy(master_config), {})
    func = funcs["consul"]
    import sys

    assert sys.modules[func.__module__].__file__ == str(REPO / "_pillar" / "consul.py")
    # Salt 3006/3007 ship their own consul_pillar.py claiming the virtual name
    # "consul" (ours must win over it); Salt 3008 removed it from core.
    import importlib.util

    import salt.version

    spec = importlib.util.find_spec("salt.pillar.consul_pillar")
    if salt.version.__saltstack_version__.major >= 3008:
        assert spec is None
    else:
        import salt.pillar.consul_pillar as salts

        assert salts.__virtualname__ == "consul"


def test_layers_by_environment_from_minion_id(consul_agent, kv_prefix, make_opts):
    put(consul_agent, f"{kv_prefix}/global/app/name", "shop")
    put(consul_agent, f"{kv_prefix}/global/app/pool", "5")
    put(consul_agent, f"{kv_prefix}/global/app/hosts", '["a", "b"]')
    put(consul_agent, f"{kv_prefix}/type/prod/app/pool", "50")
    put(consul_agent, f"{kv_prefix}/type/dev/app/pool", "2")
    put(consul_agent, f"{kv_prefix}/group/prod.gg/app/hosts", '["p1"]')
    put(consul_agent, f"{kv_prefix}/node/{PROD}/app/weight", "3")
    opts = make_opts(consul_agent, kv_prefix)

    prod = compile_pillar(opts, PROD)
    assert "_errors" not in prod, prod.get("_errors")
    # later layers win; dicts merge deeply; lists are replaced, not appended
    assert prod["app"] == {"name": "shop", "pool": "50", "hosts": ["p1"], "weight": "3"}
    dev = compile_pillar(opts, DEV)
    assert dev["app"] == {"name": "shop", "pool": "2", "hosts": ["a", "b"]}
    # a second prod minion shares the env layers but not the first one's node layer
    assert compile_pillar(opts, PROD2)["app"] == {"name": "shop", "pool": "50", "hosts": ["p1"]}


def test_unknown_field_skips_layer_never_widens(consul_agent, kv_prefix, make_opts):
    put(consul_agent, f"{kv_prefix}/global/a", "g")
    # What a widened "{type}/{group}" would read for a minion without a group:
    put(consul_agent, f"{kv_prefix}/type/prod/a", "type-level")
    put(consul_agent, f"{kv_prefix}/group/prod./a", "widened")
    opts = make_opts(
        consul_agent,
        kv_prefix,
        layers=[f"{kv_prefix}/global", f"{kv_prefix}/type/{{type}}", f"{kv_prefix}/group/{{type}}.{{group}}"],
    )
    # no environment in this ID at all: only the literal layer applies
    assert compile_pillar(opts, "lonely-host")["a"] == "g"
    assert "prod" not in compile_pillar(opts, "lonely-host")
    # role is unknown for this ID (host "01" has none): a {role} layer is
    # skipped, not read as "type/" (which holds every type's folder).
    opts = make_opts(consul_agent, kv_prefix, layers=[f"{kv_prefix}/global", f"{kv_prefix}/type/{{role}}"])
    pillar = compile_pillar(opts, "01.prod.gg.mydc1")
    assert pillar["a"] == "g" and "prod" not in pillar
    assert compile_pillar(opts, "web01.prod.gg.mydc1").get("a") == "g"


def test_grains_cannot_choose_the_environment(consul_agent, kv_prefix, make_opts):
    put(consul_agent, f"{kv_prefix}/type/prod/secret", "prod-secret")
    put(consul_agent, f"{kv_prefix}/type/dev/secret", "dev-secret")
    spoofed = {"env": {"type": "dev", "group": "gg", "datacenter": "mydc1"}}
    opts = make_opts(consul_agent, kv_prefix)
    assert compile_pillar(opts, PROD, grains=spoofed)["secret"] == "prod-secret"
    # the operator may opt in (documented as weaker)
    opts = make_opts(consul_agent, kv_prefix, env_from_grains=True)
    assert compile_pillar(opts, PROD, grains=spoofed)["secret"] == "dev-secret"


def test_unsafe_minion_id_never_reaches_a_path(consul_agent, kv_prefix, make_opts):
    put(consul_agent, f"{kv_prefix}/global/a", "g")
    put(consul_agent, f"{kv_prefix}/secret", "outside")
    opts = make_opts(consul_agent, kv_prefix, layers=[f"{kv_prefix}/global", f"{kv_prefix}/node/{{minion_id}}"])
    for bad in ("..", "a/../../x", "../secret"):
        pillar = compile_pillar(opts, bad)
        assert pillar.get("a") == "g" and "secret" not in str(pillar)


def test_exact_values_and_decoding(consul_agent, kv_prefix, make_opts, caplog):
    values = {
        "yes": "yes",
        "octal": "0123",
        "num": "10",
        "float": "1.50",
        "null": "null",
        "empty": "",
        "spaces": "  padded  ",
        "obj": '{"k": [1, "2"]}',
        "arr": ' ["x", 1]',
        "broken": '{"password": "hunter2-not-logged"',
        "yamlish": "- a\n- b",
    }
    for key, value in values.items():
        put(consul_agent, f"{kv_prefix}/global/v/{key}", value)
    put(consul_agent, f"{kv_prefix}/global/v/nothing", b"")
    opts = make_opts(consul_agent, kv_prefix)
    with caplog.at_level(logging.DEBUG):
        got = compile_pillar(opts, PROD)["v"]
    expected = dict(values, obj={"k": [1, "2"]}, arr=["x", 1])
    expected["nothing"] = ""
    assert got == expected
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"{kv_prefix}/global/v/broken" in w for w in warnings)
    assert "hunter2" not in caplog.text

    # per-layer decode modes
    saltconsul_pillarcache.reset()
    opts = make_opts(
        consul_agent,
        kv_prefix,
        layers=[{"path": f"{kv_prefix}/global", "decode": "json"}],
        watch_prefix=kv_prefix,
    )
    got = compile_pillar(opts, PROD)["v"]
    assert got["num"] == 10 and got["null"] is None and got["yes"] == "yes"  # not JSON: kept raw
    opts = make_opts(consul_agent, kv_prefix, layers=[{"path": f"{kv_prefix}/global", "decode": "raw"}])
    assert compile_pillar(opts, PROD)["v"]["obj"] == '{"k": [1, "2"]}'
    opts = make_opts(consul_agent, kv_prefix, layers=[{"path": f"{kv_prefix}/global", "decode": "yaml"}])
    got = compile_pillar(opts, PROD)["v"]
    assert got["yes"] is True and got["yamlish"] == ["a", "b"]


def test_leaf_and_folder_keep_both(consul_agent, kv_prefix, make_opts):
    put(consul_agent, f"{kv_prefix}/global/db", "primary")
    put(consul_agent, f"{kv_prefix}/global/db/pool", "5")
    put(consul_agent, f"{kv_prefix}/global/cfg", '{"a": 1}')
    put(consul_agent, f"{kv_prefix}/global/cfg/b", "2")
    put(consul_agent, f"{kv_prefix}/global/emptyfolder/", b"")
    opts = make_opts(consul_agent, kv_prefix)
    got = compile_pillar(opts, PROD)
    assert got["db"] == {"_value": "primary", "pool": "5"}
    assert got["cfg"] == {"_value": {"a": 1}, "b": "2"}
    assert got["emptyfolder"] == {}
    opts = make_opts(consul_agent, kv_prefix, leaf_key="__self__", pillar_root="kv")
    assert compile_pillar(opts, PROD)["kv"]["db"] == {"__self__": "primary", "pool": "5"}


def test_shared_cache_and_request_counts(consul_agent, kv_prefix, make_opts):
    put(consul_agent, f"{kv_prefix}/global/a", "1")
    put(consul_agent, f"{kv_prefix}/type/prod/b", "2")
    opts = make_opts(consul_agent, kv_prefix)
    minions = [f"web{i:02d}.prod.gg.mydc1.example.com" for i in range(10)]
    for minion in minions:
        assert compile_pillar(opts, minion)["b"] == "2"
    store = store_of(opts)
    cold = store.stats()
    # one index request to arm the watch, then one txn per minion (its own node layer)
    assert cold["requests"] == len(minions)
    for minion in minions:
        assert compile_pillar(opts, minion)["a"] == "1"
    # nothing changed: no request at all (the watch thread holds one blocking query)
    assert store.stats()["requests"] == cold["requests"]

    # a change is visible on the next compile once Consul has answered the watch
    old = store.watcher.index
    put(consul_agent, f"{kv_prefix}/global/a", "changed")
    wait_watch_moved(store, old)
    assert compile_pillar(opts, minions[0])["a"] == "changed"
    assert store.stats()["requests"] == cold["requests"] + 1  # one txn for every layer


def test_revalidate_always_sees_a_change_at_once(consul_agent, kv_prefix, make_opts):
    put(consul_agent, f"{kv_prefix}/global/a", "1")
    opts = make_opts(consul_agent, kv_prefix, revalidate="always")
    assert compile_pillar(opts, PROD)["a"] == "1"
    store = store_of(opts)
    before = store.stats()
    assert compile_pillar(opts, PROD)["a"] == "1"
    assert store.stats()["watch_requests"] == before["watch_requests"] + 1
    assert store.stats()["requests"] == before["requests"]
    put(consul_agent, f"{kv_prefix}/global/a", "2")
    assert compile_pillar(opts, PROD)["a"] == "2"
    consul_agent.api("DELETE", f"/v1/kv/{kv_prefix}/global/a")
    assert consul_agent.api("GET", f"/v1/kv/{kv_prefix}/global/a")[0] == 404
    assert "a" not in compile_pillar(opts, PROD)


def test_bad_options_are_pillar_errors(consul_agent, kv_prefix, make_opts):
    for conf in ({"decode": "xml"}, {"layers": ["a/{nope}"]}, {"layers": ["../x"]}, {"bogus": 1}):
        opts = make_opts(consul_agent, kv_prefix, **conf)
        errors = compile_pillar(opts, PROD).get("_errors")
        assert errors and "Failed to load ext_pillar consul" in errors[0], conf


# --------------------------------------------------------------------------- outages


@pytest.fixture
def own_consul(tmp_path):
    """A Consul of this test's own: stopping it disturbs nobody."""
    agent = localconsul.LocalConsul("pillar-outage", log_dir=str(tmp_path))
    agent.start()
    yield agent
    agent.cleanup()


def test_outage_serves_last_good_marked_stale(own_consul, make_opts, caplog):
    prefix = f"p{uuid.uuid4().hex[:6]}"
    put(own_consul, f"{prefix}/global/db/password", "s3cret-value")
    put(own_consul, f"{prefix}/type/prod/db/pool", "9")
    opts = make_opts(own_consul, prefix)
    fresh = compile_pillar(opts, PROD)
    assert fresh["db"] == {"password": "s3cret-value", "pool": "9"} and "consul_pillar" not in fresh

    cache_dir = os.path.join(opts["cachedir"], "consul_pillar")
    files = os.listdir(cache_dir)
    assert files
    for name in files:
        assert stat.S_IMODE(os.stat(os.path.join(cache_dir, name)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cache_dir).st_mode) == 0o700

    own_consul.stop()
    # a fresh process (another master worker, or a restarted master) has only the files
    saltconsul_pillarcache.reset()
    with caplog.at_level(logging.DEBUG):
        stale = compile_pillar(opts, PROD)
        assert "_errors" not in stale, stale.get("_errors")
        assert stale["db"] == fresh["db"]
        assert stale["consul_pillar"]["stale"] is True
        assert isinstance(stale["consul_pillar"]["age"], int) and stale["consul_pillar"]["age"] >= 0
        assert any("serving the last good pillar" in r.getMessage() for r in caplog.records)

        # never seen: no last good copy of its node layer -> a clear pillar error
        never = compile_pillar(opts, "db09.prod.gg.mydc1.example.com")
        assert "no last good copy" in never["_errors"][0]
        assert "db" not in never
    assert "s3cret-value" not in caplog.text

    # on_outage: fail refuses even with a last good copy
    opts = make_opts(own_consul, prefix, on_outage="fail")
    failed = compile_pillar(opts, PROD)
    assert "on_outage is 'fail'" in failed["_errors"][0]

    # Consul back: fresh again, no marker (a new agent: empty, so the data is gone)
    own_consul.start()
    put(own_consul, f"{prefix}/global/db/password", "rotated")
    opts = make_opts(own_consul, prefix)
    back = compile_pillar(opts, PROD)
    assert back["db"] == {"password": "rotated"} and "consul_pillar" not in back


def test_equal_index_from_a_rebuilt_consul_is_not_trusted(own_consul, make_opts):
    """
    A Consul rebuilt from scratch can reach the very index a cached layer was
    fetched at, with other data. After an outage nothing cached is trusted as
    fresh until it is fetched again.
    """
    prefix = f"p{uuid.uuid4().hex[:6]}"
    put(own_consul, f"{prefix}/global/db/password", "before")
    opts = make_opts(own_consul, prefix, revalidate="always")
    assert compile_pillar(opts, PROD)["db"] == {"password": "before"}
    own_consul.stop()
    assert compile_pillar(opts, PROD)["consul_pillar"]["stale"] is True
    own_consul.start()
    put(own_consul, f"{prefix}/global/db/password", "after")
    store = store_of(opts)
    # Make the coincidence certain: every cached layer claims the new agent's index.
    current = store.watcher.query()
    for layer in store.layers.values():
        layer.index = current
    assert compile_pillar(opts, PROD)["db"] == {"password": "after"}


def test_empty_prefix_then_keys_appear(consul_agent, kv_prefix, make_opts):
    """Consul answers 404 for an empty prefix: the first keys written must still show up."""
    opts = make_opts(consul_agent, kv_prefix)
    empty = compile_pillar(opts, PROD)
    # Only the master-derived environment (env_key, on by default), no KV data yet.
    assert empty.pop("consul_env")["postfix"] == "prod.gg.mydc1"
    assert empty == {}
    assert compile_pillar(make_opts(consul_agent, kv_prefix, env_key=False), PROD) == {}
    put(consul_agent, f"{kv_prefix}/global/a", "1")
    assert compile_pillar(opts, PROD)["a"] == "1"


def test_empty_prefix_is_watched_like_any_other(consul_agent, kv_prefix, make_opts):
    """
    Consul's 404 for an empty prefix carries an index: the watch blocks on it,
    so compiles of an empty prefix make no request either, and the first key
    written under it wakes the watch and is seen.
    """
    opts = make_opts(consul_agent, kv_prefix)
    assert compile_pillar(opts, PROD).get("a") is None
    store = store_of(opts)
    assert store.watcher.index > 0, store.watcher.index  # armed on the 404's index
    # The compile's plain index request, then the watch thread's blocking query (60 s wait).
    assert wait_for(lambda: store.stats()["watch_requests"] >= 2, 10), store.stats()
    before = store.stats()
    for _ in range(5):
        assert compile_pillar(opts, PROD).get("a") is None
    assert store.stats() == before  # nothing asked: the watch holds
    old = store.watcher.index
    put(consul_agent, f"{kv_prefix}/global/a", "1")
    wait_watch_moved(store, old)
    assert compile_pillar(opts, PROD)["a"] == "1"
    assert store.stats()["requests"] == before["requests"] + 1  # one txn for the layers
