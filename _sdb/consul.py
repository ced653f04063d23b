"""
sdb ``consul``: ``sdb://<profile>/<key>`` values from Consul KV.

A profile in the minion or master config (or pillar, as for every sdb driver)
names this driver; its connection keys are those of the ``consul:`` section
(see ``saltconsul_config``) and override it, so a profile with only
``driver: consul`` uses the node's own ``consul:`` settings:

.. code-block:: yaml

    myconsul:
      driver: consul
      address: https://127.0.0.1:8501
      token_file: /etc/salt/consul-sdb.token   # sent only as X-Consul-Token
      ca_file: /etc/consul/ca.pem
      prefix: secrets/salt       # optional: sdb://myconsul/db/pass reads secrets/salt/db/pass
      json: false                # true: values are JSON documents (get parses, set dumps)

    # anywhere in the same config, or in a template:
    db_password: sdb://myconsul/db/pass

Values are exact strings (never ``bytes``, never YAML-coerced: ``"08"`` stays
``"08"``); with ``json: true`` they are parsed as JSON. On Salt's command
line, though, Salt parses each argument as YAML before any driver sees it:
``salt-call sdb.set sdb://myconsul/pin 007`` stores ``7``; quote the value
for YAML to keep the string: ``salt-call sdb.set sdb://myconsul/pin "'007'"``. A missing key is
``None``. Values are never logged and never appear in an error message; errors
name the key and the cause (permission denied, unreachable, ...), never the
token.

For values in the minion or master *config file* the driver must be loadable
when Salt reads its config: install with pip, or ``saltutil.sync_sdb`` (minion)
/ ``salt-run saltutil.sync_sdb`` (master) before adding the ``sdb://`` value.
"""

import logging

import saltconsul_client
import saltconsul_config
import saltconsul_kv
import saltconsul_saltext
from salt.exceptions import CommandExecutionError, SaltInvocationError
from saltconsul_errors import ConsulError

log = logging.getLogger(__name__)

__virtualname__ = "consul"
__func_alias__ = {"set_": "set"}

# Profile keys that are ours rather than the client's.
PROFILE_KEYS = {"driver", "prefix", "json"}


def __virtual__():
    return __virtualname__


def _profile(profile):
    """``(prefix, json, client overrides)`` from an sdb profile; unknown keys are an error."""
    if not isinstance(profile, dict):
        raise SaltInvocationError("sdb consul: the profile must be a mapping")
    # saltext-consul's python-consul keys (host, port, dc, ...) still work.
    profile = saltconsul_saltext.sdb_profile(profile)
    unknown = sorted(set(profile) - PROFILE_KEYS - set(saltconsul_config.DEFAULTS))
    if unknown:
        raise SaltInvocationError(f"sdb consul: unknown profile key(s) {', '.join(unknown)}")
    prefix = profile.get("prefix") or ""
    if not isinstance(prefix, str):
        raise SaltInvocationError("sdb consul: prefix must be a string")
    prefix = prefix.strip("/")
    as_json = profile.get("json", False)
    if not isinstance(as_json, bool):
        raise SaltInvocationError("sdb consul: json must be true or false")
    return prefix, as_json, saltconsul_config.connection_overrides(profile, "sdb consul profile")


def _path(prefix, key):
    if not isinstance(key, str) or not key.strip("/"):
        raise SaltInvocationError("sdb consul: the key must be a non-empty string")
    full = f"{prefix}/{key}" if prefix else key
    return full, saltconsul_kv.kv_path(full)


def _client(overrides):
    # The sdb loader packs no __context__: share one client per process.
    return saltconsul_client.get_client(__opts__, saltconsul_client.PROCESS_CONTEXT, **overrides)  # noqa: F821


def _failed(what, key, err):
    # ConsulError texts name method, path and cause; never the token or a value.
    return CommandExecutionError(f"sdb consul: cannot {what} {key!r}: {err}")


def get(key, profile=None):
    """
    The value at ``key`` (under the profile's ``prefix``): a str, a parsed
    JSON document with ``json: true``, or None when the key does not exist.

    key
        The KV key, relative to ``prefix``.
    profile
        The sdb profile (Salt passes it).

    CLI Example:

    .. code-block:: bash

        salt-call sdb.get sdb://myconsul/db/pass
    """
    prefix, as_json, overrides = _profile(profile or {})
    full, path = _path(prefix, key)
    try:
        resp = _client(overrides).request("GET", path, params={"raw": True}, not_found_ok=True)
    except ConsulError as err:
        raise _failed("read", full, err) from None
    if resp is None:
        return None
    text = saltconsul_kv.bytes_to_text(resp.content)
    if isinstance(text, bytes):
        raise CommandExecutionError(f"sdb consul: value of {full!r} is not UTF-8 text")
    if as_json:
        return saltconsul_kv.decode_value(text, "json", key=full)
    return text


def set_(key, value, profile=None):
    """
    Store ``value`` at ``key`` (under the profile's ``prefix``); returns True.

    key
        The KV key, relative to ``prefix``.
    value
        A string (stored exactly); numbers and booleans are stored as their
        text. Dicts and lists only with ``json: true`` (stored as JSON, which
        is then also how every value is stored).
    profile
        The sdb profile (Salt passes it).

    CLI Example:

    .. code-block:: bash

        salt-call sdb.set sdb://myconsul/db/pass 's3cret'
    """
    prefix, as_json, overrides = _profile(profile or {})
    full, _ = _path(prefix, key)
    if as_json:
        data = saltconsul_kv.serialise(value, "json").encode("utf-8")
    elif isinstance(value, (dict, list, tuple)):
        raise SaltInvocationError(
            f"sdb consul: {full!r}: a {type(value).__name__} needs a profile with json: true"
        )
    else:
        data = saltconsul_kv.encode_value(value)
    client = _client(overrides)
    saltconsul_kv.check_size(data, client.max_value_size, full)
    try:
        return saltconsul_kv.put(client, full, data)
    except ConsulError as err:
        raise _failed("write", full, err) from None


def delete(key, profile=None):
    """
    Delete ``key`` (under the profile's ``prefix``); True also when it did not exist.

    key
        The KV key, relative to ``prefix``.
    profile
        The sdb profile (Salt passes it).

    CLI Example:

    .. code-block:: bash

        salt-call sdb.delete sdb://myconsul/db/pass
    """
    prefix, _, overrides = _profile(profile or {})
    full, _ = _path(prefix, key)
    try:
        saltconsul_kv.delete(_client(overrides), full)
    except ConsulError as err:
        raise _failed("delete", full, err) from None
    return True
