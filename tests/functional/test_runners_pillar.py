"""
``consul_pillar.explain`` and ``consul_pillar.diff`` through Salt's real
runner loader, on a real Consul: the layers, environment and values are
those of the master's ``consul`` ext_pillar (same config, same derivation
from the minion ID, same decoding and merge), checked against what the
ext_pillar itself compiles for the same minion.
"""

import copy
import json
import logging
import pathlib
import uuid

import pytest
import salt.loader
from salt.exceptions import CommandExecutionError

import saltconsul_pillarcache

REPO = pathlib.Path(__file__).resolve().parents[2]
PROD = "web01.prod.gg.mydc1.example.com"
STG = "web01.stg.gg.mydc1.example.com"
TYPE_ONLY = "web05.prod"  # a pattern that gives a type but no group
PATTERNS = [
    {"name": "fqdn", "regex": r"^(?P<host>[^.]+)\.(?P<type>{types})\.(?P<group>[^.]+)\.(?P<datacenter>[^.]+)(?:\..+)?$"},
    {"name": "typeonly", "regex": r"^(?P<host>[^.]+)\.(?P<type>{types})$"},
]
SECRET = "s3cret-" + uuid.uuid4().hex[:8]


def _layers(prefix):
    return [
        f"{prefix}/global",
        f"{prefix}/type/{{type}}",
        f"{prefix}/group/{{type}}.{{group}}",
        f"{prefix}/env/{{postfix}}",
        f"{prefix}/node/{{minion_id}}",
    ]


@pytest.fixture(scope="module")
def master_config(salt_factories, tmp_path_factory):
    pillar_root = tmp_path_factory.mktemp("runner-pillar")
    (pillar_root / "top.sls").write_text("base: {}\n")
    factory = salt_factories.salt_master_daemon(
        "runners-pillar-master",
        overrides={
            "runner_dirs": [str(REPO / "_runners")],
            "utils_dirs": [str(REPO / "_utils")],
            "pillar_dirs": [str(REPO / "_pillar")],
            "pillar_roots": {"base": [str(pillar_root)]},
        },
    )
    opts = copy.deepcopy(factory.config)
    accepted = pathlib.Path(opts["pki_dir"]) / "minions"
    accepted.mkdir(parents=True, exist_ok=True)
    for mid in (PROD, STG, "web02.prod.gg.mydc1.example.com"):
        (accepted / mid).write_text("-----BEGIN PUBLIC KEY-----\n")
    return opts


@pytest.fixture
def prefix(consul_agent):
    prefix = f"rp-{uuid.uuid4().hex[:8]}"
    yield prefix
    consul_agent.api("DELETE", f"/v1/kv/{prefix}?recurse")


def make_opts(master_config, agent, prefix, tmp_path, token=None, **pillar_conf):
    opts = copy.deepcopy(master_config)
    opts["cachedir"] = str(tmp_path / "cache")
    opts["consul"] = {"address": agent.http_addr, "retries": 0, "env": {"patterns": PATTERNS}}
    if token:
        opts["consul"]["token"] = token
    conf = {"layers": _layers(prefix), "revalidate": "always"}
    conf.update(pillar_conf)
    opts["ext_pillar"] = [{"consul": conf}]
    return opts


def runners(opts):
    return salt.loader.runner(opts, utils=salt.loader.utils(opts), context={})


def put(agent, key, value):
    status, _ = agent.api("PUT", f"/v1/kv/{key}", value.encode())
    assert status == 200
    assert agent.api("GET", f"/v1/kv/{key}?raw") == (200, value.encode())


def compile_pillar(opts, minion_id):
    """What the master itself compiles (the ext_pillar through salt.pillar.Pillar)."""
    import salt.pillar

    return salt.pillar.Pillar(copy.deepcopy(opts), {"id": minion_id}, minion_id, "base").compile_pillar()


@pytest.fixture
def seeded(consul_agent, prefix):
    kv = {
        f"{prefix}/global/app/name": "shop",
        f"{prefix}/global/app/pool": "5",
        f"{prefix}/global/ntp": "pool.ntp.org",
        f"{prefix}/type/prod/app/pool": "20",
        f"{prefix}/type/stg/app/pool": "8",
        f"{prefix}/group/prod.gg/app/pool": "50",
        f"{prefix}/group/prod.gg/app/hosts": '["p1", "p2"]',
        f"{prefix}/group/stg.gg/app/debug": "true",
        f"{prefix}/env/prod.gg.mydc1/db/host": "db.prod",
        f"{prefix}/env/stg.gg.mydc1/db/host": "db.stg",
        f"{prefix}/env/prod.gg.mydc1/db/password": SECRET,
        f"{prefix}/env/stg.gg.mydc1/db/password": SECRET + "-stg",
        f"{prefix}/node/{PROD}/app/weight": "3",
        f"{prefix}/global/broken": "{not json",
    }
    for key, value in kv.items():
        put(consul_agent, key, value)
    return kv


def test_explain_names_the_winning_layer_and_matches_the_ext_pillar(
    consul_agent, master_config, prefix, seeded, tmp_path
):
    opts = make_opts(master_config, consul_agent, prefix, tmp_path)
    ret = runners(opts)["consul_pillar.explain"](PROD)

    assert ret["environment"]["postfix"] == "prod.gg.mydc1"
    assert [(l["folder"], l["status"]) for l in ret["layers"]] == [
        (f"{prefix}/global", "read"),
        (f"{prefix}/type/prod", "read"),
        (f"{prefix}/group/prod.gg", "read"),
        (f"{prefix}/env/prod.gg.mydc1", "read"),
        (f"{prefix}/node/{PROD}", "read"),
    ]
    pool = ret["keys"]["app:pool"]
    # Overridden in three layers: the most specific one wins.
    assert pool["from"] == f"{prefix}/group/prod.gg"
    assert pool["value"] == "50"
    assert pool["layers"] == [
        {f"{prefix}/global": "5"},
        {f"{prefix}/type/prod": "20"},
        {f"{prefix}/group/prod.gg": "50"},
    ]
    assert ret["keys"]["app:hosts"]["value"] == ["p1", "p2"]
    assert ret["keys"]["app:weight"]["from"] == f"{prefix}/node/{PROD}"
    # Decode warnings name the key, never the value.
    assert ret["warnings"] == [f"{prefix}/global/broken: does not decode as JSON; kept as the raw string"]
    # Every value explained is the value the ext_pillar compiles.
    pillar = compile_pillar(opts, PROD)
    for path, entry in ret["keys"].items():
        if entry.get("secret"):
            continue
        node = pillar
        for part in path.split(":"):
            node = node[part]
        assert node == entry["value"], path
    assert set(ret["keys"]) == {
        "app:name", "app:pool", "app:hosts", "app:weight", "ntp", "db:host", "db:password", "broken"
    }

    # One key (a:b style) and what lies below it.
    one = runners(opts)["consul_pillar.explain"](PROD, key="app:pool")
    assert list(one["keys"]) == ["app:pool"]
    assert list(runners(opts)["consul_pillar.explain"](PROD, key="db")["keys"]) == ["db:host", "db:password"]
    assert runners(opts)["consul_pillar.explain"](PROD, key="nope:x")["keys"] == {}


def test_explain_skip_reasons(consul_agent, master_config, prefix, seeded, tmp_path):
    opts = make_opts(master_config, consul_agent, prefix, tmp_path)
    ret = runners(opts)["consul_pillar.explain"](TYPE_ONLY)
    layers = {l["template"]: l for l in ret["layers"]}
    assert layers[f"{prefix}/type/{{type}}"]["status"] == "read"
    group = layers[f"{prefix}/group/{{type}}.{{group}}"]
    assert group["status"] == "skipped" and group["folder"] is None
    assert group["reason"] == "{group} unknown: the minion ID (pattern typeonly) has no group"
    assert layers[f"{prefix}/env/{{postfix}}"]["reason"] == (
        "{postfix} unknown: the postfix needs {group}, {datacenter}"
    )
    assert ret["keys"]["app:pool"]["from"] == f"{prefix}/type/prod"

    unsafe = runners(opts)["consul_pillar.explain"]("web01.prod.gg.mydc1..evil")
    node = [l for l in unsafe["layers"] if l["template"].endswith("{minion_id}")][0]
    assert node["status"] == "skipped"
    assert "not path-safe" in node["reason"]

    nothing = runners(opts)["consul_pillar.explain"]("lonely-host")
    assert [l["status"] for l in nothing["layers"]] == ["read", "skipped", "skipped", "skipped", "read"]
    assert nothing["layers"][2]["reason"] == (
        "{type}, {group} unknown: the minion ID matches no hostname pattern (consul:env:patterns)"
    )


def test_explain_replaced_branch(consul_agent, master_config, prefix, tmp_path):
    put(consul_agent, f"{prefix}/global/db/pool", "5")
    put(consul_agent, f"{prefix}/type/prod/db", '"external"')
    opts = make_opts(master_config, consul_agent, prefix, tmp_path, decode="json")
    ret = runners(opts)["consul_pillar.explain"](PROD)
    assert ret["keys"]["db"]["from"] == f"{prefix}/type/prod"
    lost = ret["keys"]["db:pool"]
    assert (lost["from"], lost["replaced_by"], lost["at"]) == (None, f"{prefix}/type/prod", "db")
    assert compile_pillar(opts, PROD)["db"] == "external"


def test_diff_lists_exactly_the_differing_keys(consul_agent, master_config, prefix, seeded, tmp_path):
    opts = make_opts(master_config, consul_agent, prefix, tmp_path)
    ret = runners(opts)["consul_pillar.diff"]("prod.gg.mydc1", "stg.gg.mydc1")
    assert set(ret["differences"]) == {"app:pool", "app:hosts", "app:debug", "db:host", "db:password"}
    assert ret["differences"]["app:pool"] == {
        "prod.gg.mydc1": {"value": "50", "from": f"{prefix}/group/prod.gg"},
        "stg.gg.mydc1": {"value": "8", "from": f"{prefix}/type/stg"},
    }
    assert ret["differences"]["app:debug"]["prod.gg.mydc1"] is None
    assert ret["same"] == 3  # app:name, ntp, broken
    assert ret["a"]["kind"] == "environment" and ret["a"]["minions"] == 2
    # Environment level: the per-minion node layer is not part of it.
    assert f"{prefix}/node/{PROD}" not in ret["a"]["layers"]

    # Two minion IDs: their whole pillars (the node layer too).
    minions = runners(opts)["consul_pillar.diff"](PROD, "web02.prod.gg.mydc1.example.com")
    assert set(minions["differences"]) == {"app:weight"}
    assert minions["a"]["kind"] == "minion"
    same = runners(opts)["consul_pillar.diff"]("prod.gg.mydc1", "prod.gg.mydc1")
    assert same["differences"] == {}


def test_secrets_hidden_unless_asked(consul_agent, master_config, prefix, seeded, tmp_path, caplog):
    put(consul_agent, f"{prefix}/global/vault/unsealed", SECRET + "-folder")
    opts = make_opts(master_config, consul_agent, prefix, tmp_path)
    opts["consul"]["runners"] = {"secret_folders": ["vault/"]}
    funcs = runners(opts)
    with caplog.at_level(logging.DEBUG):
        explained = funcs["consul_pillar.explain"](PROD)
        diffed = funcs["consul_pillar.diff"]("prod.gg.mydc1", "stg.gg.mydc1")
    for ret in (explained, diffed):
        assert SECRET not in json.dumps(ret)
    assert SECRET not in caplog.text
    password = explained["keys"]["db:password"]
    assert password["value"] == "<hidden>" and password["secret"] is True
    assert password["layers"] == [{f"{prefix}/env/prod.gg.mydc1": "<hidden>"}]
    assert explained["keys"]["vault:unsealed"]["value"] == "<hidden>"
    assert explained["keys"]["db:host"]["value"] == "db.prod"  # not secret
    # The diff still says that the secrets differ, without showing them.
    assert diffed["differences"]["db:password"]["prod.gg.mydc1"]["value"] == "<hidden>"

    shown = funcs["consul_pillar.explain"](PROD, show_secrets=True)
    assert shown["keys"]["db:password"]["value"] == SECRET
    assert shown["keys"]["vault:unsealed"]["value"] == SECRET + "-folder"
    shown = funcs["consul_pillar.diff"]("prod.gg.mydc1", "stg.gg.mydc1", show_secrets=True)
    assert shown["differences"]["db:password"]["stg.gg.mydc1"]["value"] == SECRET + "-stg"


def test_cache_fresh_then_stale_in_this_process(consul_agent, master_config, prefix, seeded, tmp_path):
    saltconsul_pillarcache.reset()
    try:
        opts = make_opts(master_config, consul_agent, prefix, tmp_path)
        before = runners(opts)["consul_pillar.explain"](PROD)
        assert "no copy of these layers" in before["cache"]
        assert {l.get("cache") for l in before["layers"]} == {"absent"}
        compile_pillar(opts, PROD)  # the ext_pillar, in this process
        fresh = runners(opts)["consul_pillar.explain"](PROD)
        assert fresh["cache"].startswith("this process's pillar cache: every layer fresh")
        put(consul_agent, f"{prefix}/global/app/name", "shop2")
        stale = runners(opts)["consul_pillar.explain"](PROD)
        assert {l.get("cache") for l in stale["layers"]} == {"stale"}
        assert stale["keys"]["app:name"]["value"] == "shop2"  # read live, not from the cache
        # Another process (salt-run) finds the master's cache files instead.
        saltconsul_pillarcache.reset()
        files = runners(opts)["consul_pillar.explain"](PROD)
        assert files["cache"].startswith("the master's pillar cache files in ")
        assert {l.get("cache") for l in files["layers"]} == {"stale"}
    finally:
        saltconsul_pillarcache.reset()


def _token(agent, name, rules):
    policy = agent.api_json("PUT", "/v1/acl/policy", {"Name": name, "Rules": rules})
    token = agent.api_json("PUT", "/v1/acl/token", {"Description": name, "Policies": [{"ID": policy["ID"]}]})
    return token["SecretID"], token["AccessorID"], policy["ID"]


def test_read_only_token_works_and_a_token_without_read_fails_clearly(
    consul_acl_agent, master_config, tmp_path
):
    agent = consul_acl_agent
    prefix = f"rpacl-{uuid.uuid4().hex[:8]}"
    created = []
    try:
        for key, value in {
            f"{prefix}/global/app/pool": "5",
            f"{prefix}/type/prod/app/pool": "20",
            f"{prefix}/env/prod.gg.mydc1/db/password": SECRET,
        }.items():
            assert agent.api("PUT", f"/v1/kv/{key}", value.encode())[0] == 200
        reader, acc, pol = _token(agent, prefix + "-read", f'key_prefix "{prefix}/" {{ policy = "read" }}')
        created.append((acc, pol))
        ret = runners(make_opts(master_config, agent, prefix, tmp_path, token=reader))["consul_pillar.explain"](PROD)
        assert ret["keys"]["app:pool"] == {
            "value": "20",
            "from": f"{prefix}/type/prod",
            "layers": [{f"{prefix}/global": "5"}, {f"{prefix}/type/prod": "20"}],
        }
        diffed = runners(make_opts(master_config, agent, prefix, tmp_path, token=reader))["consul_pillar.diff"](
            "prod.gg.mydc1", "stg.gg.mydc1"
        )
        assert set(diffed["differences"]) == {"app:pool", "db:password"}
        # Nothing was written with it (it could not) and nothing needed to be.
        assert agent.api("PUT", f"/v1/kv/{prefix}/x", b"1", token=reader)[0] == 403

        other, acc, pol = _token(agent, prefix + "-other", 'key_prefix "elsewhere/" { policy = "read" }')
        created.append((acc, pol))
        for token in (other, "00000000-0000-4000-8000-" + uuid.uuid4().hex[:12]):
            funcs = runners(make_opts(master_config, agent, prefix, tmp_path, token=token))
            for call in (lambda: funcs["consul_pillar.explain"](PROD),
                         lambda: funcs["consul_pillar.diff"]("prod.gg.mydc1", "stg.gg.mydc1")):
                with pytest.raises(CommandExecutionError) as err:
                    call()
                message = str(err.value)
                assert "may not read the pillar layer folders" in message
                assert f"{prefix}/global" in message
                assert token not in message and SECRET not in message
    finally:
        for acc, pol in created:
            agent.api("DELETE", f"/v1/acl/token/{acc}")
            agent.api("DELETE", f"/v1/acl/policy/{pol}")
        agent.api("DELETE", f"/v1/kv/{prefix}?recurse")


def test_bad_arguments_are_refused_before_any_request(consul_agent, master_config, prefix, tmp_path):
    from salt.exceptions import SaltInvocationError

    opts = make_opts(master_config, consul_agent, prefix, tmp_path)
    funcs = runners(opts)
    for call in (
        lambda: funcs["consul_pillar.explain"](PROD, show_secrets="yes"),
        lambda: funcs["consul_pillar.diff"]("prod.gg.mydc1", "stg.gg.mydc1", show_secrets="false"),
        lambda: funcs["consul_pillar.explain"](""),
        lambda: funcs["consul_pillar.diff"]("prod.gg.mydc1", None),
        lambda: funcs["consul_pillar.explain"](PROD, entry=3),
    ):
        with pytest.raises(SaltInvocationError):
            call()
    bad = make_opts(master_config, consul_agent, prefix, tmp_path, layers=["config/{nope}"])
    with pytest.raises(SaltInvocationError, match="unknown field"):
        runners(bad)["consul_pillar.explain"](PROD)
    # No consul ext_pillar entry: the defaults, said so.
    bare = make_opts(master_config, consul_agent, prefix, tmp_path)
    bare["ext_pillar"] = []
    ret = runners(bare)["consul_pillar.explain"](PROD)
    assert "no consul ext_pillar entry" in ret["note"]
    assert ret["layers"][0]["folder"] == "config/global"


def test_env_from_grains_uses_the_masters_cached_grains(consul_agent, master_config, prefix, seeded, tmp_path):
    """With env_from_grains the ext_pillar lets the env grain win; the runner reads the master's cached grains."""
    import salt.cache

    opts = make_opts(master_config, consul_agent, prefix, tmp_path, env_from_grains=True)
    opts["minion_data_cache"] = True
    grains = {"id": PROD, "env": {"type": "stg"}}
    cache = salt.cache.factory(opts)
    cache.store("grains", PROD, grains)  # Salt 3008's layout
    cache.store(f"minions/{PROD}", "data", {"grains": grains, "pillar": {}})  # Salt 3006's
    ret = runners(opts)["consul_pillar.explain"](PROD, key="app:pool")
    assert ret["environment"]["type"] == "stg"
    assert ret["keys"]["app:pool"]["from"] == f"{prefix}/type/stg"
    # The same as the ext_pillar compiles with those grains.
    import salt.pillar

    pillar = salt.pillar.Pillar(copy.deepcopy(opts), grains, PROD, "base").compile_pillar()
    assert pillar["app"]["pool"] == ret["keys"]["app:pool"]["value"] == "8"
