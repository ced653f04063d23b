"""
State module ``consul``: services, checks, KV keys, single-holder services and
environment DNS names in Consul, idempotently.

Every state follows the same pattern: read what Consul holds, compute the
difference, return early when compliant (no write at all), fill ``changes``
with old/new, return ``result: None`` and "would ..." under ``test=True``
without writing, else write only what differs. Consul is reached only through
the execution module (``__salt__['consul.*']``).

.. code-block:: yaml

    web:
      consul.service_present:
        - service_id: web@{{ grains['id'] }}
        - port: 8080
        - env_tags: true
        - checks:
          - name: http
            http: http://127.0.0.1:8080/health
            interval: 10s
            timeout: 2s

What "managed" means here: every service this module registers carries the
meta keys ``managed_by: salt-consul`` and ``salt_minion: <minion id>``, plus
``salt_checks``, a fingerprint of the check definitions. Consul's agent API
does not return check definitions (URL, interval, ...; its ``Definition``
field stays empty, hashicorp/consul#1680), so the fingerprint is how a re-run
knows the checks are unchanged without re-registering (re-registering is a
write, and a changed check restarts as critical). Standalone checks
(``check_present``) carry the same fingerprint in their notes as
``[salt-consul <hash>]``.
"""

import copy
import hashlib
import json
import logging
import os
import re
import time

import salt.utils.data
from salt.exceptions import CommandExecutionError, SaltInvocationError

import saltconsul_calls
import saltconsul_duration
import saltconsul_env
import saltconsul_errors
import saltconsul_kv
import saltconsul_loader
import saltconsul_secrets
import saltconsul_service

log = logging.getLogger(__name__)

__virtualname__ = "consul"

MANAGED_BY_KEY = "managed_by"
MANAGED_BY = "salt-consul"
MINION_KEY = "salt_minion"
# Who registered a service (a formula or a state: ``services_pruned`` with the
# same ``owner`` removes only those) and, for a single-holder service, the
# lock it belongs to: no prune ever touches one of those; only
# ``single_holder_service`` deregisters it, knowingly, with its lock.
OWNER_KEY = "salt_owner"
LOCK_KEY = "salt_lock"
ANY_OWNER = "*"
SINGLE_HOLDER_OWNER = "consul.single_holder_service"
CHECKS_HASH_KEY = "salt_checks"
NOTES_MARKER = re.compile(r"\s*\[salt-consul [0-9a-f]{16}\]$")
SECRET_SHOWN = "<secret: not shown>"
REDACTED = "<redacted>"

def __virtual__():
    saltconsul_loader.warn_on_saltext_consul(log)
    return __virtualname__


# --------------------------------------------------------------------------- helpers


def _ret(name):
    return {"name": name, "result": True, "changes": {}, "comment": ""}


def _fail(ret, comment):
    ret["result"] = False
    ret["comment"] = comment
    return ret


def _minion_id():
    return __opts__.get("id") or ""


def _fingerprint(data):
    """A short stable hash of a JSON-able structure (never of a shown secret)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _env_tags():
    """This minion's environment tags: its type and group (from its minion ID / config)."""
    env = __salt__["consul.env"]()
    return [env[field] for field in ("type", "group") if env.get(field)]


def _dedupe(items):
    seen = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def _spec(build, *args, **kwargs):
    """Call a ``saltconsul_service`` builder; an invalid definition becomes SaltInvocationError."""
    try:
        return build(*args, **kwargs)
    except saltconsul_service.SpecError as err:
        raise SaltInvocationError(str(err)) from None


def _check_summary(check):
    """A check as shown in ``changes``: header values (often credentials) redacted."""
    shown = copy.deepcopy(check)
    if isinstance(shown.get("header"), dict):
        shown["header"] = {key: REDACTED for key in shown["header"]}
    return shown


def _current_check_summary(check):
    return {
        "id": check.get("CheckID"),
        "name": check.get("Name"),
        "type": check.get("Type"),
        "status": check.get("Status"),
    }


# --------------------------------------------------------------------------- services


def _service_plan(
    name, service_id, tags, address, port, meta, enable_tag_override, weights, checks, env_tags, token, owner=None, lock=None
):
    """
    Read the agent and work out what registering this service would change.

    Returns ``(desired, current, changes, stale_checks)``; ``changes`` is empty
    when the service is compliant. Raises SaltInvocationError on bad input and
    CommandExecutionError when Consul cannot be read.
    """
    if not name or not isinstance(name, str):
        raise SaltInvocationError("a service name is required")
    service_id = str(service_id or name)
    tags = list(_spec(saltconsul_service.valid_tags, tags) or [])
    if env_tags:
        tags += _env_tags()
    tags = _dedupe(tags)
    if meta is not None and not isinstance(meta, dict):
        raise SaltInvocationError("meta must be a mapping")
    if checks is not None and not isinstance(checks, (list, tuple)):
        raise SaltInvocationError("checks must be a list of mappings")
    norm_checks = [_spec(saltconsul_service.service_check, check, service_id, idx) for idx, check in enumerate(checks or [])]
    full_meta = dict(meta or {})
    full_meta[MANAGED_BY_KEY] = MANAGED_BY
    full_meta[MINION_KEY] = _minion_id()
    full_meta[CHECKS_HASH_KEY] = _fingerprint(norm_checks)
    for key, value in ((OWNER_KEY, owner), (LOCK_KEY, lock)):
        full_meta.pop(key, None)
        if value:
            full_meta[key] = _owner_name(value)
    # The exact body consul.service_register will send (same validation, so
    # test=True refuses exactly what the apply would); compared field by field.
    body = _spec(
        saltconsul_service.service_body,
        name,
        id=service_id,
        tags=tags,
        address=address or "",
        port=port if port is not None else 0,
        meta=full_meta,
        enable_tag_override=enable_tag_override,
        weights=weights if weights is not None else {},
        checks=norm_checks,
    )
    full_meta = body["Meta"]
    desired = {
        "Service": name,
        "ID": service_id,
        "Tags": body["Tags"],
        "Meta": full_meta,
        "Port": body["Port"],
        "Address": body["Address"],
        "Weights": body["Weights"],
        "EnableTagOverride": body["EnableTagOverride"],
        "checks": norm_checks,
    }
    ids = [check["id"] for check in norm_checks]

    current = _read_service(service_id, token)
    changes = {}
    stale = []
    if current is None:
        changes = {
            "old": None,
            "new": {
                "service": name,
                "id": service_id,
                "tags": tags,
                "address": desired["Address"],
                "port": desired["Port"],
                "meta": full_meta,
                "checks": [_check_summary(check) for check in norm_checks],
            },
        }
        return desired, current, changes, stale

    for field, key in (
        ("Service", "service"),
        ("Tags", "tags"),
        ("Meta", "meta"),
        ("Port", "port"),
        ("Address", "address"),
        ("Weights", "weights"),
        ("EnableTagOverride", "enable_tag_override"),
    ):
        have = current.get(field)
        if field == "Tags":
            have = list(have or [])
        elif field == "Meta":
            have = dict(have or {})
        elif field == "Weights":
            have = dict(have or saltconsul_service.DEFAULT_WEIGHTS)
        elif field == "Port":
            have = int(have or 0)
        elif field == "Address":
            have = have or ""
        elif field == "EnableTagOverride":
            have = bool(have)
        if have != desired[field]:
            changes[key] = {"old": have, "new": desired[field]}

    agent_checks = _service_checks(service_id, token)
    check_diff = False
    for check in norm_checks:
        have = agent_checks.get(check["id"])
        if (
            have is None
            or have.get("Name") != check["name"]
            or have.get("Type") != saltconsul_service.CHECK_KINDS[saltconsul_service.check_kind(check)]
            or (have.get("Notes") or "") != (check.get("notes") or "")
            or _agent_duration_differs(have, check)
        ):
            check_diff = True
    for cid, have in agent_checks.items():
        # Checks attached by consul.check_present carry their own marker and
        # are managed by that state, not by this one.
        if cid not in ids and not NOTES_MARKER.search(have.get("Notes") or ""):
            stale.append(cid)
    hash_changed = (current.get("Meta") or {}).get(CHECKS_HASH_KEY) != full_meta[CHECKS_HASH_KEY]
    if check_diff or stale or hash_changed:
        changes["checks"] = {
            "old": [_current_check_summary(agent_checks[cid]) for cid in sorted(agent_checks)],
            "new": [_check_summary(check) for check in norm_checks],
        }
    return desired, current, changes, stale


def _agent_duration_differs(have, check):
    """
    Whether the agent's own Interval/Timeout contradict the declared ones.
    Consul 1.10+ return them (as Go durations: ``1m0s`` for ``60s``) in
    ``/v1/agent/checks``; 1.8 does not, and then only the fingerprint in meta
    can tell. Compared as durations, never as strings.
    """
    for field, key in (("Interval", "interval"), ("Timeout", "timeout")):
        shown = have.get(field)
        if shown and check.get(key) is not None and not saltconsul_duration.same(shown, check[key]):
            return True
    return False


# --------------------------------------------------------------------------- one agent read per state run
#
# A state run (one ``salt.state.State``: state.apply, highstate, state.sls)
# reads the local agent's services and checks once, lazily, and every
# service/check state of the run plans against that snapshot: a compliant
# highstate of N services costs 2 requests instead of 2N. Salt injects
# ``__instance_id__`` (one per State object) into state functions while a run
# executes; outside a run (a direct call) there is no snapshot and every read
# goes to the agent. Our own writes mark what they touched, which is then read
# afresh, so a later state of the same run sees them. Never served across runs.

SNAPSHOT_KEY = "saltconsul.agent_snapshot"


def _view(token):
    """This run's snapshot for ``token`` (``{"services", "checks", "dirty"}``), or None outside a run."""
    run = globals().get("__instance_id__")
    if not run:
        return None
    snap = __context__.get(SNAPSHOT_KEY)
    if snap and snap.get("pid") == os.getpid() and snap.get("broken") == run:
        return None
    if not snap or snap.get("run") != run or snap.get("pid") != os.getpid():
        snap = __context__[SNAPSHOT_KEY] = {"run": run, "pid": os.getpid(), "tokens": {}}
    key = hashlib.sha256(token.encode()).hexdigest() if token else None
    view = snap["tokens"].get(key)
    if view is None:
        view = {
            "services": __salt__["consul.service_list"](token=token) or {},
            "checks": __salt__["consul.check_list"](token=token) or {},
            "dirty": set(),
        }
        snap["tokens"][key] = view
    return view


def _after_error(err):
    """
    After Consul failed to answer within this run, stop planning from the
    snapshot: later states read the agent first, so a hung agent fails them
    before they send a write (a write sent to a hung agent may still land
    after it was reported as failed).
    """
    if isinstance(saltconsul_errors.cause_of(err), saltconsul_errors.ConsulUnreachable):
        snap = __context__.get(SNAPSHOT_KEY)
        if snap:
            snap["tokens"].clear()
            snap["broken"] = snap.get("run")


def _touched(service_ids=(), check_ids=()):
    """Mark what this run wrote: later states of the run read it from the agent again."""
    snap = __context__.get(SNAPSHOT_KEY)
    if snap:
        for view in snap["tokens"].values():
            view["dirty"].update(f"service:{sid}" for sid in service_ids)
            view["dirty"].update(f"check:{cid}" for cid in check_ids)


def _read_service(service_id, token):
    """The local agent's registration of ``service_id`` (or None)."""
    view = _view(token)
    if view is None or f"service:{service_id}" in view["dirty"]:
        return __salt__["consul.service_get"](service_id, token=token)
    return view["services"].get(service_id)


def _read_check(check_id, token):
    """The local agent's check ``check_id`` (or None)."""
    view = _view(token)
    if view is None or f"check:{check_id}" in view["dirty"]:
        return (__salt__["consul.check_list"](token=token) or {}).get(check_id)
    return view["checks"].get(check_id)


def _service_checks(service_id, token, fresh=False):
    """
    The agent's checks attached to ``service_id``, keyed by CheckID. The run's
    snapshot serves their *definitions*; a check's status changes by itself,
    so whoever decides on status passes ``fresh=True`` (a read of the agent now).
    """
    view = None if fresh else _view(token)
    if view is not None and f"service:{service_id}" not in view["dirty"]:
        checks = view["checks"]
    else:
        # Consul filters server-side, so a direct read fetches only this
        # service's checks (not every check on the agent).
        expr = None if '"' in service_id or "\\" in service_id else f'ServiceID == "{service_id}"'
        checks = __salt__["consul.check_list"](filter=expr, token=token) or {}
    return {cid: check for cid, check in checks.items() if check.get("ServiceID") == service_id}


def _owner_problem(current, replace):
    """Why we must not touch an existing registration, or None if we may."""
    if current is None or replace:
        return None
    meta = current.get("Meta") or {}
    if meta.get(MANAGED_BY_KEY) != MANAGED_BY:
        return (
            f"service {current.get('ID')} exists and is not managed by salt-consul; "
            "not replacing it (set replace: true to take it over)"
        )
    if meta.get(MINION_KEY) != _minion_id():
        return (
            f"service {current.get('ID')} is managed by minion {meta.get(MINION_KEY)!r}; "
            "not replacing it (set replace: true to take it over)"
        )
    return None


def _service_write(desired, stale, token):
    """Register the service (one PUT) and remove checks no longer declared."""
    checks = [{k: v for k, v in check.items()} for check in desired["checks"]]
    _touched([desired["ID"]], [check["id"] for check in checks] + list(stale))
    __salt__["consul.service_register"](
        desired["Service"],
        id=desired["ID"],
        tags=desired["Tags"],
        address=desired["Address"] or None,
        port=desired["Port"] or None,
        meta=desired["Meta"],
        enable_tag_override=desired["EnableTagOverride"],
        weights={k.lower(): v for k, v in desired["Weights"].items()},
        checks=checks,
        token=token,
    )
    for cid in stale:
        __salt__["consul.check_deregister"](cid, token=token)


def _owner_name(value):
    if not isinstance(value, str) or not value.strip() or value == ANY_OWNER or len(value) > 128:
        raise SaltInvocationError(f"owner must be a non-empty name of at most 128 characters, not {value!r}")
    return value


def service_present(
    name,
    service_id=None,
    tags=None,
    address=None,
    port=None,
    meta=None,
    enable_tag_override=False,
    weights=None,
    checks=None,
    env_tags=False,
    replace=False,
    owner=None,
    token=None,
):
    """
    Ensure a service and its checks are registered with the local Consul agent.

    A compliant re-run makes no write, so a passing check stays passing.

    name
        The Consul service name, e.g. ``web``.
    service_id
        The service ID on the agent (default: ``name``). When several minions
        share one agent, give each its own ID (e.g. ``web@<minion id>``).
    tags
        List of tags.
    address / port
        Service address (default: the node's) and port.
    meta
        Mapping of service meta (string values). ``managed_by``,
        ``salt_minion`` and ``salt_checks`` are added by this state.
    enable_tag_override
        Consul's EnableTagOverride.
    weights
        ``{passing: N, warning: M}``.
    checks
        List of check mappings, each with exactly one of ``http``, ``tcp``,
        ``ttl``, ``grpc``, ``args`` and optional ``name`` (default: the kind),
        ``id`` (default: ``service:<service_id>:<name>``), ``interval``,
        ``timeout``, ``deregister_critical_service_after``, ``status`` (initial),
        ``notes``, ``method``, ``header``, ``tls_skip_verify``. Header values
        are never shown in ``changes``. Checks attached to this service that
        are not listed are removed (except those managed by ``check_present``).
    env_tags
        Add this minion's environment ``type`` and ``group`` as tags.
    replace
        Take over an existing registration with this ID that salt-consul did
        not make, or that another minion made (default: refuse).
    owner
        Who registers it (a formula's name, e.g. ``consul.register``), kept as
        meta ``salt_owner``: ``services_pruned`` with the same ``owner``
        removes only the services it owns, so formulas compose.
    token
        ACL token for this state's calls.
    """
    ret = _ret(name)
    try:
        desired, current, changes, stale = _service_plan(
            name, service_id, tags, address, port, meta, enable_tag_override, weights, checks, env_tags, token, owner
        )
        sid = desired["ID"]
        if not changes:
            ret["comment"] = f"Service {sid} is registered as declared"
            return ret
        problem = _owner_problem(current, replace)
        if problem:
            return _fail(ret, problem)
        ret["changes"] = changes
        verb = "registered" if current is None else "updated"
        if __opts__.get("test"):
            ret["result"] = None
            ret["comment"] = f"Service {sid} would be {verb}"
            return ret
        _service_write(desired, stale, token)
        ret["comment"] = f"Service {sid} {verb}"
    except (SaltInvocationError, CommandExecutionError) as err:
        _after_error(err)
        ret["changes"] = {}
        return _fail(ret, f"Service {service_id or name}: {err}")
    return ret


def service_absent(name, token=None):
    """
    Ensure the service with ID ``name`` is not registered with the local agent
    (its checks go with it).

    name
        The service ID.
    token
        ACL token for this state's calls.
    """
    ret = _ret(name)
    try:
        current = _read_service(name, token)
        if current is None:
            ret["comment"] = f"Service {name} is not registered"
            return ret
        ret["changes"] = {"old": {"service": current.get("Service"), "id": name}, "new": None}
        if __opts__.get("test"):
            ret["result"] = None
            ret["comment"] = f"Service {name} would be deregistered"
            return ret
        _touched([name])
        __salt__["consul.service_deregister"](name, token=token)
        ret["comment"] = f"Service {name} deregistered"
    except (SaltInvocationError, CommandExecutionError) as err:
        _after_error(err)
        ret["changes"] = {}
        return _fail(ret, f"Service {name}: {err}")
    return ret


def services_pruned(name, keep=None, owner=None, token=None):
    """
    Deregister the services this minion registered earlier (meta
    ``managed_by: salt-consul`` and ``salt_minion: <this minion>``) with this
    ``owner`` whose IDs are not in ``keep``. Services registered by anything
    or anyone else, or by another owner, are never touched; nor is a
    single-holder service (meta ``salt_lock``), nor any service whose checks
    a live Consul session is tied to (deregistering it would end the session
    and release its lock): only ``single_holder_service`` removes those.

    name
        A label for the state (not used).
    keep
        List of service IDs to keep (those still declared).
    owner
        Prune only services registered with this ``owner`` (see
        ``service_present``); default: those registered without one. ``*``:
        every owner (``bootstrap.leave``), single-holder services still not.
    token
        ACL token for this state's calls.
    """
    ret = _ret(name)
    keep = set(keep or [])
    me = _minion_id()
    try:
        if owner is not None and owner != ANY_OWNER:
            _owner_name(owner)
        services = __salt__["consul.service_list"](token=token) or {}
        gone = sorted(
            sid
            for sid, svc in services.items()
            if _prunable(svc.get("Meta") or {}, me, owner) and sid not in keep
        )
        tied = _session_tied(gone, token) if gone else set()
        gone = [sid for sid in gone if sid not in tied]
        kept = f"; kept {', '.join(sorted(tied))} (a live session is tied to its checks)" if tied else ""
        if not gone:
            ret["comment"] = "No stale services registered by this minion" + kept
            return ret
        ret["changes"] = {"deregistered": gone}
        if __opts__.get("test"):
            ret["result"] = None
            ret["comment"] = f"Would deregister {len(gone)} service(s) no longer declared: {', '.join(gone)}" + kept
            return ret
        _touched(gone)
        for sid in gone:
            __salt__["consul.service_deregister"](sid, token=token)
        ret["comment"] = f"Deregistered {len(gone)} service(s) no longer declared: {', '.join(gone)}" + kept
    except (SaltInvocationError, CommandExecutionError) as err:
        ret["changes"] = {}
        return _fail(ret, f"Pruning services: {err}")
    return ret


def _prunable(meta, me, owner):
    """Registered by this minion through salt-consul, with this owner, and not a single holder's."""
    if meta.get(MANAGED_BY_KEY) != MANAGED_BY or meta.get(MINION_KEY) != me or meta.get(LOCK_KEY):
        return False
    return owner == ANY_OWNER or meta.get(OWNER_KEY) == owner


def _session_tied(service_ids, token):
    """Those of ``service_ids`` one of whose checks a live session is tied to."""
    checks = __salt__["consul.check_list"](token=token) or {}
    owner_of = {cid: check.get("ServiceID") for cid, check in checks.items()}
    tied = set()
    for session in __salt__["consul.session_list"](token=token) or []:
        for entry in session.get("ServiceChecks") or []:
            tied.add(owner_of.get(entry.get("ID")))
        for cid in session.get("Checks") or []:
            tied.add(owner_of.get(cid))
    return tied.intersection(service_ids)


# --------------------------------------------------------------------------- checks


def check_present(
    name,
    check_id=None,
    service_id=None,
    http=None,
    tcp=None,
    ttl=None,
    grpc=None,
    args=None,
    interval=None,
    timeout=None,
    deregister_critical_service_after=None,
    status=None,
    notes=None,
    method=None,
    header=None,
    tls_skip_verify=None,
    alias_service=None,
    alias_node=None,
    grpc_use_tls=None,
    success_before_passing=None,
    failures_before_critical=None,
    token=None,
):
    """
    Ensure a check is registered with the local agent, optionally attached to
    a service. A compliant re-run makes no write.

    name
        The check name.
    check_id
        The check ID (default: ``name``).
    service_id
        Attach the check to this service.
    http / tcp / ttl / grpc / args / alias_service
        Exactly one: the kind of check and its target (the same vocabulary as
        ``consul.check_register``; ``alias_node`` goes with ``alias_service``).
    interval, timeout, deregister_critical_service_after
        Consul durations such as ``10s``.
    status
        Initial status (``passing``, ``warning``, ``critical``).
    notes
        Human-readable notes; the state appends ``[salt-consul <hash>]``, the
        fingerprint of the definition, since Consul does not return it.
    method, header, tls_skip_verify
        HTTP check options; header values are never shown.
    grpc_use_tls
        Use TLS for a grpc check.
    success_before_passing / failures_before_critical
        Consecutive results needed to flip status.
    token
        ACL token for this state's calls.
    """
    ret = _ret(name)
    check_id = str(check_id or name)
    try:
        spec = {
            "name": name,
            "id": check_id,
            "http": http,
            "tcp": tcp,
            "ttl": ttl,
            "grpc": grpc,
            "args": args,
            "interval": interval,
            "timeout": timeout,
            "deregister_critical_service_after": deregister_critical_service_after,
            "status": status,
            "notes": notes,
            "method": method,
            "header": header,
            "tls_skip_verify": tls_skip_verify,
            "alias_service": alias_service,
            "alias_node": alias_node,
            "grpc_use_tls": grpc_use_tls,
            "success_before_passing": success_before_passing,
            "failures_before_critical": failures_before_critical,
        }
        check = _spec(saltconsul_service.service_check, {k: v for k, v in spec.items() if v is not None}, service_id, 0)
        kind = saltconsul_service.check_kind(check)
        fingerprint = _fingerprint({"check": check, "service_id": service_id})
        want_notes = f"{notes or ''} [salt-consul {fingerprint}]".lstrip()
        current = _read_check(check_id, token)
        if current is not None:
            diff = {}
            for field, key, want in (
                ("Name", "name", name),
                ("ServiceID", "service_id", service_id or ""),
                ("Type", "type", saltconsul_service.CHECK_KINDS[kind]),
                ("Notes", "notes", want_notes),
            ):
                have = current.get(field) or ""
                if have != want:
                    diff[key] = {"old": have, "new": want}
            if not diff:
                ret["comment"] = f"Check {check_id} is registered as declared"
                return ret
            if list(diff) == ["notes"] and NOTES_MARKER.sub("", diff["notes"]["old"]) == (notes or ""):
                # Only the fingerprint differs: the definition itself changed.
                diff = {"definition": {"old": current.get("Notes"), "new": _check_summary(check)}}
            ret["changes"] = diff
        else:
            ret["changes"] = {"old": None, "new": _check_summary(check)}
        if __opts__.get("test"):
            ret["result"] = None
            ret["comment"] = f"Check {check_id} would be {'registered' if current is None else 'updated'}"
            return ret
        kwargs = {k: v for k, v in check.items() if k not in ("name", "id", "notes")}
        _touched([service_id] if service_id else [], [check_id])
        __salt__["consul.check_register"](
            name, id=check_id, service_id=service_id, notes=want_notes, token=token, **kwargs
        )
        ret["comment"] = f"Check {check_id} {'registered' if current is None else 'updated'}"
    except (SaltInvocationError, CommandExecutionError) as err:
        _after_error(err)
        ret["changes"] = {}
        return _fail(ret, f"Check {check_id}: {err}")
    return ret


def check_absent(name, token=None):
    """
    Ensure the check with ID ``name`` is not registered with the local agent.

    name
        The check ID.
    token
        ACL token for this state's calls.
    """
    ret = _ret(name)
    try:
        current = _read_check(name, token)
        if current is None:
            ret["comment"] = f"Check {name} is not registered"
            return ret
        ret["changes"] = {"old": _current_check_summary(current), "new": None}
        if __opts__.get("test"):
            ret["result"] = None
            ret["comment"] = f"Check {name} would be deregistered"
            return ret
        _touched([current.get("ServiceID")] if current.get("ServiceID") else [], [name])
        __salt__["consul.check_deregister"](name, token=token)
        ret["comment"] = f"Check {name} deregistered"
    except (SaltInvocationError, CommandExecutionError) as err:
        _after_error(err)
        ret["changes"] = {}
        return _fail(ret, f"Check {name}: {err}")
    return ret


# --------------------------------------------------------------------------- KV


def _decode(text, serializer):
    """The stored text decoded with ``serializer``; a sentinel if it does not decode."""
    try:
        return saltconsul_kv.decode(text, serializer)
    except saltconsul_kv.DecodeError:
        # Anything undecodable simply differs from the declared structure.
        return _UNDECODABLE


_UNDECODABLE = object()


def _as_text(value):
    text = saltconsul_kv.scalar_text(value)
    if text is None:
        raise SaltInvocationError("a structured value needs serializer: json or yaml")
    return text


def _cas_lost(err):
    """Whether a failed write lost a check-and-set (the kind, from the exception type)."""
    return isinstance(saltconsul_errors.cause_of(err), saltconsul_errors.ConsulCASConflict)


def key_present(name, value, serializer=None, secret=False, flags=None, dc=None, token=None):
    """
    Ensure the KV key ``name`` holds ``value``.

    The write is a check-and-set on the ModifyIndex read just before: if
    someone else changed the key in between, the state fails with a conflict
    and overwrites nothing. A compliant re-run makes no write.

    name
        The key, e.g. ``config/app/prod/gg/pool_size``.
    value
        A string (numbers and booleans are written as text), or a structure
        with ``serializer``.
    serializer
        ``json`` or ``yaml``: store the structure serialised; an existing value
        that decodes to the same structure is compliant, whatever its formatting.
    secret
        Never show the value (old or new) in ``changes``, comments or logs.
    flags
        Consul's opaque integer flags.
    dc
        Datacenter.
    token
        ACL token for this state's calls.
    """
    ret = _ret(name)
    try:
        if not name or not isinstance(name, str) or name.startswith("/"):
            raise SaltInvocationError("the key must be a non-empty path without a leading /")
        if serializer not in (None, "json", "yaml"):
            raise SaltInvocationError(f"serializer must be json or yaml, not {serializer!r}")
        text = saltconsul_kv.serialise(value, serializer) if serializer else _as_text(value)
        # The rule kv_put applies, so test=True never promises a write the apply refuses.
        flags = saltconsul_calls.uint(flags, "flags", maximum=2**64 - 1)
        current = __salt__["consul.kv_get"](name, detail=True, dc=dc, token=token)
        if current is not None:
            have = current.get("value")
            have = "" if have is None else have
            same = _decode(have, serializer) == value if serializer else have == text
            same_flags = flags is None or int(current.get("flags") or 0) == flags
            if same and same_flags:
                ret["comment"] = f"Key {name} holds the declared value"
                return ret
            if not same:
                if secret:
                    ret["changes"]["value"] = {"old": SECRET_SHOWN, "new": SECRET_SHOWN}
                else:
                    old = _decode(have, serializer) if serializer else have
                    ret["changes"]["value"] = {"old": have if old is _UNDECODABLE else old, "new": value}
            if not same_flags:
                ret["changes"]["flags"] = {"old": int(current.get("flags") or 0), "new": flags}
        else:
            ret["changes"]["value"] = {"old": None, "new": SECRET_SHOWN if secret else value}
        verb = "created" if current is None else "updated"
        if __opts__.get("test"):
            ret["result"] = None
            ret["comment"] = f"Key {name} would be {verb}"
            return ret
        # cas=0 means "only if it still does not exist".
        cas = int(current.get("modify_index") or 0) if current is not None else 0
        __salt__["consul.kv_put"](name, text, cas=cas, flags=flags, dc=dc, token=token)
        ret["comment"] = f"Key {name} {verb}"
    except (SaltInvocationError, CommandExecutionError) as err:
        ret["changes"] = {}
        if _cas_lost(err):
            return _fail(
                ret,
                f"Key {name} was changed by another writer after it was read (CAS conflict); "
                "not overwritten. Re-apply to compare against the new value.",
            )
        return _fail(ret, f"Key {name}: {err}")
    return ret


def key_absent(name, recurse=False, dc=None, token=None):
    """
    Ensure the KV key ``name`` (or, with ``recurse``, every key under that
    prefix) does not exist. A single key is deleted with check-and-set, so a
    concurrent rewrite is reported as a conflict.

    name
        The key or prefix.
    recurse
        Delete everything under the prefix ``name``.
    dc
        Datacenter.
    token
        ACL token for this state's calls.
    """
    ret = _ret(name)
    try:
        if not name or not isinstance(name, str):
            raise SaltInvocationError("the key must be a non-empty string")
        if recurse:
            keys = __salt__["consul.kv_keys"](name, dc=dc, token=token) or []
            if not keys:
                ret["comment"] = f"No keys under {name}"
                return ret
            ret["changes"] = {"deleted": sorted(keys)}
        else:
            current = __salt__["consul.kv_get"](name, detail=True, dc=dc, token=token)
            if current is None:
                ret["comment"] = f"Key {name} is absent"
                return ret
            ret["changes"] = {"deleted": [name]}
        if __opts__.get("test"):
            ret["result"] = None
            ret["comment"] = f"Would delete {len(ret['changes']['deleted'])} key(s) under {name}"
            return ret
        if recurse:
            __salt__["consul.kv_delete"](name, recurse=True, dc=dc, token=token)
        else:
            __salt__["consul.kv_delete"](name, cas=int(current.get("modify_index") or 0), dc=dc, token=token)
        ret["comment"] = f"Deleted {len(ret['changes']['deleted'])} key(s) under {name}"
    except (SaltInvocationError, CommandExecutionError) as err:
        ret["changes"] = {}
        if _cas_lost(err):
            return _fail(ret, f"Key {name} was changed by another writer after it was read (CAS conflict); not deleted")
        return _fail(ret, f"Key {name}: {err}")
    return ret


# --------------------------------------------------------------------------- single-holder services


def _seconds(duration):
    """A Consul duration (``15s``, ``500ms``, ``1m``) or a number (also as text: ``"10"``), in seconds."""
    if isinstance(duration, str) and re.fullmatch(r"\s*[0-9]+(\.[0-9]*)?\s*", duration):
        duration = float(duration)
    try:
        return saltconsul_duration.seconds(duration)
    except saltconsul_duration.DurationError as err:
        raise SaltInvocationError(str(err)) from None


def _default_lock_key(name):
    return saltconsul_env.lock_key(name, __salt__["consul.env"]().get("postfix"))


def _standby_check(sid, key):
    """
    The check that hides a candidate's instance from discovery until it holds
    the lock: a TTL check registered critical (nobody ever passes it). It goes
    in the same request as the service, so the instance is never passing
    without the lock. The notes end with the ``[salt-consul <hash>]`` marker,
    so ``_service_plan`` does not count it as a stale check of the service.
    """
    return {
        "name": "salt-consul standby",
        "id": f"salt-consul-standby:{sid}",
        "ttl": "1h",
        "status": "critical",
        "notes": f"not the holder of {key}; hidden from discovery [salt-consul {_fingerprint(key)}]",
    }


def _critical(check_ids, token, service_id):
    """Which of ``check_ids`` the local agent shows as critical (or missing)."""
    # Status now, never from the run's snapshot: it may have changed since.
    agent = _service_checks(service_id, token, fresh=True)
    return [cid for cid in check_ids if (agent.get(cid) or {}).get("Status", "critical") == "critical"]


def _wait_not_critical(check_ids, wait, token, service_id):
    """Poll the local agent until none of ``check_ids`` is critical; bounded by ``wait`` seconds."""
    deadline = time.monotonic() + max(wait, 0)
    while True:
        bad = _critical(check_ids, token, service_id)
        if not bad or time.monotonic() >= deadline:
            return bad
        time.sleep(0.25)


def _tied_to(session_id, check_ids, token):
    """True if the session exists and ends with exactly these service checks."""
    info = __salt__["consul.session_info"](session_id, token=token)
    if not info:
        return False
    return sorted(c.get("ID") for c in info.get("ServiceChecks") or []) == sorted(check_ids)


def _tied_session(name, me, check_ids, lock_delay, deadline, token, keep=()):
    """
    A session that ends when the node (``serfHealth``) or any of the service's
    checks goes critical. Consul refuses one on a check the *servers* see as
    critical or do not know yet; through a client agent the passing status
    reaches them by anti-entropy a moment after the agent shows it, so that
    refusal is retried until ``deadline``.

    A create that failed in transit (a 5xx such as a client agent's "rpc
    error making call: stream closed" after a server restart, or no answer)
    may have reached the servers: a session with our name may exist that no
    one knows the ID of. The name is this service's and this minion's alone,
    so before each retry every session of that name is destroyed except those
    in ``keep`` (one that holds the lock): the retry is then safe, and no
    orphan is left behind. An orphan holds no lock (the lock is taken only
    with an ID we know), so destroying it releases nothing.
    """
    session_name = f"salt-consul {name} {me}"
    while True:
        try:
            return __salt__["consul.session_create"](
                name=session_name,
                checks=["serfHealth"],
                service_checks=check_ids,
                lock_delay=lock_delay,
                behavior="release",
                token=token,
            )
        except CommandExecutionError as err:
            cause = saltconsul_errors.cause_of(err)
            if time.monotonic() >= deadline:
                raise
            if isinstance(cause, saltconsul_errors.ConsulSessionChecksNotReady):
                pass  # a definite refusal: nothing was created
            elif isinstance(cause, (saltconsul_errors.ConsulServerError, saltconsul_errors.ConsulUnreachable)):
                log.warning("single_holder_service %s: session create failed in transit (%s); retrying", name, cause)
                _destroy_orphans(session_name, keep, token)
            else:
                raise
        time.sleep(0.25)


def _destroy_orphans(session_name, keep, token):
    """Destroy every session named ``session_name`` but those in ``keep`` (a failed sweep is retried with the create)."""
    try:
        for found in __salt__["consul.session_list"](token=token):
            if found.get("Name") == session_name and found.get("ID") not in keep:
                log.warning("destroying orphan session %s (%s)", found["ID"], session_name)
                __salt__["consul.session_destroy"](found["ID"], token=token)
    except CommandExecutionError as err:
        log.debug("orphan sweep for %s failed (%s); the next try sweeps again", session_name, err)


def single_holder_service(
    name,
    checks,
    service_id=None,
    lock_key=None,
    lock_delay="15s",
    lock_wait=None,
    wait_passing=30,
    tags=None,
    address=None,
    port=None,
    meta=None,
    weights=None,
    enable_tag_override=False,
    env_tags=False,
    token=None,
):
    """
    Register a one-server service (a DB primary) only while this minion holds
    its Consul lock, and only while this minion's own checks of it are not
    critical.

    The lock is a KV key whose value is the holder's minion ID, held by a
    session that ends when ``serfHealth`` or any of this service's checks goes
    critical (Consul then releases the lock and, for the lock delay, lets
    nobody take it).

    Outcomes:

    - the lock is held by another minion (whose session, and so whose checks,
      Consul still considers healthy): this minion is a *standby*. The state
      is ``True`` with no changes, naming the holder. A stale instance of ours
      (from when we held it) is deregistered, a change.
    - this minion holds it and its checks are not critical: compliant, or the
      service definition is updated.
    - this minion holds it but one of its checks is critical on its own agent
      (Consul has not yet ended the session): the session is destroyed (the
      lock delay applies, as if Consul had ended it), the instance
      deregistered; ``False``.
    - nobody holds it: the instance is registered *hidden* (with a critical
      ``salt-consul-standby:<id>`` check, in the same request), the state
      waits up to ``wait_passing`` seconds for its own checks to leave
      ``critical`` on the local agent, and only then creates a session tied
      to them and takes the lock (retrying while a released lock is in its
      lock delay, up to ``lock_wait``), then removes the standby check. A
      minion whose checks stay critical never creates a session and never
      takes the lock: it deregisters its instance and fails. A minion that
      loses the race to a healthy one cleans up and stands by (``True``).

    Nothing stays registered without the lock: every failed step undoes what
    the run did (the lock released explicitly, the sessions destroyed, the
    instance deregistered). A lock held by a session of ours that is not tied
    to the checks (a run of an older version, interrupted) is handed over
    atomically to a tied session if the checks are healthy, else given up.

    name
        The Consul service name.
    checks
        The service's checks (at least one), as for ``service_present``.
    service_id
        The service ID (default: ``name``).
    lock_key
        The KV key of the lock (default: ``locks/<name>/<postfix>/leader``,
        one holder per environment).
    lock_delay
        Consul's lock delay for the sessions: after an invalidation nobody can
        take the lock for this long.
    lock_wait
        Seconds to keep retrying while a released lock is still in its lock
        delay (default: the lock delay plus 2 seconds).
    wait_passing
        Seconds to wait for this minion's checks to leave ``critical`` before
        taking the lock.
    tags, address, port, meta, weights, enable_tag_override, env_tags
        As for ``service_present``.
    token
        ACL token for this state's calls.
    """
    ret = _ret(name)
    me = _minion_id()
    sessions = []  # created by this run, destroyed on failure
    held_by = None  # the session of ours that holds the lock, once it does
    acquiring = False
    key = None
    sid = service_id or name
    test = __opts__.get("test")
    try:
        if not checks:
            raise SaltInvocationError("a single-holder service needs at least one check to tie its lock to")
        key = lock_key or _default_lock_key(name)
        delay = _seconds(lock_delay)
        wait_lock = delay + 2 if lock_wait is None else _seconds(lock_wait)
        wait_passing = _seconds(wait_passing)  # before anything is written
        desired, current, changes, stale = _service_plan(
            name, service_id, tags, address, port, meta, enable_tag_override, weights, checks, env_tags, token,
            owner=SINGLE_HOLDER_OWNER, lock=key,
        )
        sid = desired["ID"]
        check_ids = [check["id"] for check in desired["checks"]]
        standby = _standby_check(sid, key)
        if current is not None and _owner_problem(current, False) is not None:
            return _fail(ret, _owner_problem(current, False))
        holder = __salt__["consul.lock_holder"](key, token=token)
        holder_name = (holder or {}).get("value") or (holder or {}).get("session")

        if holder and holder.get("value") != me:
            # Consul keeps the lock only while the holder's session is valid,
            # that is while its node and its checks are healthy: stand by.
            ret["comment"] = f"Standing by: {name} is held by {holder_name} (lock {key}); {sid} not registered here"
            if current is not None:
                # We held it once and lost it: our instance must not stay
                # registered next to the holder's.
                ret["changes"] = {"deregistered": sid}
                if test:
                    ret["result"] = None
                    ret["comment"] += f"; would deregister this minion's stale instance {sid}"
                else:
                    _touched([sid])
                    __salt__["consul.service_deregister"](sid, token=token)
                    ret["comment"] += f"; deregistered this minion's stale instance {sid}"
            return ret

        mine = holder is not None  # held by this minion (value == me)
        critical = _critical(check_ids, token, sid) if current is not None else None
        if mine and critical:
            # Consul has not ended the session yet, but our own agent says we
            # are unhealthy: give the lock up now. Destroying the session (not
            # releasing the key) keeps the lock delay, as an invalidation would.
            ret["changes"] = {"lock": {"old": me, "new": None}, "deregistered": sid}
            if test:
                ret["result"] = None
                ret["comment"] = f"Check(s) {', '.join(critical)} critical: would give up {key} and deregister {sid}"
                return ret
            __salt__["consul.session_destroy"](holder["session"], token=token)
            _touched([sid])
            __salt__["consul.service_deregister"](sid, token=token)
            return _fail(ret, f"Check(s) {', '.join(critical)} critical: gave up {key} and deregistered {sid}")

        if mine and _tied_to(holder["session"], check_ids, token):
            hidden = current is not None and standby["id"] in _service_checks(sid, token)
            if not changes and not hidden:
                ret["comment"] = f"This minion holds {key}; service {sid} is registered as declared"
                return ret
            if changes:
                ret["changes"]["service"] = changes
            if hidden:
                ret["changes"]["discoverable"] = {"old": False, "new": True}
            if test:
                ret["result"] = None
                ret["comment"] = f"This minion holds {key}; service {sid} would be updated"
                return ret
            if changes:
                _service_write(desired, stale, token)
            if hidden:
                _touched([sid], [standby["id"]])
                __salt__["consul.check_deregister"](standby["id"], token=token)
            ret["comment"] = f"This minion holds {key}; service {sid} updated"
            return ret

        if mine:
            # Held by a session of ours not tied to the checks (an interrupted
            # run of an older version): hand it over below, atomically.
            ret["changes"] = {"lock": {"old": "held by a session not tied to the checks", "new": "tied to the checks"}}
        else:
            ret["changes"] = {"lock": {"old": None, "new": me}}
        if changes:
            ret["changes"]["service"] = changes
        if test:
            if critical:
                # What the apply will most likely end with: no lock.
                ret["changes"] = {}
                return _fail(
                    ret,
                    f"Check(s) {', '.join(critical)} critical: would not take the lock {key} "
                    f"unless they pass within {wait_passing:g}s",
                )
            ret["result"] = None
            ret["comment"] = f"Would register {sid}, wait up to {wait_passing:g}s for its checks and take the lock {key}"
            return ret

        acquiring = True
        if mine:
            held_by = holder["session"]
        # 1. Registered (or kept) hidden: its checks run, discovery skips it.
        if current is None or changes:
            write = dict(desired, checks=desired["checks"] + [standby])
            _service_write(write, stale, token)
        elif not mine and standby["id"] not in _service_checks(sid, token):
            _touched([sid], [standby["id"]])
            __salt__["consul.check_register"](
                standby["name"],
                id=standby["id"],
                service_id=sid,
                ttl=standby["ttl"],
                status=standby["status"],
                notes=standby["notes"],
                token=token,
            )
        # 2. Our own checks must be healthy before any session exists.
        critical = _wait_not_critical(check_ids, wait_passing, token, sid)
        if critical:
            raise CommandExecutionError(
                f"check(s) {', '.join(critical)} still critical after {wait_passing:g}s; not taking the lock"
            )
        # 3. A session tied to the node and the checks, then the lock.
        deadline = time.monotonic() + max(wait_passing, wait_lock)
        keep = {held_by, (holder or {}).get("session")} - {None}
        session = _tied_session(name, me, check_ids, lock_delay, deadline, token, keep)
        sessions.append(session)
        if mine:
            __salt__["consul.kv_txn"](
                [
                    {"verb": "unlock", "key": key, "session": held_by},
                    {"verb": "lock", "key": key, "value": me, "session": session},
                ],
                token=token,
            )
            old, held_by = held_by, session
            # It holds nothing now: destroying it releases nothing.
            __salt__["consul.session_destroy"](old, token=token)
        else:
            deadline = time.monotonic() + wait_lock
            while not __salt__["consul.lock_acquire"](key, session, value=me, token=token):
                holder = __salt__["consul.lock_holder"](key, token=token)
                if holder:
                    # A healthy minion won the race: stand by, as if it had
                    # held the lock when we started.
                    acquiring = False
                    ret["changes"] = {}
                    holder_name = holder.get("value") or holder.get("session")
                    ret["comment"] = (
                        f"Standing by: {name} is held by {holder_name} (lock {key}); {sid} not registered here"
                    )
                    _undo(ret, key, None, sessions, sid, token)  # may turn it False, saying what is left
                    return ret
                if time.monotonic() >= deadline:
                    raise CommandExecutionError(f"lock {key} still in its lock delay after {wait_lock:g}s")
                # Nobody holds it: a released lock still in its lock delay.
                time.sleep(0.25)
            held_by = session
        # 4. Holding the lock: the instance becomes discoverable.
        if standby["id"] in _service_checks(sid, token):
            _touched([sid], [standby["id"]])
            __salt__["consul.check_deregister"](standby["id"], token=token)
        ret["comment"] = f"Took the lock {key}; service {sid} registered on this minion"
        return ret
    except (SaltInvocationError, CommandExecutionError) as err:
        ret["changes"] = {}
        ret["result"] = False
        ret["comment"] = f"Single-holder service {sid}: {err}"
        if acquiring:
            _undo(ret, key, held_by, sessions, sid, token)
        return ret


def _undo(ret, key, held_by, sessions, sid, token):
    """
    Undo what a single-holder run did: nothing stays registered without the
    lock. Each step is tried on its own, so one failing does not skip the rest.
    """
    problems = []

    def _deregister():
        # No read first: with Consul hanging, the write is what must be on
        # the wire before the release (deregistering is idempotent).
        _touched([sid])
        __salt__["consul.service_deregister"](sid, token=token)
        if ret["result"] is False:
            ret["comment"] += f"; {sid} not left registered here"

    # The instance goes first: were the lock released and the deregistration
    # then lost (Consul paused mid-cleanup), it would stay listed unlocked.
    steps = [("deregister", _deregister)]
    if held_by:
        # An explicit release sets no lock delay; destroying a
        # holding session would make every other minion wait.
        steps.append(("release the lock", lambda: __salt__["consul.lock_release"](key, held_by, token=token)))
    for created in sessions:
        steps.append(("destroy a session", lambda created=created: __salt__["consul.session_destroy"](created, token=token)))
    for what, step in steps:
        try:
            step()
        except CommandExecutionError as undo_err:
            problems.append(f"{what}: {undo_err}")
    if problems:
        log.warning("single_holder_service %s: cleanup failed: %s", sid, "; ".join(problems))
        ret["result"] = False  # also for a race loser: what it left must be seen
        ret["comment"] += f"; cleanup failed ({'; '.join(problems)}); re-apply once Consul answers"


# --------------------------------------------------------------------------- environment DNS names


def _label(value, what):
    if not saltconsul_env.is_label(value):
        raise SaltInvocationError(f"{what} must be a lowercase DNS label, got {value!r}")
    return value


def _query_view(query):
    """The parts of a prepared query this state manages, with Consul's defaults filled in."""
    template = query.get("Template") or {}
    service = query.get("Service") or {}
    failover = service.get("Failover") or {}
    return {
        "Template": {"Type": template.get("Type") or "", "Regexp": template.get("Regexp") or ""},
        "Service": {
            "Service": service.get("Service") or "",
            "Tags": list(service.get("Tags") or []),
            "OnlyPassing": bool(service.get("OnlyPassing")),
            "Near": service.get("Near") or "",
            "Failover": {
                "NearestN": int(failover.get("NearestN") or 0),
                "Datacenters": list(failover.get("Datacenters") or []),
            },
        },
        "DNS": {"TTL": (query.get("DNS") or {}).get("TTL") or ""},
    }


def _query_token(path, pillar_key):
    """The token a prepared query should run with (file or pillar), or None; never logged."""
    if path is not None and pillar_key is not None:
        raise SaltInvocationError("give query_token_file or query_token_pillar, not both")
    if path is not None:
        secret = saltconsul_secrets.load_secret(path, "query_token_file")
        if secret is None:
            raise SaltInvocationError(f"query_token_file {path} does not exist")
        return secret
    if pillar_key is not None:
        # __pillar__ itself, not pillar.get: Salt 3008 masks pillar.get's answer outside templates.
        secret = salt.utils.data.traverse_dict_and_list(__pillar__, pillar_key, None, delimiter=":")
        if not isinstance(secret, str) or not secret.strip():
            raise SaltInvocationError(f"pillar key {pillar_key} holds no token")
        return secret.strip()
    return None


def _query_token_view(current, secret, token):
    """How the stored token compares, by fingerprint: ``<set>``, ``<another token>`` or ``""``."""
    stored = __salt__["consul.query_token_fingerprint"](current["ID"], token=token)
    if stored is None:
        return ""
    return "<set>" if secret and stored == saltconsul_secrets.fingerprint(secret) else "<another token>"


def env_query_present(
    name,
    service=None,
    datacenter=None,
    only_passing=True,
    near=None,
    failover_datacenters=None,
    failover_nearest_n=None,
    ttl=None,
    token=None,
    query_token_file=None,
    query_token_pillar=None,
):
    """
    Maintain a prepared-query template so that environment names resolve
    through Consul DNS to the healthy instances of a service tagged with that
    environment's type and group:

    .. code-block:: text

        <service>.<type>.<group>.<datacenter>.query.consul   e.g. db.prod.gg.mydc1.query.consul
        <service>.<type>.<group>.query.consul                (this datacenter)
        <service>.<type>.<group>.query.<consul dc>.consul    (run in another Consul datacenter)

    The first form is exactly ``consul.service_name`` + ``.query.consul``.
    The template is a ``name_prefix_match`` on ``<service>.`` with the regexp
    ``^<service>\\.(type)\\.(group)(?:\\.<datacenter>)?$``; the captured type
    and group become the required tags. A name naming another environment
    datacenter does not match (NXDOMAIN) rather than answering with this one's
    instances.

    name
        The service (e.g. ``db``), unless ``service`` is given.
    service
        The service, when ``name`` is used as a label.
    datacenter
        The environment datacenter label accepted in names (default: this
        minion's ``env`` datacenter; empty string: none accepted).
    only_passing
        Answer with passing instances only (default) or also warning ones.
    near
        Sort by round-trip time from this node (``_agent`` for the local agent).
    failover_datacenters / failover_nearest_n
        Consul's failover to other datacenters when none are healthy here.
    ttl
        DNS TTL for the answers (e.g. ``10s``).
    token
        ACL token for this state's calls.
    query_token_file / query_token_pillar
        The token the query runs with, from this file on the minion or this
        pillar key. Without one, a query runs with its caller's token: for DNS
        that is the anonymous token, which under ``default_policy = "deny"``
        answers NXDOMAIN unless it may read nodes, services and queries
        (docs/acl.md). The token is never shown: ``changes`` say
        ``<set>`` / ``<another token>``.
    """
    service = service or name
    ret = _ret(name)
    try:
        query_secret = _query_token(query_token_file, query_token_pillar)
        _label(service, "service")
        if datacenter is None:
            datacenter = __salt__["consul.env"]().get("datacenter") or ""
        if datacenter:
            _label(datacenter, "datacenter")
        # Checked here, as Consul would at apply: test=True must not promise what the apply refuses.
        ttl = saltconsul_calls.duration(ttl, "ttl")
        failover_nearest_n = saltconsul_calls.uint(failover_nearest_n, "failover_nearest_n")
        failover_datacenters = saltconsul_calls.str_list(failover_datacenters, "failover_datacenters")
        suffix = rf"(?:\.{datacenter})?" if datacenter else ""
        definition = {
            "Name": f"{service}.",
            "Template": {
                "Type": "name_prefix_match",
                "Regexp": rf"^{service}\.([a-z0-9-]+)\.([a-z0-9-]+){suffix}$",
            },
            "Service": {
                "Service": service,
                "Tags": ["${match(1)}", "${match(2)}"],
                "OnlyPassing": bool(only_passing),
                "Near": near or "",
                "Failover": {
                    "NearestN": int(failover_nearest_n or 0),
                    "Datacenters": list(failover_datacenters or []),
                },
            },
            "DNS": {"TTL": ttl or ""},
        }
        if query_secret:
            definition["Token"] = query_secret
        want = _query_view(definition)
        if query_secret:
            want["Token"] = "<set>"
        found = [q for q in __salt__["consul.query_list"](token=token) or [] if q.get("Name") == definition["Name"]]
        current = found[0] if found else None
        example = f"{service}.<type>.<group>{'.' + datacenter if datacenter else ''}.query.consul"
        if current is not None:
            have = _query_view(current)
            if query_secret or current.get("Token"):
                want.setdefault("Token", "")
                have["Token"] = _query_token_view(current, query_secret, token)
            if have == want:
                ret["comment"] = f"Prepared query {definition['Name']} is as declared ({example})"
                return ret
            ret["changes"] = {"old": have, "new": want}
        else:
            ret["changes"] = {"old": None, "new": want}
        verb = "created" if current is None else "updated"
        if __opts__.get("test"):
            ret["result"] = None
            ret["comment"] = f"Prepared query {definition['Name']} would be {verb} ({example})"
            return ret
        if current is None:
            __salt__["consul.query_create"](definition, token=token)
        else:
            __salt__["consul.query_update"](current["ID"], definition, token=token)
        ret["comment"] = f"Prepared query {definition['Name']} {verb} ({example})"
    except (SaltInvocationError, CommandExecutionError) as err:
        ret["changes"] = {}
        return _fail(ret, f"Prepared query for {service}: {err}")
    return ret


def env_query_absent(name, service=None, token=None):
    """
    Remove the environment prepared-query template of a service.

    name
        The service (e.g. ``db``), unless ``service`` is given.
    service
        The service, when ``name`` is used as a label.
    token
        ACL token for this state's calls.
    """
    service = service or name
    ret = _ret(name)
    try:
        found = [q for q in __salt__["consul.query_list"](token=token) or [] if q.get("Name") == f"{service}."]
        if not found:
            ret["comment"] = f"No prepared query {service}."
            return ret
        ret["changes"] = {"old": _query_view(found[0]), "new": None}
        if __opts__.get("test"):
            ret["result"] = None
            ret["comment"] = f"Prepared query {service}. would be deleted"
            return ret
        __salt__["consul.query_delete"](found[0]["ID"], token=token)
        ret["comment"] = f"Prepared query {service}. deleted"
    except (SaltInvocationError, CommandExecutionError) as err:
        ret["changes"] = {}
        return _fail(ret, f"Prepared query for {service}: {err}")
    return ret


def agent_token_minted(name):
    """
    The local Consul agent holds this minion's minted token as its ``agent``
    token (``consul.agent_token_minted``): its node registers under
    default-deny with no token file copied to it. Compliant (no change, no
    write) once the agent holds the current token; with no minted token (the
    shared-token path) there is nothing to do.

    .. code-block:: yaml

        consul-agent-token:
          consul.agent_token_minted: []
    """
    ret = _ret(name)
    try:
        planned = __salt__["consul.agent_token_minted"](test=True)
        if not planned["changed"]:
            ret["comment"] = planned["comment"]
            return ret
        ret["changes"] = {"agent_token": {"old": None, "new": planned["accessor"]}}
        if __opts__.get("test"):
            ret["result"] = None
            ret["comment"] = planned["comment"]
            return ret
        ret["comment"] = __salt__["consul.agent_token_minted"]()["comment"]
    except (SaltInvocationError, CommandExecutionError) as err:
        ret["changes"] = {}
        return _fail(ret, str(err))
    return ret
