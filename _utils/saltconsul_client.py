"""
The one HTTP client every salt-consul module uses to talk to Consul.

Built on httpx (keep-alive, explicit timeouts, TLS through an ``ssl`` context),
created once per process and configuration and cached in ``__context__``:

.. code-block:: python

    import saltconsul_client

    client = saltconsul_client.get_client(__opts__, __context__)
    data = client.get("/v1/catalog/services", dc="mydc1")

What it guarantees:

* the ACL token travels only in the ``X-Consul-Token`` header; it is never put
  in a URL, a log record, an exception message or a return value;
* errors come out as the ``saltconsul_errors`` hierarchy, each message naming
  method, path and cause;
* only idempotent requests (GET, or callers that say ``idempotent=True``) are
  retried, a bounded number of times with capped exponential backoff;
* blocking queries (``index``/``wait``) get a read timeout that covers the wait.
"""

import hashlib
import json as jsonlib
import logging
import os
import ssl
import time

import httpx

import saltconsul_config
import saltconsul_duration
import saltconsul_errors
from saltconsul_errors import (
    ConsulInvalidRequest,
    ConsulNotFound,
    ConsulServerError,
    ConsulUnreachable,
)

log = logging.getLogger(__name__)

CONTEXT_KEY = "saltconsul.clients"
# For loaders that pack no ``__context__`` (cache, sdb): one client per
# process and configuration instead of one per call.
PROCESS_CONTEXT = {}
_MAX_BACKOFF = 5.0
# Endpoints answered by the local agent itself: a ``dc`` parameter means nothing there.
_AGENT_PREFIXES = ("/v1/agent/", "/v1/status/")


class Response:
    """What came back: status, headers, body bytes and the ``X-Consul-Index``."""

    __slots__ = ("status", "headers", "content", "index")

    def __init__(self, status, headers, content):
        self.status = status
        self.headers = headers
        self.content = content
        idx = headers.get("x-consul-index")
        self.index = int(idx) if idx and idx.isdigit() else None

    def json(self):
        if not self.content:
            return None
        return jsonlib.loads(self.content)


_SSL_CONTEXTS = {}


def _ssl_context(conf):
    """
    The TLS context for these settings: verification on unless verify is False.

    Built once per process and settings (loading a CA bundle costs ~15 ms, and
    a minion builds a client in every job it forks); httpx wants one even for
    plain-http clients, which never use it.
    """
    key = tuple(conf[k] for k in ("verify", "ca_file", "ca_path", "cert_file", "key_file"))
    ctx = _SSL_CONTEXTS.get(key)
    if ctx is None:
        ctx = _SSL_CONTEXTS[key] = _new_ssl_context(conf)
    return ctx


def _new_ssl_context(conf):
    if conf["verify"] is False:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=conf["ca_file"], capath=conf["ca_path"])
    if conf["cert_file"]:
        ctx.load_cert_chain(conf["cert_file"], conf["key_file"])
    return ctx


def _error_text(resp):
    """Consul's short error text (it never echoes tokens or values), bounded."""
    text = resp.content.decode("utf-8", "replace").strip()
    return " ".join(text.split())[:300] or resp.reason_phrase


class ConsulClient:
    """
    A keep-alive HTTP client for one Consul agent address and one token.

    ``stats`` counts requests (``requests``) and state-changing ones
    (``writes``: PUT/POST/DELETE) so tests and benchmarks can see what a run did.
    """

    def __init__(self, conf):
        self.conf = conf
        self.address = conf["address"]
        self.datacenter = conf["datacenter"]
        self.retries = conf["retries"]
        self.max_value_size = conf["max_value_size"]
        self._token = conf["token"]
        self.timeout = httpx.Timeout(conf["timeout"], connect=conf["connect_timeout"])
        self._http = httpx.Client(
            base_url=self.address,
            timeout=self.timeout,
            verify=_ssl_context(conf),
            limits=httpx.Limits(max_keepalive_connections=8, keepalive_expiry=30),
            # Consul gzips large answers when asked; against the usual local
            # agent that costs more CPU than the bytes it saves.
            headers={
                "User-Agent": "salt-consul",
                "Accept-Encoding": "gzip" if conf["compression"] else "identity",
            },
        )
        self.stats = {"requests": 0, "writes": 0}

    def __repr__(self):
        return f"<ConsulClient {self.address} token={'set' if self._token else 'none'}>"

    @property
    def has_token(self):
        return bool(self._token)

    def close(self):
        self._http.close()

    def request(
        self,
        method,
        path,
        *,
        params=None,
        json=None,
        content=None,
        dc=None,
        token=None,
        index=None,
        wait=None,
        consistency=None,
        idempotent=None,
        not_found_ok=False,
    ):
        """
        Send one request and return a :class:`Response`.

        method
            GET, PUT, POST or DELETE.
        path
            API path starting with ``/v1/``; never put secrets in it.
        params
            Query parameters (``None`` values are dropped, ``True`` becomes a bare flag).
        json / content
            Body as a structure to encode, or raw bytes/str.
        dc
            Datacenter; defaults to ``consul:datacenter`` for non-agent endpoints.
        token
            Per-call ACL token instead of the configured one.
        index / wait
            Blocking query: return when the index moves past ``index`` or ``wait``
            (seconds or a Consul duration such as ``"30s"``) expires.
        consistency
            ``"stale"`` or ``"consistent"`` read mode (default mode otherwise).
        idempotent
            Whether retrying is safe; defaults to True for GET only.
        not_found_ok
            Return ``None`` for 404 instead of raising :class:`ConsulNotFound`.
        """
        method = method.upper()
        if not path.startswith("/v1/"):
            raise ConsulInvalidRequest(f"bad API path {path!r}", method=method, path=path)
        query = {}
        for key, value in (params or {}).items():
            if value is None or value is False:
                continue
            query[key] = "" if value is True else value
        dc = dc or (None if path.startswith(_AGENT_PREFIXES) else self.datacenter)
        if dc:
            query["dc"] = dc
        timeout = self.timeout
        if index is not None:
            query["index"] = int(index)
            wait_s = saltconsul_duration.seconds(wait, "wait") if wait is not None else 300.0
            query["wait"] = f"{wait_s:g}s"
            # Consul adds up to wait/16 of jitter before answering.
            timeout = httpx.Timeout(
                wait_s * 1.0625 + self.timeout.read, connect=self.timeout.connect
            )
        if consistency in ("stale", "consistent"):
            query[consistency] = ""
        elif consistency is not None:
            raise ConsulInvalidRequest(
                f"consistency must be 'stale' or 'consistent', not {consistency!r}",
                method=method,
                path=path,
            )
        headers = {}
        tok = token if token is not None else self._token
        if tok:
            headers["X-Consul-Token"] = tok
        if json is not None:
            content = jsonlib.dumps(json).encode("utf-8")
            headers["Content-Type"] = "application/json"
        elif isinstance(content, str):
            content = content.encode("utf-8")
        if idempotent is None:
            idempotent = method == "GET"

        attempts = 1 + (self.retries if idempotent else 0)
        backoff = self.conf["retry_backoff"]
        for attempt in range(1, attempts + 1):
            try:
                return self._send(method, path, query, headers, content, timeout, not_found_ok)
            except (ConsulUnreachable, ConsulServerError) as err:
                if attempt >= attempts:
                    raise
                log.debug("consul %s %s failed (%s), retry %d/%d", method, path, err, attempt, attempts - 1)
                time.sleep(min(backoff, _MAX_BACKOFF))
                backoff *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, method, path, query, headers, content, timeout, not_found_ok):
        self.stats["requests"] += 1
        if method != "GET":
            self.stats["writes"] += 1
        where = f"{method} {path}"
        try:
            resp = self._http.request(
                method, path, params=query, headers=headers, content=content, timeout=timeout
            )
        except httpx.TimeoutException as err:
            raise ConsulUnreachable(
                f"{where}: Consul at {self.address} timed out ({type(err).__name__})",
                method=method,
                path=path,
            ) from None
        except httpx.TransportError as err:
            # The transport's text names host/port or the TLS failure, never headers.
            cause = str(err) or type(err).__name__
            raise ConsulUnreachable(
                f"{where}: cannot reach Consul at {self.address}: {cause}",
                method=method,
                path=path,
            ) from None
        log.debug("consul %s -> %s", where, resp.status_code)
        if resp.status_code < 400:
            return Response(resp.status_code, resp.headers, resp.content)
        text = _error_text(resp)
        if self._token and self._token in text:  # belt and braces: never echo a token
            text = text.replace(self._token, "<redacted>")
        err = saltconsul_errors.classify(resp.status_code, text, method, path)
        if not_found_ok and isinstance(err, ConsulNotFound):
            return None
        # Consul's 404 for a KV read still carries X-Consul-Index: a watch of an
        # empty prefix blocks on it (until a key appears) instead of polling.
        err.index = Response(resp.status_code, resp.headers, b"").index
        raise err

    # Convenience wrappers returning decoded JSON (None for an empty body or a tolerated 404).
    def get(self, path, **kwargs):
        resp = self.request("GET", path, **kwargs)
        return None if resp is None else resp.json()

    def put(self, path, **kwargs):
        resp = self.request("PUT", path, **kwargs)
        return None if resp is None else resp.json()

    def delete(self, path, **kwargs):
        resp = self.request("DELETE", path, **kwargs)
        return None if resp is None else resp.json()


def _fingerprint(conf):
    """A cache key for a configuration; the token enters only as a hash."""
    items = sorted((k, v) for k, v in conf.items() if k != "token")
    digest = hashlib.sha256(repr(items).encode())
    digest.update((conf.get("token") or "").encode())
    return digest.hexdigest()


def get_client(opts, context=None, **overrides):
    """
    The shared client for ``opts`` (plus optional config ``overrides`` such as
    ``token`` or ``address``), cached in ``context`` (pass ``__context__``).

    The cache is keyed by process id too: a minion forks per job, and a
    keep-alive socket must never be shared across a fork.
    """
    conf = saltconsul_config.parse_config(opts, **overrides)
    key = (os.getpid(), _fingerprint(conf))
    if context is None:
        return ConsulClient(conf)
    cache = context.setdefault(CONTEXT_KEY, {})
    client = cache.get(key)
    if client is None:
        for stale_key in [k for k in cache if k[0] != os.getpid()]:
            cache.pop(stale_key, None)
        client = cache[key] = ConsulClient(conf)
    return client
