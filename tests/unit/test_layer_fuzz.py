"""
Pillar layer templates and minion IDs, fuzzed with hypothesis, through the
ext_pillar's own layer rendering (``_pillar/consul.py``: ``parse_config``,
``environment``, ``layer_roots``). Pure logic: no Consul is needed to know
which KV folders a compile would read.

Whatever the template, minion ID, grains or ``consul:env`` config, a layer
either is refused when the config is parsed (a clear SaltInvocationError),
or is skipped for that minion, or renders to a KV folder that:

* has no leading ``/`` and no empty, ``.`` or ``..`` segment;
* keeps the template's literal text and segment count, every field replaced
  by a non-empty value without ``/`` (so never a wider folder, such as
  ``config/type`` for ``config/type/{type}``, and never a sibling's);
* uses only values the master derives from the minion ID (grains count only
  with ``env_from_grains: true``), each a DNS label, a dotted postfix of
  labels, or a path-safe minion ID.
"""

import importlib.util
import pathlib
import re

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from salt.exceptions import SaltInvocationError

import saltconsul_kvtree

REPO = pathlib.Path(__file__).resolve().parents[2]
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIELDS = saltconsul_kvtree.TEMPLATE_FIELDS
LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


@pytest.fixture(scope="module")
def pillar():
    """The ext_pillar module, imported from this checkout under a unique name."""
    spec = importlib.util.spec_from_file_location("saltconsul_ext_pillar_fuzzed", REPO / "_pillar" / "consul.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Template pieces: literal text (including hostile bits) and {field} references.
literal = st.one_of(
    st.sampled_from(["config", "type", "env", "a.b", "..", ".", "", "/", "//", "x..y", "{", "}", "{{", "%2e%2e", " "]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8),
)
field = st.sampled_from([f"{{{f}}}" for f in FIELDS] + ["{nope}", "{}", "{type"])
templates = st.lists(st.one_of(literal, field), min_size=1, max_size=8).map("".join)
segment_templates = st.lists(
    st.lists(st.one_of(st.sampled_from(["config", "env", "x"]), field), min_size=1, max_size=3).map(".".join),
    min_size=1,
    max_size=4,
).map("/".join)

minion_ids = st.one_of(
    st.sampled_from(
        [
            "web01.prod.gg.mydc1.example.com",
            "mydc1-dev-gg-db01",
            "..",
            "../../etc",
            "a/../../b",
            "/abs",
            "web01.prod.gg.mydc1/../../x",
            "web01.prod.gg..mydc1",
            "web01.prod.gg.mydc1.",
            ".hidden.prod.gg.mydc1",
            "db01.prod.g/g.mydc1",
            "db01.prod.gg.mydc1\x00",
            "DB01.PROD.GG.MYDC1",
            "x" * 300,
            "",
        ]
    ),
    st.text(max_size=80),
    st.from_regex(r"[a-z0-9./_-]{1,40}", fullmatch=True),
)
claimed = st.one_of(st.none(), st.text(max_size=20), st.sampled_from(["prod", "..", "a/b", "../prod", "prod/gg"]))
grains = st.one_of(
    st.none(),
    st.fixed_dictionaries({"env": st.fixed_dictionaries({f: claimed for f in ("type", "group", "datacenter", "role", "postfix", "host")})}),
    st.fixed_dictionaries({"env": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=3), max_size=2))}),
)
env_configs = st.fixed_dictionaries(
    {},
    optional={
        # Greedy operator patterns can capture anything, "/" and ".." included.
        "patterns": st.sampled_from(
            [
                [r"^(?P<type>.*)$"],
                [r"^(?P<host>[^.]*)\.(?P<type>.*)\.(?P<group>.*)\.(?P<datacenter>.*)$"],
                [{"name": "bad", "regex": "("}],
            ]
        ),
        "postfix": st.sampled_from(["{type}.{group}.{datacenter}", "{type}/{group}", "{type}/..", "..", "{type}", "{nope}"]),
        "type": claimed,
        "group": claimed,
    },
)


def _check_root(template, root, values):
    """``root`` is ``template`` with every field replaced by its non-empty, slash-free value."""
    assert not root.startswith("/") and not root.endswith("/")
    for segment in root.split("/"):
        assert segment not in ("", ".", ".."), (template, root)
    used = re.findall(r"{([^{}]*)}", template)
    assert all(values.get(name) and "/" not in values[name] for name in used), (template, values)
    assert root == re.sub(r"{([^{}]*)}", lambda m: values[m.group(1)], template)
    assert root.count("/") == template.count("/")


def _check_values(values, minion_id):
    for name, value in values.items():
        if value is None:
            continue
        assert isinstance(value, str) and value and "/" not in value and ".." not in value, (name, value)
        if name == "minion_id":
            assert value == minion_id and saltconsul_kvtree.safe_minion_id(value)
        elif name == "postfix":
            assert all(LABEL.match(part) for part in value.split(".")), value
        else:
            assert LABEL.match(value), (name, value)


@FUZZ
@given(template=st.one_of(templates, segment_templates), minion_id=minion_ids, grain=grains, env_conf=env_configs,
       from_grains=st.booleans())
def test_layer_roots_are_safe(pillar, template, minion_id, grain, env_conf, from_grains):
    opts = {"consul": {"env": env_conf}, "cachedir": "/nonexistent"}
    try:
        conf = pillar.parse_config(opts, {"layers": [template], "env_from_grains": from_grains})
    except SaltInvocationError as err:
        assert "consul ext_pillar" in str(err)
        event("template refused")
        return
    values = pillar.environment(minion_id, opts, grain, conf["env_from_grains"])
    _check_values(values, minion_id)
    roots = pillar.layer_roots(conf, values)
    assert len(roots) <= 1
    event("rendered" if roots else "skipped for this minion")
    for root, _, _ in roots:
        _check_root(template, root, values)


@FUZZ
@given(minion_id=minion_ids, grain=grains, env_conf=env_configs)
def test_grains_never_choose_layers_by_default(pillar, minion_id, grain, env_conf):
    """Without ``env_from_grains``, whatever a minion claims in its grains changes nothing."""
    opts = {"consul": {"env": env_conf}, "cachedir": "/nonexistent"}
    conf = pillar.parse_config(opts, {})
    assume(grain is not None)
    plain = pillar.layer_roots(conf, pillar.environment(minion_id, opts, None, False))
    spoofed = pillar.layer_roots(conf, pillar.environment(minion_id, opts, grain, False))
    assert spoofed == plain


@pytest.mark.parametrize(
    "template",
    ["config/{type}", "config/type/{type}", "config/group/{type}.{group}", "config/node/{minion_id}", "config/env/{postfix}"],
)
@pytest.mark.parametrize("minion_id", ["..", "a/b", "web01", "", "../prod", "x/../../prod"])
def test_unknown_fields_skip_the_layer(pillar, template, minion_id):
    """A minion without the field gets no layer at all, never the folder above it."""
    opts = {"consul": {}, "cachedir": "/nonexistent"}
    conf = pillar.parse_config(opts, {"layers": [template]})
    values = pillar.environment(minion_id, opts)
    roots = pillar.layer_roots(conf, values)
    if template.endswith("{minion_id}") and minion_id == "web01":
        assert roots == [("config/node/web01", "auto", "_value")]
    else:
        assert roots == []
