"""The env grain through Salt's real grains loader."""

import pytest


@pytest.fixture
def grains_for(minion_opts):
    from saltfactories.utils.functional import Loaders

    made = []

    def _grains(minion_id, env_conf=None):
        opts = dict(minion_opts, id=minion_id)
        opts["consul"] = dict(opts["consul"], env=env_conf or {})
        loaders = Loaders(opts)
        made.append(loaders)
        return loaders.grains

    yield _grains
    for loaders in made:
        loaders.reset_state()


def test_env_grain_from_minion_id(grains_for):
    grains = grains_for("db01.prod.gg.mydc1.example.com")
    env = grains["env"]
    assert {k: env[k] for k in ("type", "group", "datacenter", "role", "postfix")} == {
        "type": "prod", "group": "gg", "datacenter": "mydc1", "role": "db", "postfix": "prod.gg.mydc1",
    }
    assert env["sources"]["type"] == "hostname"


def test_env_grain_specified_in_salt(grains_for):
    env = grains_for("localhost", {"type": "dev", "group": "gg", "datacenter": "dc2"})["env"]
    assert env["postfix"] == "dev.gg.dc2"
    assert env["sources"] == {"type": "config", "group": "config", "datacenter": "config"}


def test_env_grain_for_odd_id_is_empty_not_an_error(grains_for):
    env = grains_for("../../etc")["env"]
    assert env["type"] is None and env["postfix"] is None


def test_master_derived_environment_wins_over_the_minions_own(minion_opts):
    """consul.env() prefers the environment the ext_pillar derived on the master
    (pillar consul_env) over the minion's own parse, config and grains."""
    from saltfactories.utils.functional import Loaders

    opts = dict(minion_opts, id="web01.prod.gg.mydc1.example.com")
    opts["consul"] = dict(opts["consul"], env={"type": "prod"})  # the minion claims prod...
    opts["pillar"] = {"consul_env": {"type": "dev", "group": "gg", "datacenter": "mydc1", "role": "web",
                                     "host": "web01", "postfix": "dev.gg.mydc1"}}  # ...the master says dev
    loaders = Loaders(opts)
    try:
        env = loaders.modules.consul.env()
        assert (env["type"], env["postfix"]) == ("dev", "dev.gg.mydc1")
        assert env["sources"]["type"] == "master"
        assert loaders.modules.consul.service_name("db") == "db.dev.gg.mydc1"
        # Parsing another name is unaffected.
        assert loaders.modules.consul.env("db01.stg.x.dc9")["datacenter"] == "dc9"
    finally:
        loaders.reset_state()
