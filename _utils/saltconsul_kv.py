"""
Consul KV helpers shared by the execution module and states: key validation
and quoting, value encoding and decoding. Building nested dicts from a listing
(and the ``auto`` decoding rule) lives in ``saltconsul_kvtree``, shared with the
ext_pillar, so ``consul.kv_tree`` and pillar read KV the same way.

Nothing here talks to Consul and nothing here logs or formats a *value* into
a message: values may be secrets. Key names are not secret and do appear in
error messages.

.. code-block:: python

    import saltconsul_kv

    path = saltconsul_kv.kv_path("app/db pass")      # "/v1/kv/app/db%20pass"
    saltconsul_kv.decode_value('{"a": 1}', "json", key="app/x")  # {"a": 1}
"""

import base64
import urllib.parse

import salt.utils.json
import salt.utils.yaml
from salt.exceptions import CommandExecutionError, SaltInvocationError

import saltconsul_kvtree

DECODERS = (None, "raw", "json", "yaml", "auto")


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


def encode_value(value):
    """
    The bytes to store for ``value``: a string as UTF-8, bytes as-is, None as an
    empty value, booleans as ``true``/``false``, numbers as their text, and
    dicts/lists as JSON (sorted keys, so a re-put of the same data is identical).
    """
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, (int, float)):
        return str(value).encode("utf-8")
    if isinstance(value, (dict, list, tuple)):
        return salt.utils.json.dumps(value, sort_keys=True).encode("utf-8")
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


def decode_value(text, decode=None, key=None):
    """
    Decode a stored value for ``consul.kv_get``.

    decode
        ``None``/``"raw"``: the text unchanged. ``"json"``/``"yaml"``: parsed, an
        error if it does not parse (the caller asked for it explicitly).
        ``"auto"``: the ext_pillar's rule (``saltconsul_kvtree.decode_value``):
        only a JSON object or array becomes a structure, everything else stays
        the exact string (so ``"08"`` or ``"yes"`` stay strings).

    Errors name the key, never the value.
    """
    if decode not in DECODERS:
        raise SaltInvocationError(f"decode must be one of json, yaml, auto, raw (got {decode!r})")
    if decode in (None, "raw"):
        return text
    if decode == "auto":
        return saltconsul_kvtree.decode_value(text, "auto", key)
    if isinstance(text, bytes):
        raise CommandExecutionError(f"value of consul key {key!r} is not UTF-8 text; cannot decode as {decode}")
    try:
        if decode == "json":
            return salt.utils.json.loads(text)
        return salt.utils.yaml.safe_load(text)
    except Exception:  # pylint: disable=broad-except
        # The parser's message can quote the value: report only the key.
        raise CommandExecutionError(f"value of consul key {key!r} is not valid {decode}") from None
