"""
ACL policies and tokens in Consul as states, on Consul's current ACL API
(``/v1/acl/policy``, ``/v1/acl/token``; Consul 1.4+).

This file shares the virtual name ``consul`` with ``consul.py``: Salt's loader
merges the functions of every file with the same virtual name, so these are
``consul.acl_policy_present`` and friends (``tests/unit/test_loader_names.py``
guards against two files defining the same name).

.. code-block:: yaml

    salt-minion policy:
      consul.acl_policy_present:
        - name: salt-minion
        - rules: |
            session_prefix "" { policy = "write" }
            key_prefix "locks/" { policy = "write" }

    minion token for web01:
      consul.acl_token_present:
        - name: salt-minion web01          # the token's Description identifies it
        - policies: [salt-minion]
        - secret_file: /srv/salt-consul/tokens/web01.token
        - require:
          - consul: salt-minion policy

Secrets: a token's SecretID is never in a return, a comment, ``changes`` or a
log line. It lives only in ``secret_file`` (mode 0600): read from there when the
file exists before the token does (the token is created with that secret), else
written there. ``changes`` says what happened to the file ("missing",
"differs", "not private" -> "written"), never what it holds.

Why no role states: a role is a named bundle of policies; the least-privilege
set here is three policies linked straight to tokens, and tokens may still link
roles made elsewhere (``roles:``).
"""

import logging
import os
import re

from salt.exceptions import CommandExecutionError, SaltInvocationError

import saltconsul_secrets

log = logging.getLogger(__name__)

__virtualname__ = "consul"

# Consul's own rule for policy names (agent/structs/acl.go validatePolicyName).
_POLICY_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")
_UUID = saltconsul_secrets.UUID
SECRET_WRITTEN = "written (0600)"


def __virtual__():
    return __virtualname__


def _ret(name):
    return {"name": name, "result": True, "changes": {}, "comment": ""}


def _diff(have, want):
    """``{"old": ..., "new": ...}`` of the fields that differ (whole dicts on creation)."""
    if have is None:
        return {"old": None, "new": want}
    keys = [k for k in want if have.get(k) != want[k]]
    return {"old": {k: have.get(k) for k in keys}, "new": {k: want[k] for k in keys}} if keys else {}


def _str_list(value, what):
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise SaltInvocationError(f"{what} must be a list of non-empty strings")
    return list(value)


# --------------------------------------------------------------------------- policies


def _policy_view(policy):
    return {
        "Rules": (policy.get("Rules") or "").strip(),
        "Description": policy.get("Description") or "",
        "Datacenters": sorted(policy.get("Datacenters") or []),
    }


def _policy_name(name):
    if not isinstance(name, str) or not _POLICY_NAME.match(name):
        raise SaltInvocationError(f"policy name must be 1-128 of A-Z a-z 0-9 - _, got {name!r}")
    return name


def acl_policy_present(name, rules, description=None, datacenters=None, dc=None, token=None):
    """
    An ACL policy called ``name`` with exactly these rules.

    name
        The policy name (Consul's rule: 1-128 of ``A-Z a-z 0-9 - _``).
    rules
        HCL (or JSON) rules; compared with surrounding whitespace removed.
    description
        Free text; None leaves an existing policy's description as it is.
    datacenters
        Restrict the policy to these datacenters; None or ``[]``: valid in all.
    dc
        Datacenter whose ACL API to use (policies replicate from the primary).
    token
        ACL token for this state's calls (needs ``acl = "write"``).

    .. code-block:: yaml

        salt-dns:
          consul.acl_policy_present:
            - rules: |
                node_prefix "" { policy = "read" }
                service_prefix "" { policy = "read" }
    """
    ret = _ret(name)
    try:
        _policy_name(name)
        if not isinstance(rules, str):
            raise SaltInvocationError("rules must be a string (HCL or JSON)")
        if description is not None and not isinstance(description, str):
            raise SaltInvocationError("description must be a string")
        want = {
            "Rules": rules.strip(),
            "Description": description or "",
            "Datacenters": sorted(_str_list(datacenters, "datacenters") or []),
        }
        current = __salt__["consul.acl_policy_read"](name=name, dc=dc, token=token)
        have = _policy_view(current) if current else None
        if have is not None and description is None:
            want["Description"] = have["Description"]
        changes = _diff(have, want)
        if not changes:
            ret["comment"] = f"ACL policy {name} is as declared"
            return ret
        verb = "created" if current is None else "updated"
        ret["changes"] = changes
        if __opts__.get("test"):
            ret["result"] = None
            ret["comment"] = f"ACL policy {name} would be {verb}"
            return ret
        if current is None:
            __salt__["consul.acl_policy_create"](
                name, rules=want["Rules"], description=want["Description"] or None,
                datacenters=want["Datacenters"] or None, dc=dc, token=token,
            )
        else:
            __salt__["consul.acl_policy_update"](
                current["ID"], rules=want["Rules"], description=want["Description"],
                datacenters=want["Datacenters"], dc=dc, token=token,
            )
        ret["comment"] = f"ACL policy {name} {verb}"
    except (SaltInvocationError, CommandExecutionError) as err:
        ret.update(result=False, changes={}, comment=f"ACL policy {name}: {err}")
    return ret


def acl_policy_absent(name, dc=None, token=None):
    """
    No ACL policy called ``name`` (tokens linked to it lose the link).

    name
        The policy name.
    dc
        Datacenter whose ACL API to use.
    token
        ACL token for this state's calls (needs ``acl = "write"``).

    .. code-block:: yaml

        old-policy:
          consul.acl_policy_absent
    """
    ret = _ret(name)
    try:
        _policy_name(name)
        current = __salt__["consul.acl_policy_read"](name=name, dc=dc, token=token)
        if not current:
            ret["comment"] = f"ACL policy {name} is already absent"
            return ret
        ret["changes"] = {"old": _policy_view(current), "new": None}
        if __opts__.get("test"):
            ret["result"] = None
            ret["comment"] = f"ACL policy {name} would be deleted"
            return ret
        __salt__["consul.acl_policy_delete"](current["ID"], dc=dc, token=token)
        ret["comment"] = f"ACL policy {name} deleted"
    except (SaltInvocationError, CommandExecutionError) as err:
        ret.update(result=False, changes={}, comment=f"ACL policy {name}: {err}")
    return ret


# --------------------------------------------------------------------------- tokens


def _link_names(links):
    return sorted(link.get("Name") or link.get("ID") or "" for link in links or [])


def _wanted_links(values, current_links):
    """Desired policy/role names; an ID given instead of a name counts as that linked name."""
    by_id = {link.get("ID"): link.get("Name") for link in current_links or []}
    return sorted(by_id.get(v, v) if _UUID.match(v) else v for v in values)


def _service_identities(values):
    out = []
    for value in values or []:
        if isinstance(value, str) and value:
            value = {"ServiceName": value}
        if not isinstance(value, dict) or not isinstance(value.get("ServiceName"), str) or not value["ServiceName"]:
            raise SaltInvocationError("service_identities must be service names or {ServiceName, Datacenters} dicts")
        out.append({
            "ServiceName": value["ServiceName"],
            "Datacenters": sorted(_str_list(value.get("Datacenters"), "Datacenters") or []),
        })
    return sorted(out, key=lambda ident: ident["ServiceName"])


def _node_identities(values):
    out = []
    for value in values or []:
        if not isinstance(value, dict) or not all(isinstance(value.get(k), str) and value[k] for k in ("NodeName", "Datacenter")):
            raise SaltInvocationError("node_identities must be {NodeName, Datacenter} dicts")
        out.append({"NodeName": value["NodeName"], "Datacenter": value["Datacenter"]})
    return sorted(out, key=lambda ident: (ident["NodeName"], ident["Datacenter"]))


def _token_view(tok):
    return {
        "Description": tok.get("Description") or "",
        "Policies": _link_names(tok.get("Policies")),
        "Roles": _link_names(tok.get("Roles")),
        "ServiceIdentities": _service_identities(tok.get("ServiceIdentities")),
        "NodeIdentities": _node_identities(tok.get("NodeIdentities")),
        "Local": bool(tok.get("Local")),
    }


def _find_token(accessor_id, description, dc, token):
    if accessor_id is not None:
        return __salt__["consul.acl_token_read"](accessor_id, dc=dc, token=token)
    found = [t for t in __salt__["consul.acl_token_list"](dc=dc, token=token) if t.get("Description") == description]
    if len(found) > 1:
        raise CommandExecutionError(
            f"{len(found)} tokens have the description {description!r}; name the one to manage by accessor_id"
        )
    return found[0] if found else None


def _identify(name, accessor_id, description):
    """``(accessor_id, description)``: a token is found by AccessorID if given, else by its description."""
    if accessor_id is not None and (not isinstance(accessor_id, str) or not _UUID.match(accessor_id)):
        raise SaltInvocationError("accessor_id must be a UUID")
    if description is not None and not isinstance(description, str):
        raise SaltInvocationError("description must be a string")
    if accessor_id is None:
        description = name if description is None else description
        if not description:
            raise SaltInvocationError("a token without accessor_id is found by its description, which must not be empty")
    return accessor_id, description


def _secret_file(path):
    if path is None:
        return None
    if not isinstance(path, str) or not os.path.isabs(path):
        raise SaltInvocationError("secret_file must be an absolute path")
    return path


def acl_token_present(
    name,
    accessor_id=None,
    description=None,
    policies=None,
    roles=None,
    service_identities=None,
    node_identities=None,
    local=False,
    secret_file=None,
    without_policies=None,
    dc=None,
    token=None,
):
    """
    An ACL token linked to exactly these policies (and roles, identities).

    name
        The token's description, which identifies it, unless ``accessor_id``
        is given (then ``name`` is only the state's label).
    accessor_id
        Identify (and on creation, give) the token by this AccessorID, e.g.
        ``00000000-0000-0000-0000-000000000002`` for the anonymous token.
    description
        The description to keep; default ``name`` (when found by description)
        or left as it is (when found by ``accessor_id``).
    policies / roles
        Policy / role names (IDs accepted); the exact set. None: not managed
        (``[]`` on creation).
    service_identities
        Service names or ``{ServiceName, Datacenters}`` dicts; the exact set, None: not managed.
    node_identities
        ``{NodeName, Datacenter}`` dicts; the exact set, None: not managed.
    local
        A token of this datacenter only; Consul cannot change it afterwards.
    secret_file
        Absolute path on the minion running the state: holds the token's
        SecretID (mode 0600). If it exists before the token does, the token is
        created with that secret; otherwise the secret is written there, and
        kept there (re-written when missing, different or readable by others).
    without_policies
        Policy names that must not be linked, every other link kept as it is
        (instead of ``policies``): how ``consul.acl`` takes ``salt-dns`` back off
        the anonymous token without dropping policies an operator added there.
    dc
        Datacenter whose ACL API to use.
    token
        ACL token for this state's calls (needs ``acl = "write"``).

    .. code-block:: yaml

        salt-minion web01:
          consul.acl_token_present:
            - policies: [salt-minion]
            - secret_file: /srv/tokens/web01.token

        anonymous without salt-dns:
          consul.acl_token_present:
            - accessor_id: 00000000-0000-0000-0000-000000000002
            - without_policies: [salt-dns]
    """
    ret = _ret(name)
    try:
        accessor_id, description = _identify(name, accessor_id, description)
        secret_file = _secret_file(secret_file)
        policies = _str_list(policies, "policies")
        roles = _str_list(roles, "roles")
        service_identities = None if service_identities is None else _service_identities(service_identities)
        node_identities = None if node_identities is None else _node_identities(node_identities)
        without_policies = _str_list(without_policies, "without_policies")
        if without_policies is not None and policies is not None:
            raise SaltInvocationError("give policies (the exact set) or without_policies, not both")
        current = _find_token(accessor_id, description, dc, token)
        if without_policies is not None:
            # The links the token has now, less those named: the exact set from here on.
            policies = [p for p in _link_names((current or {}).get("Policies")) if p not in without_policies]
        held = None
        if secret_file and current is None:
            # The file is the new token's secret: a malformed one is refused before
            # anything is written. (For an existing token it is only an output.)
            held = saltconsul_secrets.load_secret(secret_file, "secret_file", uuid=True)
        have = _token_view(current) if current else None
        base = have or _token_view({"Local": local})
        want = dict(base)
        if description is not None:
            want["Description"] = description
        if policies is not None:
            want["Policies"] = _wanted_links(policies, (current or {}).get("Policies"))
        if roles is not None:
            want["Roles"] = _wanted_links(roles, (current or {}).get("Roles"))
        if service_identities is not None:
            want["ServiceIdentities"] = service_identities
        if node_identities is not None:
            want["NodeIdentities"] = node_identities
        want["Local"] = bool(local)
        if have is not None and have["Local"] != want["Local"]:
            raise SaltInvocationError(
                f"token {current['AccessorID']} has Local={have['Local']}; Consul cannot change that "
                "(delete the token and apply again)"
            )
        changes = _diff(have, want)
        secret_status = None
        if secret_file:
            if current is None:
                secret_status = "read" if held else "missing"
            else:
                secret_status = __salt__["consul.acl_token_secret_status"](
                    current["AccessorID"], secret_file, dc=dc, token=token
                )
            if secret_status != "ok":
                changes = dict(changes or {"old": {}, "new": {}})
                changes["secret_file"] = {
                    "path": secret_file,
                    "old": secret_status,
                    "new": "secret read from the file" if secret_status == "read" else SECRET_WRITTEN,
                }
        label = f"ACL token {description!r}" if accessor_id is None else f"ACL token {accessor_id}"
        if not changes:
            ret["comment"] = f"{label} is as declared"
            return ret
        ret["changes"] = changes
        verb = "created" if current is None else "updated"
        if __opts__.get("test"):
            ret["result"] = None
            missing = [p for p in (policies or []) if not _UUID.match(p)
                       and not __salt__["consul.acl_policy_read"](name=p, dc=dc, token=token)]
            ret["comment"] = f"{label} would be {verb}" + (
                f" (policies {', '.join(missing)} must exist first)" if missing else ""
            )
            return ret
        if current is None:
            created = __salt__["consul.acl_token_create_as"](
                accessor_id=accessor_id, secret_file=secret_file, description=want["Description"],
                policies=policies or [], roles=roles or [], service_identities=service_identities or [],
                node_identities=node_identities or [], local=local, dc=dc, token=token,
            )
            accessor = created["AccessorID"]
        else:
            accessor = current["AccessorID"]
            if set(changes) - {"secret_file"} and changes.get("new"):
                __salt__["consul.acl_token_update"](
                    accessor, description=description, policies=policies, roles=roles,
                    service_identities=service_identities, node_identities=node_identities, dc=dc, token=token,
                )
            if secret_status not in (None, "ok"):
                __salt__["consul.acl_token_secret_write"](accessor, secret_file, dc=dc, token=token)
        ret["comment"] = f"{label} {verb} (AccessorID {accessor})"
    except (SaltInvocationError, CommandExecutionError) as err:
        ret.update(result=False, changes={}, comment=f"ACL token {name}: {err}")
    return ret


def acl_token_absent(name, accessor_id=None, secret_file=None, dc=None, token=None):
    """
    No ACL token with this description (or AccessorID); ``secret_file`` removed too.

    name
        The token's description, unless ``accessor_id`` is given.
    accessor_id
        Identify the token by its AccessorID.
    secret_file
        The file that held its secret: removed as well.
    dc
        Datacenter whose ACL API to use.
    token
        ACL token for this state's calls (needs ``acl = "write"``).

    .. code-block:: yaml

        salt-minion web01:
          consul.acl_token_absent:
            - secret_file: /srv/tokens/web01.token
    """
    ret = _ret(name)
    try:
        accessor_id, description = _identify(name, accessor_id, None)
        secret_file = _secret_file(secret_file)
        current = _find_token(accessor_id, description, dc, token)
        file_there = bool(secret_file) and os.path.lexists(secret_file)
        if current is None and not file_there:
            ret["comment"] = f"ACL token {name} is already absent"
            return ret
        changes = {"old": _token_view(current) if current else None, "new": None}
        if file_there:
            changes["secret_file"] = {"path": secret_file, "old": "present", "new": "removed"}
        ret["changes"] = changes
        if __opts__.get("test"):
            ret["result"] = None
            ret["comment"] = f"ACL token {name} would be deleted"
            return ret
        if current is not None:
            __salt__["consul.acl_token_delete"](current["AccessorID"], dc=dc, token=token)
        if file_there:
            try:
                os.unlink(secret_file)
            except OSError as err:
                raise CommandExecutionError(f"secret_file {secret_file} could not be removed ({err.strerror})") from None
        ret["comment"] = f"ACL token {name} deleted"
    except (SaltInvocationError, CommandExecutionError) as err:
        ret.update(result=False, changes={}, comment=f"ACL token {name}: {err}")
    return ret
