"""
Exceptions raised by the salt-consul client.

Every message names the HTTP method, the API path and the cause. None carries
the ACL token: the token only ever travels in the ``X-Consul-Token`` header and
the client never formats headers into a message.
"""

from salt.exceptions import SaltException


class ConsulError(SaltException):
    """Base class. ``status`` is the HTTP status, or None when nothing came back."""

    def __init__(self, message, status=None, method=None, path=None):
        super().__init__(message)
        self.status = status
        self.method = method
        self.path = path
        # X-Consul-Index of the answer, when Consul sent one (set by the client).
        self.index = None


class ConsulUnreachable(ConsulError):
    """No answer: connection refused, DNS failure, TLS failure or timeout."""


class ConsulServerError(ConsulError):
    """Consul answered 5xx (no leader, RPC failure, ...); usually transient."""


class ConsulPermissionDenied(ConsulError):
    """The ACL token is missing, unknown or lacks the needed permission."""


class ConsulACLNotFound(ConsulPermissionDenied):
    """
    "ACL not found": the caller's token is unknown, or (Consul 1.8, 403) the
    token or policy ID being read does not exist; the caller tells the two
    apart by resolving its own token.
    """


class ConsulNotFound(ConsulError):
    """The addressed object (key, service, check, session, ...) does not exist."""


class ConsulCASConflict(ConsulError):
    """A check-and-set write lost: someone changed the object first."""


class ConsulInvalidRequest(ConsulError):
    """Consul (or our own validation) rejected the request as malformed or too large."""


class ConsulSessionChecksNotReady(ConsulServerError):
    """
    Consul refused a session because a check it is tied to is critical or
    not registered on the servers yet (through a client agent, a check's
    passing status reaches them by anti-entropy a moment after the agent
    shows it): worth retrying for a bounded time.
    """


# Consul 1.8 to 1.10 answer an unknown service or check ID on the agent API with
# 500 and one of these texts; 1.11+ answer 404 (hashicorp/consul#10337). Both
# mean "not found". A TTL update of an unknown check says "does not have
# associated TTL" on every version.
_AGENT_NOT_FOUND_TEXTS = ("unknown service", "unknown check", "does not have associated ttl")
# Texts that mean the ACL system refused the request, whatever the status
# (Consul 1.8 answers some of these with 500).
_DENIED_TEXTS = ("permission denied",)
# Session create (500) when a tied check is not usable: "Check 'x' is in
# critical state", "Missing check 'x' registration" (also "Missing node
# registration" before the node has synced).
_SESSION_CHECK_TEXTS = ("critical state", "missing check", "missing node registration")


def classify(status, text, method, path):
    """
    The exception for an error answer from Consul: one classification from
    status, body text and path, so no caller ever matches message text.

    status
        The HTTP status (>= 400).
    text
        Consul's error text, already bounded and free of the token.
    method / path
        The request, named in the message.

    Version quirks handled here (and unit-tested from the documented shapes):
    500 vs 404 for unknown agent objects; 500 for a session whose checks are
    critical or unknown to the servers; 403 or 500 "Permission denied" and
    "ACL not found"; 409 from ``/v1/txn`` (the transaction rolled back, for a
    lost check-and-set among other reasons); 429 from the rate limiter (1.13+),
    which is transient like a 5xx.
    """
    where = f"{method} {path}"
    kwargs = {"status": status, "method": method, "path": path}
    lowered = (text or "").lower()
    if "acl not found" in lowered:
        return ConsulACLNotFound(f"{where}: permission denied by Consul ACLs ({text})", **kwargs)
    if status == 403 or any(marker in lowered for marker in _DENIED_TEXTS):
        return ConsulPermissionDenied(f"{where}: permission denied by Consul ACLs ({text})", **kwargs)
    if status == 404 or (
        status == 500 and path.startswith("/v1/agent/") and any(m in lowered for m in _AGENT_NOT_FOUND_TEXTS)
    ):
        return ConsulNotFound(f"{where}: not found ({text})", **kwargs)
    if status == 500 and path.startswith("/v1/session/create") and any(m in lowered for m in _SESSION_CHECK_TEXTS):
        return ConsulSessionChecksNotReady(f"{where}: a tied check is not passing on the servers yet ({text})", **kwargs)
    if status == 409 and path.startswith("/v1/txn"):
        return ConsulCASConflict(f"{where}: transaction rolled back ({text})", **kwargs)
    if status in (400, 405, 409, 413, 422):
        return ConsulInvalidRequest(f"{where}: rejected by Consul ({status}: {text})", **kwargs)
    if status >= 500 or status == 429:
        return ConsulServerError(f"{where}: Consul server error ({status}: {text})", **kwargs)
    return ConsulError(f"{where}: unexpected answer ({status}: {text})", **kwargs)


def cause_of(err):
    """
    The Consul error behind ``err``: itself, or the ``ConsulError`` a Salt
    ``CommandExecutionError`` was raised from (``raise ... from err``), so a
    state learns the kind from the type, never from the message.
    """
    seen = 0
    while err is not None and not isinstance(err, ConsulError) and seen < 5:
        err = err.__cause__
        seen += 1
    return err if isinstance(err, ConsulError) else None
