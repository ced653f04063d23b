"""Pure-logic tests of minted minion tokens (saltconsul_identity): scope, rules, renewal, sealing, node trust."""

import json
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import saltconsul_env
import saltconsul_identity as identity
from saltconsul_errors import ConsulInvalidRequest

PROD_DB = "db01.prod.gg.mydc1.example.com"
PILLAR = {
    "consul_register": {"services": {"web": {}, "metrics": {}}},
    "consul_primary": {"services": {"db": {"port": 5432}}},
    "app": {"service": "demoapp"},
    "consul_failover": {"services": {"../evil": {}}},  # not a service name: never granted
}


def _conf(**extra):
    return identity.parse_config({"cachedir": "/tmp/x", "consul": {"minion_tokens": dict({"kv_read": ["secrets/demoapp/{type}/{group}/"]}, **extra)}})


def test_scope_from_master_derived_env_and_pillar():
    env = saltconsul_env.parse(PROD_DB)
    got = identity.scope(PROD_DB, env, PILLAR, _conf())
    assert got == {
        "node": "mydc1-prod-gg-db01",
        "datacenter": "mydc1",
        "services": ["db", "demoapp", "metrics", "web"],
        "single_holders": ["db"],
        "kv_read": ["secrets/demoapp/prod/gg/"],
        "postfix": "prod.gg.mydc1",
    }


def test_rules_hold_own_env_locks_only_and_no_layer_folder():
    env = saltconsul_env.parse(PROD_DB)
    hcl = identity.rules(identity.scope(PROD_DB, env, PILLAR, _conf()))
    assert 'key_prefix "locks/db/prod.gg.mydc1/" { policy = "write" }' in hcl
    assert 'session "mydc1-prod-gg-db01" { policy = "write" }' in hcl
    assert 'session_prefix "" { policy = "write" }' not in hcl
    assert 'key_prefix "locks/" { policy = "write" }' not in hcl
    assert "config/" not in hcl
    assert 'key_prefix "secrets/demoapp/prod/gg/" { policy = "read" }' in hcl
    # Every write names this node or this environment.
    for line in hcl.splitlines():
        if '"write"' in line:
            assert "mydc1-prod-gg-db01" in line or "prod.gg.mydc1" in line, line


def test_a_minion_without_an_environment_gets_no_lock_and_no_templated_read():
    env = saltconsul_env.parse("oddhost")
    got = identity.scope("oddhost", env, PILLAR, _conf())
    assert got["single_holders"] == [] and got["kv_read"] == []


def test_token_body():
    conf = _conf(policies=["salt-dns"], ttl="2h")
    env = saltconsul_env.parse(PROD_DB)
    scope = identity.scope(PROD_DB, env, PILLAR, conf)
    body = identity.token_body(PROD_DB, scope, identity.policy_name(PROD_DB, conf), conf)
    assert body["Description"] == "salt-minion " + PROD_DB
    assert body["NodeIdentities"] == [{"NodeName": "mydc1-prod-gg-db01", "Datacenter": "mydc1"}]
    assert [s["ServiceName"] for s in body["ServiceIdentities"]] == ["db", "demoapp", "metrics", "web"]
    assert body["ExpirationTTL"] == "2h"
    assert body["Policies"][1] == {"Name": "salt-dns"}
    assert "SecretID" not in body


def test_node_names_parse_back_or_fall_back_to_a_safe_id():
    env = saltconsul_env.parse(PROD_DB)
    node = identity.scope(PROD_DB, env, {}, _conf())["node"]
    assert identity.node_matches(node, {"type": "prod", "group": "gg"})
    odd = identity.scope("odd.host_1", saltconsul_env.parse("odd.host_1"), {}, _conf())["node"]
    assert odd == "odd-host_1"


def test_policy_names_are_consul_safe_and_distinct():
    conf = _conf()
    a, b = identity.policy_name("a.b", conf), identity.policy_name("a_b", conf)
    assert a != b
    for name in (a, b, identity.policy_name("x" * 300, conf)):
        assert len(name) <= 128 and all(c.isalnum() or c in "-_" for c in name)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"ttl": "10s"}, "at least 1m"),
        ({"ttl": "soon"}, "duration"),
        ({"renew_after": 1.5}, "fraction"),
        ({"renew_after": True}, "fraction"),
        ({"kv_read": "secrets/"}, "list of strings"),
        ({"policy_prefix": "a b"}, "letters"),
        ({"bogus": 1}, "unknown option"),
        ("nope", "mapping"),
    ],
)
def test_bad_config_is_refused_clearly(section, message):
    with pytest.raises(ConsulInvalidRequest, match=message):
        identity.parse_config({"consul": {"minion_tokens": section}})


def test_renewal_window_and_scope_change():
    conf = _conf(ttl="1h", renew_after=0.5)
    record = {"digest": "d", "created": 1000.0, "expires": 4600.0}
    assert not identity.needs_mint(record, "d", conf, now=1000.0 + 1799)
    assert identity.needs_mint(record, "d", conf, now=1000.0 + 1800)
    assert identity.needs_mint(record, "other", conf, now=1001.0)
    assert identity.needs_mint(None, "d", conf, now=0)


@pytest.fixture
def keypair(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv = tmp_path / "minion.pem"
    pub = tmp_path / "minion.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def test_seal_opens_only_with_the_minions_key(keypair, tmp_path):
    priv, pub = keypair
    secret = "0d6ba1fe-2d36-4b5b-9a8e-6d8a2a1c9f00"
    sealed = identity.seal(str(pub), secret)
    assert secret not in sealed
    assert identity.unseal(str(priv), sealed) == secret
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    wrong = tmp_path / "other.pem"
    wrong.write_bytes(other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    with pytest.raises(ConsulInvalidRequest) as err:
        identity.unseal(str(wrong), sealed)
    assert sealed not in str(err.value) and secret not in str(err.value)


def test_minion_record_unseals_once_stores_0600_and_outlives_the_pillar(keypair, tmp_path):
    priv, pub = keypair
    secret = "0d6ba1fe-2d36-4b5b-9a8e-6d8a2a1c9f00"
    entry = {"sealed": identity.seal(str(pub), secret), "accessor": "acc-1", "expires": 2e9, "node": PROD_DB, "trust": "node"}
    opts = {"cachedir": str(tmp_path / "cache"), "pki_dir": str(tmp_path), "pillar": {identity.PILLAR_KEY: entry}}
    os.rename(priv, tmp_path / "minion.pem") if priv.name != "minion.pem" else None
    record = identity.minion_record(opts, now=1e9)
    assert record["secret"] == secret and record["accessor"] == "acc-1"
    store = tmp_path / "cache" / "consul" / "minion_token.json"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert identity.trusts_nodes(opts)
    # Without the key file, the stored record still answers (no second unseal needed).
    os.unlink(tmp_path / "minion.pem")
    assert identity.minion_record(opts, now=1e9)["secret"] == secret
    # The master down (no entry in pillar): the stored token until it expires.
    bare = dict(opts, pillar={})
    assert identity.minion_record(bare, now=1e9)["secret"] == secret
    assert identity.minion_record(bare, now=2e9 + 1) is None
    # A master's opts never use a minion record.
    assert identity.minion_record(dict(opts, __role="master"), now=1e9) is None
    assert json.loads(store.read_text())["accessor"] == "acc-1"


@pytest.mark.parametrize(
    "node, wanted, ok",
    [
        (PROD_DB, {"type": "prod", "group": "gg"}, True),
        ("db01.dev.gg.mydc1.example.com", {"type": "prod", "group": "gg"}, False),
        ("db01", {"type": "prod"}, False),
        (None, {"type": "prod"}, False),
        ("mydc1-prod-gg-db02", {"type": "prod", "group": "gg"}, True),
    ],
)
def test_node_trust(node, wanted, ok):
    assert identity.node_matches(node, wanted) is ok


def test_node_trust_ignores_the_hosts_own_overrides():
    # A minion configured with consul:env:type: prod must not make a dev node look prod.
    assert not identity.node_matches("db01.dev.gg.mydc1.example.com", {"type": "prod"}, {"type": "prod"})


def test_dns_plan_filters_by_the_environments_node_prefix():
    conf = _conf(dns_services=["db"], dns_ttl="5s")
    plan = identity.dns_plan(saltconsul_env.parse(PROD_DB), conf)
    assert plan["policy"] == "salt-dns-env-prod_gg_mydc1"
    assert 'node_prefix "mydc1-prod-gg-" { policy = "read" }' in plan["rules"]
    assert "write" not in plan["rules"]
    assert plan["queries"] == {
        "db.prod.gg.mydc1": {
            "Name": "db.prod.gg.mydc1",
            "Service": {"Service": "db", "Tags": ["prod", "gg"], "OnlyPassing": True},
            "DNS": {"TTL": "5s"},
        }
    }
    # A dev node's name never starts with prod's prefix (node names are bound by node identities).
    dev = identity.scope("db01.dev.gg.mydc1.example.com", saltconsul_env.parse("db01.dev.gg.mydc1.example.com"), {}, conf)["node"]
    assert not dev.startswith("mydc1-prod-gg-")


@pytest.mark.parametrize(
    "env_name, extra",
    [
        ("oddhost", {}),  # no environment
        (PROD_DB, {"node_name": "{host}-{type}"}),  # template does not end in {host}: no prefix to filter by
        (PROD_DB, {}),  # no dns_services
    ],
)
def test_dns_plan_nothing_to_do(env_name, extra):
    conf = _conf(**dict({"dns_services": ["db"]} if extra or env_name != PROD_DB else {}, **extra))
    assert identity.dns_plan(saltconsul_env.parse(env_name), conf) is None


def test_dns_services_must_be_service_names():
    with pytest.raises(ConsulInvalidRequest, match="not service names"):
        _conf(dns_services=["db", "bad/name"])
