"""
The ``consul`` ext_pillar given saltext-consul's configuration form
(``- consul: my_profile root=... pillar_root=... expand_keys=...``, profile
keys ``consul.host`` ...), compiled by Salt's own pillar machinery against a
real Consul.

The expected pillar is saltext-consul 1.1.0's documented behaviour (every value
``yaml.safe_load``-ed when ``expand_keys``, empty values and folders skipped,
``pillar_root`` split on ``/``), computed here from the same KV, minus the
documented bug fixes (docs/migration.md), each asserted on its own.
"""

import copy
import json
import logging
import os
import subprocess
import sys
import uuid

import pytest
import salt.pillar
import salt.utils.yaml

import saltconsul_pillarcache
import saltconsul_saltext
from conftest import REPO

MINION = "web01.prod.gg.mydc1.example.com"

# relative key -> stored value
KV = {
    "name": "shop",
    "port": "5432",  # YAML: 5432 (an int)
    "zip": "010",  # YAML 1.1: 10
    "time": "12:30",  # YAML 1.1 sexagesimal: 750
    "none": "null",  # YAML: None
    "enabled": "yes",  # YAML 1.1: True
    "ratio": "1e3",  # YAML: "1e3" (a string in YAML 1.1 without a dot)
    "hosts": "- a\n- b",
    "doc": "{a: 1, b: [x]}",
    "multi": "line1\nline2",  # YAML folds it to "line1 line2"
    "url": "http://h:80/x",
    "empty": "",
    "db/pool": "10",
    "db/user": "app",
    "placeholder/": "",
}
BAD = {"bad": "a: b: c"}  # not YAML: saltext-consul fails the whole ext_pillar

# Where we differ from saltext-consul on purpose: YAML scalar coercion.
COERCION_FIXES = {
    "port": "5432",
    "zip": "010",
    "time": "12:30",
    "none": "null",
    "enabled": "yes",     "multi": "line1\nline2",
    "db": {"pool": "10", "user": "app"},
}


def saltext_documented(kv, expand_keys=True):
    """saltext-consul's documented result for ``kv`` (no bad values)."""
    tree = {}
    for key, value in kv.items():
        if key.endswith("/") or value == "":
            continue  # folders and empty values are skipped
        parts = key.split("/")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = salt.utils.yaml.safe_load(value) if expand_keys else value
    return tree


@pytest.fixture(scope="module")
def seeded(consul_agent):
    prefix = f"saltext-{uuid.uuid4().hex[:6]}"
    for key, value in dict(KV, **BAD).items():
        for minion in (MINION, "web02.prod.gg.mydc1.example.com"):
            full = f"{prefix}/salt/{minion}/{key}"
            assert consul_agent.api("PUT", f"/v1/kv/{full}", value.encode())[0] == 200
    yield prefix
    consul_agent.api("DELETE", f"/v1/kv/{prefix}?recurse")


@pytest.fixture
def opts(functional_minion, consul_agent, tmp_path):
    host, port = consul_agent.http_addr.split("://", 1)[1].rsplit(":", 1)
    opts = copy.deepcopy(functional_minion.config)
    # The consul: section points nowhere: the profile's consul.* keys must be used.
    opts["consul"] = {"address": "http://127.0.0.1:1", "retries": 0}
    opts["my_consul"] = {"consul.host": host, "consul.port": int(port), "consul.scheme": "http"}
    opts["cachedir"] = str(tmp_path / "cache")
    opts["pillar_roots"] = {"base": [str(tmp_path / "pillar")]}
    os.makedirs(tmp_path / "pillar")
    (tmp_path / "pillar" / "top.sls").write_text("base: {}\n")
    saltconsul_pillarcache.reset()
    saltconsul_saltext.WARNED.clear()
    return opts


def compile_with(opts, entry, grains=None, minion_id=MINION):
    opts = dict(opts, ext_pillar=[{"consul": entry}], id=minion_id)
    opts["grains"] = grains or {}
    pillar = salt.pillar.get_pillar(opts, opts["grains"], minion_id, saltenv="base")
    return pillar.compile_pillar()


def test_same_as_saltext_minus_coercion(opts, seeded, caplog):
    entry = f"my_consul root={seeded}/salt/%(minion_id)s"
    with caplog.at_level(logging.WARNING):
        got = compile_with(opts, entry)
    got.pop("_errors", None)
    theirs = saltext_documented(KV)
    # everything saltext-consul documents, except the coercions
    for key in set(theirs) | set(got):
        if key in COERCION_FIXES or key in BAD:
            continue
        assert got.get(key) == theirs.get(key), key
    # the fixes: exact strings where YAML would coerce
    for key, value in COERCION_FIXES.items():
        assert got[key] == value
        assert theirs[key] != value
    # one bad value: kept as its string, the rest is there (saltext: no pillar at all)
    assert got["bad"] == "a: b: c"
    assert "bad" in caplog.text
    # one warning pointing at the native form, never a value
    warnings = [r.getMessage() for r in caplog.records if "saltext-consul's configuration form" in r.getMessage()]
    assert len(warnings) == 1
    assert "layers: [" + seeded + "/salt/{minion_id}]" in warnings[0]
    assert "line1" not in caplog.text and "shop" not in caplog.text


def test_expand_keys_false_exact_strings(opts, seeded):
    got = compile_with(opts, f"my_consul root={seeded}/salt/%(minion_id)s expand_keys=false")
    got.pop("_errors", None)
    theirs = saltext_documented(dict(KV, **BAD), expand_keys=False)
    assert got == theirs


def test_pillar_root_nested(opts, seeded):
    got = compile_with(opts, f"profile=my_consul root={seeded}/salt/%(minion_id)s/db pillar_root=apps/consul_data")
    assert got["apps"] == {"consul_data": {"pool": "10", "user": "app"}}


def test_environment_from_the_minion_id_not_grains(opts, seeded, consul_agent):
    key = f"{seeded}/env/prod/level"
    consul_agent.api("PUT", f"/v1/kv/{key}", b"prod-secret")
    consul_agent.api("PUT", f"/v1/kv/{seeded}/env/dev/level", b"dev")
    # the minion's grains claim "dev"; saltext-consul would have believed them
    got = compile_with(opts, f"my_consul root={seeded}/env/%(environment)s", grains={"environment": "dev"})
    assert got["level"] == "prod-secret"
    # a minion whose ID gives no environment gets nothing from that entry (saltext: root "…/None")
    got = compile_with(opts, f"my_consul root={seeded}/env/%(environment)s", minion_id="localhost")
    assert "level" not in got


@pytest.mark.parametrize(
    "entry, message",
    [
        ("my_consul", "root= is required"),
        ("my_consul root=x/%(hostname)s", "unknown placeholder"),
        ("my_consul root=x expand=1", "unknown option 'expand'"),
        ("nosuchprofile root=x", "profile 'nosuchprofile'"),
    ],
)
def test_bad_config_is_a_clear_error(opts, entry, message):
    got = compile_with(opts, entry)
    assert any(message in err for err in got.get("_errors", [])), got.get("_errors")


def test_profile_dc_mapping_by_pillarenv():
    opts = {"pillarenv": "eu-prod", "p": {"consul.dc": {"^dev-.*$": "dev-dc", "^(?P<region>.*)-prod$": "prod-{region}"}}}
    assert saltconsul_saltext.connection(opts, "p") == {"datacenter": "prod-eu"}
    assert saltconsul_saltext.connection(dict(opts, pillarenv="qa"), "p") == {}
    assert saltconsul_saltext.connection({"q": {"consul.port": 8501, "consul.token": "t"}}, "q") == {
        "address": "http://127.0.0.1:8501",
        "token": "t",
    }


SALTEXT_PYTHON = REPO / ".bench-venv-saltext" / "bin" / "python"
SALTEXT_RUN = r"""
import json, sys
import salt.utils.yaml
from saltext.consul.pillar import consul_pillar as mod
job = json.loads(sys.argv[1])
mod.__opts__ = job["opts"]
mod.__salt__ = {"grains.get": lambda key, default=None: job["grains"].get(key, default)}
try:
    out = mod.ext_pillar(job["minion_id"], {}, job["conf"])
    # saltext-consul hands out bytes with expand_keys=false: mark them
    print(json.dumps({"pillar": out}, default=lambda b: {"__bytes__": b.decode("utf-8")}))
except Exception as err:
    print(repr(err)[:300], file=sys.stderr)
    print(json.dumps({"error": type(err).__name__}))
"""


def _saltext(address, conf, grains=None):
    host, port = address.split("://", 1)[1].rsplit(":", 1)
    job = {
        "opts": {"my_consul": {"consul.host": host, "consul.port": int(port)}},
        "grains": grains or {},
        "minion_id": MINION,
        "conf": conf,
    }
    proc = subprocess.run(
        [str(SALTEXT_PYTHON), "-c", SALTEXT_RUN, json.dumps(job)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["stderr"] = proc.stderr[-500:]
    return out


@pytest.fixture(scope="session")
def saltext_venv():
    """
    saltext-consul 1.1.0 in a virtualenv of its own, built by the bench's own
    builder (the same venv `make bench` uses), on the Python the pins are
    resolved for. Other interpreters (the 3006 and 3.13 tiers) compare nothing.
    """
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the comparison with saltext-consul runs in the primary tier (Python 3.11)")
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_pillar", REPO / "bench" / "bench_pillar.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench._saltext_python()  # pylint: disable=protected-access
    assert SALTEXT_PYTHON.exists()


def test_against_saltext_consul_itself(opts, seeded, consul_agent, saltext_venv):
    root = f"{seeded}/salt/%(minion_id)s"
    # With the bad value in the tree saltext-consul fails as a whole ...
    assert "error" in _saltext(consul_agent.http_addr, f"my_consul root={root}")
    # ... so compare on a tree without it
    clean = f"{seeded}/clean"
    for key, value in KV.items():
        consul_agent.api("PUT", f"/v1/kv/{clean}/{MINION}/{key}", value.encode())
    for extra in ("", " expand_keys=false", " pillar_root=a/b"):
        conf = f"my_consul root={clean}/%(minion_id)s{extra}"
        theirs = _saltext(consul_agent.http_addr, conf)
        assert "pillar" in theirs, theirs
        theirs = theirs["pillar"]
        ours = compile_with(opts, conf)
        ours.pop("_errors", None)
        inner_ours, inner_theirs = ours, theirs
        if "pillar_root" in extra:
            inner_ours, inner_theirs = ours["a"]["b"], theirs["a"]["b"]
        if "expand_keys" in extra:
            # saltext-consul's values are bytes there (the sdb bug, saltstack/salt#55360);
            # ours are the same text as str
            assert any(isinstance(v, dict) and set(v) == {"__bytes__"} for v in inner_theirs.values())
            inner_theirs = _unbytes(inner_theirs)
        for key in set(inner_ours) | set(inner_theirs):
            if "expand_keys" not in extra and key in COERCION_FIXES:
                assert inner_ours[key] == COERCION_FIXES[key]
                assert inner_theirs[key] != COERCION_FIXES[key]
                continue
            assert inner_ours.get(key) == inner_theirs.get(key), (extra, key)


def _unbytes(tree):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and set(value) == {"__bytes__"}:
            value = value["__bytes__"]
        elif isinstance(value, dict):
            value = _unbytes(value)
        out[key] = value
    return out
