"""
``consul.acl_policy_present/absent`` and ``consul.acl_token_present/absent``
(``_states/consul_acl.py``) against a real default-deny ACL agent, through
Salt's real loaders. Each state runs with ``test=True`` first (predicting the
exact change, writing nothing) and then for real; Consul is checked with plain
HTTP afterwards; a second apply changes nothing; a token's secret is never in a
return, a comment or a log record, only in its 0600 file.
"""

import logging
import stat
import uuid

import pytest
from test_module_acl_errors import acl_loaders, uniq  # noqa: F401  (fixtures: management-token loaders, a name cleaned up after)
from test_states import StateCaller


@pytest.fixture
def states(acl_loaders):
    return StateCaller(acl_loaders)


def _policy(agent, name):
    status, raw = agent.api("GET", f"/v1/acl/policy/name/{name}")
    return agent.api_json("GET", f"/v1/acl/policy/name/{name}") if status == 200 else None


def _tokens(agent, description):
    return [t for t in agent.api_json("GET", "/v1/acl/tokens") if t.get("Description") == description]


def _token(agent, description):
    found = _tokens(agent, description)
    assert len(found) <= 1
    return agent.api_json("GET", f"/v1/acl/token/{found[0]['AccessorID']}") if found else None


def _no_changes(ret):
    assert ret["result"] is True, ret
    assert ret["changes"] == {}, ret


def test_loader_merges_both_state_files(states):
    """Both files are ``consul``: the loader serves the functions of each under one name."""
    funcs = states._states(False)
    for fun in ("service_present", "env_query_present", "acl_policy_present", "acl_token_absent"):
        assert f"consul.{fun}" in funcs
    assert funcs["consul.acl_policy_present"].__module__ != funcs["consul.service_present"].__module__


def test_policy_present_update_absent(states, consul_acl_agent, uniq):
    rules = f'key_prefix "{uniq}/" {{ policy = "read" }}'
    dry = states("acl_policy_present", test=True, name=uniq, rules=rules, description="app keys")
    assert dry["result"] is None and "would be created" in dry["comment"]
    assert dry["changes"] == {"old": None, "new": {"Rules": rules, "Description": "app keys", "Datacenters": []}}
    assert _policy(consul_acl_agent, uniq) is None

    ret = states("acl_policy_present", name=uniq, rules=rules + "\n", description="app keys")
    assert ret["result"] is True and ret["changes"] == dry["changes"], ret
    real = _policy(consul_acl_agent, uniq)
    assert (real["Rules"], real["Description"]) == (rules, "app keys")
    writes = states.stats["writes"]
    assert writes > 0  # the counter sees this client's writes (the create above)
    _no_changes(states("acl_policy_present", name=uniq, rules=rules, description="app keys"))
    assert states.stats["writes"] == writes  # a compliant re-run writes nothing
    _no_changes(states("acl_policy_present", test=True, name=uniq, rules=rules))  # description not managed

    new_rules = f'key_prefix "{uniq}/" {{ policy = "write" }}'
    dry = states("acl_policy_present", test=True, name=uniq, rules=new_rules, datacenters=["acl1"])
    assert dry["result"] is None
    assert dry["changes"] == {"old": {"Rules": rules, "Datacenters": []}, "new": {"Rules": new_rules, "Datacenters": ["acl1"]}}
    assert _policy(consul_acl_agent, uniq)["Rules"] == rules
    ret = states("acl_policy_present", name=uniq, rules=new_rules, datacenters=["acl1"])
    assert ret["changes"] == dry["changes"]
    real = _policy(consul_acl_agent, uniq)
    assert (real["Rules"], real["Description"], real["Datacenters"]) == (new_rules, "app keys", ["acl1"])
    _no_changes(states("acl_policy_present", name=uniq, rules=new_rules, datacenters=["acl1"]))

    dry = states("acl_policy_absent", test=True, name=uniq)
    assert dry["result"] is None and dry["changes"]["new"] is None
    assert _policy(consul_acl_agent, uniq) is not None
    assert states("acl_policy_absent", name=uniq)["changes"] == dry["changes"]
    assert _policy(consul_acl_agent, uniq) is None
    _no_changes(states("acl_policy_absent", name=uniq))


def test_policy_bad_input_writes_nothing(states, consul_acl_agent, uniq):
    ret = states("acl_policy_present", name=f"{uniq}/bad", rules="")
    assert ret["result"] is False and "policy name" in ret["comment"]
    ret = states("acl_policy_present", name=uniq, rules=["not", "text"])
    assert ret["result"] is False and "rules must be" in ret["comment"]
    # Consul refuses rules it cannot parse: a clear failure, nothing created.
    ret = states("acl_policy_present", name=uniq, rules='key_prefix "x" { policy = ')
    assert ret["result"] is False and "acl_policy_create failed" in ret["comment"], ret
    assert _policy(consul_acl_agent, uniq) is None


def test_token_lifecycle_secret_only_in_its_file(states, consul_acl_agent, uniq, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    returns = []
    states("acl_policy_present", name=uniq, rules=f'key_prefix "{uniq}/" {{ policy = "write" }}')
    states("acl_policy_present", name=f"{uniq}-b", rules='node_prefix "" { policy = "read" }')
    secret_file = tmp_path / "tokens" / "web.token"
    desc = f"{uniq} web01"
    kwargs = dict(name=desc, policies=[uniq], service_identities=["web"], secret_file=str(secret_file))

    dry = states("acl_token_present", test=True, **kwargs)
    returns.append(dry)
    assert dry["result"] is None and "would be created" in dry["comment"]
    assert dry["changes"]["new"]["Policies"] == [uniq]
    assert dry["changes"]["secret_file"] == {"path": str(secret_file), "old": "missing", "new": "written (0600)"}
    assert _token(consul_acl_agent, desc) is None and not secret_file.exists()

    ret = states("acl_token_present", **kwargs)
    returns.append(ret)
    assert ret["result"] is True and ret["changes"] == dry["changes"], ret
    real = _token(consul_acl_agent, desc)
    assert [p["Name"] for p in real["Policies"]] == [uniq]
    assert [s["ServiceName"] for s in real["ServiceIdentities"]] == ["web"]
    secret = real["SecretID"]
    assert secret_file.read_text().strip() == secret
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert real["AccessorID"] in ret["comment"]
    # The token works: it may write its prefix.
    assert consul_acl_agent.api("PUT", f"/v1/kv/{uniq}/x", b"1", token=secret)[0] == 200

    writes = states.stats["writes"]
    for test in (True, False):
        returns.append(states("acl_token_present", test=test, **kwargs))
        _no_changes(returns[-1])
    assert states.stats["writes"] == writes  # a compliant re-run writes nothing

    # The file lost, overwritten by another secret, or opened to others: re-written from Consul.
    for spoil, status in (
        (lambda: secret_file.unlink(), "missing"),
        (lambda: secret_file.write_text(str(uuid.uuid4())), "differs"),
        (lambda: secret_file.write_text("not a secret\n"), "differs"),
        (lambda: secret_file.chmod(0o644), "not private"),
    ):
        spoil()
        before = secret_file.read_bytes() if secret_file.exists() else None
        dry = states("acl_token_present", test=True, **kwargs)
        returns.append(dry)
        assert dry["result"] is None
        assert dry["changes"] == {"old": {}, "new": {}, "secret_file": {"path": str(secret_file), "old": status, "new": "written (0600)"}}
        assert (secret_file.read_bytes() if secret_file.exists() else None) == before
        ret = states("acl_token_present", **kwargs)
        returns.append(ret)
        assert ret["changes"] == dry["changes"]
        assert secret_file.read_text().strip() == secret
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert _token(consul_acl_agent, desc)["AccessorID"] == real["AccessorID"]

    # Another policy set: updated in place (same secret), exactly as predicted.
    kwargs2 = dict(kwargs, policies=[uniq, f"{uniq}-b"], service_identities=[])
    dry = states("acl_token_present", test=True, **kwargs2)
    returns.append(dry)
    assert dry["changes"] == {
        "old": {"Policies": [uniq], "ServiceIdentities": [{"ServiceName": "web", "Datacenters": []}]},
        "new": {"Policies": sorted([uniq, f"{uniq}-b"]), "ServiceIdentities": []},
    }
    assert [p["Name"] for p in _token(consul_acl_agent, desc)["Policies"]] == [uniq]
    ret = states("acl_token_present", **kwargs2)
    returns.append(ret)
    assert ret["changes"] == dry["changes"]
    now = _token(consul_acl_agent, desc)
    assert sorted(p["Name"] for p in now["Policies"]) == sorted([uniq, f"{uniq}-b"])
    assert not now.get("ServiceIdentities") and now["SecretID"] == secret
    _no_changes(states("acl_token_present", **kwargs2))

    dry = states("acl_token_absent", test=True, name=desc, secret_file=str(secret_file))
    returns.append(dry)
    assert dry["result"] is None and secret_file.exists() and _token(consul_acl_agent, desc)
    ret = states("acl_token_absent", name=desc, secret_file=str(secret_file))
    returns.append(ret)
    assert ret["changes"] == dry["changes"] and ret["changes"]["secret_file"]["new"] == "removed"
    assert _token(consul_acl_agent, desc) is None and not secret_file.exists()
    _no_changes(states("acl_token_absent", name=desc, secret_file=str(secret_file)))

    assert secret not in repr(returns)
    assert "/v1/acl/token" in caplog.text  # the client's request log was captured
    assert secret not in caplog.text
    for record in caplog.records:
        assert secret not in repr(record.args)


def test_token_created_with_the_secret_in_its_file(states, consul_acl_agent, uniq, tmp_path):
    states("acl_policy_present", name=uniq, rules='node_prefix "" { policy = "read" }')
    secret = str(uuid.uuid4())
    accessor = str(uuid.uuid4())
    secret_file = tmp_path / "given.token"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    kwargs = dict(name="by id", accessor_id=accessor, description=f"{uniq} given", policies=[uniq],
                  secret_file=str(secret_file))
    dry = states("acl_token_present", test=True, **kwargs)
    assert dry["changes"]["secret_file"]["old"] == "read"
    assert consul_acl_agent.api("GET", f"/v1/acl/token/{accessor}")[0] != 200
    ret = states("acl_token_present", **kwargs)
    assert ret["result"] is True and ret["changes"] == dry["changes"], ret
    real = consul_acl_agent.api_json("GET", f"/v1/acl/token/{accessor}")
    assert (real["SecretID"], real["Description"]) == (secret, f"{uniq} given")
    assert secret not in repr(ret)
    _no_changes(states("acl_token_present", **kwargs))
    # Found by AccessorID: the description is not managed unless given.
    _no_changes(states("acl_token_present", name="label only", accessor_id=accessor, policies=[uniq]))
    assert states("acl_token_absent", name="x", accessor_id=accessor)["result"] is True
    assert consul_acl_agent.api("GET", f"/v1/acl/token/{accessor}")[0] != 200


def test_token_bad_input_writes_nothing(states, consul_acl_agent, uniq, tmp_path):
    bad = tmp_path / "bad.token"
    bad.write_text("not-a-uuid\n")
    desc = f"{uniq} bad"
    for kwargs, words in (
        (dict(secret_file=str(bad)), "does not hold a UUID"),
        (dict(secret_file="relative/path"), "absolute path"),
        (dict(accessor_id="nope"), "accessor_id must be a UUID"),
        (dict(policies="", secret_file=None), "non-empty strings"),
        (dict(node_identities=["web01"]), "node_identities"),
    ):
        ret = states("acl_token_present", name=desc, **kwargs)
        assert ret["result"] is False and words in ret["comment"], ret
        assert ret["changes"] == {}
        assert "not-a-uuid" not in ret["comment"]
    assert _tokens(consul_acl_agent, desc) == []
    # A policy that does not exist: test mode says so, the apply fails and creates nothing.
    dry = states("acl_token_present", test=True, name=desc, policies=[f"{uniq}-missing"])
    assert dry["result"] is None and "must exist first" in dry["comment"]
    ret = states("acl_token_present", name=desc, policies=[f"{uniq}-missing"])
    assert ret["result"] is False and "acl_token_create_as failed" in ret["comment"], ret
    assert _tokens(consul_acl_agent, desc) == []
    # Two tokens with one description: refused, not guessed.
    for _ in range(2):
        consul_acl_agent.api_json("PUT", "/v1/acl/token", {"Description": desc})
    ret = states("acl_token_present", name=desc, policies=[])
    assert ret["result"] is False and "2 tokens have the description" in ret["comment"]
    ret = states("acl_token_absent", name=desc)
    assert ret["result"] is False and len(_tokens(consul_acl_agent, desc)) == 2
    # Local cannot change.
    tok = consul_acl_agent.api_json("PUT", "/v1/acl/token", {"Description": f"{uniq} local", "Local": True})
    ret = states("acl_token_present", name=f"{uniq} local", local=False)
    assert ret["result"] is False and "Local" in ret["comment"]
    assert consul_acl_agent.api_json("GET", f"/v1/acl/token/{tok['AccessorID']}")["Local"] is True
