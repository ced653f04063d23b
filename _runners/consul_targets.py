"""
Runner ``consul_targets``: which minions a Consul change concerns, decided on
the master from minion IDs.

The reactor/orchestrate examples in ``formulas/`` use it to turn a
``salt/consul/kv/...`` event into an exact target list. Environments come from
the **minion IDs the master has accepted**, parsed with the same parser and
``consul:env`` master config as the ext_pillar, never from grains: grains are
minion-controlled, and a minion claiming ``env:type: prod`` must not be able to
pull itself into (or out of) a prod rollout.

.. code-block:: bash

    salt-run consul_targets.minions type=prod group=gg
    salt-run consul_targets.for_keys '["config/group/prod.gg/db/pool_size"]'
"""

import logging

from salt.exceptions import SaltInvocationError

import saltconsul_env
import saltconsul_fleet
import saltconsul_watch

log = logging.getLogger(__name__)

__virtualname__ = "consul_targets"


def __virtual__():
    return __virtualname__


def _envs():
    """``{minion_id: env}`` for every accepted minion, parsed from the ID on the master."""
    env_conf = saltconsul_env.env_config(__opts__)
    return {mid: saltconsul_env.parse(mid, env_conf) for mid in saltconsul_fleet.accepted_minions(__opts__)}


def _layers(layers):
    if layers is None:
        layers = saltconsul_watch.configured_layers(__opts__)
    if (isinstance(layers, str) or not all(isinstance(l, str) for l in layers)):
        raise SaltInvocationError("layers must be a list of KV layer templates")
    types = saltconsul_env.env_config(__opts__).get("types")
    return saltconsul_watch.compile_layers(layers, types)


def minions(type=None, group=None, datacenter=None, role=None):  # pylint: disable=redefined-builtin
    """
    Accepted minions whose environment (parsed from the minion ID) matches
    every field given.

    type / group / datacenter / role
        Environment fields to match; unset fields match anything.

    CLI Example:

    .. code-block:: bash

        salt-run consul_targets.minions type=prod group=gg
    """
    want = {"type": type, "group": group, "datacenter": datacenter, "role": role}
    want = {k: str(v).lower() for k, v in want.items() if v is not None}
    for field, value in want.items():
        if not saltconsul_env.is_label(value):
            raise SaltInvocationError(f"{field} must be a DNS label, not {value!r}")
    return sorted(mid for mid, env in _envs().items() if all(env.get(k) == v for k, v in want.items()))


def _resolve(key, compiled, envs, known):
    """
    Minions for one key: the most specific layer whose values are all known
    environment values (with a nested layout, ``config/prod/gg/db/x``, with
    no datacenter called ``db``, counts as the ``config/{type}/{group}``
    layer), then the minions of exactly that environment.
    """
    match = saltconsul_watch.key_env(key, compiled, known)
    if match is None:
        return set()
    fields = {k: v for k, v in match.items() if k != "layer"}
    if "minion_id" in fields:
        return {fields["minion_id"]}
    return {mid for mid, env in envs.items() if all(env.get(k) == v for k, v in fields.items())}


def for_keys(keys, layers=None):
    """
    Accepted minions whose pillar layers contain any of ``keys``.

    keys
        KV keys (a list, or one key).
    layers
        KV layer templates; default ``consul:watch_layers`` from the master
        config, else the ``layers`` of the master's ``consul`` ext_pillar,
        else its default layout (``config/global``, ``config/dc/{datacenter}``,
        ``config/type/{type}``, ``config/group/{type}.{group}``,
        ``config/env/{type}.{group}.{datacenter}``, ``config/node/{minion_id}``).

    A key under ``config/global`` concerns every minion; a key matching no
    layer concerns none.

    CLI Example:

    .. code-block:: bash

        salt-run consul_targets.for_keys '["config/group/prod.gg/db/pool_size"]'
    """
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, (list, tuple)) or not all(isinstance(k, str) for k in keys):
        raise SaltInvocationError("keys must be a list of KV keys")
    compiled = _layers(layers)
    envs = _envs()
    known = saltconsul_watch.known_values(envs)
    targets = set()
    for key in keys:
        targets |= _resolve(key.lstrip("/"), compiled, envs, known)
    return sorted(targets)


def for_event(data, layers=None):
    """
    Minions concerned by a ``consul_watch`` KV event (``added``, ``changed``
    and ``deleted`` keys). An event whose key lists were truncated (a burst
    of more than 500 keys of one kind) concerns every accepted minion.

    data
        The event data (``data`` in a reactor SLS).

    CLI Example:

    .. code-block:: bash

        salt-run consul_targets.for_event '{"prefix": "config/", "changed": ["config/group/prod.gg/x"]}'
    """
    if not isinstance(data, dict):
        raise SaltInvocationError("data must be the event data mapping")
    keys = []
    for field in ("added", "changed", "deleted"):
        keys.extend(data.get(field) or [])
    if data.get("truncated"):
        log.info("consul_targets: truncated event for %s: every minion is a target", data.get("prefix"))
        return saltconsul_fleet.accepted_minions(__opts__)
    return for_keys(keys, layers=layers)
