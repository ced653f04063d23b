"""Pure logic of saltconsul_kv: key checks, value encoding/decoding, tree building."""

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from salt.exceptions import CommandExecutionError, SaltInvocationError

import saltconsul_kv
import saltconsul_kvtree


def _entry(key, value):
    return {"Key": key, "Value": None if value is None else base64.b64encode(value).decode()}


@pytest.mark.parametrize("key", ["/a", "a/../b", "./a", "a/.", "", "a\nb", 5, None])
def test_bad_keys(key):
    with pytest.raises(SaltInvocationError):
        saltconsul_kv.kv_path(key)


def test_key_quoting():
    assert saltconsul_kv.kv_path("app/db pass?#%") == "/v1/kv/app/db%20pass%3F%23%25"
    assert saltconsul_kv.kv_path("", allow_empty=True) == "/v1/kv/"
    assert saltconsul_kv.kv_path("a..b/c.d") == "/v1/kv/a..b/c.d"  # only whole dot segments are refused


def test_encode_value():
    enc = saltconsul_kv.encode_value
    assert enc("x ") == b"x "
    assert enc(b"\xff") == b"\xff"
    assert enc(None) == b""
    assert enc(True) == b"true"
    assert enc(8) == b"8"
    assert enc({"b": 1, "a": [None]}) == b'{"a": [null], "b": 1}'
    with pytest.raises(SaltInvocationError):
        enc(object())


def test_check_size_message_has_no_value():
    with pytest.raises(SaltInvocationError) as exc:
        saltconsul_kv.check_size(b"topsecret", 4, "app/k")
    assert "topsecret" not in str(exc.value)
    assert "app/k" in str(exc.value)


def test_decode_value():
    dec = saltconsul_kv.decode_value
    assert dec("08", None) == "08"
    assert dec("08", "auto") == "08"
    assert dec("yes", "auto") == "yes"
    assert dec("a: 1", "auto") == "a: 1"  # auto: only JSON objects/arrays, as in pillar
    assert dec('{"a": 1}', "auto") == {"a": 1}
    assert dec("a: 1", "yaml") == {"a": 1}
    assert dec("[1, 2]", "json") == [1, 2]
    assert dec("{bad", "auto") == "{bad"
    assert dec(b"\xff", "auto") == b"\xff"
    with pytest.raises(CommandExecutionError) as exc:
        dec("{hunter2", "json", key="k")
    assert "hunter2" not in str(exc.value)
    with pytest.raises(SaltInvocationError):
        dec("x", "xml")


def test_tree_folders_and_conflicts():
    entries = [
        _entry("app/db/pool", b"20"),
        _entry("app/db", b"leaf-and-folder"),
        _entry("app/web/", None),
        _entry("apple", b"not under app/"),
        _entry("app/", None),
    ]
    # The leaf of a key that is also a folder is kept under _value (the pillar's rule).
    assert saltconsul_kvtree.tree_from_consul(entries, "app", "raw") == {
        "db": {"pool": "20", "_value": "leaf-and-folder"}, "web": {}}
    assert saltconsul_kvtree.tree_from_consul([], "app", "raw") == {}


@given(st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), st.text(max_size=20), max_size=8))
def test_tree_round_trip(flat):
    entries = [_entry(f"p/{k}", v.encode()) for k, v in flat.items()]
    assert saltconsul_kvtree.tree_from_consul(entries, "p", "raw") == flat
