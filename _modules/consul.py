"""
Execution module ``consul``: Consul KV, services, checks, discovery, sessions
and locks, events, through salt-consul's one shared client. Prepared queries
(``_modules/consul_query.py``) and ACLs (``_modules/consul_acl.py``) are
``consul.*`` functions too, in files of their own that share this virtual name;
the helpers they share live in ``saltconsul_calls``. See ``saltconsul_config``
for the ``consul:`` configuration: address, token or token_file, TLS
ca/cert/key, timeouts.

.. code-block:: bash

    salt '*' consul.env
    salt-call consul.status_leader
    salt-call consul.kv_get app/db/pool_size
    salt-call consul.discover_hosts db

Every function takes ``token`` (an ACL token for this call instead of the
configured one) and, where Consul supports it, ``dc``. Bad arguments raise
``SaltInvocationError`` before anything is sent; Consul errors raise
``CommandExecutionError`` naming the function and the cause (permission
denied, not found, CAS conflict, Consul unreachable, ...), never the token.

Secrets: ``kv_put`` never returns or logs the value it stores, and ACL token
secrets and prepared-query tokens are returned as ``<hidden>``. Salt itself
logs (at debug level) and caches the *arguments* of every job, so pass secret
values with ``value_pillar=`` or ``value_file=`` rather than on the command line.
"""

import hashlib
import logging
import os
import threading

import salt.utils.data
import salt.utils.files
from salt.exceptions import CommandExecutionError, SaltInvocationError

import saltconsul_calls
import saltconsul_env
import saltconsul_identity
import saltconsul_kv
import saltconsul_kvtree
import saltconsul_loader
import saltconsul_service
from saltconsul_calls import consistency as _consistency
from saltconsul_calls import consul_errors as _consul
from saltconsul_calls import dc_arg as _dc
from saltconsul_calls import duration as _duration
from saltconsul_calls import fail as _fail
from saltconsul_calls import opt_str as _opt_str
from saltconsul_calls import seg as _seg
from saltconsul_calls import str_list as _str_list
from saltconsul_calls import uint as _uint
from saltconsul_calls import valid as _valid
from saltconsul_errors import (
    ConsulError,
    ConsulNotFound,
    ConsulUnreachable,
)

log = logging.getLogger(__name__)

__virtualname__ = "consul"

DISCOVER_CONTEXT_KEY = "saltconsul.discover"
_MISSING = object()


def __virtual__():
    saltconsul_loader.warn_on_saltext_consul(log)
    return __virtualname__


# --------------------------------------------------------------------------- helpers


def _client(token=None):
    """The shared client; ``token`` overrides the configured one for this call."""
    return saltconsul_calls.client(__opts__, __context__, token)


# --------------------------------------------------------------------------- environment


def env(hostname=None):
    """
    The environment of this minion, or of ``hostname``.

    For this minion, the environment the master derived from its authenticated
    minion ID wins: the consul ext_pillar puts it in pillar (``consul_env``,
    see its ``env_key`` option; ``consul:env:pillar_key`` here if renamed),
    and its fields override the minion's own parse (``sources`` then says
    ``master``). Grains and the minion's config are the minion's to change; so
    formulas, states and discovery all take the environment from here.

    hostname
        A hostname or minion ID to parse instead of this minion's.

    CLI Example:

    .. code-block:: bash

        salt '*' consul.env
        salt-call consul.env hostname=mydc1-prod-gg-db01
    """
    conf = saltconsul_env.env_config(__opts__)
    if hostname is not None:
        return saltconsul_env.parse(hostname, conf)
    parsed = saltconsul_env.parse(saltconsul_env.local_name(__opts__), conf)
    master = __pillar__.get(conf.get("pillar_key") or "consul_env")
    if isinstance(master, dict):
        for field in saltconsul_env.FIELDS + ("host", "postfix"):
            value = master.get(field)
            valid = saltconsul_env.is_postfix if field == "postfix" else saltconsul_env.is_label
            parsed[field] = value if value is not None and valid(value) else None
            if field in saltconsul_env.FIELDS:
                if value is None:
                    parsed["sources"].pop(field, None)
                else:
                    parsed["sources"][field] = "master"
    return parsed


def service_name(service, hostname=None):
    """
    The name of ``service`` in this minion's environment (or ``hostname``'s):
    ``db`` -> ``db.prod.gg.mydc1``. None if the environment is incomplete.

    service
        The bare service name, e.g. ``db``.
    hostname
        Use this host's environment instead of this minion's.

    CLI Example:

    .. code-block:: bash

        salt '*' consul.service_name db
    """
    parsed = env(hostname)
    template = saltconsul_env.env_config(__opts__).get("postfix") or saltconsul_env.DEFAULT_POSTFIX
    return saltconsul_env.service_name(service, parsed, template)


# --------------------------------------------------------------------------- status


def status_leader(dc=None, token=None):
    """
    The address of the Raft leader of ``dc`` (default: the agent's datacenter).

    dc
        Datacenter to ask about.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt '*' consul.status_leader
    """
    with _consul("status_leader"):
        return _client(token).get("/v1/status/leader", dc=_dc(dc))


def status_peers(dc=None, token=None):
    """
    The Raft peers of ``dc``.

    dc
        Datacenter to ask about.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt '*' consul.status_peers
    """
    with _consul("status_peers"):
        return _client(token).get("/v1/status/peers", dc=_dc(dc))


# --------------------------------------------------------------------------- KV


def _kv_entry(entry, decode, key):
    return {
        "key": entry["Key"],
        "value": saltconsul_kv.decode_value(saltconsul_kv.b64_to_text(entry.get("Value")), decode, key=key),
        "modify_index": entry.get("ModifyIndex"),
        "create_index": entry.get("CreateIndex"),
        "lock_index": entry.get("LockIndex"),
        "flags": entry.get("Flags"),
        "session": entry.get("Session"),
    }


def kv_get(key, default=None, decode=None, detail=False, dc=None, consistency=None, token=None):
    """
    The value stored at ``key``: the exact string (a key stored without a value
    gives ``""``; a value that is not UTF-8 comes back as bytes), or ``default``
    if the key does not exist.

    key
        The key, e.g. ``app/db/pool_size`` (no leading ``/``).
    default
        Returned when the key does not exist.
    decode
        ``json`` or ``yaml`` to parse the value (an error if it does not
        parse); ``auto`` parses only YAML/JSON mappings and lists.
    detail
        Return ``{key, value, modify_index, create_index, lock_index, flags,
        session}`` instead of the value (``modify_index`` is what ``cas`` wants).
    dc
        Datacenter to read from.
    consistency
        ``stale`` (any server answers) or ``consistent`` (leader confirms).
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.kv_get app/db/pool_size
        salt-call consul.kv_get app/db/config decode=json
        salt-call consul.kv_get app/db/pool_size detail=True
    """
    path = saltconsul_kv.kv_path(key)
    if decode not in saltconsul_kv.DECODERS:
        raise SaltInvocationError(f"decode must be one of json, yaml, auto (got {decode!r})")
    with _consul("kv_get"):
        client = _client(token)
        if detail:
            entries = client.get(path, dc=_dc(dc), consistency=_consistency(consistency), not_found_ok=True)
            if not entries:
                return default
            return _kv_entry(entries[0], decode, key)
        resp = client.request(
            "GET", path, params={"raw": True}, dc=_dc(dc), consistency=_consistency(consistency), not_found_ok=True
        )
    if resp is None:
        return default
    return saltconsul_kv.decode_value(saltconsul_kv.bytes_to_text(resp.content), decode, key=key)


def _value_from(value, value_pillar, value_file):
    """The value to store, from exactly one of the three sources."""
    given = [name for name, v in (("value_pillar", value_pillar), ("value_file", value_file)) if v is not None]
    if len(given) > 1 or (given and value is not None):
        raise SaltInvocationError("give only one of value, value_pillar and value_file")
    if value_pillar is not None:
        found = salt.utils.data.traverse_dict_and_list(__pillar__, value_pillar, _MISSING, delimiter=":")
        if found is _MISSING:
            raise SaltInvocationError(f"pillar key {value_pillar!r} (value_pillar) does not exist")
        return found
    if value_file is not None:
        try:
            with salt.utils.files.fopen(value_file, "rb") as fh:
                return fh.read()
        except OSError as err:
            raise SaltInvocationError(f"cannot read value_file {value_file}: {err.strerror}") from None
    return value


def kv_put(
    key,
    value=None,
    cas=None,
    flags=None,
    acquire=None,
    release=None,
    dc=None,
    token=None,
    value_pillar=None,
    value_file=None,
):
    """
    Store ``value`` at ``key``. Returns True; the value is never returned or logged.

    Strings are stored exactly; None stores an empty value; dicts and lists are
    stored as JSON; numbers and booleans as their text (``true``/``false``).
    Values over ``consul:max_value_size`` (Consul's limit, 512 KiB by default)
    are refused before anything is sent.

    key
        The key (no leading ``/``).
    value
        The value. Salt logs and caches job arguments: for secrets use
        ``value_pillar`` or ``value_file`` instead.
    value_pillar
        Store the value of this pillar key (``a:b:c``) of the minion instead.
    value_file
        Store the contents of this file on the minion instead (bytes as-is).
    cas
        Check-and-set: write only if the key's ``modify_index`` is still this
        (0: only if the key does not exist). A lost race raises an error whose
        message contains "CAS conflict".
    flags
        An unsigned 64-bit integer stored with the key, opaque to Consul.
    acquire
        A session ID: write and take the key's lock. Returns Consul's answer
        (False: the lock is held by another session).
    release
        A session ID: write and release the key's lock. Returns Consul's answer
        (False: this session does not hold the lock).
    dc
        Datacenter to write to.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.kv_put app/db/pool_size 20
        salt-call consul.kv_put app/db/password value_pillar=app:db:password
        salt-call consul.kv_put app/db/pool_size 30 cas=1234
    """
    saltconsul_kv.check_key(key)
    _uint(cas, "cas")
    _uint(flags, "flags", maximum=2**64 - 1)
    if acquire is not None and release is not None:
        raise SaltInvocationError("give acquire or release, not both")
    _opt_str(acquire, "acquire")
    _opt_str(release, "release")
    data = saltconsul_kv.encode_value(_value_from(value, value_pillar, value_file))
    client = _client(token)
    saltconsul_kv.check_size(data, client.max_value_size, key)
    with _consul("kv_put"):
        return saltconsul_kv.put(
            client, key, data, cas=cas, flags=flags, acquire=acquire, release=release, dc=_dc(dc)
        )


def kv_delete(key, recurse=False, cas=None, dc=None, token=None):
    """
    Delete ``key`` (or, with ``recurse``, every key starting with it). Returns
    True, also when nothing was there.

    key
        The key or, with ``recurse``, the prefix (never empty).
    recurse
        Delete every key that starts with ``key``.
    cas
        Delete only if the key's ``modify_index`` is still this; a lost race
        raises an error whose message contains "CAS conflict".
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.kv_delete app/db/pool_size
        salt-call consul.kv_delete app/old/ recurse=True
    """
    saltconsul_kv.check_key(key)
    _uint(cas, "cas")
    with _consul("kv_delete"):
        return saltconsul_kv.delete(_client(token), key, recurse=recurse, cas=cas, dc=_dc(dc))


def kv_keys(prefix="", separator=None, dc=None, consistency=None, token=None):
    """
    The key names under ``prefix`` (all keys if empty), sorted; ``[]`` if none.

    prefix
        Key prefix, e.g. ``app/``.
    separator
        List only up to this character, e.g. ``/`` for one folder level.
    dc
        Datacenter.
    consistency
        ``stale`` or ``consistent``.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.kv_keys app/ separator=/
    """
    path = saltconsul_kv.kv_path(prefix, allow_empty=True)
    _opt_str(separator, "separator")
    with _consul("kv_keys"):
        keys = _client(token).get(
            path,
            params={"keys": True, "separator": separator},
            dc=_dc(dc),
            consistency=_consistency(consistency),
            not_found_ok=True,
        )
    return sorted(keys or [])


def kv_tree(prefix, decode=None, dc=None, consistency=None, token=None):
    """
    Every key under the folder ``prefix`` as a nested dict: ``app/db/pool``
    under prefix ``app`` becomes ``{"db": {"pool": "20"}}``. ``{}`` if none.

    prefix
        The folder, e.g. ``app`` or ``app/`` (``app`` does not include ``apple``).
    decode
        ``json``, ``yaml`` or ``auto`` to parse each value (``auto``: only JSON
        objects and arrays). A value that does not parse stays its exact string
        and a warning names its key, as in the ext_pillar.
    dc
        Datacenter.
    consistency
        ``stale`` or ``consistent``.
    token
        ACL token for this call instead of the configured one.

    A key that is both a value and a folder (``app/db`` and ``app/db/pool``)
    keeps both: the value goes under ``_value`` inside the folder.

    CLI Example:

    .. code-block:: bash

        salt-call consul.kv_tree app/db
    """
    base = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    path = saltconsul_kv.kv_path(base, allow_empty=True)
    if decode not in saltconsul_kv.DECODERS:
        raise SaltInvocationError(f"decode must be one of json, yaml, auto (got {decode!r})")
    with _consul("kv_tree"):
        entries = _client(token).get(
            path, params={"recurse": True}, dc=_dc(dc), consistency=_consistency(consistency), not_found_ok=True
        )
    # The ext_pillar's tree builder, so kv_tree and pillar agree on every rule.
    return saltconsul_kvtree.tree_from_consul(entries or (), base[:-1], decode or "raw")


_TXN_VERBS = {
    "set", "cas", "lock", "unlock", "get", "get-tree", "check-index", "check-session",
    "check-not-exists", "delete", "delete-tree", "delete-cas",
}
_TXN_KEYS = {"verb": "Verb", "key": "Key", "value": "Value", "flags": "Flags", "index": "Index", "session": "Session"}
_TXN_MAX_OPS = 64


def _txn_op(op, max_size):
    """One transaction operation: our lowercase KV shorthand, or Consul's own shape."""
    if not isinstance(op, dict):
        raise SaltInvocationError("each kv_txn operation must be a dict")
    if set(op) & {"KV", "Node", "Service", "Check"}:
        return op, (op.get("KV") or {}).get("Verb")
    unknown = set(op) - set(_TXN_KEYS)
    if unknown:
        raise SaltInvocationError(f"unknown kv_txn operation keys: {sorted(unknown)}")
    verb = op.get("verb")
    if verb not in _TXN_VERBS:
        raise SaltInvocationError(f"kv_txn verb must be one of {sorted(_TXN_VERBS)}, got {verb!r}")
    key = op.get("key")
    saltconsul_kv.check_key(key, allow_empty=verb in ("get-tree", "delete-tree"))
    body = {"Verb": verb, "Key": key}
    if "value" in op:
        data = saltconsul_kv.encode_value(op["value"])
        saltconsul_kv.check_size(data, max_size, key)
        body["Value"] = saltconsul_kv.text_to_b64(data)
    if "flags" in op:
        body["Flags"] = _uint(op["flags"], "flags", maximum=2**64 - 1)
    if "index" in op:
        body["Index"] = _uint(op["index"], "index")
    if "session" in op:
        body["Session"] = _opt_str(op["session"], "session")
    return {"KV": body}, verb


def kv_txn(operations, dc=None, token=None):
    """
    Run up to 64 KV operations as one atomic transaction. Returns Consul's
    result ``{"Results": [...], "Errors": None}``; values in the results are
    decoded to text for ``get``/``get-tree`` and removed for every other verb
    (so a written secret never comes back). A rolled-back transaction raises an
    error (with "CAS conflict" when an index check failed).

    operations
        A list of dicts ``{"verb": ..., "key": ..., "value": ..., "index": ...,
        "flags": ..., "session": ...}`` (values as for ``kv_put``), or Consul's
        own ``{"KV": {"Verb": ..., "Value": <base64>}}`` shape.
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.kv_txn '[{verb: set, key: app/a, value: "1"}, {verb: delete, key: app/b}]'
    """
    if not isinstance(operations, (list, tuple)) or not operations:
        raise SaltInvocationError("operations must be a non-empty list")
    if len(operations) > _TXN_MAX_OPS:
        raise SaltInvocationError(f"a Consul transaction holds at most {_TXN_MAX_OPS} operations")
    client = _client(token)
    ops, verbs = [], []
    for op in operations:
        body, verb = _txn_op(op, client.max_value_size)
        ops.append(body)
        verbs.append(verb)
    try:
        # A rolled-back transaction (409) is a ConsulCASConflict (saltconsul_errors.classify).
        result = client.put("/v1/txn", json=ops, dc=_dc(dc))
    except ConsulError as err:
        raise _fail("kv_txn", err) from err
    for verb, item in zip(verbs, (result or {}).get("Results") or []):
        entry = item.get("KV") if isinstance(item, dict) else None
        if not entry:
            continue
        if verb in ("get", "get-tree"):
            entry["Value"] = saltconsul_kv.b64_to_text(entry.get("Value"))
        else:
            entry.pop("Value", None)
    return result


# --------------------------------------------------------------------------- sessions and locks


def session_create(
    name=None,
    ttl=None,
    node=None,
    checks=None,
    service_checks=None,
    lock_delay=None,
    behavior="release",
    dc=None,
    token=None,
):
    """
    Create a session; returns its ID. Locks taken with it are released (or the
    keys deleted, with ``behavior=delete``) when the session ends: destroyed,
    TTL expired without renewal, or one of its checks critical.

    name
        A human-readable name.
    ttl
        Expire the session unless renewed within this duration (``"15s"``; Consul
        allows 10s to 24h).
    node
        The node the session belongs to (default: this agent's node).
    checks
        Node check IDs that end the session when critical (Consul's default is
        ``["serfHealth"]``; ``[]`` for none).
    service_checks
        Service check IDs that end the session when critical.
    lock_delay
        How long a released lock cannot be re-acquired (default ``15s``).
    behavior
        ``release`` (default) or ``delete`` the held keys when the session ends.
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.session_create name=db-primary ttl=30s
    """
    if behavior not in ("release", "delete"):
        raise SaltInvocationError("behavior must be 'release' or 'delete'")
    body = {"Behavior": behavior}
    if name is not None:
        body["Name"] = _opt_str(name, "name")
    if ttl is not None:
        body["TTL"] = _duration(ttl, "ttl")
    if node is not None:
        body["Node"] = _opt_str(node, "node")
    if checks is not None:
        body["NodeChecks"] = _str_list(checks, "checks")
    if service_checks is not None:
        body["ServiceChecks"] = [{"ID": c} for c in _str_list(service_checks, "service_checks")]
    if lock_delay is not None:
        body["LockDelay"] = _duration(lock_delay, "lock_delay")
    with _consul("session_create"):
        return _client(token).put("/v1/session/create", json=body, dc=_dc(dc))["ID"]


def session_info(session_id, dc=None, consistency=None, token=None):
    """
    The session's details (``ID``, ``Name``, ``Node``, ``TTL``, ``Behavior``,
    ...) as Consul returns them, or None if there is no such session.

    session_id
        The session ID.
    dc
        Datacenter.
    consistency
        ``stale`` or ``consistent``.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.session_info 4ca8e74b-6350-7587-addf-a18084928f3c
    """
    path = f"/v1/session/info/{_seg(session_id, 'session_id')}"
    with _consul("session_info"):
        found = _client(token).get(path, dc=_dc(dc), consistency=_consistency(consistency), not_found_ok=True)
    return found[0] if found else None


def session_renew(session_id, dc=None, token=None):
    """
    Renew a TTL session; returns its details. An error if the session is gone
    (expired or destroyed): its locks are already released.

    session_id
        The session ID.
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.session_renew 4ca8e74b-6350-7587-addf-a18084928f3c
    """
    path = f"/v1/session/renew/{_seg(session_id, 'session_id')}"
    with _consul("session_renew"):
        found = _client(token).put(path, dc=_dc(dc))
    return found[0] if found else None


def session_destroy(session_id, dc=None, token=None):
    """
    Destroy a session, releasing (or deleting) the keys it locked. True, also
    when the session did not exist.

    session_id
        The session ID.
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.session_destroy 4ca8e74b-6350-7587-addf-a18084928f3c
    """
    path = f"/v1/session/destroy/{_seg(session_id, 'session_id')}"
    # Destroying a session that is already gone answers true: safe to retry.
    with _consul("session_destroy"):
        return bool(_client(token).put(path, dc=_dc(dc), idempotent=True))


def session_list(node=None, dc=None, consistency=None, token=None):
    """
    All sessions (or those of ``node``), as Consul lists them.

    node
        Only this node's sessions.
    dc
        Datacenter.
    consistency
        ``stale`` or ``consistent``.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.session_list
        salt-call consul.session_list node=db01
    """
    path = "/v1/session/list" if node is None else f"/v1/session/node/{_seg(node, 'node')}"
    with _consul("session_list"):
        return _client(token).get(path, dc=_dc(dc), consistency=_consistency(consistency)) or []


def lock_acquire(key, session, value=None, dc=None, token=None):
    """
    Take the lock on ``key`` for ``session`` (writing ``value``). True if this
    session now holds it, False if another session does.

    key
        The lock key, e.g. ``locks/db/primary``.
    session
        A session ID from ``session_create``.
    value
        What to store while holding the lock (by convention the holder's
        minion ID; readable by anyone who can read the key, so never a secret).
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.lock_acquire locks/db/primary 4ca8e74b-... value=db01
    """
    _seg(session, "session")
    path = saltconsul_kv.kv_path(key)
    data = saltconsul_kv.encode_value(value)
    client = _client(token)
    saltconsul_kv.check_size(data, client.max_value_size, key)
    # Safe to retry (the client does, for a 5xx or no answer): an acquire by
    # the session that already holds the lock answers true again, so a retry
    # after an answer lost in transit tells the truth.
    with _consul("lock_acquire"):
        return bool(client.put(path, params={"acquire": session}, content=data, dc=_dc(dc), idempotent=True))


def lock_release(key, session, dc=None, token=None):
    """
    Release the lock on ``key`` held by ``session`` (its value becomes empty, as
    with Consul's own lock helpers). True if released, False if this session
    did not hold it.

    key
        The lock key.
    session
        The holding session's ID.
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.lock_release locks/db/primary 4ca8e74b-...
    """
    _seg(session, "session")
    path = saltconsul_kv.kv_path(key)
    with _consul("lock_release"):
        # Retried like an acquire; a retry whose first try did release answers false.
        return bool(_client(token).put(path, params={"release": session}, content=b"", dc=_dc(dc), idempotent=True))


def lock_holder(key, dc=None, consistency=None, token=None):
    """
    Who holds the lock on ``key``: ``{"session", "node", "name", "value"}``, or
    None if nobody does (or the key does not exist).

    key
        The lock key.
    dc
        Datacenter.
    consistency
        ``stale`` or ``consistent`` (use ``consistent`` before acting on it).
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.lock_holder locks/db/primary
    """
    path = saltconsul_kv.kv_path(key)
    with _consul("lock_holder"):
        client = _client(token)
        entries = client.get(path, dc=_dc(dc), consistency=_consistency(consistency), not_found_ok=True)
        if not entries or not entries[0].get("Session"):
            return None
        session = entries[0]["Session"]
        found = client.get(
            f"/v1/session/info/{_seg(session, 'session')}",
            dc=_dc(dc),
            consistency=_consistency(consistency),
            not_found_ok=True,
        )
    info = found[0] if found else {}
    return {
        "session": session,
        "node": info.get("Node"),
        "name": info.get("Name"),
        "value": saltconsul_kv.b64_to_text(entries[0].get("Value")),
    }


def lock_held(key, dc=None, token=None):
    """
    True if this minion holds the lock on ``key`` right now: a session holds
    the key and its value is this minion's ID (the convention of
    ``consul.single_holder_service``). Read with ``consistent`` consistency,
    so a step gated on it (a DB promotion) never acts on a stale follower read.

    key
        The lock key.
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.lock_held locks/db/prod.gg.mydc1/leader
    """
    holder = lock_holder(key, dc=dc, consistency="consistent", token=token)
    return bool(holder and holder.get("session") and holder.get("value") == __opts__.get("id"))


# --------------------------------------------------------------------------- agent services and checks

def service_register(
    name,
    id=None,  # pylint: disable=redefined-builtin
    tags=None,
    address=None,
    port=None,
    meta=None,
    enable_tag_override=False,
    weights=None,
    checks=None,
    replace_existing_checks=False,
    token=None,
):
    """
    Register (or replace) a service with the local agent. Returns True.

    name
        The service name, e.g. ``db``.
    id
        The instance ID (default: ``name``); unique on this agent.
    tags
        A list of tags, e.g. ``[prod, gg, primary]``.
    address
        The service address (default: the node's address).
    port
        The service port.
    meta
        A dict of string metadata (keys ``[A-Za-z0-9_-]``, at most 64 pairs).
    enable_tag_override
        Let external agents (e.g. a database's own failover) change the tags.
    weights
        ``{"passing": 10, "warning": 1}`` for DNS SRV weighting.
    checks
        Any number of checks, each a dict with ``name``, ``id``, exactly one of
        ``http``/``tcp``/``ttl``/``grpc``/``args``/``alias_service``, and
        ``interval``, ``timeout``, ``deregister_critical_service_after``,
        ``status`` (initial), ``notes``, ``method``, ``header``,
        ``tls_skip_verify``, ``grpc_use_tls``, ``success_before_passing``,
        ``failures_before_critical``.
    replace_existing_checks
        Remove this service's checks that are not in ``checks``.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.service_register db id=db01 port=5432 tags='[prod, gg]' \\
            checks='[{name: pg, tcp: "127.0.0.1:5432", interval: 10s}, {id: db01-ttl, ttl: 30s}]'
    """
    with _valid():
        body = saltconsul_service.service_body(
            name,
            id=id,
            tags=tags,
            address=address,
            port=port,
            meta=meta,
            enable_tag_override=enable_tag_override,
            weights=weights,
            checks=checks,
        )
    with _consul("service_register"):
        _client(token).put(
            "/v1/agent/service/register",
            json=body,
            params={"replace-existing-checks": bool(replace_existing_checks)},
        )
    return True


def service_deregister(service_id, token=None):
    """
    Remove a service instance (and its checks) from the local agent. True, also
    when it was not registered (Consul 1.8 answers that case differently with
    and without ACLs; the end state is the same).

    service_id
        The service instance ID.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.service_deregister db01
    """
    path = f"/v1/agent/service/deregister/{_seg(service_id, 'service_id')}"
    try:
        _client(token).put(path)
    except ConsulError as err:
        if not isinstance(err, ConsulNotFound):
            raise _fail("service_deregister", err) from err
    return True


def service_list(filter=None, token=None):  # pylint: disable=redefined-builtin
    """
    The local agent's services: ``/v1/agent/services``, a dict keyed by ID.

    filter
        A Consul filter expression, e.g. ``'Service == "db"'``.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.service_list
    """
    _opt_str(filter, "filter")
    with _consul("service_list"):
        return _client(token).get("/v1/agent/services", params={"filter": filter}) or {}


def service_get(service_id, token=None):
    """
    One local service (``/v1/agent/service/<id>``: ``ID``, ``Service``,
    ``Tags``, ``Meta``, ``Port``, ``Address``, ``Weights``, ...) or None.

    service_id
        The service instance ID.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.service_get db01
    """
    path = f"/v1/agent/service/{_seg(service_id, 'service_id')}"
    with _consul("service_get"):
        return _client(token).get(path, not_found_ok=True)


def service_maintenance(service_id, enable, reason=None, token=None):
    """
    Put a local service into maintenance (it fails health queries and
    discovery) or take it out. Returns True.

    service_id
        The service instance ID.
    enable
        True to enter maintenance, False to leave it.
    reason
        Shown in the maintenance check's notes.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.service_maintenance db01 True reason='disk swap'
    """
    path = f"/v1/agent/service/maintenance/{_seg(service_id, 'service_id')}"
    if not isinstance(enable, bool):
        raise SaltInvocationError("enable must be True or False")
    _opt_str(reason, "reason")
    with _consul("service_maintenance"):
        _client(token).put(path, params={"enable": "true" if enable else "false", "reason": reason})
    return True


def check_register(
    name,
    id=None,  # pylint: disable=redefined-builtin
    service_id=None,
    http=None,
    tcp=None,
    ttl=None,
    grpc=None,
    args=None,
    alias_service=None,
    interval=None,
    timeout=None,
    deregister_critical_service_after=None,
    status=None,
    notes=None,
    method=None,
    header=None,
    tls_skip_verify=None,
    grpc_use_tls=None,
    alias_node=None,
    success_before_passing=None,
    failures_before_critical=None,
    token=None,
):
    """
    Register (or replace) a check with the local agent. Returns True.

    name
        The check name.
    id
        The check ID (default: ``name``).
    service_id
        Attach the check to this local service instance.
    http / tcp / ttl / grpc / args / alias_service
        Exactly one: URL to GET, ``host:port`` to connect to, a TTL duration
        (then report with ``check_pass``/``check_warn``/``check_fail``), a gRPC
        endpoint, a command (list) to run, or a service to mirror.
    interval
        How often to run http/tcp/grpc/args checks, e.g. ``10s``.
    timeout
        Per-run timeout.
    deregister_critical_service_after
        Remove the service after it has been critical this long.
    status
        Initial status: ``passing``, ``warning`` or ``critical`` (Consul's default).
    notes
        Free text for humans.
    method / header / tls_skip_verify
        HTTP check options.
    grpc_use_tls
        Use TLS for a grpc check.
    alias_node
        The node of ``alias_service`` (default: this node).
    success_before_passing / failures_before_critical
        Consecutive results needed to flip status.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.check_register mem id=mem ttl=60s
        salt-call consul.check_register web-http service_id=web01 http=http://127.0.0.1:8080/health interval=10s
    """
    check = {
        "name": name, "id": id, "service_id": service_id, "http": http, "tcp": tcp, "ttl": ttl,
        "grpc": grpc, "args": args, "alias_service": alias_service, "interval": interval,
        "timeout": timeout, "deregister_critical_service_after": deregister_critical_service_after,
        "status": status, "notes": notes, "method": method, "header": header,
        "tls_skip_verify": tls_skip_verify, "grpc_use_tls": grpc_use_tls, "alias_node": alias_node,
        "success_before_passing": success_before_passing,
        "failures_before_critical": failures_before_critical,
    }
    with _valid():
        body = saltconsul_service.check_body(check)
    # The standalone endpoint calls it ID; inside a service definition it is CheckID.
    if "CheckID" in body:
        body["ID"] = body.pop("CheckID")
    with _consul("check_register"):
        _client(token).put("/v1/agent/check/register", json=body)
    return True


def check_deregister(check_id, token=None):
    """
    Remove a check from the local agent. True, also when it was not registered.

    check_id
        The check ID.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.check_deregister mem
    """
    path = f"/v1/agent/check/deregister/{_seg(check_id, 'check_id')}"
    try:
        _client(token).put(path)
    except ConsulError as err:
        if not isinstance(err, ConsulNotFound):
            raise _fail("check_deregister", err) from err
    return True


def check_list(filter=None, token=None):  # pylint: disable=redefined-builtin
    """
    The local agent's checks: ``/v1/agent/checks``, a dict keyed by CheckID.

    filter
        A Consul filter expression, e.g. ``'ServiceName == "db"'``.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.check_list
    """
    _opt_str(filter, "filter")
    with _consul("check_list"):
        return _client(token).get("/v1/agent/checks", params={"filter": filter}) or {}


def _check_update(operation, check_id, status, note, token):
    path = f"/v1/agent/check/update/{_seg(check_id, 'check_id')}"
    _opt_str(note, "note")
    # The update endpoint takes the note in the body, so it never lands in access logs.
    with _consul(operation):
        _client(token).put(path, json={"Status": status, "Output": note or ""})
    return True


def check_pass(check_id, note=None, token=None):
    """
    Mark a TTL check passing (and restart its TTL). Returns True.

    check_id
        The check ID.
    note
        Output shown with the check.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.check_pass db01-ttl note='replication ok'
    """
    return _check_update("check_pass", check_id, "passing", note, token)


def check_warn(check_id, note=None, token=None):
    """
    Mark a TTL check warning. Returns True.

    check_id
        The check ID.
    note
        Output shown with the check.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.check_warn db01-ttl note='replication lag 30s'
    """
    return _check_update("check_warn", check_id, "warning", note, token)


def check_fail(check_id, note=None, token=None):
    """
    Mark a TTL check critical. Returns True.

    check_id
        The check ID.
    note
        Output shown with the check.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.check_fail db01-ttl note='replication broken'
    """
    return _check_update("check_fail", check_id, "critical", note, token)


def health_service(service, passing=False, tag=None, near=None, dc=None, consistency=None, token=None):
    """
    The instances of ``service`` with their node and checks
    (``/v1/health/service/<service>``: a list of ``{Node, Service, Checks}``).

    service
        The service name.
    passing
        Only instances whose checks are all passing.
    tag
        Only instances with this tag (or all these tags).
    near
        Sort by round-trip time from this node (``_agent`` for this agent).
    dc
        Datacenter.
    consistency
        ``stale`` or ``consistent``.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.health_service db passing=True tag=prod
    """
    path = f"/v1/health/service/{_seg(service, 'service')}"
    params = {"passing": bool(passing), "tag": _str_list(tag, "tag"), "near": _opt_str(near, "near")}
    with _consul("health_service"):
        return _client(token).get(path, params=params, dc=_dc(dc), consistency=_consistency(consistency)) or []


def health_node(node, dc=None, consistency=None, token=None):
    """
    The checks of ``node`` (``/v1/health/node/<node>``), node and service checks.

    node
        The node name.
    dc
        Datacenter.
    consistency
        ``stale`` or ``consistent``.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.health_node db01
    """
    path = f"/v1/health/node/{_seg(node, 'node')}"
    with _consul("health_node"):
        return _client(token).get(path, dc=_dc(dc), consistency=_consistency(consistency)) or []


def health_checks(service, dc=None, consistency=None, token=None):
    """
    Every check of every instance of ``service`` (``/v1/health/checks/<service>``).

    service
        The service name.
    dc
        Datacenter.
    consistency
        ``stale`` or ``consistent``.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.health_checks db
    """
    path = f"/v1/health/checks/{_seg(service, 'service')}"
    with _consul("health_checks"):
        return _client(token).get(path, dc=_dc(dc), consistency=_consistency(consistency)) or []


def health_state(state="any", dc=None, consistency=None, token=None):
    """
    Every check in ``state`` (``passing``, ``warning``, ``critical`` or ``any``).

    state
        The state to list.
    dc
        Datacenter.
    consistency
        ``stale`` or ``consistent``.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt '*' consul.health_state critical
    """
    if state not in saltconsul_service.CHECK_STATUSES + ("any",):
        raise SaltInvocationError("state must be passing, warning, critical or any")
    with _consul("health_state"):
        return _client(token).get(f"/v1/health/state/{state}", dc=_dc(dc), consistency=_consistency(consistency)) or []


# --------------------------------------------------------------------------- discovery


def _env_fields(environment):
    """The environment fields (type, group) an instance must carry as tags for ``environment`` (see ``discover``)."""
    if environment is None or environment is False:
        return {}
    if environment is True:
        wanted = {}
    elif isinstance(environment, dict):
        unknown = set(environment) - {"type", "group"}
        if unknown:
            raise SaltInvocationError(f"environment may set type and group only, not {sorted(unknown)}")
        wanted = environment
    else:
        raise SaltInvocationError("environment must be True, False or a dict with type and/or group")
    own = env()  # the master-derived environment where pillar carries it
    fields = {}
    for field in ("type", "group"):
        value = wanted.get(field, own.get(field))
        if value is not None:
            if not saltconsul_env.is_label(value):
                raise SaltInvocationError(f"environment {field} {value!r} is not a DNS label")
            fields[field] = value
    if not fields and environment is True:
        log.info("consul.discover: this minion has no env type/group; not filtering by environment")
    return fields


def _discover_entries(service, passing, dc, near, token, refresh):
    """
    Consul's health entries for ``service``, fetched once per Salt run: the
    answer is memoised in ``__context__`` keyed by everything that shapes the
    request (tags are filtered afterwards, so they do not cost a request).
    """
    path = f"/v1/health/service/{_seg(service, 'service')}"
    token_key = hashlib.sha256(token.encode()).hexdigest() if token else None
    key = (service, bool(passing), dc, near, token_key)
    # A run is one process and one thread: a forked minion job starts from its
    # parent's copy of __context__ (other pid), a threaded minion keeps
    # __context__ across jobs but runs each in a new Thread object. The memo
    # holds its thread object, so identity cannot be confused by reused ids.
    memo = __context__.get(DISCOVER_CONTEXT_KEY)
    me = threading.current_thread()
    if not memo or memo["pid"] != os.getpid() or memo["thread"] is not me:
        memo = __context__[DISCOVER_CONTEXT_KEY] = {"pid": os.getpid(), "thread": me, "answers": {}}
    answers = memo["answers"]
    if refresh or key not in answers:
        # Errors propagate as ConsulError (never memoised): ``discover``
        # decides per datacenter whether to fail or to ask the next one.
        answers[key] = _client(token).get(path, params={"passing": bool(passing), "near": near}, dc=dc) or []
    return answers[key]


def discover(
    service,
    tags=None,
    passing=True,
    environment=True,
    dc=None,
    near=None,
    token=None,
    refresh=False,
    failover=None,
):
    """
    The healthy instances of ``service`` for templates, each as
    ``{"address", "port", "tags", "meta", "node", "id", "datacenter", "remote"}``
    (``remote`` is True only for instances found by ``failover``).

    ``address`` is the service's address, or its node's when the service has
    none. Instances are sorted by address, port and ID (stable config files),
    or by round-trip time with ``near``. Repeated calls for the same service in
    one Salt run (e.g. ten lookups in one template) make one HTTP request.

    service
        The service name, e.g. ``db``.
    tags
        Only instances carrying all these tags (a string or a list).
    passing
        Only instances whose checks all pass (default True).
    environment
        True (default): only instances tagged with this minion's ``env`` type
        and group (e.g. ``prod`` and ``gg``); False: any environment; a dict
        such as ``{"type": "stg"}`` overrides part of this minion's environment.
    dc
        Datacenter (default: the agent's own, i.e. this minion's).
    near
        Sort by round-trip time from this node (``_agent``: this agent).
    token
        ACL token for this call instead of the configured one.
    refresh
        Ask Consul again even if this run already did.
    failover
        When ``dc`` (default: the local datacenter) has no matching instance:
        a list of datacenters to try in order, or True for every other known
        datacenter, nearest first. The first that has matching instances
        answers; they are marked ``remote``. A local answer is returned
        without asking any other datacenter.

        When a datacenter cannot answer (Consul answers with an error: its
        servers are down, no leader, no route to it) the next one is asked;
        when the local agent itself does not answer (refused, timed out), the
        search stops there, since every datacenter is asked through it. With
        no instance found and any datacenter unanswered, the call fails with
        an error naming each such datacenter and why (never an empty list
        that would hide an outage); ``[]`` means every datacenter asked
        answered and none has a matching instance.

    CLI Example:

    .. code-block:: bash

        salt-call consul.discover db
        salt-call consul.discover db tags=primary environment='{type: stg}'
        salt-call consul.discover db failover='[mydc2, mydc3]'

    In a template:

    .. code-block:: jinja

        {% for db in salt['consul.discover']('db') %}
        server {{ db.address }}:{{ db.port }};
        {% endfor %}
    """
    fields = _env_fields(environment)
    wanted = set(_str_list(tags, "tags") or []) | set(fields.values())
    # On a minted token (docs/acl.md) a tag is only a claim: the instance's
    # node name, bound to its token by a node identity, must be of the environment.
    trust = fields if fields and saltconsul_identity.trusts_nodes(__opts__) else None
    _opt_str(near, "near")
    if failover is not None and failover is not True and failover is not False:
        failover = _str_list(failover, "failover")
    local = _dc(dc)
    unanswered = []  # (datacenter, ConsulError): asked and could not answer
    try:
        found = _discover_in(service, wanted, trust, passing, local, near, token, refresh, remote=False)
    except ConsulError as err:
        if not failover or isinstance(err, ConsulUnreachable):
            raise _fail("discover", err, where=_dc_label(local)) from err
        log.warning("consul.discover: %s cannot answer for %s (%s); trying failover", _dc_label(local), service, err)
        unanswered.append((_dc_label(local), err))
        found = []
    if found or not failover:
        return found
    if failover is True:
        try:
            failover = _failover_datacenters(local, token, refresh)
        except ConsulError as err:
            unanswered.append(("the list of datacenters", err))
            failover = []
    for other in failover:
        try:
            found = _discover_in(service, wanted, trust, passing, other, near, token, refresh, remote=True)
        except ConsulError as err:
            unanswered.append((_dc_label(other), err))
            if isinstance(err, ConsulUnreachable):
                break  # the agent every datacenter is asked through did not answer
            log.warning("consul.discover: datacenter %s cannot answer for %s (%s); asking the next", other, service, err)
            continue
        if found:
            log.info("consul.discover: no %s instance in the local datacenter; using %s", service, other)
            return found
    if unanswered:
        raise CommandExecutionError(
            f"consul.discover failed: no {service} instance found and not every datacenter could answer: "
            + "; ".join(f"{where}: {saltconsul_calls.kind(err)}: {err}" for where, err in unanswered)
        ) from unanswered[-1][1]
    return []


def _dc_label(dc):
    """A datacenter as error messages name it."""
    return f"datacenter {dc}" if dc else "the local datacenter"


def _failover_datacenters(dc, token, refresh):
    """Every known datacenter except the primary one, nearest first (memoised with the answers)."""
    memo = __context__[DISCOVER_CONTEXT_KEY]["answers"]
    if refresh or "datacenters" not in memo:
        memo["datacenters"] = _client(token).get("/v1/catalog/datacenters") or []
    known = memo["datacenters"]
    # Consul lists datacenters nearest first, so the agent's own comes first.
    primary = dc or _client(token).datacenter or (known[0] if known else None)
    return [name for name in known if name != primary]


def _discover_in(service, wanted, trust, passing, dc, near, token, refresh, remote):
    entries = _discover_entries(service, passing, dc, near, token, refresh)
    found = []
    env_conf = saltconsul_env.env_config(__opts__) if trust else None
    for entry in entries:
        svc, node = entry.get("Service") or {}, entry.get("Node") or {}
        svc_tags = svc.get("Tags") or []
        if not wanted <= set(svc_tags):
            continue
        if trust and not saltconsul_identity.node_matches(node.get("Node"), trust, env_conf):
            log.warning(
                "consul.discover: ignoring %s instance %s: it claims %s but its node %s is not of that environment",
                service,
                svc.get("ID"),
                "/".join(trust.values()),
                node.get("Node"),
            )
            continue
        found.append(
            {
                "address": svc.get("Address") or node.get("Address"),
                "port": svc.get("Port"),
                "tags": list(svc_tags),
                "meta": dict(svc.get("Meta") or {}),
                "node": node.get("Node"),
                "id": svc.get("ID"),
                "datacenter": node.get("Datacenter"),
                "remote": remote,
            }
        )
    if near is None:
        found.sort(key=lambda i: (i["address"] or "", i["port"] or 0, i["id"] or ""))
    return found


def discover_hosts(
    service,
    tags=None,
    passing=True,
    environment=True,
    dc=None,
    near=None,
    token=None,
    refresh=False,
    failover=None,
):
    """
    ``discover`` as ``["host:port", ...]`` strings for config files (IPv6
    addresses in brackets). Same arguments and the same one-request-per-run
    memoisation as ``discover``.

    service
        The service name.
    tags / passing / environment / dc / near / token / refresh / failover
        As for ``discover``.

    CLI Example:

    .. code-block:: bash

        salt-call consul.discover_hosts db

    .. code-block:: jinja

        hosts = {{ salt['consul.discover_hosts']('db') | join(',') }}
    """
    hosts = []
    for inst in discover(service, tags, passing, environment, dc, near, token, refresh, failover):
        address = inst["address"]
        if address and ":" in address and not address.startswith("["):
            address = f"[{address}]"
        hosts.append(f"{address}:{inst['port']}")
    return hosts


# --------------------------------------------------------------------------- catalog and members


def catalog_services(tag=None, dc=None, consistency=None, token=None):
    """
    Every service in the catalog with its tags: ``{"db": ["prod", "gg"], ...}``.

    tag
        Only services having this tag.
    dc
        Datacenter.
    consistency
        ``stale`` or ``consistent``.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.catalog_services
    """
    _opt_str(tag, "tag")
    with _consul("catalog_services"):
        services = _client(token).get("/v1/catalog/services", dc=_dc(dc), consistency=_consistency(consistency)) or {}
    if tag is None:
        return services
    return {name: tags for name, tags in services.items() if tag in (tags or [])}


def catalog_nodes(near=None, dc=None, consistency=None, token=None):
    """
    Every node in the catalog (``/v1/catalog/nodes``).

    near
        Sort by round-trip time from this node (``_agent``: this agent).
    dc
        Datacenter.
    consistency
        ``stale`` or ``consistent``.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.catalog_nodes
    """
    with _consul("catalog_nodes"):
        return _client(token).get(
            "/v1/catalog/nodes", params={"near": _opt_str(near, "near")}, dc=_dc(dc), consistency=_consistency(consistency)
        ) or []


def catalog_service(service, tag=None, near=None, dc=None, consistency=None, token=None):
    """
    Every instance of ``service`` in the catalog, healthy or not
    (``/v1/catalog/service/<service>``).

    service
        The service name.
    tag
        Only instances with this tag (or all these tags).
    near
        Sort by round-trip time from this node.
    dc
        Datacenter.
    consistency
        ``stale`` or ``consistent``.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.catalog_service db tag=prod
    """
    path = f"/v1/catalog/service/{_seg(service, 'service')}"
    params = {"tag": _str_list(tag, "tag"), "near": _opt_str(near, "near")}
    with _consul("catalog_service"):
        return _client(token).get(path, params=params, dc=_dc(dc), consistency=_consistency(consistency)) or []


def catalog_datacenters(token=None):
    """
    The known datacenters, nearest first.

    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.catalog_datacenters
    """
    with _consul("catalog_datacenters"):
        return _client(token).get("/v1/catalog/datacenters") or []


def agent_token_minted(test=False):
    """
    Make this minion's minted token (docs/acl.md, "Minted minion tokens") its
    local agent's ``agent`` token (``PUT /v1/agent/token/agent``), once per
    token: the agent registers its node with it under default-deny, so a new
    node needs no token file copied to it. The secret is never returned.

    Returns ``{"changed", "accessor", "comment"}``. Refuses when the agent's
    node name is not the one the token's node identity names (the agent
    could not register its node with it). The agent keeps the token across
    restarts only with ``acl { enable_token_persistence = true }``.

    test
        Only say whether it would be installed.

    CLI Example:

    .. code-block:: bash

        salt-call consul.agent_token_minted
    """
    record = saltconsul_identity.minion_record(__opts__)
    if not record:
        return {"changed": False, "accessor": None, "comment": "this minion holds no minted Consul token"}
    accessor = record.get("accessor")
    if record.get("agent_accessor") == accessor:
        return {"changed": False, "accessor": accessor, "comment": f"the local agent already holds minted token {accessor}"}
    with _consul("agent_token_minted"):
        node = ((_client().get("/v1/agent/self") or {}).get("Config") or {}).get("NodeName")
        if record.get("node") and node != record["node"]:
            raise CommandExecutionError(
                f"consul.agent_token_minted: the local agent is node {node!r}, the minted token is for node "
                f"{record['node']!r} (set the agent's node_name to it, see docs/acl.md)"
            )
        if test:
            return {"changed": True, "accessor": accessor, "comment": f"would give the local agent minted token {accessor}"}
        _client().put("/v1/agent/token/agent", json={"Token": record["secret"]})
    saltconsul_identity.mark_agent_token(__opts__, accessor)
    return {"changed": True, "accessor": accessor, "comment": f"the local agent now holds minted token {accessor}"}


def agent_members(wan=False, token=None):
    """
    The members the local agent sees (LAN, or the servers of every datacenter with ``wan``).

    wan
        List WAN members instead of LAN members.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.agent_members
    """
    with _consul("agent_members"):
        # Consul reads ?wan by value: a bare flag would mean false.
        return _client(token).get("/v1/agent/members", params={"wan": "1" if wan else None}) or []


# --------------------------------------------------------------------------- events


def event_fire(name, payload=None, node=None, service=None, tag=None, dc=None, token=None):
    """
    Fire a Consul user event; returns its ID. Agents (and ``consul watch``)
    matching the filters receive it. Payloads are limited to about 512 bytes
    and are visible to anyone who can list events: never a secret.

    name
        The event name, e.g. ``deploy``.
    payload
        Text (or bytes) carried with the event.
    node / service / tag
        Regular-expression filters on who should act on the event.
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.event_fire deploy payload=v1.2.3 service=web
    """
    path = f"/v1/event/fire/{_seg(name, 'name')}"
    data = saltconsul_kv.encode_value(payload)
    if len(data) > 512:
        raise SaltInvocationError(f"event payload is {len(data)} bytes; Consul allows at most 512")
    params = {"node": _opt_str(node, "node"), "service": _opt_str(service, "service"), "tag": _opt_str(tag, "tag")}
    with _consul("event_fire"):
        return _client(token).put(path, params=params, content=data, dc=_dc(dc))["ID"]


def event_list(name=None, token=None):
    """
    The recent user events this agent has seen (payloads decoded to text).

    name
        Only events with this name.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.event_list name=deploy
    """
    with _consul("event_list"):
        events = _client(token).get("/v1/event/list", params={"name": _opt_str(name, "name")}) or []
    for event in events:
        event["Payload"] = saltconsul_kv.b64_to_text(event.get("Payload"))
    return events
