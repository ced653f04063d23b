"""
`state.apply consul.register` with a real salt-master and two real minions in
two environments (prod and dev), against a real Consul agent.

Both minions share the test's one Consul agent, so the formula's default
service IDs (``<service>@<minion id>``) keep their registrations apart.
"""

import base64
import textwrap

import pytest
from dnsquery import query as dns_query

PROD = "web01.prod.gg.mydc1.example.com"
DEV = "web01.dev.gg.mydc1.example.com"


def _pillar(services):
    lines = ["consul_register:", "  services:"]
    for name, spec in services.items():
        lines.append(f"    {name}:")
        lines += ["      " + line for line in textwrap.dedent(spec).strip().splitlines()]
    return "\n".join(lines) + "\n"


WEB = """
port: 8080
tags: [http]
checks:
  - name: alive
    ttl: 120s
    status: passing
"""
WORKER = """
port: 9100
checks:
  - name: alive
    ttl: 120s
"""


@pytest.fixture
def register_pillar(pillar_tree):
    """Our own pillar files and top (restored afterwards: the pillar tree is shared)."""
    top = pillar_tree / "top.sls"
    original = top.read_text()
    top.write_text(
        "base:\n"
        f"  '{PROD}':\n    - consul_register_prod\n"
        f"  '{DEV}':\n    - consul_register_dev\n"
    )

    def write(env, services):
        (pillar_tree / f"consul_register_{env}.sls").write_text(_pillar(services))

    yield write
    top.write_text(original)
    for env in ("prod", "dev"):
        (pillar_tree / f"consul_register_{env}.sls").unlink(missing_ok=True)


def _apply(salt_cli, minion, test=False):
    assert salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=minion).returncode == 0
    args = ["consul.register"] + (["test=True"] if test else [])
    ret = salt_cli.run("state.apply", *args, minion_tgt=minion)
    assert ret.returncode == 0, ret
    assert isinstance(ret.data, dict) and ret.data, ret
    assert all(state["result"] in (True, None) for state in ret.data.values()), ret.data
    return ret.data


def _changed(data):
    return {state["__id__"]: state["changes"] for state in data.values() if state["changes"]}


def test_register_formula_per_environment(salt_cli, prod_minion, dev_minion, consul_agent, register_pillar):
    hand = "hand-registered-integration"
    consul_agent.api_json("PUT", "/v1/agent/service/register", {"Name": "hand", "ID": hand, "Port": 1})
    register_pillar("prod", {"web": WEB, "worker": WORKER})
    register_pillar("dev", {"web": WEB})
    try:
        dry = _apply(salt_cli, PROD, test=True)
        assert set(_changed(dry)) == {"consul-register-web", "consul-register-worker"}
        assert f"web@{PROD}" not in consul_agent.api_json("GET", "/v1/agent/services")

        first_prod = _apply(salt_cli, PROD)
        first_dev = _apply(salt_cli, DEV)
        assert set(_changed(first_prod)) == {"consul-register-web", "consul-register-worker"}
        assert set(_changed(first_dev)) == {"consul-register-web"}

        services = consul_agent.api_json("GET", "/v1/agent/services")
        prod_web, dev_web = services[f"web@{PROD}"], services[f"web@{DEV}"]
        assert prod_web["Tags"] == ["http", "prod", "gg"]
        assert dev_web["Tags"] == ["http", "dev", "gg"]
        assert prod_web["Meta"]["env"] == "prod.gg.mydc1" and dev_web["Meta"]["env"] == "dev.gg.mydc1"
        assert prod_web["Meta"]["salt_minion"] == PROD and dev_web["Meta"]["salt_minion"] == DEV
        assert services[f"worker@{PROD}"]["Port"] == 9100
        assert f"worker@{DEV}" not in services
        # Each environment finds its own instance by tags.
        prod_healthy = consul_agent.api_json("GET", "/v1/health/service/web?passing&tag=prod")
        assert [entry["Service"]["ID"] for entry in prod_healthy] == [f"web@{PROD}"]

        # A second apply changes nothing.
        assert _changed(_apply(salt_cli, PROD)) == {}
        assert _changed(_apply(salt_cli, DEV)) == {}

        # worker leaves prod's pillar: the next apply deregisters it, nothing else.
        register_pillar("prod", {"web": WEB})
        pruned = _changed(_apply(salt_cli, PROD))
        assert pruned == {"consul-register-prune": {"deregistered": [f"worker@{PROD}"]}}
        services = consul_agent.api_json("GET", "/v1/agent/services")
        assert f"worker@{PROD}" not in services
        assert {f"web@{PROD}", f"web@{DEV}", hand} <= set(services)
    finally:
        for sid in (hand, f"web@{PROD}", f"worker@{PROD}", f"web@{DEV}"):
            consul_agent.api("PUT", f"/v1/agent/service/deregister/{sid}")


def test_primary_and_dns_formulas(salt_cli, prod_minion, dev_minion, consul_agent, pillar_tree):
    """consul.primary on two minions of different environments: each holds its own env's lock;
    consul.dns makes <service>.<postfix>.query.consul resolve to that environment's primary."""
    top = pillar_tree / "top.sls"
    original = top.read_text()
    pillar = """
consul_primary:
  services:
    pgit:
      lock_delay: 1s
      checks:
        - name: alive
          ttl: 120s
          status: passing
consul_dns:
  services: [pgit]
"""
    (pillar_tree / "consul_primary_it.sls").write_text(pillar)
    top.write_text(f"base:\n  '{PROD}':\n    - consul_primary_it\n  '{DEV}':\n    - consul_primary_it\n")
    try:
        for minion in (PROD, DEV):
            assert salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=minion).returncode == 0
            for sls in ("consul.primary", "consul.dns"):
                ret = salt_cli.run("state.apply", sls, minion_tgt=minion)
                assert ret.returncode == 0, ret
                assert all(s["result"] is True for s in ret.data.values()), ret.data
        for env, minion in (("prod", PROD), ("dev", DEV)):
            entry = consul_agent.api_json("GET", f"/v1/kv/locks/pgit/{env}.gg.mydc1/leader")[0]
            assert entry["Session"]
            assert base64.b64decode(entry["Value"]).decode() == minion
        services = consul_agent.api_json("GET", "/v1/agent/services")
        assert services[f"pgit@{PROD}"]["Tags"] == ["prod", "gg"]
        rcode, answers = dns_query(consul_agent.ports["dns"], "pgit.prod.gg.mydc1.query.consul")
        assert rcode == 0 and answers == ["127.0.0.1"]  # the node's address (no service address set)
        # Re-applying on the holders changes nothing.
        again = salt_cli.run("state.apply", "consul.primary", minion_tgt=PROD)
        assert [s["changes"] for s in again.data.values()] == [{}]
    finally:
        top.write_text(original)
        (pillar_tree / "consul_primary_it.sls").unlink(missing_ok=True)
        for minion in (PROD, DEV):
            consul_agent.api("PUT", f"/v1/agent/service/deregister/pgit@{minion}")
        for query in consul_agent.api_json("GET", "/v1/query") or []:
            if query["Name"] == "pgit.":
                consul_agent.api("DELETE", f"/v1/query/{query['ID']}")
        consul_agent.api("DELETE", "/v1/kv/locks/pgit?recurse")
