"""Pure-logic tests of the hostname environment parser (no Consul needed)."""

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import saltconsul_env as env

FIELDS = ("type", "group", "datacenter", "role", "host")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("db01.prod.gg.mydc1.example.com", ("prod", "gg", "mydc1", "db", "prod.gg.mydc1")),
        ("db01.prod.gg.mydc1", ("prod", "gg", "mydc1", "db", "prod.gg.mydc1")),
        ("mydc1-prod-gg-db01", ("prod", "gg", "mydc1", "db", "prod.gg.mydc1")),
        ("mydc1-prod-gg-db01.example.com", ("prod", "gg", "mydc1", "db", "prod.gg.mydc1")),
        ("WEB-03.Dev.GG.MyDC2.example.com.", ("dev", "gg", "mydc2", "web", "dev.gg.mydc2")),
        ("kafka-broker2.stg.blue.dc9", ("stg", "blue", "dc9", "kafka-broker", "stg.blue.dc9")),
        ("web-03-stg-blue", ("stg", "blue", None, "web", None)),
    ],
)
def test_known_styles(name, expected):
    got = env.parse(name)
    assert (got["type"], got["group"], got["datacenter"], got["role"], got["postfix"]) == expected
    for field in ("type", "group", "datacenter", "role"):
        if got[field]:
            assert got["sources"][field] == "hostname"


@pytest.mark.parametrize(
    "name",
    ["localhost", "10.1.2.3", "::1", "a..b", "../../etc", "../../etc/passwd.prod.gg.dc1", "ünïcode.prod.gg.dc1",
     "x" * 300, "", " ", "www.example.com", "db01.prod..dc1", "db01.prod.g g.dc1", "db01.prod.gg.-dc1",
     "db01.prod.gg_x.dc1", None, 12345, "db01.prod.gg.dc1\x00.x"],
)
def test_odd_names_yield_no_exception_and_no_invalid_label(name, caplog):
    caplog.set_level(logging.INFO)
    got = env.parse(name)
    for field in FIELDS:
        assert got[field] is None or env.is_label(got[field]), (field, got[field])
    if got["postfix"] is not None:
        assert all(env.is_label(part) for part in got["postfix"].split("."))
    if got["type"] is None:
        assert got["postfix"] is None
        assert caplog.records, "an unparseable name must leave a log line"


def test_specified_in_salt_overrides_hostname():
    got = env.parse("db01.dev.gg.mydc1", {"type": "prod", "datacenter": "MyDC9"})
    assert (got["type"], got["group"], got["datacenter"]) == ("prod", "gg", "mydc9")
    assert got["sources"] == {"type": "config", "group": "hostname", "datacenter": "config", "role": "hostname"}
    assert got["postfix"] == "prod.gg.mydc9"


def test_config_only_environment_for_unparseable_host():
    got = env.parse("localhost", {"type": "dev", "group": "gg", "datacenter": "dc1", "role": "db"})
    assert got["postfix"] == "dev.gg.dc1" and got["role"] == "db"


def test_invalid_override_is_ignored_not_raised(caplog):
    got = env.parse("db01.prod.gg.mydc1", {"group": "../x", "type": "a b"})
    assert got["group"] == "gg" and got["type"] == "prod"
    assert "not a DNS label" in caplog.text


def test_custom_patterns_and_types():
    conf = {
        "types": ["live", "sandbox"],
        "patterns": [{"name": "tri", "regex": r"^(?P<type>{types})_(?P<group>[a-z]+)_(?P<host>[a-z0-9]+)$"}],
        "postfix": "{group}-{type}",
    }
    got = env.parse("live_blue_cache3", conf)
    assert (got["type"], got["group"], got["role"], got["postfix"], got["pattern"]) == (
        "live", "blue", "cache", "blue-live", "tri")
    # The default prod/dev types no longer match with a custom list.
    assert env.parse("db01.prod.gg.dc1", conf)["type"] is None


def test_invalid_pattern_is_skipped(caplog):
    conf = {"patterns": ["(unclosed", env.DEFAULT_PATTERNS[0]]}
    assert env.parse("db01.prod.gg.dc1", conf)["type"] == "prod"
    assert "invalid hostname pattern" in caplog.text


def test_postfix_never_partial():
    assert env.postfix({"type": "prod", "group": None, "datacenter": "dc1"}) is None
    assert env.service_name("db", {"type": "prod", "group": "gg", "datacenter": "dc1"}) == "db.prod.gg.dc1"
    assert env.service_name("db", {"type": "prod"}) is None


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=64).map(lambda b: b.decode("latin-1"))))
def test_fuzz_arbitrary_strings(name):
    got = env.parse(name)
    for field in FIELDS:
        assert got[field] is None or env.is_label(got[field])
    if got["postfix"]:
        assert "/" not in got["postfix"] and ".." not in got["postfix"]


label = st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(label, st.sampled_from(env.DEFAULT_TYPES), label, label, st.sampled_from(["", ".example.com"]))
def test_fuzz_fqdn_round_trip(host, typ, group, dc, domain):
    got = env.parse(f"{host}.{typ}.{group}.{dc}{domain}")
    assert (got["type"], got["group"], got["datacenter"], got["host"]) == (typ, group, dc, host)
    assert got["postfix"] == f"{typ}.{group}.{dc}"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.text(max_size=80))
def test_fuzz_overrides(typ, group):
    got = env.parse("db01.prod.gg.dc1", {"type": typ, "group": group})
    for field in FIELDS:
        assert got[field] is None or env.is_label(got[field])


@pytest.mark.parametrize("name, ok", [("db", True), ("Web-01", True), ("a" * 63, True), ("a" * 64, False),
                                      ("a/b", False), ("a b", False), ("-db", False), ("db_1", False),
                                      ("dé", False), ("", False), (None, False)])
def test_service_names_must_be_dns_labels(name, ok):
    assert env.is_service_name(name) is ok
