"""
The fleet by environment, for the ``consul_env.overview`` runner: which
environment a registered service instance belongs to, its health, the
single-holder locks, and which pillar layer folders exist.

Environments are the ones the master derives from minion IDs
(``saltconsul_env.parse``). A service instance belongs to:

1. its ``env`` meta when that is a postfix (``consul.register`` sets it);
2. else the environment of its ``salt_minion`` meta (the minion ID that
   registered it through the ``consul`` states);
3. else the one known environment whose type and group are both among its
   tags (the env tags ``consul.register`` adds), preferring the one in the
   node's datacenter when several match;
4. else none (reported as unassigned).

Reads go through ``saltconsul_client``; nothing here writes to Consul, and
no KV value other than a lock's holder (a minion ID) is returned.
"""

import bisect
import urllib.parse

import saltconsul_env
import saltconsul_kv

STATUSES = ("passing", "warning", "critical")
MINION_META = "salt_minion"
ENV_META = "env"
FILTERED_HEADER = "x-consul-results-filtered-by-acls"


def instance_env(service, node, env_conf=None, known=None):
    """
    The environment postfix of one service instance (see the module
    docstring), or None.

    service / node
        The ``Service`` and ``Node`` of a ``/v1/health/service`` entry.
    env_conf
        The master's ``consul:env`` config.
    known
        ``{postfix: env}`` of the environments the accepted minions are in.
    """
    meta = service.get("Meta") or {}
    if saltconsul_env.is_postfix(meta.get(ENV_META)):
        return meta[ENV_META]
    if meta.get(MINION_META):
        post = saltconsul_env.parse(meta[MINION_META], env_conf).get("postfix")
        if post:
            return post
    tags = set(service.get("Tags") or [])
    matches = sorted(
        post for post, env in (known or {}).items() if env.get("type") in tags and env.get("group") in tags
    )
    if len(matches) > 1:
        near = [post for post in matches if (known[post].get("datacenter") or "") == (node.get("Datacenter") or "")]
        matches = near if len(near) == 1 else matches
    return matches[0] if len(matches) == 1 else None


def instance_status(checks):
    """The worst status of an instance's checks (node and service; none: passing), as Consul ranks them."""
    worst = 0
    for check in checks or []:
        status = check.get("Status")
        rank = STATUSES.index(status) if status in STATUSES else len(STATUSES) - 1
        worst = max(worst, rank)
    return STATUSES[worst]


def read_services(client, dc=None):
    """
    Every service instance in the catalog with its checks: ``(entries,
    filtered)``, entries as ``(service_name, health_entry)``; ``filtered``
    is True when Consul (1.12+) says ACLs hid some results.
    """
    resp = client.request("GET", "/v1/catalog/services", dc=dc)
    filtered = _filtered(resp)
    entries = []
    for name in sorted(resp.json() or {}):
        if name == "consul" or name in (".", ".."):
            continue
        health = client.request("GET", "/v1/health/service/" + urllib.parse.quote(name, safe=""), dc=dc)
        filtered = filtered or _filtered(health)
        entries.extend((name, entry) for entry in health.json() or [])
    return entries, filtered


def _filtered(resp):
    return str(resp.headers.get(FILTERED_HEADER) or "").lower() == "true"


def read_locks(client, prefix=saltconsul_env.LOCK_PREFIX, dc=None):
    """
    The single-holder locks under ``prefix`` (``saltconsul_env.lock_key``
    layout): ``{(service, postfix_or_None): {"holder": minion ID or None,
    "held": bool}}``. Only the lock keys' values (minion IDs) are decoded.
    """
    entries = client.get(saltconsul_kv.kv_path(prefix.strip("/") + "/"), params={"recurse": True}, dc=dc, not_found_ok=True)
    locks = {}
    for entry in entries or []:
        parsed = saltconsul_env.parse_lock_key(entry.get("Key"), prefix)
        if parsed is None:
            continue
        held = bool(entry.get("Session"))
        holder = saltconsul_kv.b64_to_text(entry.get("Value")) if held else None
        locks[parsed] = {"holder": holder or None, "held": held}
    return locks


def read_folders(client, prefix, dc=None):
    """The sorted KV keys under ``prefix`` (names only), for :func:`folder_exists`."""
    path = saltconsul_kv.kv_path(prefix.strip("/") + "/") if prefix else "/v1/kv/"
    return sorted(client.get(path, params={"keys": True}, dc=dc, not_found_ok=True) or [])


def folder_exists(keys, folder):
    """True if any key of the sorted ``keys`` lies inside ``folder``."""
    base = folder.rstrip("/") + "/"
    pos = bisect.bisect_left(keys, base)
    return pos < len(keys) and keys[pos].startswith(base)


def accepted_minions(opts):
    """The minion IDs whose keys the master has accepted (master ``opts``), sorted."""
    import salt.key  # pylint: disable=import-outside-toplevel

    keys = salt.key.get_key(opts).list_status("accepted")
    return sorted(keys.get("minions") or [])
