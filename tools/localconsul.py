"""
Start and stop real Consul agents on loopback for tests, the demo and the bench.

    agent = LocalConsul(datacenter="dc1", acl=False).start()
    agent.http_addr            # "http://127.0.0.1:PORT"
    agent.restart(); agent.pause(); agent.resume(); agent.stop()

Every port is a free loopback port picked at start; every wait is bounded.
Agents run as single-node servers (``-dev``-like: in-memory unless a data dir
is kept for restarts), so KV survives ``restart()`` only with ``persist=True``.
For a real topology (several servers, a client agent per node), see
``tools/cluster.py``, which builds on this class (``server=False``,
``bootstrap_expect``, ``retry_join``).
"""

import contextlib
import json
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_BIN = os.path.join(HERE, "bin", "consul")


def consul_binary():
    """
    ``$CONSUL_BIN`` when set (any Consul a user has: ``CONSUL_BIN=/path/to/consul
    make test``), else tools/bin/consul (installed by tools/install-consul.sh),
    else one on PATH.
    """
    chosen = os.environ.get("CONSUL_BIN")
    if chosen:
        if not os.access(chosen, os.X_OK):
            raise RuntimeError(f"CONSUL_BIN={chosen!r} is not an executable file")
        return chosen
    if os.access(DEFAULT_BIN, os.X_OK):
        return DEFAULT_BIN
    found = shutil.which("consul")
    if found:
        return found
    raise RuntimeError("no consul binary: run `bash tools/install-consul.sh` (make does it)")


_VERSIONS = {}


def consul_version(binary=None):
    """The (major, minor, patch) of a Consul binary, from ``consul version`` (cached)."""
    binary = binary or consul_binary()
    if binary not in _VERSIONS:
        out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30, check=True).stdout
        _VERSIONS[binary] = parse_version(out)
    return _VERSIONS[binary]


def parse_version(text):
    """``Consul v1.15.2+ent`` (first line of ``consul version``) -> (1, 15, 2)."""
    match = re.search(r"Consul v(\d+)\.(\d+)\.(\d+)", text or "")
    if not match:
        raise RuntimeError(f"cannot tell the Consul version from {text[:80]!r}")
    return tuple(int(part) for part in match.groups())


def adapt_config(conf, version):
    """
    Agent configuration written in Consul 1.8's vocabulary, rewritten for
    ``version`` from Consul's documented changes (a new dict; pure, unit-tested):

    * 1.11: ``acl.tokens.master`` -> ``initial_management``, ``agent_master`` ->
      ``agent_recovery`` (the old names are deprecated);
    * 1.12: the top-level TLS keys move into the ``tls {}`` stanza
      (``tls.defaults``, ``tls.https``, ``tls.internal_rpc``);
    * 1.14: ``ports.grpc_tls`` exists (8503 by default on servers): ``-1`` when
      ``ports.grpc`` is, so several agents on one host never collide.
    """
    conf = json.loads(json.dumps(conf))
    tokens = (conf.get("acl") or {}).get("tokens")
    if tokens and version >= (1, 11, 0):
        for old, new in (("master", "initial_management"), ("agent_master", "agent_recovery")):
            if old in tokens:
                tokens[new] = tokens.pop(old)
    if version >= (1, 12, 0):
        tls = {}
        defaults = {k: conf.pop(k) for k in ("ca_file", "ca_path", "cert_file", "key_file", "verify_outgoing") if k in conf}
        if "verify_incoming" in conf:
            defaults["verify_incoming"] = conf.pop("verify_incoming")
        if defaults:
            tls["defaults"] = defaults
        if "verify_incoming_https" in conf:
            tls["https"] = {"verify_incoming": conf.pop("verify_incoming_https")}
        if "verify_incoming_rpc" in conf:
            tls["internal_rpc"] = {"verify_incoming": conf.pop("verify_incoming_rpc")}
        if tls:
            conf["tls"] = tls
    ports = conf.get("ports")
    if ports is not None and version >= (1, 14, 0) and ports.get("grpc") == -1:
        ports.setdefault("grpc_tls", -1)
    return conf


def free_port(host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_udp_tcp_port(host="127.0.0.1"):
    """A port free for both TCP and UDP (the DNS and serf ports use both)."""
    for _ in range(50):
        port = free_port(host)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free TCP+UDP port on loopback")


def distinct_ports(host, pickers, taken=(), tries=50):
    """
    ``{name: port}``, one free port per picker and no two the same: the OS may
    hand a just-released port out again, and Consul refuses to start when two
    of its listeners share one ("already configured for DNS").
    """
    ports = {}
    taken = set(taken)
    for name, pick in pickers.items():
        for _ in range(tries):
            port = pick(host)
            if port not in taken and port not in ports.values():
                ports[name] = port
                break
        else:
            raise RuntimeError(f"no distinct free port for {name} on {host}")
    return ports


class TcpTarget:
    """
    A TCP port on loopback that accepts connections while ``up``: what a
    service's ``tcp`` health check probes (a stand-in DB port). ``down()``
    closes it, so the check goes critical; ``up()`` reopens the same port.
    """

    class _Handler(socketserver.BaseRequestHandler):
        def handle(self):
            pass

    class _Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    def __init__(self):
        self.port = None
        self.server = None
        self.up()

    @staticmethod
    def _ports_below_ephemeral():
        """
        Candidate ports below the kernel's ephemeral range: while a target is
        ``down`` its port is free, and a port of that range may meanwhile be
        handed to any process's outgoing connection or ``bind(0)`` (seen in CI:
        ``up()`` failed with "Address already in use" with 4 workers busy).
        Below the range only another explicit bind can take it.
        """
        try:
            low = int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return random.sample(range(10000, low), min(100, max(low - 10000, 0)))

    def up(self):
        if self.port is None:
            for port in self._ports_below_ephemeral():
                with contextlib.suppress(OSError):
                    self.server = self._Server(("127.0.0.1", port), self._Handler)
                    break
            else:
                self.server = self._Server(("127.0.0.1", 0), self._Handler)
        else:
            self.server = self._Server(("127.0.0.1", self.port), self._Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def down(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class LocalConsul:
    """One Consul server agent on 127.0.0.1 (or another loopback address)."""

    def __init__(
        self,
        datacenter="dc1",
        acl=False,
        master_token=None,
        bind="127.0.0.1",
        node_name=None,
        persist=False,
        extra_config=None,
        log_dir=None,
        tls=None,
        server=True,
        bootstrap_expect=1,
        retry_join=None,
        acl_agent_token=None,
        acl_replication_token=None,
    ):
        self.datacenter = datacenter
        # In a secondary datacenter (``primary_datacenter`` in extra_config
        # names another one): replicate the primary's tokens with this token.
        self.acl_replication_token = acl_replication_token
        # server=False: a client agent (no Raft, forwards to the servers it
        # joins through retry_join, a list of "addr:serf_lan_port").
        self.server = server
        self.bootstrap_expect = bootstrap_expect
        self.retry_join = list(retry_join or [])
        self.acl_agent_token = acl_agent_token
        self.acl = acl
        self.master_token = master_token or ("root-" + os.urandom(8).hex() if acl else None)
        self.bind = bind
        self.node_name = node_name or f"node-{datacenter}"
        self.persist = persist
        self.extra_config = extra_config or {}
        self.workdir = tempfile.mkdtemp(prefix=f"consul-{datacenter}-")
        self.log_dir = log_dir or self.workdir
        self.ports = distinct_ports(
            bind, {"http": free_port, "dns": free_udp_tcp_port, "serf_lan": free_udp_tcp_port,
                   "serf_wan": free_udp_tcp_port, "server": free_port}
        )
        # tls: {"cert_file", "key_file", "ca_file", "verify_incoming"} -> an HTTPS
        # listener next to the plain one (which the readiness checks use).
        self.tls = tls
        if tls:
            self.ports.update(distinct_ports(bind, {"https": free_port}, taken=self.ports.values()))
        self.proc = None
        self._log = None

    @property
    def http_addr(self):
        return f"http://{self.bind}:{self.ports['http']}"

    @property
    def https_addr(self):
        return f"https://{self.bind}:{self.ports['https']}" if self.tls else None

    @property
    def wan_addr(self):
        return f"{self.bind}:{self.ports['serf_wan']}"

    def _config(self):
        conf = {
            "datacenter": self.datacenter,
            "node_name": self.node_name,
            "server": self.server,
            "bind_addr": self.bind,
            "client_addr": self.bind,
            "advertise_addr": self.bind,
            "advertise_addr_wan": self.bind,
            "ports": dict({"https": -1}, **self.ports, grpc=-1),
            "data_dir": os.path.join(self.workdir, "data"),
            "log_level": "INFO",
            "disable_update_check": True,
            "enable_script_checks": False,
            "enable_local_script_checks": True,
            "performance": {"raft_multiplier": 1},
            "session_ttl_min": "1s",
            "check_update_interval": "0s",
            "dns_config": {"allow_stale": True, "node_ttl": "0s", "service_ttl": {"*": "0s"}},
        }
        if self.server:
            conf["bootstrap_expect"] = self.bootstrap_expect
        if self.retry_join:
            conf["retry_join"] = self.retry_join
            conf["retry_interval"] = "1s"
        if self.tls:
            conf.update(
                cert_file=self.tls["cert_file"],
                key_file=self.tls["key_file"],
                ca_file=self.tls["ca_file"],
                verify_incoming=False,
                verify_incoming_rpc=False,
                verify_incoming_https=bool(self.tls.get("verify_incoming")),
                verify_outgoing=False,
            )
        if self.acl:
            conf["primary_datacenter"] = self.extra_config.get("primary_datacenter", self.datacenter)
            conf["acl"] = {
                "enabled": True,
                "default_policy": "deny",
                "down_policy": "extend-cache",
                "enable_token_persistence": False,
                "tokens": {"agent": self.acl_agent_token or self.master_token},
            }
            if self.server:
                conf["acl"]["tokens"]["master"] = self.master_token
            if self.acl_replication_token:
                conf["acl"]["enable_token_replication"] = True
                conf["acl"]["tokens"]["replication"] = self.acl_replication_token
        for key, value in self.extra_config.items():
            conf[key] = value
        return adapt_config(conf, consul_version())

    def wait_acl_replicated(self, token=None, timeout=60):
        """
        Until this server of a secondary datacenter replicates tokens and
        (with ``token``, a secret made in the primary) knows that token;
        bounded. A secondary answers "ACL not found" for a global token
        until its replication has fetched it.
        """
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.api_json("GET", "/v1/acl/replication")
                ready = last.get("Running") and last.get("ReplicationType") == "tokens" and last.get("ReplicatedTokenIndex")
                if ready and (token is None or self.api("GET", "/v1/acl/token/self", token=token)[0] == 200):
                    return
            except (OSError, RuntimeError, urllib.error.URLError, ValueError) as err:
                last = err
            time.sleep(0.25)
        raise RuntimeError(f"ACL token replication on {self.node_name} not ready after {timeout}s: {last}")

    @property
    def serf_lan_addr(self):
        return f"{self.bind}:{self.ports['serf_lan']}"

    @property
    def log_path(self):
        name = self.datacenter if self.server and self.bootstrap_expect == 1 else self.node_name
        return os.path.join(self.log_dir, f"consul-{name}.log")

    def start(self, timeout=60, wait=True):
        """Start the agent; with ``wait`` (default), until it is ready (bounded)."""
        if self.proc and self.proc.poll() is None:
            return self
        if not self.persist:
            shutil.rmtree(os.path.join(self.workdir, "data"), ignore_errors=True)
        conf_path = os.path.join(self.workdir, "agent.json")
        with open(conf_path, "w", encoding="utf-8") as fh:
            json.dump(self._config(), fh)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [consul_binary(), "agent", "-config-file", conf_path],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def _get(self, path, token=None, timeout=2):
        req = urllib.request.Request(self.http_addr + path)
        if token or self.master_token:
            req.add_header("X-Consul-Token", token or self.master_token)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")

    def wait_ready(self, timeout=60):
        """Until the agent has a leader and has synced its own node (bounded)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"consul exited with {self.proc.returncode}; see {self.log_dir}")
            try:
                if self._get("/v1/status/leader") and self._get(f"/v1/catalog/node/{self.node_name}"):
                    return
            except (OSError, urllib.error.URLError, ValueError) as err:
                last = err
            time.sleep(0.1)
        raise RuntimeError(f"consul {self.datacenter} not ready after {timeout}s: {last}")

    def api(self, method, path, body=None, token=None, timeout=5):
        """A plain urllib call for tests to check Consul's real state (not via our client)."""
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.http_addr + path, data=data, method=method)
        tok = token if token is not None else self.master_token
        if tok:
            req.add_header("X-Consul-Token", tok)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, raw
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def api_json(self, method, path, body=None, token=None):
        status, raw = self.api(method, path, body, token)
        if status >= 400:
            raise RuntimeError(f"{method} {path}: {status} {raw[:200]!r}")
        return json.loads(raw) if raw else None

    def stop(self, timeout=20):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGCONT)
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self.proc = None
        if self._log:
            self._log.close()
            self._log = None

    def kill(self, timeout=20):
        """SIGKILL (a node dying): no leave, no goodbye to the cluster."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=timeout)
        self.proc = None
        if self._log:
            self._log.close()
            self._log = None

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def restart(self, timeout=60):
        self.stop()
        return self.start(timeout)

    def pause(self):
        """SIGSTOP: the agent holds its sockets but answers nothing (a hung Consul)."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()


def wan_join(first, second, timeout=30):
    """WAN-join ``second`` to ``first`` and wait until each sees both datacenters."""
    status, raw = second.api("PUT", f"/v1/agent/join/{first.wan_addr}?wan=1")
    if status >= 400:
        raise RuntimeError(f"wan join failed: {status} {raw[:200]!r}")
    deadline = time.monotonic() + timeout
    want = {first.datacenter, second.datacenter}
    while time.monotonic() < deadline:
        if all(set(a.api_json("GET", "/v1/catalog/datacenters")) >= want for a in (first, second)):
            return
        time.sleep(0.2)
    raise RuntimeError("datacenters did not see each other over the WAN")
