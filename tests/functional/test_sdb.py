"""
sdb ``consul`` through Salt's own sdb path (``sdb.get/set/delete`` ->
``salt.utils.sdb`` -> ``salt.loader.sdb``) against real Consul agents; every
write is checked in Consul itself.
"""

import copy
import json
import logging
import uuid

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

from conftest import REPO


@pytest.fixture(scope="module")
def sdb_loaders(functional_minion, consul_agent, consul_acl_agent, tmp_path_factory):
    from saltfactories.utils.functional import Loaders

    prefix = f"sdbtest-{uuid.uuid4().hex[:6]}"
    token_file = tmp_path_factory.mktemp("sdb-token") / "wrong.token"
    wrong = str(uuid.uuid4())
    token_file.write_text(wrong + "\n")
    opts = copy.deepcopy(functional_minion.config)
    opts["sdb_dirs"] = [str(REPO / "_sdb")]
    # The node's consul: section points at the plain agent; profiles override it.
    opts["consul"] = {"address": consul_agent.http_addr, "retries": 0}
    opts["csdb"] = {"driver": "consul", "prefix": prefix}
    opts["csdbjson"] = {"driver": "consul", "prefix": prefix + "/json", "json": True}
    opts["csdbacl"] = {"driver": "consul", "address": consul_acl_agent.http_addr}
    opts["csdbwrong"] = {"driver": "consul", "address": consul_acl_agent.http_addr, "token_file": str(token_file)}
    opts["csdbbad"] = {"driver": "consul", "tokenfile": "/etc/x"}
    host, port = consul_acl_agent.http_addr.split("://", 1)[1].rsplit(":", 1)
    # saltext-consul's profile shape, naming the ACL agent (consul: names the other one)
    opts["csdbsaltext"] = {
        "driver": "consul",
        "host": host,
        "port": int(port),
        "scheme": "http",
        "consistency": "default",
        "token": consul_acl_agent.master_token,
    }
    loaders = Loaders(opts)
    try:
        yield loaders, prefix, wrong
    finally:
        loaders.reset_state()
        consul_agent.api("DELETE", f"/v1/kv/{prefix}?recurse")


@pytest.fixture
def sdb(sdb_loaders):
    return sdb_loaders[0].modules.sdb


@pytest.fixture
def prefix(sdb_loaders):
    return sdb_loaders[1]


def raw(agent, key):
    status, body = agent.api("GET", f"/v1/kv/{key}?raw")
    return body if status == 200 else None


@pytest.mark.parametrize("value", ["s3cret", "08", "yes", "1e3", "  spaced  ", "ünïcode ✓", "a: b", ""])
def test_set_get_exact_strings(sdb, prefix, consul_agent, value):
    key = f"exact/{uuid.uuid4().hex[:6]}"
    assert sdb.set(f"sdb://csdb/{key}", value) is True
    assert raw(consul_agent, f"{prefix}/{key}") == value.encode("utf-8")
    got = sdb.get(f"sdb://csdb/{key}")
    # str, never bytes (saltstack/salt#55360), never YAML-coerced
    assert type(got) is str and got == value


def test_value_written_by_others_is_str(sdb, prefix, consul_agent):
    consul_agent.api("PUT", f"/v1/kv/{prefix}/other/pw", "pässword".encode("utf-8"))
    got = sdb.get("sdb://csdb/other/pw")
    assert type(got) is str and got == "pässword"


def test_numbers_stored_as_text(sdb, prefix, consul_agent):
    assert sdb.set("sdb://csdb/num/port", 5432) is True
    assert raw(consul_agent, f"{prefix}/num/port") == b"5432"
    assert sdb.get("sdb://csdb/num/port") == "5432"


def test_missing_key_is_none(sdb):
    assert sdb.get(f"sdb://csdb/missing/{uuid.uuid4().hex}") is None


def test_delete(sdb, prefix, consul_agent):
    assert sdb.set("sdb://csdb/del/me", "x") is True
    assert raw(consul_agent, f"{prefix}/del/me") == b"x"
    assert sdb.delete("sdb://csdb/del/me") is True
    assert consul_agent.api("GET", f"/v1/kv/{prefix}/del/me")[0] == 404
    assert sdb.get("sdb://csdb/del/me") is None
    assert sdb.delete("sdb://csdb/del/me") is True  # already gone: still done


def test_json_profile(sdb, prefix, consul_agent):
    doc = {"user": "app", "port": 5432, "hosts": ["a", "b"], "tls": True}
    assert sdb.set("sdb://csdbjson/db", doc) is True
    assert json.loads(raw(consul_agent, f"{prefix}/json/db")) == doc
    assert sdb.get("sdb://csdbjson/db") == doc
    # a plain string in a JSON profile is a JSON string
    assert sdb.set("sdb://csdbjson/s", "08") is True
    assert raw(consul_agent, f"{prefix}/json/s") == b'"08"'
    assert sdb.get("sdb://csdbjson/s") == "08"


def test_json_profile_bad_value_names_key_not_value(sdb, prefix, consul_agent):
    consul_agent.api("PUT", f"/v1/kv/{prefix}/json/broken", b"{secret-not-json")
    with pytest.raises(CommandExecutionError) as err:
        sdb.get("sdb://csdbjson/broken")
    assert "json/broken" in str(err.value)
    assert "secret-not-json" not in str(err.value)


def test_structure_needs_json_profile(sdb, prefix, consul_agent):
    with pytest.raises(SaltInvocationError, match="json: true"):
        sdb.set("sdb://csdb/struct", {"a": 1})
    assert consul_agent.api("GET", f"/v1/kv/{prefix}/struct")[0] == 404


def test_unknown_profile_key(sdb):
    with pytest.raises(SaltInvocationError, match="tokenfile"):
        sdb.get("sdb://csdbbad/x")


def test_acl_denied_clear_error_no_secret(sdb, sdb_loaders, consul_acl_agent, caplog):
    wrong = sdb_loaders[2]
    consul_acl_agent.api("PUT", "/v1/kv/sdbacl/pw", b"topsecret")
    try:
        with caplog.at_level(logging.DEBUG):
            with pytest.raises(CommandExecutionError, match="permission denied") as err:
                sdb.get("sdb://csdbacl/sdbacl/pw")
            assert "sdbacl/pw" in str(err.value)
            with pytest.raises(CommandExecutionError, match="permission denied|ACL not found") as err:
                sdb.get("sdb://csdbwrong/sdbacl/pw")
            assert wrong not in str(err.value)
            with pytest.raises(CommandExecutionError) as err:
                sdb.set("sdb://csdbwrong/sdbacl/pw", "overwritten")
            assert wrong not in str(err.value) and "overwritten" not in str(err.value)
        assert consul_acl_agent.api("GET", "/v1/kv/sdbacl/pw?raw") == (200, b"topsecret")
        assert wrong not in caplog.text
        assert "topsecret" not in caplog.text and "overwritten" not in caplog.text
    finally:
        consul_acl_agent.api("DELETE", "/v1/kv/sdbacl?recurse")


def test_values_never_logged(sdb, caplog):
    secret = "never-log-" + uuid.uuid4().hex
    with caplog.at_level(logging.DEBUG):
        assert sdb.set("sdb://csdb/log/pw", secret) is True
        assert sdb.get("sdb://csdb/log/pw") == secret
    assert secret not in caplog.text


def test_saltext_consul_profile_keys(sdb, consul_acl_agent, caplog):
    consul_acl_agent.api("PUT", "/v1/kv/sdbsaltext/pw", b"0123")
    try:
        with caplog.at_level(logging.WARNING):
            assert sdb.get("sdb://csdbsaltext/sdbsaltext/pw") == "0123"
        assert "saltext-consul" in caplog.text
        assert consul_acl_agent.master_token not in caplog.text
    finally:
        consul_acl_agent.api("DELETE", "/v1/kv/sdbsaltext?recurse")
