"""
Consul KV helpers shared by the execution module and states: key validation
and quoting, value encoding and decoding. Building nested dicts from a listing
lives in ``saltconsul_kvtree``, shared with the ext_pillar; the one decoder
(:func:`decode`, with the ``auto`` rule) and the one serialiser
(:func:`serialise`) live here, so ``consul.kv_put``, ``consul.key_present``,
``consul.kv_tree``, the replicate runner and pillar store and read the same
bytes the same way.

Nothing here talks to Consul and nothing here logs or formats a *value* into
a message: values may be secrets. Key names are not secret and do appear in
error messages.

.. code-block:: python

    import saltconsul_kv

    path = saltconsul_kv.kv_path("app/db pass")      # "/v1/kv/app/db%20pass"
    saltconsul_kv.decode_value('{"a": 1}', "json", key="app/x")  # {"a": 1}
"""

import base64
import logging
import urllib.parse

import salt.utils.json
import salt.utils.yaml
from salt.exceptions import CommandExecutionError, SaltInvocationError

from saltconsul_errors import ConsulCASConflict, ConsulError

log = logging.getLogger(__name__)

DECODERS = (None, "raw", "json", "yaml", "auto")
# The decoding modes of the one decoder (:func:`decode`); ``None`` means raw.
DECODE_MODES = ("auto", "json", "yaml", "raw")
SERIALIZERS = ("json", "yaml")


def check_key(key, allow_empty=False, what="key"):
    """
    Validate a KV key (or prefix) and return it.

    Rejected: non-strings, a leading ``/`` (Consul would store a different key
    whose name starts with ``/``), ``.``/``..`` path segments (HTTP clients
    normalise them away, so the request would address another key) and control
    characters.
    """
    if not isinstance(key, str):
        raise SaltInvocationError(f"consul {what} must be a string, not {type(key).__name__}")
    if not key and not allow_empty:
        raise SaltInvocationError(f"consul {what} must not be empty")
    if key.startswith("/"):
        raise SaltInvocationError(f"consul {what} {key!r} must not start with '/'")
    if any(seg in (".", "..") for seg in key.split("/")):
        raise SaltInvocationError(f"consul {what} {key!r} must not contain '.' or '..' segments")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise SaltInvocationError(f"consul {what} {key!r} must not contain control characters")
    return key


def kv_path(key, allow_empty=False):
    """``/v1/kv/<key>`` with the key validated and percent-quoted (``/`` kept)."""
    check_key(key, allow_empty=allow_empty, what="prefix" if allow_empty else "key")
    return "/v1/kv/" + urllib.parse.quote(key, safe="/")


def serialise(value, serializer="json"):
    """
    A structure as the text we store: JSON compact with sorted keys (so a
    re-put of the same data is byte-identical, whoever writes it), or YAML
    block style.
    """
    if serializer == "json":
        return salt.utils.json.dumps(value, sort_keys=True)
    if serializer == "yaml":
        return salt.utils.yaml.safe_dump(value, default_flow_style=False)
    raise SaltInvocationError(f"serializer must be json or yaml, not {serializer!r}")


def scalar_text(value):
    """A string, number or boolean as the text we store (``true``/``false``); None otherwise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    return None


def encode_value(value):
    """
    The bytes to store for ``value``: a string as UTF-8, bytes as-is, None as an
    empty value, booleans as ``true``/``false``, numbers as their text, and
    dicts/lists as JSON (:func:`serialise`).
    """
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    text = scalar_text(value)
    if text is not None:
        return text.encode("utf-8")
    if isinstance(value, (dict, list, tuple)):
        return serialise(value, "json").encode("utf-8")
    raise SaltInvocationError(f"cannot store a {type(value).__name__} in Consul KV")


def check_size(data, max_size, key):
    """Reject a value larger than Consul's ``kv_max_value_size`` before sending it."""
    if max_size and len(data) > max_size:
        raise SaltInvocationError(
            f"value for consul key {key!r} is {len(data)} bytes, over the "
            f"{max_size}-byte limit (consul:max_value_size, Consul's kv_max_value_size)"
        )


def bytes_to_text(data):
    """Stored bytes as a str when they are UTF-8 (the usual case), else as bytes."""
    if data is None:
        return ""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def b64_to_text(value):
    """A ``Value`` field from Consul's JSON (base64 or null) as text (see ``bytes_to_text``)."""
    if value is None:
        return ""
    return bytes_to_text(base64.b64decode(value))


def text_to_b64(value):
    """``encode_value(value)`` as the base64 text Consul's txn API expects."""
    return base64.b64encode(encode_value(value)).decode("ascii")


class DecodeError(ValueError):
    """
    A stored value that does not decode in the asked mode. ``what`` says why
    (never quoting the value); ``fallback`` is what to keep instead: the exact
    string, or the bytes when they are not UTF-8.
    """

    def __init__(self, key, what, fallback):
        super().__init__(f"consul KV key {key!r} {what}")
        self.key = key
        self.what = what
        self.fallback = fallback


def decode(raw, mode="auto", key=None):
    """
    The one decoder of stored values (``bytes``, ``str`` or None).

    mode
        ``raw``: the text unchanged. ``json``/``yaml``: parsed. ``auto`` (the
        ext_pillar's rule): only a JSON object or array becomes a structure,
        everything else stays the exact string, so ``"08"`` or ``"yes"`` are
        never coerced into numbers or booleans.

    None (a key with no value) gives ``""``. Raises :class:`DecodeError`;
    callers choose to fail (``consul.kv_get decode=json``) or to keep the
    fallback with a warning (pillar).
    """
    if raw is None:
        return ""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    except UnicodeDecodeError:
        raise DecodeError(key, "is not UTF-8 text; kept as bytes", bytes(raw)) from None
    if mode == "raw":
        return text
    if mode == "auto":
        head = text.lstrip()[:1]
        if head != "{" and head != "[":
            return text
    try:
        if mode == "yaml":
            return salt.utils.yaml.safe_load(text)
        return salt.utils.json.loads(text)
    except Exception:  # pylint: disable=broad-except
        # The parser's message may quote the value: name only the key.
        kind = "YAML" if mode == "yaml" else "JSON"
        raise DecodeError(key, f"does not decode as {kind}; kept as the raw string", text) from None


def decode_value(text, mode=None, key=None):
    """
    Decode a stored value for ``consul.kv_get``.

    mode
        ``None``/``"raw"``: the text unchanged. ``"json"``/``"yaml"``: parsed, an
        error if it does not parse (the caller asked for it explicitly).
        ``"auto"``: the ext_pillar's rule (see :func:`decode`); a value that
        does not decode is kept as it is, with a warning, as pillar does.

    Errors name the key, never the value.
    """
    if mode not in DECODERS:
        raise SaltInvocationError(f"decode must be one of json, yaml, auto, raw (got {mode!r})")
    if mode in (None, "raw"):
        return text
    if isinstance(text, bytes) and mode != "auto":
        raise CommandExecutionError(f"value of consul key {key!r} is not UTF-8 text; cannot decode as {mode}")
    try:
        return decode(text, mode, key)
    except DecodeError as err:
        if mode == "auto":
            log.warning("%s", err)
            return err.fallback
        raise CommandExecutionError(f"value of consul key {key!r} is not valid {mode}") from None


# --------------------------------------------------------------------------- operations


def put(client, key, data, cas=None, flags=None, acquire=None, release=None, dc=None):
    """
    ``PUT /v1/kv/<key>`` with ``data`` (bytes, see :func:`encode_value`).

    Returns True; with ``acquire``/``release`` (a session ID), whether Consul
    granted it. A lost check-and-set (``cas``: the ModifyIndex read before, 0
    for "only if absent") raises ``ConsulCASConflict``: nothing was written.
    """
    path = kv_path(key)
    params = {"cas": cas, "flags": flags, "acquire": acquire, "release": release}
    answer = client.put(path, params=params, content=data, dc=dc)
    if acquire is not None or release is not None:
        return bool(answer)
    if answer is not True and cas is not None:
        raise ConsulCASConflict(
            f"PUT {path}: key {key!r} was modified since index {cas}; nothing written", method="PUT", path=path
        )
    if answer is not True:
        raise ConsulError(f"PUT {path}: Consul did not store the value", method="PUT", path=path)
    return True


def delete(client, key, recurse=False, cas=None, dc=None):
    """
    ``DELETE /v1/kv/<key>`` (every key under it with ``recurse``). True, also
    when nothing was there. A lost check-and-set raises ``ConsulCASConflict``.
    """
    if recurse and cas is not None:
        raise SaltInvocationError("cas cannot be combined with recurse")
    path = kv_path(key)
    answer = client.delete(path, params={"recurse": bool(recurse), "cas": cas}, dc=dc)
    if cas is not None and answer is not True:
        raise ConsulCASConflict(
            f"DELETE {path}: key {key!r} was modified since index {cas}; nothing deleted", method="DELETE", path=path
        )
    return True
