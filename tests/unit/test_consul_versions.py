"""
Consul-version behaviour that can only run here as documented shapes: the
suite's live agents are 1.8.7, operators run 1.15 to 1.22. Each case names the
version and the documented answer it stands for.
"""

import pytest
from salt.exceptions import CommandExecutionError

import localconsul
import saltconsul_duration as duration
import saltconsul_errors as errors

# --------------------------------------------------------------------------- error classification


@pytest.mark.parametrize(
    "status, text, path, kind",
    [
        # Unknown service/check ID on the agent API: 500 on 1.8-1.10, 404 on 1.11+.
        (500, 'Unknown service "web1"', "/v1/agent/service/deregister/web1", errors.ConsulNotFound),
        (404, 'Unknown service ID "web1". Ensure that the service ID is passed, not the service name.',
         "/v1/agent/service/deregister/web1", errors.ConsulNotFound),
        (500, 'Unknown check "mem"', "/v1/agent/check/deregister/mem", errors.ConsulNotFound),
        (404, 'Unknown check ID "mem". Ensure that the check ID is passed, not the check name.',
         "/v1/agent/check/deregister/mem", errors.ConsulNotFound),
        (500, 'CheckID "mem" does not have associated TTL', "/v1/agent/check/pass/mem", errors.ConsulNotFound),
        (404, "", "/v1/agent/service/web1", errors.ConsulNotFound),
        # A 500 "unknown service" outside the agent API is a server error, not a lookup miss.
        (500, 'Unknown service "x"', "/v1/catalog/register", errors.ConsulServerError),
        # ACLs: 403 on every version; 1.8 also answers some with 500 "Permission denied".
        (403, "Permission denied", "/v1/kv/a", errors.ConsulPermissionDenied),
        (403, "Permission denied: token with AccessorID '...' lacks permission 'key:write' on \"a\"",
         "/v1/kv/a", errors.ConsulPermissionDenied),
        (500, "rpc error making call: Permission denied", "/v1/catalog/register", errors.ConsulPermissionDenied),
        (403, "ACL not found", "/v1/acl/token/x", errors.ConsulACLNotFound),
        (500, "rpc error making call: ACL not found", "/v1/agent/service/register", errors.ConsulACLNotFound),
        # A rolled-back transaction (a lost check-and-set among others).
        (409, '{"Errors":[{"OpIndex":0,"What":"failed to set key \\"a\\", index is stale"}]}', "/v1/txn",
         errors.ConsulCASConflict),
        (409, "conflict", "/v1/kv/a", errors.ConsulInvalidRequest),
        (400, "Request decode failed", "/v1/agent/service/register", errors.ConsulInvalidRequest),
        (413, "Value exceeds 524288 byte limit", "/v1/kv/a", errors.ConsulInvalidRequest),
        (500, "No cluster leader", "/v1/kv/a", errors.ConsulServerError),
        # A session tied to a check the servers see as critical or do not know yet.
        (500, "Check 'service:db01' is in critical state", "/v1/session/create", errors.ConsulSessionChecksNotReady),
        (500, "Missing check 'service:db01' registration", "/v1/session/create", errors.ConsulSessionChecksNotReady),
        (500, "Missing node registration", "/v1/session/create", errors.ConsulSessionChecksNotReady),
        (500, "No cluster leader", "/v1/session/create", errors.ConsulServerError),
        # The rate limiter (1.13+ server, 1.15+ global) answers 429: transient, like a 5xx.
        (429, "rate limit exceeded", "/v1/kv/a", errors.ConsulServerError),
        (503, "", "/v1/status/leader", errors.ConsulServerError),
    ],
)
def test_classify(status, text, path, kind):
    err = errors.classify(status, text, "PUT", path)
    assert type(err) is kind
    assert err.status == status and err.path == path and err.method == "PUT"
    assert f"PUT {path}" in str(err)


def test_cause_of_follows_salt_errors():
    cas = errors.ConsulCASConflict("PUT /v1/kv/a: lost")
    try:
        try:
            raise cas
        except errors.ConsulError as err:
            raise CommandExecutionError("consul.kv_put failed") from err
    except CommandExecutionError as outer:
        assert errors.cause_of(outer) is cas
    assert errors.cause_of(CommandExecutionError("plain")) is None
    assert isinstance(errors.classify(404, "", "GET", "/v1/kv/a"), errors.ConsulNotFound)
    assert not isinstance(errors.classify(500, "x", "GET", "/v1/kv/a"), errors.ConsulNotFound)


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    "value, secs",
    [("10s", 10), ("1m30s", 90), ("1m0s", 60), ("1h0m0s", 3600), ("500ms", 0.5), ("1.5s", 1.5),
     ("250us", 0.00025), ("250µs", 0.00025), ("0", 0), ("0s", 0), (15, 15), (2.5, 2.5), ("72h3m0.5s", 259380.5)],
)
def test_seconds(value, secs):
    assert duration.seconds(value) == pytest.approx(secs)


@pytest.mark.parametrize("value", ["10 seconds", "10", "-1s", "1d", "", "s", "1m30", True, None, [], -1, float("nan")])
def test_not_durations(value):
    with pytest.raises(duration.DurationError):
        duration.seconds(value, "interval")


@pytest.mark.parametrize(
    "value, go",
    [("60s", "1m0s"), ("90s", "1m30s"), ("3600s", "1h0m0s"), ("10s", "10s"), ("0.5s", "500ms"),
     ("1500ms", "1.5s"), (0, "0s"), ("1h30m", "1h30m0s"), ("100us", "100µs")],
)
def test_canonical_is_go_string(value, go):
    """What 1.10+ agents return for a check registered with ``value``."""
    assert duration.canonical(value) == go


def test_same_compares_durations_not_strings():
    # 1.15+ return Interval "1m0s" for a check registered with interval "60s".
    assert duration.same("60s", "1m0s")
    assert duration.same("10s", 10)
    assert not duration.same("10s", "11s")
    assert duration.same(None, None) and not duration.same(None, "1s")
    assert not duration.same("bogus", "bogus")


def test_for_consul_keeps_the_users_spelling():
    assert duration.for_consul(" 1m30s ") == "1m30s"
    assert duration.for_consul(10) == "10s"
    assert duration.for_consul(0.5) == "0.5s"


# --------------------------------------------------------------------------- harness agent config by version


def _base(acl=True, tls=True):
    conf = {"ports": {"http": 8500, "grpc": -1, "https": -1}, "server": True}
    if acl:
        conf["acl"] = {"enabled": True, "tokens": {"master": "root", "agent": "root"}}
    if tls:
        conf.update(ca_file="ca.pem", cert_file="c.pem", key_file="k.pem", verify_incoming=False,
                    verify_incoming_rpc=False, verify_incoming_https=True, verify_outgoing=False)
    return conf


def test_config_for_1_8_is_unchanged():
    assert localconsul.adapt_config(_base(), (1, 8, 7)) == _base()


def test_config_for_1_11_initial_management():
    conf = localconsul.adapt_config(_base(tls=False), (1, 11, 0))
    assert conf["acl"]["tokens"] == {"initial_management": "root", "agent": "root"}
    assert "grpc_tls" not in conf["ports"]


def test_config_for_1_12_tls_stanza():
    conf = localconsul.adapt_config(_base(), (1, 12, 3))
    assert conf["tls"] == {
        "defaults": {"ca_file": "ca.pem", "cert_file": "c.pem", "key_file": "k.pem",
                     "verify_outgoing": False, "verify_incoming": False},
        "https": {"verify_incoming": True},
        "internal_rpc": {"verify_incoming": False},
    }
    assert not {"ca_file", "cert_file", "key_file", "verify_incoming", "verify_incoming_https"} & set(conf)
    assert conf["acl"]["tokens"]["initial_management"] == "root"


def test_config_for_1_14_and_later_disables_grpc_tls():
    for version in ((1, 14, 0), (1, 15, 2), (1, 22, 0)):
        conf = localconsul.adapt_config(_base(), version)
        assert conf["ports"]["grpc_tls"] == -1
        assert "tls" in conf and "master" not in conf["acl"]["tokens"]


def test_parse_version():
    assert localconsul.parse_version("Consul v1.8.7\nRevision 1\n") == (1, 8, 7)
    assert localconsul.parse_version("Consul v1.21.4+ent\nRevision x") == (1, 21, 4)
    with pytest.raises(RuntimeError):
        localconsul.parse_version("not consul")


def test_consul_bin_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CONSUL_BIN", str(tmp_path / "missing"))
    with pytest.raises(RuntimeError, match="CONSUL_BIN"):
        localconsul.consul_binary()
    exe = tmp_path / "consul"
    exe.write_text("#!/bin/sh\necho 'Consul v1.99.1'\n")
    exe.chmod(0o755)
    monkeypatch.setenv("CONSUL_BIN", str(exe))
    assert localconsul.consul_binary() == str(exe)
    assert localconsul.consul_version() == (1, 99, 1)
