"""
The self-fencing watchdog (``formulas/failover/files/fence_watchdog.py``)
against a real Consul agent: it never demotes while this node holds the lock,
demotes at once when the lock is free or held by another minion, and demotes
after ``fence_after`` when the agent stops answering. (The partition on a
real cluster, with both databases sampled: tests/integration/test_cluster_partition.py.)
"""

import pathlib
import subprocess
import sys
import time
import uuid

import pytest
from conftest import own_consul

WATCHDOG = pathlib.Path(__file__).resolve().parents[2] / "formulas" / "failover" / "files" / "fence_watchdog.py"
ME = "db01.prod.gg.mydc1.example.com"


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    with own_consul("fence", tmp_path_factory, node_name="fence-node") as consul:
        yield consul


def watchdog(agent, key, marker, rounds, fence_after=0.5, timeout=0.3):
    """Run the watchdog for ``rounds`` rounds; its demote command appends to ``marker``."""
    started = time.monotonic()
    out = subprocess.run(
        [
            sys.executable, str(WATCHDOG), "--consul", agent.http_addr, "--key", key, "--me", ME,
            "--demote", f"echo demoted >> {marker}", "--fence-after", str(fence_after),
            "--interval", "0.1", "--timeout", str(timeout), "--rounds", str(rounds),
        ],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return out.stdout, time.monotonic() - started


def hold(agent, key, value):
    session = agent.api_json("PUT", "/v1/session/create", {"LockDelay": "0s", "TTL": "60s"})["ID"]
    assert agent.api_json("PUT", f"/v1/kv/{key}?acquire={session}", value.encode()) is True
    return session


def test_holder_is_never_fenced(agent, tmp_path):
    key = f"locks/{uuid.uuid4().hex[:6]}/leader"
    hold(agent, key, ME)
    marker = tmp_path / "demoted"
    out, _ = watchdog(agent, key, marker, rounds=15)
    assert not marker.exists() and out == ""


@pytest.mark.parametrize("holder", [None, "db02.prod.gg.mydc1.example.com"], ids=["free", "held-elsewhere"])
def test_lock_not_ours_fences_at_once_and_once(agent, tmp_path, holder):
    key = f"locks/{uuid.uuid4().hex[:6]}/leader"
    if holder:
        hold(agent, key, holder)
    marker = tmp_path / "demoted"
    out, _ = watchdog(agent, key, marker, rounds=5, fence_after=30)
    assert marker.read_text() == "demoted\n"  # once, not every round
    assert "fencing" in out and "demote done" in out


def test_silent_agent_fences_after_the_bound(agent, tmp_path):
    key = f"locks/{uuid.uuid4().hex[:6]}/leader"
    hold(agent, key, ME)
    marker = tmp_path / "demoted"
    agent.pause()
    try:
        out, _ = watchdog(agent, key, marker, rounds=6, fence_after=0.5, timeout=0.3)
    finally:
        agent.resume()
    assert marker.read_text() == "demoted\n"
    assert "not confirmed for" in out
