"""
Consul faults during real work: a Consul of this module's own (it is stopped,
paused with SIGSTOP and restarted), reached through a loopback TCP proxy the
test controls, so that a fault hits at an exact request.

Every case ends in a correct result or a clear failure (``result: False``
with a comment naming the cause); never a half-applied registration reported
as success, never a lost KV write. After Consul is back a re-run converges,
and a further re-run makes no write (counted on the wire by the proxy).
"""

import copy
import re
import select
import socket
import threading
import time
import uuid

import pytest
from conftest import lock_state as _lock, wait_for as _wait
from salt.exceptions import CommandExecutionError

import localconsul
import saltconsul_client
import saltconsul_pillarcache
from saltconsul_errors import ConsulUnreachable

MINION = "db01.prod.gg.mydc1.example.com"  # the functional minion's ID
TIMEOUT = 0.5  # consul:timeout for this module: a paused agent fails fast
REQUEST_LINE = re.compile(rb"(GET|PUT|POST|DELETE) (\S+) HTTP/1\.[01]\r\n")


# --------------------------------------------------------------------------- the proxy


class FaultProxy:
    """
    A loopback TCP proxy in front of a Consul agent that logs every request
    (method, path) and lets a ``trigger(n, method, path)`` decide, per request,
    what happens to it:

    ``None``
        forward it (the trigger may pause or stop the agent first);
    ``"drop"``
        close the connection without forwarding (Consul never sees it);
    ``("swallow", after)``
        forward it, wait for Consul's answer, call ``after()``, then close the
        connection without passing the answer on (applied but unconfirmed);
    ``("delay", seconds)``
        forward it only after ``seconds``.

    A request Consul was sent is always left to be answered, even when the
    client has given up; :meth:`settle` waits until all are.
    """

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seen = []
        self.trigger = None
        self._outstanding = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, name="fault-proxy", daemon=True).start()

    @property
    def address(self):
        return f"http://127.0.0.1:{self.port}"

    def reset(self):
        with self._lock:
            self.seen = []
            self.trigger = None

    def writes(self):
        return [req for req in self.seen if req[0] != "GET"]

    def close(self):
        self._stop.set()
        self.listener.close()

    def _accept(self):
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _decide(self, data):
        action = None
        for match in REQUEST_LINE.finditer(data):
            with self._lock:
                index = len(self.seen)
                method, path = match.group(1).decode(), match.group(2).decode()
                self.seen.append((method, path))
                trigger = self.trigger
            if trigger is not None and action is None:
                action = trigger(index, method, path)
        return action

    def _pending(self, delta):
        with self._lock:
            self._outstanding += delta

    def settle(self, timeout=30):
        """Until Consul has answered every request forwarded to it (bounded)."""
        return _wait(lambda: self._outstanding == 0, timeout)

    def _serve(self, client):
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
        except OSError:
            client.close()  # Consul is down: the client sees its connection dropped
            return
        socks = [client, upstream]
        after = None  # set while a swallowed request waits for Consul's answer
        waiting = False  # a forwarded request Consul has not answered yet
        deadline = None
        try:
            # Bounded: each select waits at most 0.2 s; a connection ends when
            # either side closes, the proxy stops, or (client gone) 30 s pass.
            while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
                ready, _, _ = select.select(socks, [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if sock is upstream:
                        if waiting:
                            waiting = False
                            self._pending(-1)
                        if not data or after is not None:
                            if after is not None:
                                after()
                            return
                        if client not in socks:
                            return
                        try:
                            client.sendall(data)
                        except OSError:
                            return
                        continue
                    if not data:
                        if not waiting:
                            return
                        # The client gave up (timeout): keep the connection to
                        # Consul open so that what it was sent is processed
                        # and answered, as with a real client that vanished.
                        socks = [upstream]
                        deadline = time.monotonic() + 30
                        continue
                    action = self._decide(data)
                    if action == "drop":
                        return
                    if isinstance(action, tuple) and action[0] == "swallow":
                        after = action[1]
                    if isinstance(action, tuple) and action[0] == "delay":
                        time.sleep(action[1])
                    if REQUEST_LINE.search(data) and not waiting:
                        waiting = True
                        self._pending(1)
                    upstream.sendall(data)
        except OSError:
            return
        finally:
            if waiting:
                self._pending(-1)
            client.close()
            upstream.close()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    """This module's own Consul (persisting its data across restarts, like a real one)."""
    consul = localconsul.LocalConsul("faults", persist=True, log_dir=str(tmp_path_factory.mktemp("consul-faults")))
    consul.start()
    yield consul
    consul.cleanup()


@pytest.fixture(scope="module")
def proxy(agent):
    fault_proxy = FaultProxy(agent.ports["http"])
    yield fault_proxy
    fault_proxy.close()


@pytest.fixture(autouse=True)
def healthy(agent, proxy):
    """Every test starts and ends with a running agent and a pass-through proxy."""
    proxy.reset()
    yield
    proxy.reset()
    if agent.proc is None:
        agent.start()
    else:
        agent.resume()
    agent.wait_ready(60)


def _consul_opts(proxy):
    return {"address": proxy.address, "timeout": TIMEOUT, "connect_timeout": TIMEOUT, "retries": 1, "retry_backoff": 0.05}


@pytest.fixture(scope="module")
def loaders(functional_minion, proxy, tmp_path_factory):
    from saltfactories.utils.functional import Loaders

    opts = copy.deepcopy(functional_minion.config)
    opts["consul"] = _consul_opts(proxy)
    opts["cachedir"] = str(tmp_path_factory.mktemp("faults-cache"))
    loaders = Loaders(opts)
    try:
        yield loaders
    finally:
        loaders.reset_state()


def _services(agent):
    return agent.api_json("GET", "/v1/agent/services")


def _kv_raw(agent, key):
    status, raw = agent.api("GET", f"/v1/kv/{key}?raw")
    return raw if status == 200 else None


UNREACHABLE = re.compile(r"Consul unreachable: .*(timed out|cannot reach Consul)")


# --------------------------------------------------------------------------- client bounds


def test_paused_agent_gives_a_timeout_error_after_bounded_retries(agent, proxy, loaders):
    client = saltconsul_client.get_client({"consul": dict(_consul_opts(proxy), retries=2)})
    assert client.get("/v1/status/leader")
    agent.pause()
    proxy.reset()
    with pytest.raises(ConsulUnreachable, match=r"GET /v1/kv/faults/x: Consul at .* timed out \(ReadTimeout\)"):
        client.get("/v1/kv/faults/x")
    # One try plus exactly ``retries`` more, on the wire.
    assert [(method, path.split("?")[0]) for method, path in proxy.seen] == [("GET", "/v1/kv/faults/x")] * 3
    # A write is never retried: it may have reached Consul.
    proxy.reset()
    with pytest.raises(ConsulUnreachable, match="timed out"):
        client.put("/v1/kv/faults/y", content=b"1")
    assert len(proxy.seen) == 1

    # Through the execution module: a CommandExecutionError naming operation and cause.
    proxy.reset()
    with pytest.raises(CommandExecutionError, match=r"consul\.kv_get failed: Consul unreachable: .*timed out"):
        loaders.modules.consul.kv_get("faults/x")
    assert len(proxy.seen) == 2  # consul:retries is 1 for this module
    client.close()


def test_transient_drops_are_retried_for_reads_only(agent, proxy):
    client = saltconsul_client.get_client({"consul": dict(_consul_opts(proxy), retries=2)})
    # The first two attempts are dropped before Consul sees them: the third answers.
    proxy.trigger = lambda n, method, path: "drop" if n < 2 else None
    assert client.get("/v1/status/leader")
    assert len(proxy.seen) == 3
    # Three drops exhaust the retries: a clear error, no fourth try.
    proxy.reset()
    proxy.trigger = lambda n, method, path: "drop"
    with pytest.raises(ConsulUnreachable, match="cannot reach Consul"):
        client.get("/v1/status/leader")
    assert len(proxy.seen) == 3
    # A dropped write is reported, not retried, and nothing was written.
    proxy.reset()
    proxy.trigger = lambda n, method, path: "drop"
    with pytest.raises(ConsulUnreachable):
        client.put("/v1/kv/faults/dropped", content=b"1")
    assert len(proxy.seen) == 1
    assert _kv_raw(agent, "faults/dropped") is None
    client.close()


# --------------------------------------------------------------------------- state.apply, many services


def _sls(prefix, count):
    blocks = []
    for i in range(count):
        blocks.append(
            f"""
{prefix}-{i:02d}:
  consul.service_present:
    - service_id: {prefix}-{i:02d}@{MINION}
    - port: {9000 + i}
    - tags: [faults, n{i}]
    - checks:
      - name: alive
        ttl: 120s
"""
        )
    return "".join(blocks)


def _apply(loaders, sls):
    return loaders.modules.state.template_str(sls).raw


def _check_service(agent, sid, i):
    svc = _services(agent).get(sid)
    assert svc is not None, sid
    assert svc["Port"] == 9000 + i and svc["Tags"] == ["faults", f"n{i}"]
    assert svc["Meta"]["managed_by"] == "salt-consul" and svc["Meta"]["salt_minion"] == MINION
    checks = agent.api_json("GET", "/v1/agent/checks")
    assert f"service:{sid}:alive" in checks


@pytest.mark.parametrize("fault", ["stopped", "paused"])
def test_state_apply_30_services_with_consul_failing_midway(agent, proxy, loaders, fault):
    prefix = f"f{fault[0]}{uuid.uuid4().hex[:5]}"
    count = 30
    sls = _sls(prefix, count)
    registrations = []

    if fault == "stopped":
        # The 20th registration reaches Consul and is applied, then Consul
        # stops before its answer gets back: applied but unconfirmed.
        def trigger(n, method, path):
            if path.startswith("/v1/agent/service/register"):
                registrations.append(n)
                if len(registrations) == 20:
                    return ("swallow", crash)
            return None

        def crash():
            proxy.trigger = lambda *_: "drop"  # nothing more reaches Consul
            agent.stop()

    else:
        # Consul hangs (SIGSTOP) just as the 26th registration is sent.
        def trigger(n, method, path):
            if path.startswith("/v1/agent/service/register"):
                registrations.append(n)
                if len(registrations) == 26:
                    agent.pause()
            return None

    proxy.trigger = trigger
    states = _apply(loaders, sls)
    proxy.trigger = None
    assert len(states) == count
    ok = {s["__id__"] for s in states.values() if s["result"] is True}
    failed = {s["__id__"]: s["comment"] for s in states.values() if s["result"] is False}
    assert set(ok) | set(failed) == {f"{prefix}-{i:02d}" for i in range(count)}  # never None
    assert ok and failed, (ok, failed)
    for comment in failed.values():
        assert UNREACHABLE.search(comment), comment
    for state in states.values():
        if state["result"] is False:
            assert state["changes"] == {}

    if fault == "stopped":
        agent.start()
    else:
        agent.resume()
    agent.wait_ready(60)
    assert proxy.settle()
    # Every success is really there, exactly as declared.
    for ident in ok:
        _check_service(agent, f"{ident}@{MINION}", int(ident.rsplit("-", 1)[1]))
    # Apart from successes, at most the one registration in flight when Consul
    # went away may have been applied (it was reported as a failure).
    ours = {sid.split("@")[0] for sid in _services(agent) if sid.startswith(prefix)}
    assert ok <= ours and len(ours - ok) <= 1, (sorted(ours - ok), sorted(ok))

    # Consul is back: a re-run converges...
    proxy.reset()
    again = _apply(loaders, sls)
    assert all(s["result"] is True for s in again.values()), [s["comment"] for s in again.values() if not s["result"]]
    for i in range(count):
        _check_service(agent, f"{prefix}-{i:02d}@{MINION}", i)
    changed = {s["__id__"] for s in again.values() if s["changes"]}
    assert changed == {f"{prefix}-{i:02d}" for i in range(count)} - ours
    # ...and a further re-run writes nothing.
    proxy.reset()
    third = _apply(loaders, sls)
    assert all(s["result"] is True and s["changes"] == {} for s in third.values())
    assert proxy.writes() == []
    for sid in [sid for sid in _services(agent) if sid.startswith(prefix)]:
        agent.api("PUT", f"/v1/agent/service/deregister/{sid}")


# --------------------------------------------------------------------------- KV key_present


def _state(loaders, fun, **kwargs):
    import salt.loader

    states = salt.loader.states(
        dict(loaders.opts, test=False),
        functions=loaders.modules,
        utils=loaders.utils,
        serializers=loaders.serializers,
        context=loaders.context,
    )
    return states[f"consul.{fun}"](**kwargs)


def test_key_present_with_consul_paused_at_the_write(agent, proxy, loaders):
    key = f"faults/kv/{uuid.uuid4().hex[:6]}"
    agent.api("PUT", f"/v1/kv/{key}", b"old")
    proxy.trigger = lambda n, method, path: agent.pause() if method == "PUT" else None
    ret = _state(loaders, "key_present", name=key, value="new")
    proxy.trigger = None
    assert ret["result"] is False and ret["changes"] == {}
    assert UNREACHABLE.search(ret["comment"]) and "kv_put" in ret["comment"], ret["comment"]
    agent.resume()
    # The write was sent before the pause: Consul applies it once it runs
    # again, although it was reported as a failure (so the caller re-applies;
    # the check-and-set index it carries still matches, nobody else wrote).
    assert proxy.settle()
    assert _kv_raw(agent, key) == b"new"
    proxy.reset()
    again = _state(loaders, "key_present", name=key, value="new")
    assert again["result"] is True, again
    assert _kv_raw(agent, key) == b"new"
    proxy.reset()
    third = _state(loaders, "key_present", name=key, value="new")
    assert third["result"] is True and third["changes"] == {} and proxy.writes() == []


def test_slow_key_present_write_never_clobbers_a_newer_write(agent, proxy, loaders):
    """
    Consul answers the read, then the write is delayed past the client timeout;
    meanwhile another writer changes the key. The late write arrives with the
    old index and is refused by check-and-set: the other writer's value stays.
    """
    key = f"faults/kv/{uuid.uuid4().hex[:6]}"
    agent.api("PUT", f"/v1/kv/{key}", b"v1")

    def trigger(n, method, path):
        if method == "PUT":
            assert agent.api("PUT", f"/v1/kv/{key}", b"other-writer")[0] == 200
            return ("delay", TIMEOUT * 3)
        return None

    proxy.trigger = trigger
    ret = _state(loaders, "key_present", name=key, value="mine")
    assert ret["result"] is False and UNREACHABLE.search(ret["comment"]), ret["comment"]
    assert proxy.settle()  # Consul has answered the late write
    proxy.trigger = None
    assert _kv_raw(agent, key) == b"other-writer"
    # A re-run compares against the value now there and converges.
    again = _state(loaders, "key_present", name=key, value="mine")
    assert again["result"] is True and again["changes"]["value"] == {"old": "other-writer", "new": "mine"}
    assert _kv_raw(agent, key) == b"mine"


# --------------------------------------------------------------------------- lock acquisition


@pytest.mark.parametrize("where", ["session", "acquire", "reveal"])
def test_lock_acquisition_with_consul_paused(agent, proxy, loaders, where):
    service = f"pg{where[0]}{uuid.uuid4().hex[:5]}"
    key = f"faults/locks/{service}"
    sid = f"{service}@{MINION}"
    spec = dict(
        name=service,
        service_id=sid,
        lock_key=key,
        lock_delay="1s",
        wait_passing=5,
        checks=[{"name": "alive", "ttl": "120s", "status": "passing"}],
    )
    # Pause as the check-tied session is created, as the lock is taken with
    # it, or as the standby check that hides the instance is removed.
    marker = {
        "session": "/v1/session/create",
        "acquire": "?acquire=",
        "reveal": "/v1/agent/check/deregister/salt-consul-standby",
    }[where]
    proxy.trigger = lambda n, method, path: agent.pause() if marker in path else None
    ret = _state(loaders, "single_holder_service", **spec)
    proxy.trigger = None
    assert ret["result"] is False and ret["changes"] == {}
    assert UNREACHABLE.search(ret["comment"]), ret["comment"]
    agent.resume()
    agent.wait_ready(60)
    assert proxy.settle()
    # Whatever reached Consul before the pause: nobody else holds the lock. With
    # Consul paused the cleanup could not run either, and the comment says so.
    session, holder = _lock(agent, key)
    assert holder in (None, MINION)
    assert "cleanup failed" in ret["comment"] and "re-apply" in ret["comment"]
    # The instance may be left registered, but hidden (its standby check is
    # critical) unless this minion holds the lock.
    passing = [e["Service"]["ID"] for e in agent.api_json("GET", f"/v1/health/service/{service}?passing")]
    assert passing == ([sid] if holder == MINION and where == "reveal" else []) or passing == [], passing

    # A re-run converges: the lock held by a session tied to the service's check.
    proxy.reset()
    again = _state(loaders, "single_holder_service", **spec)
    assert again["result"] is True, again
    session, holder = _lock(agent, key)
    assert session and holder == MINION
    info = agent.api_json("GET", f"/v1/session/info/{session}")[0]
    assert [c["ID"] for c in info["ServiceChecks"]] == [f"service:{sid}:alive"]
    assert [s for s in _services(agent) if s.startswith(service)] == [sid]
    proxy.reset()
    third = _state(loaders, "single_holder_service", **spec)
    assert third["result"] is True and third["changes"] == {} and proxy.writes() == []
    agent.api("PUT", f"/v1/agent/service/deregister/{sid}")
    agent.api("PUT", f"/v1/session/destroy/{session}")


# --------------------------------------------------------------------------- pillar compile


@pytest.fixture(scope="module")
def master_opts(salt_factories, tmp_path_factory, proxy):
    import pathlib

    repo = pathlib.Path(__file__).resolve().parents[2]
    pillar_root = tmp_path_factory.mktemp("faults-pillar")
    (pillar_root / "top.sls").write_text("base: {}\n")
    factory = salt_factories.salt_master_daemon(
        "faults-master",
        overrides={
            "pillar_dirs": [str(repo / "_pillar")],
            "utils_dirs": [str(repo / "_utils")],
            "pillar_roots": {"base": [str(pillar_root)]},
        },
    )
    opts = copy.deepcopy(factory.config)
    opts["cachedir"] = str(tmp_path_factory.mktemp("faults-master-cache"))
    opts["consul"] = _consul_opts(proxy)
    return opts


def _compile(opts, minion_id):
    import salt.pillar

    pillar = salt.pillar.Pillar(copy.deepcopy(opts), {"id": minion_id}, minion_id, "base")
    return pillar.compile_pillar()


@pytest.mark.parametrize("revalidate", ["always", "watch"])
def test_pillar_compile_with_consul_paused_then_restarted(agent, proxy, master_opts, revalidate):
    prefix = f"fp{uuid.uuid4().hex[:6]}"
    agent.api("PUT", f"/v1/kv/{prefix}/global/db/pool", b"10")
    agent.api("PUT", f"/v1/kv/{prefix}/type/prod/db/password", b"s3cret")
    opts = copy.deepcopy(master_opts)
    opts["ext_pillar"] = [
        {"consul": {"layers": [f"{prefix}/global", f"{prefix}/type/{{type}}"], "revalidate": revalidate, "watch_wait": 2}}
    ]
    saltconsul_pillarcache.reset()
    try:
        fresh = _compile(opts, MINION)
        assert fresh["db"] == {"pool": "10", "password": "s3cret"} and "consul_pillar" not in fresh

        agent.pause()
        # A compile that has to ask Consul (a minion of another environment, so
        # a layer never fetched) ends in a clear pillar error naming the timeout.
        never = _compile(opts, "web01.dev.gg.mydc1.example.com")
        assert "db" not in never
        assert any("timed out" in err and "no last good copy" in err for err in never["_errors"]), never["_errors"]
        # The seen minion: the last good pillar, marked stale (the index check
        # timed out, or the watch thread's blocking query did and disarmed it).
        assert _wait(lambda: _compile(opts, MINION).get("consul_pillar", {}).get("stale") is True, timeout=30)
        stale = _compile(opts, MINION)
        assert stale["db"] == fresh["db"] and "_errors" not in stale

        agent.resume()
        agent.api("PUT", f"/v1/kv/{prefix}/global/db/pool", b"20")
        back = _compile(opts, MINION)
        assert back["db"] == {"pool": "20", "password": "s3cret"} and "consul_pillar" not in back

        # A restart (data kept): stale while down, fresh (with a newer write) after.
        agent.stop()
        assert _wait(lambda: _compile(opts, MINION).get("consul_pillar", {}).get("stale") is True, timeout=30)
        agent.start()
        agent.api("PUT", f"/v1/kv/{prefix}/global/db/pool", b"30")
        after = _compile(opts, MINION)
        assert after["db"] == {"pool": "30", "password": "s3cret"} and "consul_pillar" not in after
    finally:
        saltconsul_pillarcache.reset()
        if agent.proc is None:
            agent.start()
        else:
            agent.resume()
        agent.api("DELETE", f"/v1/kv/{prefix}?recurse")
