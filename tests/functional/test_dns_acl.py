"""
Environment DNS names under ACL default-deny, on a real Consul agent of this
module's own (its anonymous token starts with no rights), through Salt's real
loaders and the shipped ``consul.acl`` formula (``formulas/consul/acl.sls``):

* a ``consul.env_query_present`` query without a token: NXDOMAIN;
* the same query storing a token (``query_token_file`` / ``query_token_pillar``)
  of the formula's ``salt-dns`` policy: answers; the token never shown;
* no query token, but the formula granting ``salt-dns`` to the anonymous
  token (``dns_anonymous``): answers.

DNS is asked over UDP with tools/dnsquery.py.
"""

import copy
import logging
import uuid

import pytest
from conftest import REPO, own_consul, wait_for
from dnsquery import query as dns_query
from test_states import StateCaller

ANONYMOUS = "00000000-0000-0000-0000-000000000002"
NAME = "db.prod.gg.mydc1.query.consul"  # the functional minion is db01.prod.gg.mydc1
NXDOMAIN = 3


@pytest.fixture(scope="module")
def deny_agent(tmp_path_factory):
    with own_consul("dnsdeny", tmp_path_factory, acl=True) as agent:
        body = {"Name": "db", "ID": "db-a", "Tags": ["prod", "gg"], "Port": 5432, "Address": "127.0.0.9"}
        assert agent.api("PUT", "/v1/agent/service/register", body)[0] == 200
        yield agent


@pytest.fixture(scope="module")
def query_secret(tmp_path_factory):
    """A token secret chosen up front: in pillar, and in the file the formula creates the token from."""
    secret = str(uuid.uuid4())
    root = tmp_path_factory.mktemp("dns-secret")
    (root / "dns.token").write_text(secret + "\n")
    (root / "dns.token").chmod(0o600)
    return secret, str(root / "dns.token")


@pytest.fixture(scope="module")
def dns_loaders(functional_minion, deny_agent, query_secret, tmp_path_factory):
    from saltfactories.utils.functional import Loaders

    pillar_root = tmp_path_factory.mktemp("dns-pillar")
    (pillar_root / "top.sls").write_text("base:\n  '*':\n    - dnsq\n")
    (pillar_root / "dnsq.sls").write_text(f"dnsq_token: {query_secret[0]}\n")
    opts = copy.deepcopy(functional_minion.config)
    opts["consul"] = {"address": deny_agent.http_addr, "retries": 0, "token": deny_agent.master_token}
    opts["file_roots"] = {"base": [str(REPO / "formulas")]}
    opts["pillar_roots"] = {"base": [str(pillar_root)]}
    loaders = Loaders(opts)
    try:
        yield loaders
    finally:
        loaders.reset_state()


def _apply_acl_formula(loaders, secret_file, dns_anonymous):
    pillar = {"consul_acl": {
        "dns_anonymous": dns_anonymous,
        "minion": {"services": ["db"], "dns_services": ["db"]},
        "tokens": {"salt-dns-queries": {"policies": ["salt-dns"], "secret_file": secret_file}},
    }}
    ret = loaders.modules.state.sls("consul.acl", pillar=pillar).raw
    assert isinstance(ret, dict) and len(ret) >= 4, ret
    failed = {k: v["comment"] for k, v in ret.items() if v["result"] is not True}
    assert not failed, failed
    return ret


def _dns(agent, name=NAME):
    return dns_query(agent.ports["dns"], name)


def test_dns_default_deny_query_token_or_anonymous_policy(dns_loaders, deny_agent, query_secret, caplog):
    caplog.set_level(logging.DEBUG)
    secret, secret_file = query_secret
    states = StateCaller(dns_loaders)
    returns = []

    # The shipped policies and a query token, created from the file's secret; anonymous untouched.
    returns.append(_apply_acl_formula(dns_loaders, secret_file, dns_anonymous=False))
    token = [t for t in deny_agent.api_json("GET", "/v1/acl/tokens") if t.get("Description") == "salt-dns-queries"]
    assert deny_agent.api_json("GET", f"/v1/acl/token/{token[0]['AccessorID']}")["SecretID"] == secret
    assert not deny_agent.api_json("GET", f"/v1/acl/token/{ANONYMOUS}").get("Policies")
    returns.append(_apply_acl_formula(dns_loaders, secret_file, dns_anonymous=False))
    assert all(not r["changes"] for r in returns[-1].values()), returns[-1]

    # 1. A query without a token runs as anonymous: NXDOMAIN.
    ret = states("env_query_present", name="db")
    assert ret["result"] is True, ret
    assert wait_for(lambda: _dns(deny_agent)[0] == NXDOMAIN, timeout=5)
    assert _dns(deny_agent) == (NXDOMAIN, [])

    # 2. The query stores the token from a file: predicted, applied, answers; token never shown.
    dry = states("env_query_present", test=True, name="db", query_token_file=secret_file)
    returns.append(dry)
    assert dry["result"] is None
    assert (dry["changes"]["old"]["Token"], dry["changes"]["new"]["Token"]) == ("", "<set>")
    ret = states("env_query_present", name="db", query_token_file=secret_file)
    returns.append(ret)
    assert ret["result"] is True and ret["changes"] == dry["changes"], ret
    (stored,) = [q for q in deny_agent.api_json("GET", "/v1/query") if q["Name"] == "db."]
    assert stored["Token"] == secret
    assert _dns(deny_agent) == (0, ["127.0.0.9"])
    assert _dns(deny_agent, "db.service.consul")[0] == NXDOMAIN  # only the query's names answer
    for test in (True, False):
        returns.append(states("env_query_present", test=test, name="db", query_token_file=secret_file))
        assert returns[-1]["result"] is True and returns[-1]["changes"] == {}, returns[-1]
    # The same token from pillar: nothing to change.
    returns.append(states("env_query_present", name="db", query_token_pillar="dnsq_token"))
    assert returns[-1]["result"] is True and returns[-1]["changes"] == {}, returns[-1]

    # 3. Dropping the token: back to anonymous, NXDOMAIN.
    ret = states("env_query_present", name="db")
    returns.append(ret)
    assert (ret["changes"]["old"]["Token"], ret["changes"]["new"]["Token"]) == ("<another token>", "")
    (stored,) = [q for q in deny_agent.api_json("GET", "/v1/query") if q["Name"] == "db."]
    assert not stored.get("Token")
    assert _dns(deny_agent) == (NXDOMAIN, [])

    # Bad token sources fail before anything is written.
    for kwargs, words in (
        (dict(query_token_file=secret_file, query_token_pillar="dnsq_token"), "not both"),
        (dict(query_token_file=secret_file + ".missing"), "does not exist"),
        (dict(query_token_pillar="no_such_key"), "holds no token"),
    ):
        ret = states("env_query_present", name="db", **kwargs)
        assert ret["result"] is False and words in ret["comment"] and ret["changes"] == {}, ret

    # 4. No query token, but the formula grants salt-dns to the anonymous token: answers.
    returns.append(_apply_acl_formula(dns_loaders, secret_file, dns_anonymous=True))
    anonymous = deny_agent.api_json("GET", f"/v1/acl/token/{ANONYMOUS}")
    assert [p["Name"] for p in anonymous["Policies"]] == ["salt-dns"]
    assert wait_for(lambda: _dns(deny_agent)[0] == 0, timeout=10)
    assert _dns(deny_agent) == (0, ["127.0.0.9"])
    assert _dns(deny_agent, "db.service.consul") == (0, ["127.0.0.9"])
    # An environment that has no instances stays NXDOMAIN.
    assert _dns(deny_agent, "db.dev.gg.mydc1.query.consul")[0] == NXDOMAIN

    assert secret not in repr(returns)
    assert "/v1/query" in caplog.text
    assert secret not in caplog.text
