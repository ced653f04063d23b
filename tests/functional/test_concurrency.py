"""
Concurrency against a real Consul: compare-and-set through the execution
module never loses an update.
"""

import multiprocessing

import pytest
from salt.exceptions import CommandExecutionError

WRITERS = 20
INCREMENTS = 50


def _increment_worker(consul_mod, key, increments, conflicts):
    """One writer process: read with its index, write back +1 with cas, retry on conflict."""
    done = 0
    lost = 0
    # Bounded: at most this many attempts in all, so a broken CAS cannot spin forever.
    for _ in range(increments * 200):
        if done == increments:
            break
        entry = consul_mod.kv_get(key, detail=True)
        try:
            consul_mod.kv_put(key, str(int(entry["value"]) + 1), cas=entry["modify_index"])
            done += 1
        except CommandExecutionError as err:
            if "CAS conflict" not in str(err):
                raise
            lost += 1
    with conflicts.get_lock():
        conflicts.value += lost
    if done != increments:
        raise SystemExit(3)


def test_twenty_writers_fifty_increments_is_exactly_1000(loaders, consul_agent, kv_prefix):
    key = f"{kv_prefix}/counter"
    consul = loaders.modules.consul
    assert consul.kv_put(key, "0") is True
    # Fork after the loaders exist: each child must build its own HTTP client
    # (the client cache is keyed by pid), as a forking salt-minion does per job.
    ctx = multiprocessing.get_context("fork")
    conflicts = ctx.Value("i", 0)
    procs = [ctx.Process(target=_increment_worker, args=(consul, key, INCREMENTS, conflicts)) for _ in range(WRITERS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    assert [proc.exitcode for proc in procs] == [0] * WRITERS
    status, raw = consul_agent.api("GET", f"/v1/kv/{key}?raw")
    assert (status, raw) == (200, str(WRITERS * INCREMENTS).encode())
    # The writers really did race (otherwise this proves nothing about CAS).
    assert conflicts.value > 0


def test_cas_conflict_is_reported_not_overwritten(loaders, consul_agent, kv_prefix):
    key = f"{kv_prefix}/cas"
    consul = loaders.modules.consul
    consul.kv_put(key, "first")
    stale = consul.kv_get(key, detail=True)["modify_index"]
    consul_agent.api("PUT", f"/v1/kv/{key}", b"someone-else")
    with pytest.raises(CommandExecutionError, match="CAS conflict"):
        consul.kv_put(key, "mine", cas=stale)
    assert consul_agent.api("GET", f"/v1/kv/{key}?raw") == (200, b"someone-else")
