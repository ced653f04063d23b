"""
Execution module ``consul`` (ACL): tokens and policies on Consul's current ACL API; a token's SecretID is never returned (it goes to a 0600 file when asked).

This file shares the virtual name ``consul`` with ``_modules/consul.py``
(Salt's loader merges the functions of every file with one virtual name), so
its functions are called ``consul.<fn>`` like the others; the shared helpers
come from ``saltconsul_calls``.

.. code-block:: bash

    salt-call consul.acl_policy_list
    salt-call consul.acl_token_create description=web policies='[web]' secret_file=/etc/salt/web.token
"""

import logging

from salt.exceptions import CommandExecutionError, SaltInvocationError

import saltconsul_calls
import saltconsul_secrets
from saltconsul_calls import HIDDEN
from saltconsul_calls import consul_errors as _consul
from saltconsul_calls import dc_arg as _dc
from saltconsul_calls import duration as _duration
from saltconsul_calls import fail as _fail
from saltconsul_calls import opt_str as _opt_str
from saltconsul_calls import seg as _seg
from saltconsul_calls import str_list as _str_list
from saltconsul_errors import ConsulACLNotFound, ConsulError

log = logging.getLogger(__name__)

__virtualname__ = "consul"

_UUID = saltconsul_secrets.UUID


def __virtual__():
    return __virtualname__


def _client(token=None):
    """The shared client; ``token`` overrides the configured one for this call."""
    return saltconsul_calls.client(__opts__, __context__, token)


# --------------------------------------------------------------------------- ACL (tokens and policies)


def _hide_secret(token_info):
    # The SecretID *is* the credential: never in a return, so never in the job cache.
    if isinstance(token_info, dict) and token_info.get("SecretID"):
        token_info["SecretID"] = HIDDEN
    return token_info


def _acl_missing(client, err):
    """
    Consul 1.8 answers a read of an unknown token or policy ID with 403 "ACL
    not found", the same answer as for an unknown caller token. Our own token
    resolving tells the two apart.
    """
    if not isinstance(err, ConsulACLNotFound):
        return False
    try:
        client.get("/v1/acl/token/self")
    except ConsulError:
        return False
    return True


def _links(values, what, name_key="Name"):
    """Policies/roles as ``[{"ID": ...}]`` for UUIDs and ``[{"Name": ...}]`` otherwise."""
    if values is None:
        return None
    if isinstance(values, (str, dict)):
        values = [values]
    links = []
    for value in values:
        if isinstance(value, dict):
            links.append(value)
        elif isinstance(value, str) and value:
            links.append({"ID": value} if _UUID.match(value) else {name_key: value})
        else:
            raise SaltInvocationError(f"{what} must be names, IDs or dicts")
    return links


def _identities(values, what, key):
    if values is None:
        return None
    if isinstance(values, (str, dict)):
        values = [values]
    out = []
    for value in values:
        if isinstance(value, str) and value:
            out.append({key: value})
        elif isinstance(value, dict) and value.get(key):
            out.append(value)
        else:
            raise SaltInvocationError(f"{what} must be names or dicts with {key}")
    return out


def _token_body(description, policies, roles, service_identities, node_identities, local):
    """The request body of a new token (validated), without its secret."""
    body = {"Local": bool(local)}
    if description is not None:
        body["Description"] = _opt_str(description, "description")
    for field, value in (
        ("Policies", _links(policies, "policies")),
        ("Roles", _links(roles, "roles")),
        ("ServiceIdentities", _identities(service_identities, "service_identities", "ServiceName")),
        ("NodeIdentities", _identities(node_identities, "node_identities", "NodeName")),
    ):
        if value is not None:
            body[field] = value
    return body


def acl_token_create(
    description=None,
    policies=None,
    roles=None,
    service_identities=None,
    node_identities=None,
    local=False,
    expiration_ttl=None,
    secret_file=None,
    dc=None,
    token=None,
):
    """
    Create an ACL token (current ACL API, ``PUT /v1/acl/token``). Returns the
    token's details with ``SecretID`` shown as ``<hidden>``: the secret never
    enters a job return. Use ``secret_file`` to receive it.

    description
        Free text.
    policies
        Policy names or IDs (or ``{"ID"|"Name": ...}`` dicts).
    roles
        Role names or IDs.
    service_identities
        Service names (or ``{"ServiceName", "Datacenters"}`` dicts).
    node_identities
        ``{"NodeName", "Datacenter"}`` dicts.
    local
        A token valid in this datacenter only.
    expiration_ttl
        Let the token expire after this duration, e.g. ``24h``.
    secret_file
        Write the new token's secret to this file on the minion (mode 0600).
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one (needs ``acl = "write"``).

    CLI Example:

    .. code-block:: bash

        salt-call consul.acl_token_create description='web app' policies='[web-read]' \\
            secret_file=/etc/web/consul.token
    """
    body = _token_body(description, policies, roles, service_identities, node_identities, local)
    if expiration_ttl is not None:
        body["ExpirationTTL"] = _duration(expiration_ttl, "expiration_ttl")
    _opt_str(secret_file, "secret_file")
    with _consul("acl_token_create"):
        created = _client(token).put("/v1/acl/token", json=body, dc=_dc(dc))
    if secret_file:
        try:
            saltconsul_secrets.write_secret_file(secret_file, created["SecretID"])
        except OSError as err:
            raise CommandExecutionError(
                f"consul.acl_token_create: token {created['AccessorID']} created but "
                f"{secret_file} could not be written ({err.strerror})"
            ) from None
    return _hide_secret(created)


def acl_token_read(accessor_id, dc=None, token=None):
    """
    A token's details (``SecretID`` shown as ``<hidden>``), or None if there
    is no such token.

    accessor_id
        The token's AccessorID (not its secret).
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.acl_token_read 6a1253d2-1785-24fd-91c2-f8e78c745511
    """
    path = f"/v1/acl/token/{_seg(accessor_id, 'accessor_id')}"
    client = _client(token)
    try:
        found = client.get(path, dc=_dc(dc), not_found_ok=True)
    except ConsulError as err:
        if _acl_missing(client, err):
            return None
        raise _fail("acl_token_read", err) from err
    return _hide_secret(found)


def acl_token_update(
    accessor_id,
    description=None,
    policies=None,
    roles=None,
    service_identities=None,
    node_identities=None,
    dc=None,
    token=None,
):
    """
    Change a token's description, policies, roles or identities; arguments
    left as None keep their current value. Returns the token's details with
    ``SecretID`` hidden.

    accessor_id
        The token's AccessorID.
    description / policies / roles / service_identities / node_identities
        As for ``acl_token_create``; a given list replaces the current one.
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.acl_token_update 6a1253d2-... policies='[web-read, web-kv]'
    """
    path = f"/v1/acl/token/{_seg(accessor_id, 'accessor_id')}"
    changes = {
        "Description": _opt_str(description, "description"),
        "Policies": _links(policies, "policies"),
        "Roles": _links(roles, "roles"),
        "ServiceIdentities": _identities(service_identities, "service_identities", "ServiceName"),
        "NodeIdentities": _identities(node_identities, "node_identities", "NodeName"),
    }
    client = _client(token)
    with _consul("acl_token_update"):
        current = client.get(path, dc=_dc(dc))
        # The update replaces the whole token: start from what is there; the
        # secret and the immutable fields stay as Consul has them.
        body = {
            key: current[key]
            for key in ("AccessorID", "Description", "Policies", "Roles", "ServiceIdentities",
                        "NodeIdentities", "Local", "ExpirationTime")
            if current.get(key) is not None
        }
        body.update({k: v for k, v in changes.items() if v is not None})
        updated = client.put(path, json=body, dc=_dc(dc))
    return _hide_secret(updated)


def acl_token_delete(accessor_id, dc=None, token=None):
    """
    Delete a token. True, also when it did not exist.

    accessor_id
        The token's AccessorID.
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.acl_token_delete 6a1253d2-...
    """
    path = f"/v1/acl/token/{_seg(accessor_id, 'accessor_id')}"
    with _consul("acl_token_delete"):
        _client(token).delete(path, dc=_dc(dc))
    return True


def acl_token_list(policy=None, role=None, dc=None, token=None):
    """
    Every token (``SecretID`` shown as ``<hidden>``).

    policy
        Only tokens linked to this policy ID.
    role
        Only tokens linked to this role ID.
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.acl_token_list
    """
    params = {"policy": _opt_str(policy, "policy"), "role": _opt_str(role, "role")}
    with _consul("acl_token_list"):
        return [_hide_secret(t) for t in _client(token).get("/v1/acl/tokens", params=params, dc=_dc(dc)) or []]


def acl_policy_create(name, rules="", description=None, datacenters=None, dc=None, token=None):
    """
    Create an ACL policy; returns its details (``ID``, ``Name``, ``Rules``, ...).

    name
        Unique policy name.
    rules
        HCL or JSON rules, e.g. ``key_prefix "app/" { policy = "read" }``.
    description
        Free text.
    datacenters
        Restrict the policy to these datacenters.
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.acl_policy_create web-read rules='service_prefix "web" { policy = "read" }'
    """
    _seg(name, "name")
    body = {"Name": name, "Rules": _opt_str(rules, "rules") or ""}
    if description is not None:
        body["Description"] = _opt_str(description, "description")
    if datacenters is not None:
        body["Datacenters"] = _str_list(datacenters, "datacenters")
    with _consul("acl_policy_create"):
        return _client(token).put("/v1/acl/policy", json=body, dc=_dc(dc))


def acl_policy_read(policy_id=None, name=None, dc=None, token=None):
    """
    A policy by ID or by name, or None if there is no such policy.

    policy_id
        The policy ID.
    name
        The policy name (instead of ``policy_id``).
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.acl_policy_read name=web-read
    """
    if (policy_id is None) == (name is None):
        raise SaltInvocationError("give exactly one of policy_id and name")
    if policy_id is not None:
        path = f"/v1/acl/policy/{_seg(policy_id, 'policy_id')}"
    else:
        path = f"/v1/acl/policy/name/{_seg(name, 'name')}"
    client = _client(token)
    try:
        return client.get(path, dc=_dc(dc), not_found_ok=True)
    except ConsulError as err:
        if _acl_missing(client, err):
            return None
        raise _fail("acl_policy_read", err) from err


def acl_policy_update(policy_id, name=None, rules=None, description=None, datacenters=None, dc=None, token=None):
    """
    Change a policy; arguments left as None keep their current value. Returns
    the policy's details.

    policy_id
        The policy ID.
    name / rules / description / datacenters
        As for ``acl_policy_create``.
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.acl_policy_update 2a1b... rules='key_prefix "app/" { policy = "write" }'
    """
    path = f"/v1/acl/policy/{_seg(policy_id, 'policy_id')}"
    changes = {
        "Name": _opt_str(name, "name"),
        "Rules": _opt_str(rules, "rules"),
        "Description": _opt_str(description, "description"),
        "Datacenters": _str_list(datacenters, "datacenters"),
    }
    client = _client(token)
    with _consul("acl_policy_update"):
        current = client.get(path, dc=_dc(dc))
        body = {k: current[k] for k in ("ID", "Name", "Rules", "Description", "Datacenters") if current.get(k) is not None}
        body.update({k: v for k, v in changes.items() if v is not None})
        return client.put(path, json=body, dc=_dc(dc))


def acl_policy_delete(policy_id, dc=None, token=None):
    """
    Delete a policy. Returns True.

    policy_id
        The policy ID.
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.acl_policy_delete 2a1b...
    """
    path = f"/v1/acl/policy/{_seg(policy_id, 'policy_id')}"
    with _consul("acl_policy_delete"):
        _client(token).delete(path, dc=_dc(dc))
    return True


def acl_policy_list(dc=None, token=None):
    """
    Every policy (without rules, as Consul lists them).

    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.acl_policy_list
    """
    with _consul("acl_policy_list"):
        return _client(token).get("/v1/acl/policies", dc=_dc(dc)) or []


# --------------------------------------------------------------------------- ACL: tokens with their secret in a file


def _secret_in(secret_file, what="secret_file"):
    """The UUID secret held in ``secret_file`` or None if there is no such file (content never quoted)."""
    _seg(secret_file, what)
    return saltconsul_secrets.load_secret(secret_file, what, uuid=True)


def _raw_token(client, accessor_id, dc, operation):
    """A token with its SecretID (for comparing and writing files only), or None."""
    path = f"/v1/acl/token/{_seg(accessor_id, 'accessor_id')}"
    try:
        return client.get(path, dc=_dc(dc), not_found_ok=True)
    except ConsulError as err:
        if _acl_missing(client, err):
            return None
        raise _fail(operation, err) from err


def acl_token_create_as(
    accessor_id=None,
    secret_file=None,
    description=None,
    policies=None,
    roles=None,
    service_identities=None,
    node_identities=None,
    local=False,
    dc=None,
    token=None,
):
    """
    Create a token with a chosen AccessorID and/or the secret kept in a file
    (Consul 1.5+ accepts both on creation). When ``secret_file`` exists its
    UUID becomes the token's SecretID (so a consumer configured with that file
    keeps working after the token is re-created); when it does not, Consul
    generates the secret and it is written there (mode 0600). Returns the
    token's details with ``SecretID`` shown as ``<hidden>``.

    accessor_id
        The AccessorID to give the token (a UUID); Consul picks one if None.
    secret_file
        Where the secret is read from or written to, on this minion.
    description / policies / roles / service_identities / node_identities / local
        As for ``acl_token_create``.
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one (needs ``acl = "write"``).

    CLI Example:

    .. code-block:: bash

        salt-call consul.acl_token_create_as secret_file=/etc/consul.d/minion.token \\
            description='minion web01' policies='[salt-minion]'
    """
    body = _token_body(description, policies, roles, service_identities, node_identities, local)
    if accessor_id is not None:
        if not isinstance(accessor_id, str) or not _UUID.match(accessor_id):
            raise SaltInvocationError("accessor_id must be a UUID")
        body["AccessorID"] = accessor_id
    secret = _secret_in(secret_file) if secret_file is not None else None
    if secret:
        body["SecretID"] = secret
    with _consul("acl_token_create_as"):
        created = _client(token).put("/v1/acl/token", json=body, dc=_dc(dc))
    if secret_file and not secret:
        try:
            saltconsul_secrets.write_secret_file(secret_file, created["SecretID"])
        except OSError as err:
            raise CommandExecutionError(
                f"consul.acl_token_create_as: token {created['AccessorID']} created but "
                f"{secret_file} could not be written ({err.strerror})"
            ) from None
    return _hide_secret(created)


def acl_token_secret_status(accessor_id, secret_file, dc=None, token=None):
    """
    Whether ``secret_file`` holds the token's secret, without showing it:
    ``"ok"``, ``"missing"`` (no file), ``"differs"`` (another secret),
    ``"not private"`` (right secret, but group or others may read the file),
    or None when there is no such token.

    accessor_id
        The token's AccessorID.
    secret_file
        The file on this minion.
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one (needs ``acl = "write"``
        to see secrets).

    CLI Example:

    .. code-block:: bash

        salt-call consul.acl_token_secret_status 6a1253d2-... /etc/consul.d/minion.token
    """
    _seg(secret_file, "secret_file")
    current = _raw_token(_client(token), accessor_id, dc, "acl_token_secret_status")
    if current is None:
        return None
    try:
        held = saltconsul_secrets.read_secret_file(secret_file, "secret_file")
    except ValueError:
        return "differs"
    except OSError as err:
        raise CommandExecutionError(f"secret_file {secret_file} could not be read ({err.strerror})") from None
    if held is None:
        return "missing"
    if held != current.get("SecretID"):
        return "differs"
    return "ok" if saltconsul_secrets.is_private(secret_file) else "not private"


def acl_token_secret_write(accessor_id, secret_file, dc=None, token=None):
    """
    Write a token's secret to ``secret_file`` (mode 0600, replaced atomically).
    Returns True; the secret itself is never returned.

    accessor_id
        The token's AccessorID.
    secret_file
        The file on this minion.
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one (needs ``acl = "write"``).

    CLI Example:

    .. code-block:: bash

        salt-call consul.acl_token_secret_write 6a1253d2-... /etc/consul.d/minion.token
    """
    _seg(secret_file, "secret_file")
    current = _raw_token(_client(token), accessor_id, dc, "acl_token_secret_write")
    if current is None or not current.get("SecretID"):
        raise CommandExecutionError(f"consul.acl_token_secret_write failed: not found: token {accessor_id}")
    try:
        saltconsul_secrets.write_secret_file(secret_file, current["SecretID"])
    except OSError as err:
        raise CommandExecutionError(f"secret_file {secret_file} could not be written ({err.strerror})") from None
    return True
