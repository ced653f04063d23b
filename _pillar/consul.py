"""
External pillar ``consul``: Consul KV, layered by the minion's environment.

The same SLS and templates run everywhere; the values come from KV folders
chosen by the environment the **master** derives from the minion ID
(``saltconsul_env.parse`` with the master's ``consul:env`` config), merged in
order, later layers winning (deep merge of dicts).

.. code-block:: yaml

    # master config
    consul:
      address: http://127.0.0.1:8500
      token_file: /etc/salt/consul-pillar.token
    ext_pillar:
      - consul:
          layers:                    # the default
            - config/global
            - config/dc/{datacenter}
            - config/type/{type}
            - config/group/{type}.{group}
            - config/env/{type}.{group}.{datacenter}
            - config/node/{minion_id}
          decode: auto               # auto | json | yaml | raw (per layer: {path: ..., decode: ...})
          pillar_root: null          # e.g. "app": the result lands under pillar['app']
          on_outage: stale           # stale | fail
          revalidate: watch          # watch | always

Options (ext_pillar arguments, defaults from ``consul:pillar`` in the master
config, then the built-in defaults):

``layers``
    KV folder templates over ``{type} {group} {datacenter} {role} {host}
    {postfix} {minion_id}``. A layer naming a field this minion does not have
    is skipped, never widened. A string, or ``{path: ..., decode: ...}``.
``decode``
    ``auto`` (exact strings; JSON objects/arrays become structures), ``json``,
    ``yaml`` or ``raw``; see ``saltconsul_kvtree``.
``leaf_key``
    Where a key's own value goes when it is also a folder (``_value``).
``pillar_root``
    Nest the whole result under this pillar key.
``env_from_grains``
    ``false`` (default): the environment comes from the minion ID only.
    ``true``: the minion's ``env`` grain fields win over the ID's. Weaker:
    grains are minion-controlled, so a minion could ask for another
    environment's layers.
``on_outage``
    ``stale`` (default): when Consul is unreachable or errors, serve the last
    good copy of every layer (master cache dir, files 0600), marked with
    ``<stale_key>: {stale: true, age: <seconds>}`` and a warning; with no last
    good copy, fail the pillar. ``fail``: always fail the pillar.
``stale_key``
    The marker's pillar key (``consul_pillar``).
``revalidate``, ``watch_prefix``, ``watch_wait``
    How cached layers are revalidated; see ``saltconsul_pillarcache``.
``cache_dir``
    Default ``<master cachedir>/consul_pillar``.
``env_key``
    Also put the environment the master derived for this minion under this
    pillar key (e.g. ``consul_env``): ``{type, group, datacenter, role, host,
    postfix, minion_id}``. Formulas (``consul.register``) use it instead of
    the minion's own view, which the minion's config and grains control.
    Default ``consul_env``; ``false`` turns it off.

No KV value is ever logged; decode warnings name the key only.
"""

import logging
import time

import saltconsul_kvtree
import saltconsul_loader
import saltconsul_pillar
import saltconsul_pillarcache
import saltconsul_saltext
from saltconsul_errors import ConsulError

log = logging.getLogger(__name__)

__virtualname__ = "consul"

# The configuration, environment and layer rules live in saltconsul_pillar,
# shared with the runners that explain and compare pillar.
DEFAULTS = saltconsul_pillar.DEFAULTS
parse_config = saltconsul_pillar.parse_config
environment = saltconsul_pillar.environment
layer_roots = saltconsul_pillar.layer_roots


def __virtual__():
    saltconsul_loader.warn_on_saltext_consul(log)
    return __virtualname__


class PillarUnavailable(ConsulError):
    """Consul could not be asked and no (allowed) last good copy exists."""


def compile_pillar(minion_id, opts, grains=None, **kwargs):
    """
    Build the ``consul`` pillar for ``minion_id`` (what :func:`ext_pillar`
    returns); importable for benchmarks and tests.

    minion_id
        The authenticated minion ID the master compiles for.
    opts
        Master opts (``consul`` client config, ``consul:env``, ``cachedir``).
    grains
        The minion's grains (only read with ``env_from_grains: true``).
    kwargs
        ext_pillar options, see the module docstring.
    """
    conf = parse_config(opts, kwargs)
    values = environment(minion_id, opts, grains, conf["env_from_grains"])
    layers = layer_roots(conf, values)
    store = saltconsul_pillarcache.get_store(
        opts, conf["cache_dir"], conf["watch_prefix"], conf["revalidate"], conf["watch_wait"]
    )
    stale_age = None
    try:
        trees = store.trees(layers)
    except ConsulError as err:
        if conf["on_outage"] == "fail":
            raise PillarUnavailable(
                f"consul ext_pillar: Consul KV unavailable for minion {minion_id} ({err}); "
                "on_outage is 'fail'"
            ) from None
        trees, oldest = store.last_good(layers)
        if trees is None:
            raise PillarUnavailable(
                f"consul ext_pillar: Consul KV unavailable for minion {minion_id} ({err}) and no "
                f"last good copy of layer(s) {', '.join(oldest)}: refusing to serve an incomplete pillar"
            ) from None
        stale_age = max(0, int(time.time() - oldest)) if oldest is not None else 0
        log.warning(
            "consul ext_pillar: Consul KV unavailable for minion %s (%s); serving the last good "
            "pillar, %d seconds old",
            minion_id,
            err,
            stale_age,
        )
    result = saltconsul_kvtree.merge_trees(trees)
    if conf["pillar_root"]:
        result = {conf["pillar_root"]: result}
    if stale_age is not None:
        result[conf["stale_key"]] = {"stale": True, "age": stale_age}
    if conf["env_key"]:
        # Derived here, on the master, from the authenticated minion ID.
        result[conf["env_key"]] = dict(values)
    return result


def ext_pillar(minion_id, pillar, *args, **kwargs):  # pylint: disable=unused-argument
    """
    Consul KV layered by the environment of ``minion_id``.

    minion_id
        Passed by Salt: the minion the master compiles pillar for.
    pillar
        The pillar compiled so far (not used: layers depend on the ID only).
    args
        saltext-consul's string form (``my_profile root=salt/%(minion_id)s``),
        translated by ``saltconsul_saltext`` (docs/migration.md).
    kwargs
        Options from the ``ext_pillar`` entry (see the module docstring).

    CLI Example:

    .. code-block:: bash

        salt-run pillar.show_pillar web01.prod.gg.mydc1.example.com
    """
    if args:
        return saltconsul_saltext.ext_pillar(minion_id, args, __opts__, __grains__, compile_pillar)  # noqa: F821
    return compile_pillar(minion_id, __opts__, __grains__, **kwargs)  # noqa: F821
