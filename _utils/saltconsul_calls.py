"""
What every execution-module file of the ``consul`` virtual name shares: the
client for a call, the validation of common arguments, and turning domain
errors into the exceptions Salt reports. ``_modules/consul.py`` (daily work),
``_modules/consul_query.py`` (prepared queries) and ``_modules/consul_acl.py``
(ACL) all import these, so one call's errors read the same whichever file
holds the function.

No Salt dunders here: the loader modules pass ``__opts__``/``__context__``.
"""

import contextlib
import urllib.parse

from salt.exceptions import CommandExecutionError, SaltInvocationError

import saltconsul_client
import saltconsul_service
from saltconsul_errors import (
    ConsulCASConflict,
    ConsulError,
    ConsulInvalidRequest,
    ConsulNotFound,
    ConsulPermissionDenied,
    ConsulServerError,
    ConsulUnreachable,
)

HIDDEN = "<hidden>"


def client(opts, context, token=None):
    """The shared client; ``token`` overrides the configured one for this call."""
    if token is not None and not isinstance(token, str):
        raise SaltInvocationError("token must be a string")
    return saltconsul_client.get_client(opts, context, token=token or None)


def kind(err):
    """The one-phrase cause of a Consul error, for the first words of the message."""
    if isinstance(err, ConsulPermissionDenied):
        return "permission denied"
    if isinstance(err, ConsulCASConflict):
        return "CAS conflict"
    if isinstance(err, ConsulNotFound):
        return "not found (or not a TTL check)" if "associated ttl" in str(err).lower() else "not found"
    if isinstance(err, ConsulUnreachable):
        return "Consul unreachable"
    if isinstance(err, ConsulInvalidRequest):
        return "invalid request"
    if isinstance(err, ConsulServerError):
        return "Consul server error"
    return "Consul error"


def fail(operation, err, where=None):
    """
    A Consul error as the CommandExecutionError Salt reports (no token in it);
    ``where`` (e.g. ``datacenter dc2``) names what could not answer.
    """
    place = f" in {where}" if where else ""
    return CommandExecutionError(f"consul.{operation} failed{place}: {kind(err)}: {err}")


@contextlib.contextmanager
def consul_errors(operation):
    """Turn any Consul error raised inside the block into a CommandExecutionError (``raise ... from``)."""
    try:
        yield
    except ConsulError as err:
        raise fail(operation, err) from err


@contextlib.contextmanager
def valid():
    """Turn an invalid definition (``saltconsul_service.SpecError``) into SaltInvocationError."""
    try:
        yield
    except saltconsul_service.SpecError as err:
        raise SaltInvocationError(str(err)) from None


def seg(value, what):
    """One URL path segment (an ID or a name), validated and fully quoted."""
    with valid():
        saltconsul_service.identifier(value, what)
    return urllib.parse.quote(value, safe="")


def opt_str(value, what):
    with valid():
        return saltconsul_service.string(value, what)


def duration(value, what):
    """A Consul duration: ``"10s"``, ``"1m30s"``; a bare number means seconds."""
    if value is None:
        return None
    with valid():
        return saltconsul_service.duration(value, what)


def str_list(value, what):
    """None, one string, or a list of strings -> list (or None)."""
    with valid():
        return saltconsul_service.str_list(value, what)


def uint(value, what, maximum=None):
    with valid():
        return saltconsul_service.uint(value, what, maximum=maximum)


def dc_arg(dc):
    return opt_str(dc, "dc") or None


def consistency(mode):
    if mode not in (None, "stale", "consistent"):
        raise SaltInvocationError(f"consistency must be 'stale' or 'consistent', not {mode!r}")
    return mode
