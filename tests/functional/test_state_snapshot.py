"""
One agent read per state run: the service/check states of one ``state.apply``
(Salt's own ``salt.state.State``) plan against one snapshot of the local
agent's services and checks, invalidated by the run's own writes, never kept
across runs. Requests are counted by the shared client; Consul is checked
directly.
"""

import uuid

import pytest
import salt.loader
import salt.state

import saltconsul_client

N = 20


@pytest.fixture
def run(minion_opts):
    """Apply an SLS string as state.apply does; returns (results, requests, writes) of that run."""
    opts = dict(minion_opts, test=False)

    def apply(sls, test=False):
        context = {}
        state = salt.state.State(dict(opts, test=test), context=context)
        result = state.call_template_str(sls)
        assert isinstance(result, dict), result
        stats = saltconsul_client.get_client(opts, context).stats
        return result, stats["requests"], stats["writes"]

    return apply


@pytest.fixture
def sids(consul_agent):
    tag = uuid.uuid4().hex[:8]
    ids = [f"snap-{tag}-{i:02d}" for i in range(N)]
    yield ids
    for sid in ids:
        consul_agent.api("PUT", f"/v1/agent/service/deregister/{sid}")


def _sls(sids, port=7000):
    return "".join(
        f"""
{sid}:
  consul.service_present:
    - name: snap
    - service_id: {sid}
    - port: {port + i}
    - checks:
      - name: alive
        ttl: 300s
"""
        for i, sid in enumerate(sids)
    )


def _agent_services(agent, prefix):
    return {sid: svc for sid, svc in agent.api_json("GET", "/v1/agent/services").items() if sid.startswith(prefix)}


def test_compliant_run_reads_the_agent_once(run, sids, consul_agent):
    prefix = sids[0][:13]
    first, first_requests, first_writes = run(_sls(sids))
    assert all(r["result"] is True and r["changes"] for r in first.values())
    # N registrations, plus the snapshot's two reads (services, checks).
    assert first_writes == N
    assert first_requests - first_writes <= 3, first_requests
    assert len(_agent_services(consul_agent, prefix)) == N

    predicted, test_requests, test_writes = run(_sls(sids), test=True)
    assert test_writes == 0 and test_requests <= 3
    assert all(r["result"] is True and not r["changes"] for r in predicted.values())

    second, requests, writes = run(_sls(sids))
    assert all(r["result"] is True and not r["changes"] for r in second.values()), second
    assert writes == 0
    assert requests <= 3, requests


def test_a_change_made_between_runs_is_seen_by_the_next_run(run, sids, consul_agent):
    sls = _sls(sids[:3])
    run(sls)
    # Someone changes one registration by hand between two runs.
    svc = consul_agent.api_json("GET", f"/v1/agent/service/{sids[1]}")
    body = {"Name": "snap", "ID": sids[1], "Port": 1, "Meta": svc["Meta"], "Tags": svc["Tags"]}
    assert consul_agent.api("PUT", "/v1/agent/service/register", body)[0] == 200
    result, _, writes = run(sls)
    changed = [r for r in result.values() if r["changes"]]
    assert len(changed) == 1 and changed[0]["changes"]["port"] == {"old": 1, "new": 7001}
    assert writes == 1
    assert consul_agent.api_json("GET", f"/v1/agent/service/{sids[1]}")["Port"] == 7001


def test_a_write_inside_the_run_invalidates_the_snapshot(run, sids, consul_agent):
    sid = sids[0]
    # The same service declared twice in one run, then removed in the same run:
    # the second state must see the first one's registration (no second
    # write), and the absent state must see it too (and remove it).
    sls = f"""
first:
  consul.service_present:
    - name: snap
    - service_id: {sid}
    - port: 7100
second:
  consul.service_present:
    - name: snap
    - service_id: {sid}
    - port: 7100
    - require:
      - consul: first
gone:
  consul.service_absent:
    - name: {sid}
    - require:
      - consul: second
"""
    result, _, writes = run(sls)
    by_id = {r["__id__"]: r for r in result.values()}
    assert by_id["first"]["result"] is True and by_id["first"]["changes"]
    assert by_id["second"]["result"] is True and by_id["second"]["changes"] == {}, by_id["second"]
    assert by_id["gone"]["result"] is True and by_id["gone"]["changes"]["old"]["id"] == sid
    assert writes == 2  # one registration, one deregistration
    status, _ = consul_agent.api("GET", f"/v1/agent/service/{sid}")
    assert status == 404


def test_outside_a_state_run_every_call_reads_the_agent(minion_opts, sids, consul_agent):
    """A direct call (no state run) never uses a snapshot: two calls, two fresh reads."""
    from saltfactories.utils.functional import Loaders

    loaders = Loaders(minion_opts)
    try:
        states = salt.loader.states(
            dict(loaders.opts, test=False), loaders.modules, loaders.utils, loaders.serializers, context=loaders.context
        )
        ret = states["consul.service_present"]("snap", service_id=sids[0], port=7200)
        assert ret["result"] is True and ret["changes"]
        consul_agent.api("PUT", f"/v1/agent/service/deregister/{sids[0]}")
        again = states["consul.service_present"]("snap", service_id=sids[0], port=7200)
        assert again["result"] is True and again["changes"], again  # saw it gone
    finally:
        loaders.reset_state()
