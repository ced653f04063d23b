"""
sdb ``consul`` on real daemons: a minion config value ``sdb://...`` resolved
when the minion reads its config (salt-call and the restarted daemon), and a
pillar value rendered on the master with ``salt['sdb.get']``.
"""

import uuid

import pytest
import salt.utils.yaml
import salt.version
from conftest import synced_master, synced_minion

MINION = "sdb01.prod.gg.mydc1.example.com"
PREFIX = f"sdbd-{uuid.uuid4().hex[:6]}"


# Salt 3008 masks pillar values in pillar.get output unless asked not to.
UNMASK = ["unmask=True"] if salt.version.__saltstack_version__.info >= (3008,) else []


def put(agent, key, value):
    assert agent.api("PUT", f"/v1/kv/{key}", value.encode())[0] == 200
    assert agent.api("GET", f"/v1/kv/{key}?raw") == (200, value.encode())


@pytest.fixture(scope="module")
def sdb_kv(consul_agent):
    put(consul_agent, f"{PREFIX}/app/greeting", "08")  # YAML would make this 8
    put(consul_agent, f"{PREFIX}/app/master_secret", "from-master-sdb")
    yield
    consul_agent.api("DELETE", f"/v1/kv/{PREFIX}?recurse")


@pytest.fixture(scope="module")
def sdb_pillar_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdb-pillar")
    (root / "top.sls").write_text("base:\n  '*':\n    - sdbdemo\n")
    (root / "sdbdemo.sls").write_text(
        "sdbdemo:\n"
        "  secret: {{ salt['sdb.get']('sdb://consul_sdb/app/master_secret') | json }}\n"
        "  greeting: {{ salt['sdb.get']('sdb://consul_sdb/app/greeting') | json }}\n"
        "  missing: {{ salt['sdb.get']('sdb://consul_sdb/app/nothing') | json }}\n"
    )
    return root


@pytest.fixture(scope="module")
def sdb_master(salt_factories, consul_agent, state_tree, sdb_pillar_tree, sdb_kv):
    with synced_master(
        salt_factories,
        "sdb-master",
        consul_agent,
        state_tree,
        sdb_pillar_tree,
        consul_sdb={"driver": "consul", "prefix": PREFIX},
        ext_pillar=[],
    ) as factory:
        yield factory


@pytest.fixture(scope="module")
def sdb_minion(sdb_master, consul_agent):
    with synced_minion(
        sdb_master, consul_agent, MINION, consul_sdb={"driver": "consul", "prefix": PREFIX}
    ) as factory:
        yield factory


def test_minion_config_value_from_sdb(sdb_minion):
    # The driver is synced now; a config value naming it is resolved whenever
    # the minion reads its config: add one, as an operator would.
    with open(sdb_minion.config_file, encoding="utf-8") as fh:
        config = salt.utils.yaml.safe_load(fh)
    config["app_greeting"] = "sdb://consul_sdb/app/greeting"
    with open(sdb_minion.config_file, "w", encoding="utf-8") as fh:
        salt.utils.yaml.safe_dump(config, fh, default_flow_style=False)

    # config.option reads __opts__ as loaded (it does no sdb lookup of its own)
    ret = sdb_minion.salt_call_cli(timeout=120).run("config.option", "app_greeting")
    assert ret.returncode == 0, ret
    assert ret.data == "08"

    # the daemon resolves it at start too
    sdb_minion.terminate()
    sdb_minion.start()
    ret = sdb_minion.salt_call_cli(timeout=120).run("sdb.get", "sdb://consul_sdb/app/greeting")
    assert ret.data == "08"


def test_daemon_opts_resolved(sdb_master, sdb_minion):
    cli = sdb_master.salt_cli(timeout=120)
    ret = cli.run("config.option", "app_greeting", minion_tgt=MINION)
    assert ret.returncode == 0, ret
    assert ret.data == "08"


def test_pillar_value_from_sdb_on_master(sdb_master, sdb_minion, consul_agent):
    cli = sdb_master.salt_cli(timeout=120)
    ret = cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=MINION)
    assert ret.returncode == 0 and ret.data is True, ret
    ret = cli.run("pillar.get", "sdbdemo", *UNMASK, minion_tgt=MINION)
    assert ret.data == {"secret": "from-master-sdb", "greeting": "08", "missing": None}
    # a change in Consul shows at the next refresh: read, not cached
    put(consul_agent, f"{PREFIX}/app/master_secret", "rotated")
    cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=MINION)
    assert cli.run("pillar.get", "sdbdemo:secret", *UNMASK, minion_tgt=MINION).data == "rotated"


def test_cli_arguments_are_yaml_quote_to_keep_the_string(sdb_master, sdb_minion, consul_agent):
    # Salt's CLI parses every argument as YAML before the driver sees it
    # (docs/migration.md, _sdb/consul.py): 007 arrives as the number 7, and a
    # YAML-quoted '007' as the string. Both as the docs show them.
    cli = sdb_master.salt_cli(timeout=120)
    ret = cli.run("sdb.set", "sdb://consul_sdb/pin/unquoted", "007", minion_tgt=MINION)
    assert ret.returncode == 0 and ret.data is True, ret
    assert consul_agent.api("GET", f"/v1/kv/{PREFIX}/pin/unquoted?raw") == (200, b"7")
    ret = cli.run("sdb.set", "sdb://consul_sdb/pin/quoted", "'007'", minion_tgt=MINION)
    assert ret.returncode == 0 and ret.data is True, ret
    assert consul_agent.api("GET", f"/v1/kv/{PREFIX}/pin/quoted?raw") == (200, b"007")
    assert cli.run("sdb.get", "sdb://consul_sdb/pin/quoted", minion_tgt=MINION).data == "007"
