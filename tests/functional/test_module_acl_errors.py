"""
consul.acl_* against a real default-deny ACL agent, and the four error kinds
(permission denied, not found, CAS conflict, unreachable): each its own clear
message, none carrying a token.
"""

import copy
import logging
import os
import stat
import uuid

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

import localconsul


@pytest.fixture(scope="module")
def acl_loaders(functional_minion, consul_acl_agent):
    from saltfactories.utils.functional import Loaders

    opts = copy.deepcopy(functional_minion.config)
    opts["consul"] = {"address": consul_acl_agent.http_addr, "retries": 0, "token": consul_acl_agent.master_token}
    loaders = Loaders(opts)
    try:
        yield loaders
    finally:
        loaders.reset_state()


@pytest.fixture
def consul(acl_loaders):
    return acl_loaders.modules.consul


@pytest.fixture
def uniq(consul_acl_agent):
    name = "acl-" + uuid.uuid4().hex[:8]
    yield name
    for tok in consul_acl_agent.api_json("GET", "/v1/acl/tokens"):
        if (tok.get("Description") or "").startswith(name):
            consul_acl_agent.api("DELETE", f"/v1/acl/token/{tok['AccessorID']}")
    for pol in consul_acl_agent.api_json("GET", "/v1/acl/policies"):
        if pol["Name"].startswith(name):
            consul_acl_agent.api("DELETE", f"/v1/acl/policy/{pol['ID']}")
    consul_acl_agent.api("DELETE", f"/v1/kv/{name}?recurse")


def test_policy_crud(consul, consul_acl_agent, uniq):
    rules = f'key_prefix "{uniq}/" {{ policy = "read" }}'
    created = consul.acl_policy_create(uniq, rules=rules, description="read app keys")
    real = consul_acl_agent.api_json("GET", f"/v1/acl/policy/{created['ID']}")
    assert (real["Name"], real["Rules"], real["Description"]) == (uniq, rules, "read app keys")
    assert consul.acl_policy_read(created["ID"])["Name"] == uniq
    assert consul.acl_policy_read(name=uniq)["ID"] == created["ID"]
    assert uniq in [p["Name"] for p in consul.acl_policy_list()]
    new_rules = f'key_prefix "{uniq}/" {{ policy = "write" }}'
    updated = consul.acl_policy_update(created["ID"], rules=new_rules, datacenters=["acl1"])
    assert updated["Rules"] == new_rules
    real = consul_acl_agent.api_json("GET", f"/v1/acl/policy/{created['ID']}")
    assert (real["Rules"], real["Description"], real["Datacenters"]) == (new_rules, "read app keys", ["acl1"])
    assert consul.acl_policy_delete(created["ID"]) is True
    assert consul_acl_agent.api("GET", f"/v1/acl/policy/{created['ID']}")[0] in (403, 404)
    assert consul.acl_policy_read(created["ID"]) is None
    assert consul.acl_policy_read(name=uniq) is None
    with pytest.raises(SaltInvocationError):
        consul.acl_policy_read()


def test_token_crud_secret_never_returned(consul, consul_acl_agent, uniq, tmp_path):
    policy = consul.acl_policy_create(uniq, rules=f'key_prefix "{uniq}/" {{ policy = "write" }}')
    secret_file = tmp_path / "sub" / "app.token"
    created = consul.acl_token_create(
        description=f"{uniq} app", policies=[uniq], service_identities=["web"], secret_file=str(secret_file)
    )
    assert created["SecretID"] == "<hidden>"
    accessor = created["AccessorID"]
    real = consul_acl_agent.api_json("GET", f"/v1/acl/token/{accessor}")
    secret = real["SecretID"]
    assert secret_file.read_text().strip() == secret
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    assert [p["Name"] for p in real["Policies"]] == [uniq]
    assert real["ServiceIdentities"] == [{"ServiceName": "web"}]
    # The written secret really works, and only for what the policy allows.
    assert consul_acl_agent.api("PUT", f"/v1/kv/{uniq}/x", b"1", token=secret)[0] == 200
    assert consul_acl_agent.api("PUT", "/v1/kv/elsewhere", b"1", token=secret)[0] == 403
    for shown in (consul.acl_token_read(accessor), *consul.acl_token_list()):
        assert secret not in repr(shown)
    assert consul.acl_token_read(accessor)["Description"] == f"{uniq} app"
    assert accessor in [t["AccessorID"] for t in consul.acl_token_list(policy=policy["ID"])]
    updated = consul.acl_token_update(accessor, description=f"{uniq} renamed", policies=[])
    assert updated["SecretID"] == "<hidden>"
    real = consul_acl_agent.api_json("GET", f"/v1/acl/token/{accessor}")
    assert (real["Description"], real.get("Policies"), real["SecretID"]) == (f"{uniq} renamed", None, secret)
    assert real["ServiceIdentities"] == [{"ServiceName": "web"}]  # untouched fields stay
    assert consul.acl_token_delete(accessor) is True
    assert consul.acl_token_read(accessor) is None
    assert consul_acl_agent.api("GET", "/v1/kv/x", token=secret)[0] == 403


def test_four_error_kinds_are_distinct_and_tokenless(consul, consul_acl_agent, uniq, caplog, minion_opts):
    from saltfactories.utils.functional import Loaders

    caplog.set_level(logging.DEBUG)
    bogus = "deadbeef-0000-4000-8000-" + uuid.uuid4().hex[:12]
    limited = consul_acl_agent.api_json(
        "PUT", "/v1/acl/policy", {"Name": f"{uniq}-ro", "Rules": f'key_prefix "{uniq}/" {{ policy = "read" }}'}
    )
    weak = consul_acl_agent.api_json(
        "PUT", "/v1/acl/token", {"Description": f"{uniq} weak", "Policies": [{"ID": limited["ID"]}]}
    )["SecretID"]
    messages = {}

    with pytest.raises(CommandExecutionError) as exc:
        consul.kv_put(f"{uniq}/k", "v", token=weak)  # read-only token
    messages["denied"] = str(exc.value)
    with pytest.raises(CommandExecutionError) as exc:
        consul.kv_get(f"{uniq}/k", token=bogus)  # unknown token
    messages["unknown-token"] = str(exc.value)
    with pytest.raises(CommandExecutionError) as exc:
        consul.service_maintenance(f"{uniq}-nope", True)
    messages["not-found"] = str(exc.value)
    consul.kv_put(f"{uniq}/c", "1")
    with pytest.raises(CommandExecutionError) as exc:
        consul.kv_put(f"{uniq}/c", "2", cas=1)
    messages["cas"] = str(exc.value)
    minion_opts["consul"] = {"address": f"http://127.0.0.1:{localconsul.free_port()}", "retries": 0, "token": bogus}
    dead = Loaders(minion_opts)
    try:
        with pytest.raises(CommandExecutionError) as exc:
            dead.modules.consul.kv_get(f"{uniq}/k")
        messages["unreachable"] = str(exc.value)
    finally:
        dead.reset_state()

    assert messages["denied"].startswith("consul.kv_put failed: permission denied:")
    assert messages["unknown-token"].startswith("consul.kv_get failed: permission denied:")
    assert "ACL not found" in messages["unknown-token"]
    assert messages["not-found"].startswith("consul.service_maintenance failed: not found:")
    assert messages["cas"].startswith("consul.kv_put failed: CAS conflict:")
    assert messages["unreachable"].startswith("consul.kv_get failed: Consul unreachable:")
    assert "127.0.0.1" in messages["unreachable"]
    assert consul_acl_agent.api("GET", f"/v1/kv/{uniq}/k")[0] == 404  # the denied write wrote nothing
    for secret in (bogus, weak, consul_acl_agent.master_token):
        for message in messages.values():
            assert secret not in message
        assert secret not in caplog.text


def test_acl_bad_arguments(consul):
    with pytest.raises(SaltInvocationError):
        consul.acl_token_create(policies=[5])
    with pytest.raises(SaltInvocationError):
        consul.acl_token_create(expiration_ttl="soon")
    with pytest.raises(SaltInvocationError):
        consul.acl_policy_create("")
