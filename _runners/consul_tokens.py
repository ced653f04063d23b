"""
Runner ``consul_tokens``: the minion tokens the master mints
(``saltconsul_identity``, ext_pillar ``consul_token``): list them, revoke a
minion's, sweep those whose minion is gone. Secrets are never shown.

The shipped reactor ``formulas/reactor/consul_token_revoke.sls`` calls
``revoke`` on every ``salt/key`` event that deletes or rejects a key.
"""

import logging

import saltconsul_fleet
import saltconsul_identity
from saltconsul_errors import ConsulError

from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "consul_tokens"


def __virtual__():
    return __virtualname__


def _minter():
    try:
        return saltconsul_identity.get_minter(__opts__, __context__)
    except ConsulError as err:
        raise SaltInvocationError(str(err)) from None


def _run(what, func, *args):
    try:
        return func(*args)
    except ConsulError as err:
        raise CommandExecutionError(f"consul_tokens.{what} failed: {saltconsul_identity.describe_error(err)}") from None


def list_():
    """
    Every minted minion token in Consul: ``[{minion_id, accessor, expires}]``.

    CLI Example:

    .. code-block:: bash

        salt-run consul_tokens.list
    """
    return _run("list", _minter().tokens)


def revoke(minion_id):
    """
    Delete every token the master minted for ``minion_id`` and its policy;
    returns ``{minion_id, revoked: [accessor, ...]}``.

    CLI Example:

    .. code-block:: bash

        salt-run consul_tokens.revoke web01.dev.gg.mydc1.example.com
    """
    if not isinstance(minion_id, str) or not minion_id:
        raise SaltInvocationError("minion_id must be a minion ID")
    revoked = _run("revoke", _minter().revoke, minion_id)
    log.info("consul_tokens: revoked %d token(s) of %s", len(revoked), minion_id)
    return {"minion_id": minion_id, "revoked": revoked}


def sweep():
    """
    Revoke the tokens of every minion whose key is no longer accepted;
    returns ``{minion_id: [accessor, ...]}``.

    CLI Example:

    .. code-block:: bash

        salt-run consul_tokens.sweep
    """
    mint = _minter()
    accepted = set(saltconsul_fleet.accepted_minions(__opts__))
    gone = sorted({t["minion_id"] for t in _run("sweep", mint.tokens)} - accepted)
    return {minion_id: _run("sweep", mint.revoke, minion_id) for minion_id in gone}


__func_alias__ = {"list_": "list"}
