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


class ConsulUnreachable(ConsulError):
    """No answer: connection refused, DNS failure, TLS failure or timeout."""


class ConsulServerError(ConsulError):
    """Consul answered 5xx (no leader, RPC failure, ...); usually transient."""


class ConsulPermissionDenied(ConsulError):
    """The ACL token is missing, unknown or lacks the needed permission."""


class ConsulNotFound(ConsulError):
    """The addressed object (key, service, check, session, ...) does not exist."""


class ConsulCASConflict(ConsulError):
    """A check-and-set write lost: someone changed the object first."""


class ConsulInvalidRequest(ConsulError):
    """Consul (or our own validation) rejected the request as malformed or too large."""
