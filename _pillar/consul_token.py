"""
External pillar ``consul_token``: each minion's own Consul token, minted by
the master (``saltconsul_identity``) and sealed to the minion's accepted key.

.. code-block:: yaml

    # master config
    consul:
      minion_tokens:
        token_file: /etc/salt/consul-mint.token   # a token with acl = "write" (policy salt-mint)
        ttl: 24h
        kv_read: ['secrets/demoapp/{type}/{group}/']
    ext_pillar:
      - consul: {}
      - consul_token: {}          # after the SLS pillar: the services come from it

The minion gets ``consul_minion_token: {sealed, accessor, expires, node,
trust}``: ciphertext only its own private key opens, never the secret. The
environment is the one the master derives from the authenticated minion ID;
the services are those its compiled pillar registers. Options: the
``consul:minion_tokens`` keys (see ``saltconsul_identity.DEFAULTS``), and
``token_file`` / ``token`` for the minting token (default: the master's own
``consul:`` token).

When Consul cannot be asked, a minion whose current token is still valid gets
it again; one with none gets no entry (and a log line), never a failed pillar.
"""

import logging
import os
import time

import saltconsul_identity
import saltconsul_pillar
from saltconsul_errors import ConsulError

log = logging.getLogger(__name__)

__virtualname__ = "consul_token"


def __virtual__():
    return __virtualname__


def ext_pillar(minion_id, pillar, **kwargs):
    """
    ``consul_minion_token`` for ``minion_id``.

    CLI Example:

    .. code-block:: bash

        salt-run pillar.show_pillar db01.prod.gg.mydc1.example.com
    """
    public_key = os.path.join(__opts__["pki_dir"], "minions", minion_id)
    if not os.path.isfile(public_key):
        # salt-ssh targets and minions without an accepted key get no token.
        log.debug("consul_token: no accepted key for %s; no token minted", minion_id)
        return {}
    mint = saltconsul_identity.get_minter(__opts__, __context__, kwargs)
    env = saltconsul_pillar.environment(minion_id, __opts__)
    try:
        record = mint.ensure(minion_id, env, pillar)
    except ConsulError as err:
        record = mint.record(minion_id)
        if not record or record.get("expires", 0) <= time.time():
            log.error("consul_token: cannot mint a token for %s (%s)", minion_id, saltconsul_identity.describe_error(err))
            return {}
        log.warning("consul_token: cannot renew the token of %s (%s); serving the current one", minion_id, saltconsul_identity.describe_error(err))
    try:
        mint.ensure_dns(env)
    except ConsulError as err:
        # The token still goes out: its DNS names are retried on the next compile.
        log.warning("consul_token: the DNS names of %s could not be set (%s)", env.get("postfix"), saltconsul_identity.describe_error(err))
    return {saltconsul_identity.PILLAR_KEY: mint.sealed(minion_id, record, public_key)}
