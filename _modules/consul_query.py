"""
Execution module ``consul`` (prepared queries): create, read, update, delete and execute prepared queries (templates and failover included); a query's stored token is never returned.

This file shares the virtual name ``consul`` with ``_modules/consul.py``
(Salt's loader merges the functions of every file with one virtual name), so
its functions are called ``consul.<fn>`` like the others; the shared helpers
come from ``saltconsul_calls``.

.. code-block:: bash

    salt-call consul.query_list
    salt-call consul.query_execute db
"""

import logging

from salt.exceptions import CommandExecutionError, SaltInvocationError

import saltconsul_calls
import saltconsul_secrets
from saltconsul_calls import HIDDEN
from saltconsul_calls import consul_errors as _consul
from saltconsul_calls import dc_arg as _dc
from saltconsul_calls import opt_str as _opt_str
from saltconsul_calls import seg as _seg
from saltconsul_calls import uint as _uint

log = logging.getLogger(__name__)

__virtualname__ = "consul"



def __virtual__():
    return __virtualname__


def _client(token=None):
    """The shared client; ``token`` overrides the configured one for this call."""
    return saltconsul_calls.client(__opts__, __context__, token)


# --------------------------------------------------------------------------- prepared queries


def _hide_query_token(query):
    # A prepared query may carry a token that executes it; never hand it out.
    if isinstance(query, dict) and query.get("Token"):
        query["Token"] = HIDDEN
    return query


def _query_definition(definition):
    if not isinstance(definition, dict):
        raise SaltInvocationError("definition must be a dict in Consul's prepared-query format")
    service = definition.get("Service")
    if not isinstance(service, dict) or not isinstance(service.get("Service"), str) or not service["Service"]:
        raise SaltInvocationError("definition needs Service: {Service: <name>, ...}")
    template = definition.get("Template")
    if template is not None:
        if not isinstance(template, dict) or template.get("Type") != "name_prefix_match":
            raise SaltInvocationError("definition Template needs Type: name_prefix_match (and optionally Regexp)")
        if "Name" not in definition:
            raise SaltInvocationError("a query template needs a Name (the prefix it matches)")
    for key in ("Name", "Session", "Token"):
        _opt_str(definition.get(key), key)
    return definition


def _query_raw(query_id, dc, token, operation):
    """One prepared query as Consul returns it, its token included (callers hide it), or None."""
    path = f"/v1/query/{_seg(query_id, 'query_id')}"
    with _consul(operation):
        found = _client(token).get(path, dc=_dc(dc), not_found_ok=True)
    return found[0] if found else None


def query_create(definition, dc=None, token=None):
    """
    Create a prepared query; returns its ID.

    definition
        Consul's prepared-query definition, e.g. ``{"Name": "db", "Service":
        {"Service": "db", "Tags": ["prod"], "OnlyPassing": true, "Failover":
        {"NearestN": 2, "Datacenters": ["dc2"]}}}``. A template adds ``"Template":
        {"Type": "name_prefix_match", "Regexp": "^db-(.+)$"}`` and refers to
        captures as ``${match(1)}``.
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.query_create '{Name: db, Service: {Service: db, OnlyPassing: true}}'
    """
    body = _query_definition(definition)
    with _consul("query_create"):
        return _client(token).request("POST", "/v1/query", json=body, dc=_dc(dc)).json()["ID"]


def query_update(query_id, definition, dc=None, token=None):
    """
    Replace a prepared query's definition. Returns True.

    query_id
        The query ID.
    definition
        The complete new definition (see ``query_create``).
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.query_update 8f246b77-... '{Name: db, Service: {Service: db, Near: _agent}}'
    """
    path = f"/v1/query/{_seg(query_id, 'query_id')}"
    body = _query_definition(definition)
    with _consul("query_update"):
        _client(token).put(path, json=body, dc=_dc(dc))
    return True


def query_get(query_id, dc=None, token=None):
    """
    One prepared query (its token shown as ``<hidden>``), or None.

    query_id
        The query ID.
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.query_get 8f246b77-...
    """
    found = _query_raw(query_id, dc, token, "query_get")
    return _hide_query_token(found) if found else None


def query_list(dc=None, token=None):
    """
    Every prepared query (tokens shown as ``<hidden>``).

    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.query_list
    """
    with _consul("query_list"):
        return [_hide_query_token(q) for q in _client(token).get("/v1/query", dc=_dc(dc)) or []]


def query_delete(query_id, dc=None, token=None):
    """
    Delete a prepared query. Returns True.

    query_id
        The query ID.
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.query_delete 8f246b77-...
    """
    path = f"/v1/query/{_seg(query_id, 'query_id')}"
    with _consul("query_delete"):
        _client(token).delete(path, dc=_dc(dc))
    return True


def query_execute(name_or_id, near=None, limit=None, dc=None, token=None):
    """
    Execute a prepared query (by ID, name, or a name a template matches).
    Returns Consul's answer: ``{"Service", "Nodes": [{Node, Service, Checks}],
    "Datacenter", "Failovers", "DNS"}``.

    name_or_id
        The query's ID or name.
    near
        Sort by round-trip time from this node (``_agent``: this agent).
    limit
        At most this many nodes.
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.query_execute db near=_agent limit=3
    """
    path = f"/v1/query/{_seg(name_or_id, 'name_or_id')}/execute"
    params = {"near": _opt_str(near, "near"), "limit": _uint(limit, "limit")}
    with _consul("query_execute"):
        return _client(token).get(path, params=params, dc=_dc(dc))


def query_token_fingerprint(query_id, dc=None, token=None):
    """
    A one-way fingerprint (``sha256:...``) of the token a prepared query runs
    with, or None when it stores none (it then runs with the caller's token,
    for DNS the anonymous one). Lets a state compare without seeing the token.

    query_id
        The query ID.
    dc
        Datacenter.
    token
        ACL token for this call instead of the configured one.

    CLI Example:

    .. code-block:: bash

        salt-call consul.query_token_fingerprint 8f246b77-...
    """
    found = _query_raw(query_id, dc, token, "query_token_fingerprint")
    stored = found.get("Token") if found else None
    if stored == "<hidden>":
        # Consul redacts a query's token for callers without query write on it.
        raise CommandExecutionError(
            "consul.query_token_fingerprint failed: permission denied: Consul hides this query's token "
            "from the calling token (it needs query write on the query's name)"
        )
    return saltconsul_secrets.fingerprint(stored) if stored else None
