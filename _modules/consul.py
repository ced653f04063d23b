"""
Execution module ``consul``: Consul KV, services, checks, discovery, sessions
and locks, events, prepared queries and ACLs, through salt-consul's one shared
client (see ``saltconsul_config`` for the ``consul:`` configuration).

.. code-block:: bash

    salt '*' consul.env
    salt-call consul.status_leader
"""

import logging

from salt.exceptions import CommandExecutionError

import saltconsul_client
import saltconsul_env
from saltconsul_errors import ConsulError

log = logging.getLogger(__name__)

__virtualname__ = "consul"


def __virtual__():
    return __virtualname__


def _client(token=None):
    """The shared client; ``token`` overrides the configured one for this call."""
    return saltconsul_client.get_client(__opts__, __context__, token=token)


def _fail(operation, err):
    """A Consul error as the CommandExecutionError Salt reports (no token in it)."""
    return CommandExecutionError(f"consul.{operation} failed: {err}")


# --------------------------------------------------------------------------- environment


def env(hostname=None):
    """
    The parsed environment of this minion (its ``env`` grain) or of ``hostname``.

    hostname
        A hostname or minion ID to parse instead of this minion's.

    CLI Example:

    .. code-block:: bash

        salt '*' consul.env
        salt-call consul.env hostname=mydc1-prod-gg-db01
    """
    conf = saltconsul_env.env_config(__opts__)
    if hostname is None:
        hostname = saltconsul_env.local_name(__opts__)
    return saltconsul_env.parse(hostname, conf)


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
    try:
        return _client(token).get("/v1/status/leader", dc=dc)
    except ConsulError as err:
        raise _fail("status_leader", err) from err


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
    try:
        return _client(token).get("/v1/status/peers", dc=dc)
    except ConsulError as err:
        raise _fail("status_peers", err) from err
