"""
Service and check definitions: the one vocabulary and validation, returning
the exact request body Consul's agent API is sent.

``consul.service_register``, ``consul.check_register`` and the states'
planning all build their bodies here, so ``test=True`` refuses exactly what
the real apply would refuse and the state compares against the body the
module would send.

    service_body("web", id="web1", port=8080, checks=[{"http": "http://x/h", "interval": "10s"}])
    # {'Name': 'web', 'ID': 'web1', 'Port': 8080, 'EnableTagOverride': False,
    #  'Checks': [{'HTTP': 'http://x/h', 'Interval': '10s'}]}

Definitions use Salt's lowercase keys (``interval``, ``tls_skip_verify``);
the body uses Consul's (``Interval``, ``TLSSkipVerify``). Every error is a
:class:`SpecError` whose message names the field; loader modules turn it into
``SaltInvocationError`` before anything is written.
"""

import re

import saltconsul_duration
import saltconsul_env

# Our lowercase check keys -> Consul's field names (agent API).
CHECK_FIELDS = {
    "name": "Name",
    "id": "CheckID",
    "service_id": "ServiceID",
    "http": "HTTP",
    "tcp": "TCP",
    "ttl": "TTL",
    "grpc": "GRPC",
    "args": "Args",
    "alias_service": "AliasService",
    "alias_node": "AliasNode",
    "interval": "Interval",
    "timeout": "Timeout",
    "deregister_critical_service_after": "DeregisterCriticalServiceAfter",
    "status": "Status",
    "notes": "Notes",
    "method": "Method",
    "header": "Header",
    "tls_skip_verify": "TLSSkipVerify",
    "grpc_use_tls": "GRPCUseTLS",
    "success_before_passing": "SuccessBeforePassing",
    "failures_before_critical": "FailuresBeforeCritical",
}
# The kind of a check (exactly one of these keys) -> the ``Type`` the agent reports.
CHECK_KINDS = {"http": "http", "tcp": "tcp", "ttl": "ttl", "grpc": "grpc", "args": "script", "alias_service": "alias"}
NEEDS_INTERVAL = ("http", "tcp", "grpc", "args")
CHECK_DURATIONS = ("ttl", "interval", "timeout", "deregister_critical_service_after")
CHECK_STATUSES = ("passing", "warning", "critical")
_META_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_CHECK_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.@:-]+")
DEFAULT_WEIGHTS = {"Passing": 1, "Warning": 1}


class SpecError(ValueError):
    """An invalid service or check definition; the message names the field."""


# --------------------------------------------------------------------------- fields


def identifier(value, what):
    """An ID or name that goes into a URL path segment: a non-empty string, no control characters."""
    if not isinstance(value, str) or not value:
        raise SpecError(f"{what} must be a non-empty string")
    if value in (".", "..") or any(ord(ch) < 32 for ch in value):
        raise SpecError(f"{what} {value!r} is not a valid name")
    return value


def service_name(name):
    """A service name that DNS can resolve: one DNS label."""
    identifier(name, "name")
    if not saltconsul_env.is_service_name(name):
        raise SpecError(
            f"service name {name!r} is not a DNS label (letters, digits and inner dashes, at most 63): "
            "Consul would register it, but DNS could not resolve it"
        )
    return name


def string(value, what):
    if value is not None and not isinstance(value, str):
        raise SpecError(f"{what} must be a string")
    return value


def str_list(value, what):
    """None, one string, or a list of strings -> list (or None)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise SpecError(f"{what} must be a string or a list of strings")


def uint(value, what, maximum=None):
    """A non-negative integer (or None); digit strings are accepted (CLI, templates)."""
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SpecError(f"{what} must be a non-negative integer")
    if maximum is not None and value > maximum:
        raise SpecError(f"{what} must be at most {maximum}")
    return value


def valid_tags(value):
    """None or a list of non-empty strings (one string is one tag)."""
    out = str_list(value, "tags")
    if out is not None and not all(out):
        raise SpecError("tags must be non-empty strings")
    return out


def valid_meta(value):
    """Service meta as Consul accepts it: at most 64 pairs, keys ``[A-Za-z0-9_-]`` not ``consul-``."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > 64:
        raise SpecError("meta must be a dict of at most 64 string pairs")
    out = {}
    for key, val in value.items():
        if not isinstance(key, str) or not _META_KEY.match(key) or key.startswith("consul-"):
            raise SpecError(
                f"meta key {key!r} must be 1-128 characters of A-Z a-z 0-9 _ - and not start with 'consul-'"
            )
        if val is None:
            val = ""
        elif isinstance(val, (int, float)) and not isinstance(val, bool):
            val = str(val)
        if not isinstance(val, str) or len(val) > 512:
            raise SpecError(f"meta value for {key!r} must be a string of at most 512 characters")
        out[key] = val
    return out


def valid_weights(value):
    """``{"passing": n, "warning": n}`` -> Consul's ``{"Passing", "Warning"}`` (1 where not given)."""
    if value is None:
        return None
    if not isinstance(value, dict) or {str(k).lower() for k in value} - {"passing", "warning"}:
        raise SpecError("weights must be a dict with 'passing' and/or 'warning'")
    given = {str(k).lower(): v for k, v in value.items()}
    return {
        "Passing": uint(given.get("passing", 1), "weights passing"),
        "Warning": uint(given.get("warning", 1), "weights warning"),
    }


def duration(value, what):
    try:
        return saltconsul_duration.for_consul(value, what)
    except saltconsul_duration.DurationError as err:
        raise SpecError(str(err)) from None


# --------------------------------------------------------------------------- checks


def check_kind(check, what="check"):
    """The one kind key (``http``, ``tcp``, ...) a check mapping has."""
    kinds = [k for k in CHECK_KINDS if check.get(k) not in (None, "", [])]
    if len(kinds) != 1:
        raise SpecError(f"{what} needs exactly one of {', '.join(CHECK_KINDS)} (got {kinds or 'none'})")
    return kinds[0]


def check_body(check, what="check"):
    """Validate one check given with our lowercase keys and return Consul's body."""
    if not isinstance(check, dict):
        raise SpecError(f"{what} must be a dict")
    check = {k: v for k, v in check.items() if v is not None}
    unknown = sorted(set(map(str, check)) - set(CHECK_FIELDS))
    if unknown:
        raise SpecError(f"{what}: unknown keys {unknown}; use {sorted(CHECK_FIELDS)}")
    kind = check_kind(check, what)
    if kind in NEEDS_INTERVAL and "interval" not in check:
        raise SpecError(f"{what}: a {kind} check needs an interval")
    body = {}
    for key, value in check.items():
        field = CHECK_FIELDS[key]
        if key in CHECK_DURATIONS:
            value = duration(value, f"{what} {key}")
        elif key == "status":
            if value not in CHECK_STATUSES:
                raise SpecError(f"{what} status must be one of {', '.join(CHECK_STATUSES)}")
        elif key == "args":
            value = str_list(value, f"{what} args")
            if not value:
                raise SpecError(f"{what} args must not be empty")
        elif key == "header":
            if not isinstance(value, dict):
                raise SpecError(f"{what} header must be a dict of name: value(s)")
            value = {str(h): str_list(v, f"{what} header {h}") for h, v in value.items()}
        elif key in ("tls_skip_verify", "grpc_use_tls"):
            value = bool(value)
        elif key in ("success_before_passing", "failures_before_critical"):
            value = uint(value, f"{what} {key}")
        elif key in ("name", "id"):
            value = identifier(str(value) if isinstance(value, (int, float)) else value, f"{what} {key}")
        else:
            string(value, f"{what} {key}")
        body[field] = value
    return body


def default_check_id(service_id, name):
    """``service:<service_id>:<name>``, made safe: derived from the name, never the position."""
    return _CHECK_ID_UNSAFE.sub("-", f"service:{service_id}:{name}")


def service_check(check, service_id, index):
    """
    One check of a service definition, validated (as :func:`check_body`) and
    given a stable name (its kind) and ID (:func:`default_check_id`), in our
    lowercase keys. Removing one check never renames (and resets) the others.
    """
    what = f"check #{index + 1}"
    if not isinstance(check, dict):
        raise SpecError(f"{what} must be a mapping")
    out = {k: v for k, v in check.items() if v is not None}
    check_body(out, what)
    out["name"] = str(out.get("name") or check_kind(out, what))
    out["id"] = str(out.get("id") or default_check_id(service_id, out["name"]))
    return out


# --------------------------------------------------------------------------- services


def service_body(
    name,
    id=None,  # pylint: disable=redefined-builtin
    tags=None,
    address=None,
    port=None,
    meta=None,
    enable_tag_override=False,
    weights=None,
    checks=None,
):
    """The exact body of ``PUT /v1/agent/service/register`` for this definition."""
    body = {"Name": service_name(name)}
    if id is not None:
        body["ID"] = identifier(id, "id")
    if tags is not None:
        body["Tags"] = valid_tags(tags)
    if address is not None:
        body["Address"] = string(address, "address")
    if port is not None:
        body["Port"] = uint(port, "port", maximum=65535)
    if meta is not None:
        body["Meta"] = valid_meta(meta)
    body["EnableTagOverride"] = bool(enable_tag_override)
    if weights is not None:
        body["Weights"] = valid_weights(weights)
    if checks is not None:
        if isinstance(checks, dict):
            checks = [checks]
        if not isinstance(checks, (list, tuple)):
            raise SpecError("checks must be a list of dicts")
        body["Checks"] = [check_body(c, f"checks[{i}]") for i, c in enumerate(checks)]
        ids = [c["CheckID"] for c in body["Checks"] if c.get("CheckID")]
        duplicates = sorted({cid for cid in ids if ids.count(cid) > 1})
        if duplicates:
            # Consul would keep only the last check of each ID: a half-applied definition.
            raise SpecError(f"checks: duplicate check IDs {duplicates}")
    return body
