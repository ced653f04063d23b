"""Pure logic of saltconsul_kvtree and the txn result grouping (no Consul needed)."""

import base64
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

import saltconsul_kvtree as kvtree
import saltconsul_pillarcache


@pytest.mark.parametrize(
    "raw, mode, expected",
    [
        (b"yes", "auto", "yes"),
        (b"0123", "auto", "0123"),
        (b"10", "auto", "10"),
        (b"null", "auto", "null"),
        (b"", "auto", ""),
        (None, "auto", ""),
        (b'{"a": [1]}', "auto", {"a": [1]}),
        (b"  [1, 2]", "auto", [1, 2]),
        (b"10", "json", 10),
        (b'"x"', "json", "x"),
        (b"yes", "yaml", True),
        (b"a: 1", "yaml", {"a": 1}),
        (b'{"a": 1}', "raw", '{"a": 1}'),
        ("caf\u00e9".encode(), "auto", "caf\u00e9"),
    ],
)
def test_decode_value(raw, mode, expected):
    assert kvtree.decode_value(raw, mode, key="k") == expected


def test_decode_failure_keeps_raw_and_names_key_only(caplog):
    with caplog.at_level(logging.DEBUG):
        assert kvtree.decode_value(b'{"pw": "hunter2"', "auto", key="app/secret") == '{"pw": "hunter2"'
        assert kvtree.decode_value(b"yes", "json", key="app/flag") == "yes"
    assert "app/secret" in caplog.text and "app/flag" in caplog.text
    assert "hunter2" not in caplog.text


def test_non_utf8_stays_bytes():
    warnings = []
    assert kvtree.decode_value(b"\xff\xfe", "auto", key="bin", warnings=warnings) == b"\xff\xfe"
    assert warnings and warnings[0][0] == "bin"


def test_build_tree_nesting_and_leaf_folder():
    entries = [
        ("root/a", b"1"),
        ("root/db", b"primary"),
        ("root/db/", None),
        ("root/db/pool", b"5"),
        ("root/obj", b'{"x": 1}'),
        ("root/obj/y", b"2"),
        ("root/empty/", None),
        ("root", b"ignored: the layer root itself"),
        ("rootother/a", b"not under root/"),
        ("root/x//y", b"empty segment kept"),
    ]
    tree = kvtree.build_tree(entries, "root")
    assert tree == {
        "a": "1",
        "db": {"_value": "primary", "pool": "5"},
        "obj": {"_value": {"x": 1}, "y": "2"},
        "empty": {},
        "x": {"": {"y": "empty segment kept"}},
    }
    # order does not matter for leaf/folder handling
    assert kvtree.build_tree(reversed(entries), "root") == tree
    assert kvtree.build_tree([("r/a", b"1"), ("r/a/b", b"2")], "r", leaf_key="=")["a"] == {"=": "1", "b": "2"}


def test_tree_from_consul_base64():
    entries = [{"Key": "l/a", "Value": base64.b64encode(b"v").decode()}, {"Key": "l/b", "Value": None}]
    assert kvtree.tree_from_consul(entries, "l") == {"a": "v", "b": ""}


def test_merge_trees_later_wins_deep():
    merged = kvtree.merge_trees([{"a": {"x": 1, "l": [1]}, "b": 1}, {}, {"a": {"y": 2, "l": [2]}, "b": {"c": 3}}])
    assert merged == {"a": {"x": 1, "y": 2, "l": [2]}, "b": {"c": 3}}
    assert kvtree.merge_trees([]) == {}


@pytest.mark.parametrize("template", ["config/{nope}", "/config/x", "config/../x", "config//x", "a/{type", 5, "a/"])
def test_bad_templates(template):
    with pytest.raises(kvtree.TemplateError):
        kvtree.check_template(template)


def test_render_skips_unknown_fields():
    values = {"type": "prod", "group": None, "datacenter": "mydc1", "minion_id": "web01.prod.gg.mydc1"}
    assert kvtree.render_template("config/type/{type}", values) == "config/type/prod"
    assert kvtree.render_template("config/group/{type}.{group}", values) is None
    assert kvtree.render_template("config/node/{minion_id}", values) == "config/node/web01.prod.gg.mydc1"
    for template in kvtree.DEFAULT_LAYERS:
        kvtree.check_template(template)
    assert not kvtree.nested_templates(list(kvtree.DEFAULT_LAYERS))
    assert kvtree.nested_templates(["c/{type}", "c/{type}/{group}"]) == [("c/{type}", "c/{type}/{group}")]


@pytest.mark.parametrize("minion_id, ok", [("web01.prod", True), ("WEB_01", True), ("..", False),
                                           ("a/b", False), ("a..b", False), ("", False), ("caf\u00e9", False),
                                           (None, False), (".hidden", False)])
def test_safe_minion_id(minion_id, ok):
    assert kvtree.safe_minion_id(minion_id) is ok


def _kv(key):
    return {"KV": {"Key": key}}


def test_group_txn_results_nested_and_empty_roots():
    roots = ["c/prod", "c/empty", "c/prod/gg", "n/x"]
    results = [_kv("c/prod/a"), _kv("c/prod/gg/b"), _kv("c/prod/gg/b"), _kv("n/x/k")]
    groups = saltconsul_pillarcache._group(results, roots)
    assert [[e["Key"] for e in g] for g in groups] == [["c/prod/a", "c/prod/gg/b"], [], ["c/prod/gg/b"], ["n/x/k"]]
    # the same root twice
    groups = saltconsul_pillarcache._group([_kv("a/1"), _kv("a/1")], ["a", "a"])
    assert [len(g) for g in groups] == [1, 1]


@given(st.dictionaries(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3).map("/".join),
                       st.text(alphabet="xyz09", max_size=4)))
def test_every_leaf_survives(flat):
    """No stored value is lost, whatever mix of leaves and folders the keys form."""
    entries = sorted((f"r/{k}", v.encode()) for k, v in flat.items())
    tree = kvtree.build_tree(entries, "r")
    for key, value in flat.items():
        node = tree
        for part in key.split("/"):
            node = node[part]
        if isinstance(node, dict):
            node = node["_value"]
        assert node == value


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": 1}',
        b'{"a": 1} \n\t\r',
        b'{"a": 1} x',
        b'{"a": 1}{"b": 2}',
        '{"a": 1}\u00a0'.encode(),
        '\u00a0{"a": 1}'.encode(),
        b' \n{"a": [1, 2]}',
        b"[1, 2",
        b"[]",
        b"{}",
        b"[1, 2] ",
        b"10",
        b"null",
        b"yes",
        b"",
        b"\xff{",
        b'{"a": NaN}',
    ],
)
def test_build_tree_auto_fast_path_equals_decode_value(raw):
    """build_tree unrolls the auto rule for speed: it must give what decode_value gives."""
    warnings = []
    tree = kvtree.build_tree([("r/k", raw)], "r", "auto", warnings=warnings)
    expected_warnings = []
    assert tree["k"] == kvtree.decode_value(raw, "auto", key="r/k", warnings=expected_warnings)
    assert type(tree["k"]) is type(kvtree.decode_value(raw, "auto", key="r/k", warnings=[]))
    assert warnings == expected_warnings
