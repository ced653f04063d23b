"""
Runner ``consul_replicate``: copy chosen KV prefixes from a primary
datacenter to the others.

Consul replicates ACLs and intentions across datacenters, not KV. This runner
makes each destination's copy of a prefix equal to the source's:

* keys missing or different (value or flags) are written, each with
  check-and-set against what the destination held when read (``cas=0`` for a
  new key, the key's ``ModifyIndex`` for a changed one), so a concurrent
  writer in the destination is never overwritten blindly: the key is reported
  under ``conflicts`` and the next run settles it;
* keys the source no longer has are deleted (``delete=False`` keeps them),
  also with check-and-set;
* a second run writes nothing;
* values are compared and copied as raw bytes and never logged or returned.

Requests go through the master's Consul agent with ``?dc=``, so the master's
agent must be WAN-joined with the destinations and its token must be able to
read the prefixes in the source and write them in the destinations.

.. code-block:: yaml

    # master config: defaults for the runner
    consul:
      replicate:
        source: mydc1                 # default: consul:datacenter, else the agent's own
        destinations: [mydc2, mydc3]  # default: every other datacenter Consul knows
        prefixes: [config/, nodes/]

Run it from cron or the master's ``schedule``, or from the reactor on the
``consul_watch`` engine's ``salt/consul/kv/...`` event for the source
datacenter (see ``formulas/reactor/``).
"""

import base64
import logging
import re

from salt.exceptions import CommandExecutionError, SaltInvocationError

import saltconsul_client
import saltconsul_kv
from saltconsul_errors import ConsulCASConflict, ConsulError

log = logging.getLogger(__name__)

__virtualname__ = "consul_replicate"


def __virtual__():
    return __virtualname__


def _conf():
    section = (__opts__.get("consul") or {}).get("replicate") or {}
    return section if isinstance(section, dict) else {}


def _check_prefix(prefix):
    if not isinstance(prefix, str) or not prefix.strip("/"):
        raise SaltInvocationError("each prefix must be a non-empty KV prefix (the whole KV is never replicated)")
    # The one key/prefix rule (no '.'/'..' segments, no control characters).
    return saltconsul_kv.check_key(prefix.lstrip("/"), what="prefix")


def _check_dc(dc):
    # Consul datacenter names: letters, digits, "-", "_" and "." (it lowercases them).
    if not isinstance(dc, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", dc):
        raise SaltInvocationError(f"bad datacenter name {dc!r}")
    return dc


def _read(client, prefix, dc):
    """``{key: (value_b64, flags, modify_index)}`` under ``prefix`` in ``dc``."""
    entries = client.get(saltconsul_kv.kv_path(prefix), params={"recurse": True}, dc=dc, not_found_ok=True)
    return {e["Key"]: (e.get("Value") or "", e.get("Flags") or 0, e["ModifyIndex"]) for e in entries or []}


def _sync_prefix(client, prefix, source, dest, delete, test, allow_empty_source):
    src = _read(client, prefix, source)
    dst = _read(client, prefix, dest)
    result = {"created": [], "updated": [], "deleted": [], "conflicts": [], "unchanged": 0}
    if not src and dst and delete and not allow_empty_source:
        # An empty source usually means a wiped primary or a wrong prefix, not
        # an intended mass deletion; refuse rather than empty every replica.
        raise CommandExecutionError(
            f"replicate {prefix} {source} -> {dest}: the source prefix is empty but the destination "
            f"holds {len(dst)} keys; pass allow_empty_source=True to delete them"
        )
    for key in sorted(src):
        value, flags, _ = src[key]
        if key in dst and dst[key][:2] == (value, flags):
            result["unchanged"] += 1
            continue
        action = "updated" if key in dst else "created"
        cas = dst[key][2] if key in dst else 0
        if test:
            result[action].append(key)
            continue
        try:
            saltconsul_kv.put(client, key, base64.b64decode(value) if value else b"", cas=cas, flags=flags, dc=dest)
        except ConsulCASConflict:
            result["conflicts"].append(key)
        else:
            result[action].append(key)
    if delete:
        for key in sorted(set(dst) - set(src)):
            if test:
                result["deleted"].append(key)
                continue
            try:
                saltconsul_kv.delete(client, key, cas=dst[key][2], dc=dest)
            except ConsulCASConflict:
                result["conflicts"].append(key)
            else:
                result["deleted"].append(key)
    return result


def kv(
    prefixes=None,
    source=None,
    destinations=None,
    delete=True,
    test=False,
    allow_empty_source=False,
    token=None,
):
    """
    Make each destination datacenter's copy of ``prefixes`` equal to the source's.

    prefixes
        KV prefixes to replicate (a list or one string); default
        ``consul:replicate:prefixes``. The empty prefix (all of KV) is refused.
    source
        Source datacenter; default ``consul:replicate:source``, else
        ``consul:datacenter``, else the master agent's own datacenter.
    destinations
        Destination datacenters; default ``consul:replicate:destinations``,
        else every other datacenter in ``/v1/catalog/datacenters``.
    delete
        Delete destination keys the source does not have (default True).
    test
        Report what would be written, write nothing.
    allow_empty_source
        Allow emptying a destination prefix because the source's is empty
        (refused by default: that is more often an accident than intent).
    token
        ACL token for this run instead of the configured one.

    Returns ``{dest: {prefix: {"created": [keys], "updated": [keys],
    "deleted": [keys], "conflicts": [keys], "unchanged": N}}}`` (keys only,
    never values).

    CLI Example:

    .. code-block:: bash

        salt-run consul_replicate.kv '[config/, nodes/]' source=dc1 destinations='[dc2]'
        salt-run consul_replicate.kv config/ test=True
    """
    conf = _conf()
    prefixes = prefixes if prefixes is not None else conf.get("prefixes")
    if isinstance(prefixes, str):
        prefixes = [prefixes]
    if not prefixes or not isinstance(prefixes, (list, tuple)):
        raise SaltInvocationError("prefixes: give one or more KV prefixes (or consul:replicate:prefixes)")
    prefixes = [_check_prefix(p) for p in prefixes]
    destinations = destinations if destinations is not None else conf.get("destinations")
    if isinstance(destinations, str):
        destinations = [destinations]
    if destinations is not None:
        destinations = [_check_dc(d) for d in destinations]
    source = source or conf.get("source")
    if source is not None:
        source = _check_dc(source)

    client = saltconsul_client.get_client(__opts__, __context__, token=token)
    try:
        if source is None:
            source = client.datacenter or client.get("/v1/agent/self")["Config"]["Datacenter"]
        if destinations is None:
            destinations = [dc for dc in client.get("/v1/catalog/datacenters") or [] if dc != source]
        if source in destinations:
            raise SaltInvocationError(f"the source datacenter {source} is also a destination")
        ret = {}
        for dest in destinations:
            ret[dest] = {}
            for prefix in prefixes:
                res = _sync_prefix(client, prefix, source, dest, delete, test, allow_empty_source)
                ret[dest][prefix] = res
                log.info(
                    "consul_replicate %s %s -> %s: %s%d created, %d updated, %d deleted, %d conflicts, %d unchanged",
                    prefix,
                    source,
                    dest,
                    "(test) " if test else "",
                    len(res["created"]),
                    len(res["updated"]),
                    len(res["deleted"]),
                    len(res["conflicts"]),
                    res["unchanged"],
                )
    except ConsulError as err:
        raise CommandExecutionError(f"consul_replicate.kv {source} -> {destinations}: {err}") from err
    return ret
