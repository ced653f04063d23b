"""
A counting HTTP proxy in front of a Consul agent: every request any client
sends through it is forwarded to the agent and recorded, so a bench or a test
can say exactly what load Salt daemons put on Consul.

.. code-block:: python

    with countingproxy.CountingProxy(agent.http_addr) as proxy:
        opts["consul"]["address"] = proxy.http_addr
        ...
        proxy.reset()          # start of the measured window
        ...
        counts = proxy.counts()  # {(kind, "GET /v1/kv/x/?recurse"): n}

A request is ``blocking`` when its query string has an ``index`` parameter
(a Consul blocking query), else ``nonblocking``. It is counted when it
arrives, so a blocking query that is still held at the end of a window counts
in the window it started in. The request key is the method and the path with
the query's parameter *names* (values dropped: indexes and waits change).

One thread per connection (keep-alive honoured), loopback only, stdlib only;
``close()`` stops it.

A fault can be injected for tests: ``proxy.fail_after_forward("PUT",
"/v1/session/create", times=1)`` forwards the next matching request to Consul
and then answers the client 500 ``rpc error making call: stream closed``
instead of Consul's answer: what a client agent says when its pooled
connection to a restarted server breaks mid-call, in the worst case, where the
write did reach the servers and the caller cannot know it.
"""

import collections
import http.client
import http.server
import threading
import urllib.parse

# Longest a forwarded request may take: Consul caps a blocking query at 600 s
# plus wait/16 of jitter.
UPSTREAM_TIMEOUT = 700
STREAM_CLOSED = b"rpc error making call: stream closed"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade", "trailer"}


def classify(method, target):
    """``(kind, key)`` of one request: ``blocking``/``nonblocking`` and ``"GET /v1/kv/x?recurse"``."""
    parsed = urllib.parse.urlsplit(target)
    names = []
    for name, _ in urllib.parse.parse_qsl(parsed.query, keep_blank_values=True):
        if name not in names:
            names.append(name)
    kind = "blocking" if "index" in names else "nonblocking"
    shown = sorted(n for n in names if n not in ("index", "wait"))
    key = f"{method} {parsed.path}" + (f"?{'&'.join(shown)}" if shown else "")
    return kind, key


class CountingProxy:
    """Forward ``http://127.0.0.1:<port>`` to ``upstream`` (``http://host:port``), counting requests."""

    def __init__(self, upstream):
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream = (parsed.hostname, parsed.port or 80)
        self._lock = threading.Lock()
        self._counts = collections.Counter()
        self._faults = []  # [method, path prefix, times left]
        self.faulted = []  # "METHOD path" of each request answered with the fault
        self.upstream_errors = []  # "METHOD path status" of each 5xx the upstream itself answered
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # pylint: disable=arguments-differ
                pass

            def _forward(self):
                proxy.record(self.command, self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=UPSTREAM_TIMEOUT)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    status, reason, data = resp.status, resp.reason, resp.read()
                    resp_headers = resp.getheaders()
                except OSError:
                    status, reason, data, resp_headers = 502, "Bad Gateway", b"upstream Consul unreachable", []
                finally:
                    conn.close()
                if status >= 500:
                    proxy.upstream_errors.append(f"{self.command} {urllib.parse.urlsplit(self.path).path} {status}")
                if proxy.take_fault(self.command, self.path):
                    status, reason, data, resp_headers = 500, "Internal Server Error", STREAM_CLOSED, []
                try:
                    self.send_response(status, reason)
                    for name, value in resp_headers:
                        if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                except OSError:
                    # The client went away (a daemon stopping): nothing to answer.
                    self.close_connection = True

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.http_addr = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="counting-proxy", daemon=True)
        self._thread.start()

    def record(self, method, target):
        kind, key = classify(method, target)
        with self._lock:
            self._counts[(kind, key)] += 1

    def fail_after_forward(self, method, path_prefix, times=1):
        """Answer the next ``times`` matching requests 500 "stream closed" after forwarding them."""
        with self._lock:
            self._faults.append([method, path_prefix, int(times)])

    def take_fault(self, method, target):
        """Whether this request gets the injected fault (consumes one)."""
        path = urllib.parse.urlsplit(target).path
        with self._lock:
            for fault in self._faults:
                if fault[2] > 0 and fault[0] == method and path.startswith(fault[1]):
                    fault[2] -= 1
                    self.faulted.append(f"{method} {path}")
                    return True
        return False

    def reset(self):
        with self._lock:
            self._counts.clear()

    def counts(self):
        """``{(kind, key): n}`` since the start or the last :meth:`reset`."""
        with self._lock:
            return dict(self._counts)

    def total(self, kind):
        return sum(n for (k, _), n in self.counts().items() if k == kind)

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
