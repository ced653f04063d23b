"""
The ``env`` grain: this host's environment, derived from its minion ID (or
FQDN, with ``consul:env:source: fqdn``) and overridden by ``consul:env`` values
set in the minion config.

.. code-block:: bash

    salt -G 'env:type:prod' test.ping
    salt '*' grains.get env:postfix

Grains are minion-controlled: the ext_pillar never trusts them to choose which
KV layers (and secrets) a minion receives; the master parses the minion ID.
"""

import saltconsul_env


def env():
    """Return ``{"env": {type, group, datacenter, role, host, postfix, sources, pattern, name}}``."""
    opts = __opts__  # noqa: F821 (Salt dunder)
    return {"env": saltconsul_env.parse(saltconsul_env.local_name(opts), saltconsul_env.env_config(opts))}
