"""
The failover formula promotes only the lock holder (``formulas/failover``):
a candidate that found the lock free when the SLS rendered but lost it to
another healthy minion before promoting stands by (``True``) and must not
promote. Made deterministic with the formula's own ``ready`` step: the test's
``ready`` command hands the lock to another minion just before the lock
state runs. Real Consul, Salt's real state system (``state.sls``).
"""

import copy
import pathlib
import sys

import pytest
from conftest import lock_state

REPO = pathlib.Path(__file__).resolve().parents[2]
ME = "db01.prod.gg.mydc1.example.com"
OTHER = "db02.prod.gg.mydc1.example.com"

GRAB = """
import json, sys, urllib.request
addr, key, who = sys.argv[1:4]
def put(path, body):
    req = urllib.request.Request(addr + path, data=body, method="PUT")
    return json.loads(urllib.request.urlopen(req, timeout=5).read())
session = put("/v1/session/create", json.dumps({"Name": "other", "LockDelay": "0s", "TTL": "60s"}).encode())["ID"]
assert put(f"/v1/kv/{key}?acquire={session}", who.encode()) is True
"""


@pytest.fixture
def formula_loaders(functional_minion, consul_agent, tmp_path):
    from saltfactories.utils.functional import Loaders

    opts = copy.deepcopy(functional_minion.config)
    opts.update(
        id=ME,
        cachedir=str(tmp_path / "cache"),
        file_client="local",
        file_roots={"base": [str(REPO / "formulas")]},
    )
    opts["consul"] = {"address": consul_agent.http_addr, "retries": 0}
    loaders = Loaders(opts)
    yield loaders
    loaders.reset_state()


@pytest.mark.parametrize("lost_race", [False, True], ids=["holder-promotes", "race-loser-does-not"])
def test_promote_only_while_holding_the_lock(formula_loaders, consul_agent, tmp_path, lost_race):
    key = f"locks/gate{tmp_path.name[-6:]}/leader"
    grab = tmp_path / "grab.py"
    grab.write_text(GRAB)
    promoted = tmp_path / "promoted"
    spec = {
        "lock_key": key,
        "lock_delay": "1s",
        "wait_passing": 3,
        "checks": [{"name": "alive", "ttl": "60s", "status": "passing"}],
        "promote": {"cmd": f"touch {promoted}"},
        "id": f"gate@{ME}",
    }
    if lost_race:
        spec["ready"] = {"cmd": f"{sys.executable} {grab} {consul_agent.http_addr} {key} {OTHER}"}
    pillar = {"consul_failover": {"services": {"gate": spec}, "env_tags": False}}
    try:
        ret = formula_loaders.modules.state.sls("failover", pillar=pillar)
        results = {v["__id__"]: v for v in ret.raw.values()}
        lock = results["failover-gate-lock"]
        assert lock["result"] is True, lock
        promote = results["failover-gate-promote"]
        session, holder = lock_state(consul_agent, key)
        if lost_race:
            assert holder == OTHER and "Standing by" in lock["comment"], lock
            assert not promoted.exists(), promote
            assert promote["result"] is True and "onlyif" in promote["comment"], promote
        else:
            assert holder == ME and "Took the lock" in lock["comment"], lock
            assert promoted.exists(), promote
    finally:
        consul_agent.api("PUT", f"/v1/agent/service/deregister/gate@{ME}")
        session, _ = lock_state(consul_agent, key)
        if session:
            consul_agent.api("PUT", f"/v1/session/destroy/{session}")
        consul_agent.api("DELETE", f"/v1/kv/{key}")
