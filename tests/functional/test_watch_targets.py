"""
``consul_targets`` through Salt's real runner loader: targets come from the
minion IDs the master has accepted (real key files in its pki dir), never
from grains; ambiguous KV paths resolve against the environments that exist.
"""

import copy
import pathlib

import pytest
import salt.loader
from salt.exceptions import SaltInvocationError

REPO = pathlib.Path(__file__).resolve().parents[2]
MINIONS = [
    "web01.prod.gg.mydc1.example.com",
    "web02.prod.gg.mydc2.example.com",
    "web01.prod.hh.mydc1.example.com",
    "db01.dev.gg.mydc1.example.com",
    "not-an-env-host",
]


@pytest.fixture(scope="module")
def runners(salt_factories):
    factory = salt_factories.salt_master_daemon(
        "targets-master",
        overrides={"runner_dirs": [str(REPO / "_runners")], "utils_dirs": [str(REPO / "_utils")]},
    )
    opts = copy.deepcopy(factory.config)
    accepted = pathlib.Path(opts["pki_dir"]) / "minions"
    accepted.mkdir(parents=True, exist_ok=True)
    for mid in MINIONS:
        (accepted / mid).write_text("-----BEGIN PUBLIC KEY-----\n")
    # A pending (not accepted) key is never a target.
    pending = pathlib.Path(opts["pki_dir"]) / "minions_pre"
    pending.mkdir(parents=True, exist_ok=True)
    (pending / "web09.prod.gg.mydc1.example.com").write_text("-----BEGIN PUBLIC KEY-----\n")
    return salt.loader.runner(opts, utils=salt.loader.utils(opts), context={})


@pytest.mark.parametrize(
    "keys, expected",
    [
        # The ext_pillar's default layout.
        (["config/group/prod.gg/app/version"], MINIONS[:2]),
        (["config/env/prod.gg.mydc2/x"], [MINIONS[1]]),
        (["config/type/prod/pool_size"], MINIONS[:3]),
        (["config/group/prod.zz/x"], []),  # no prod/zz minion
        (["config/dc/mydc1/ntp"], [MINIONS[0], MINIONS[2], MINIONS[3]]),
        (["config/global/ntp"], MINIONS),  # the global layer: every accepted minion
        (["config/node/db01.dev.gg.mydc1.example.com/x"], [MINIONS[3]]),
        (["config/node/unknown.example.com/x"], []),
        (["other/key", "config/_probe"], []),
        (["config/group/dev.gg/a", "config/group/prod.hh/b"], [MINIONS[2], MINIONS[3]]),
    ],
)
def test_for_keys(runners, keys, expected):
    assert runners["consul_targets.for_keys"](keys) == sorted(expected)


NESTED = ["config/{datacenter}", "config/{type}", "config/{type}/{group}", "config/{type}/{group}/{datacenter}"]


@pytest.mark.parametrize(
    "keys, expected",
    [
        (["config/prod/gg/app/version"], MINIONS[:2]),  # "app" is no datacenter: the prod/gg layer
        (["config/prod/gg/mydc2/x"], [MINIONS[1]]),  # a real datacenter folder
        (["config/prod/pool_size"], MINIONS[:3]),
        (["config/prod/zz/x"], MINIONS[:3]),  # "zz" is no group: a nested key of the prod layer
        (["config/mydc1/ntp"], [MINIONS[0], MINIONS[2], MINIONS[3]]),
    ],
)
def test_for_keys_nested_layout(runners, keys, expected):
    assert runners["consul_targets.for_keys"](keys, layers=NESTED) == sorted(expected)


def test_custom_layers(runners):
    layers = ["settings/{type}", "settings/{type}/{group}"]
    assert runners["consul_targets.for_keys"](["settings/prod/hh/x"], layers=layers) == [MINIONS[2]]
    assert runners["consul_targets.for_keys"](["config/prod/hh/x"], layers=layers) == []


def test_minions_and_event(runners):
    assert runners["consul_targets.minions"](type="prod", group="gg") == sorted(MINIONS[:2])
    assert runners["consul_targets.minions"](datacenter="mydc1", role="web") == sorted([MINIONS[0], MINIONS[2]])
    event = {"prefix": "config/", "added": ["config/group/dev.gg/x"], "changed": [], "deleted": []}
    assert runners["consul_targets.for_event"](event) == [MINIONS[3]]
    assert runners["consul_targets.for_event"](dict(event, truncated=True)) == sorted(MINIONS)
    with pytest.raises(SaltInvocationError):
        runners["consul_targets.minions"](type="prod/../x")
    with pytest.raises(SaltInvocationError):
        runners["consul_targets.for_keys"]({"not": "a list"})
