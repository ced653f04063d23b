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
import os
import time

import saltconsul_env
import saltconsul_kvtree
import saltconsul_pillarcache
import saltconsul_saltext
from salt.exceptions import SaltInvocationError
from saltconsul_errors import ConsulError

log = logging.getLogger(__name__)

__virtualname__ = "consul"

DEFAULTS = {
    "layers": list(saltconsul_kvtree.DEFAULT_LAYERS),
    "decode": "auto",
    "leaf_key": saltconsul_kvtree.DEFAULT_LEAF_KEY,
    "pillar_root": None,
    "env_from_grains": False,
    "on_outage": "stale",
    "stale_key": "consul_pillar",
    "revalidate": "watch",
    "watch_prefix": None,
    "watch_wait": 60,
    "cache_dir": None,
    "env_key": "consul_env",
}


def __virtual__():
    return __virtualname__


class PillarUnavailable(ConsulError):
    """Consul could not be asked and no (allowed) last good copy exists."""


def _bool(value, name):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise SaltInvocationError(f"consul ext_pillar: {name} must be true or false")


def _common_prefix(templates):
    """The deepest folder (whole literal segments) that contains every template."""
    common = None
    for template in templates:
        segments = []
        for segment in template.split("/"):
            if "{" in segment:
                break
            segments.append(segment)
        if common is None:
            common = segments
        else:
            size = 0
            while size < min(len(common), len(segments)) and common[size] == segments[size]:
                size += 1
            common = common[:size]
    return "/".join(common or [])


def parse_config(opts, kwargs):
    """
    The effective ext_pillar configuration: built-in defaults < ``consul:pillar``
    in the master config < the ext_pillar arguments. Raises SaltInvocationError.
    """
    conf = dict(DEFAULTS)
    section = ((opts or {}).get("consul") or {}).get("pillar") or {}
    if not isinstance(section, dict):
        raise SaltInvocationError("consul:pillar must be a mapping")
    for source in (section, kwargs or {}):
        unknown = sorted(set(source) - set(DEFAULTS))
        if unknown:
            raise SaltInvocationError(f"consul ext_pillar: unknown option(s) {', '.join(unknown)}")
        conf.update({k: v for k, v in source.items() if v is not None or k == "pillar_root"})

    if conf["decode"] not in saltconsul_kvtree.DECODE_MODES:
        raise SaltInvocationError(
            f"consul ext_pillar: decode must be one of {', '.join(saltconsul_kvtree.DECODE_MODES)}"
        )
    if not isinstance(conf["layers"], list) or not conf["layers"]:
        raise SaltInvocationError("consul ext_pillar: layers must be a non-empty list")
    if len(conf["layers"]) > saltconsul_pillarcache.MAX_TXN_OPS:
        raise SaltInvocationError(
            f"consul ext_pillar: at most {saltconsul_pillarcache.MAX_TXN_OPS} layers "
            "(one Consul transaction)"
        )
    layers = []
    for item in conf["layers"]:
        if isinstance(item, dict):
            unknown = sorted(set(item) - {"path", "decode"})
            if unknown or "path" not in item:
                raise SaltInvocationError("consul ext_pillar: a layer mapping takes 'path' and optional 'decode'")
            template, mode = item["path"], item.get("decode") or conf["decode"]
        else:
            template, mode = item, conf["decode"]
        if mode not in saltconsul_kvtree.DECODE_MODES:
            raise SaltInvocationError(f"consul ext_pillar: layer {template!r}: bad decode {mode!r}")
        try:
            saltconsul_kvtree.check_template(template)
        except saltconsul_kvtree.TemplateError as err:
            raise SaltInvocationError(f"consul ext_pillar: {err}") from None
        layers.append((template, mode))
    conf["layers"] = layers

    templates = [t for t, _ in layers]
    for outer, inner in saltconsul_kvtree.nested_templates(templates):
        # The set lives in a util module: this module is re-executed per compile.
        if (outer, inner) not in saltconsul_kvtree.WARNED_NESTED:
            saltconsul_kvtree.WARNED_NESTED.add((outer, inner))
            log.warning(
                "consul ext_pillar: layer %r lies inside layer %r, whose tree therefore also "
                "holds %r and all its siblings; prefer non-overlapping layer folders",
                inner,
                outer,
                inner,
            )
    if conf["watch_prefix"] is None:
        conf["watch_prefix"] = _common_prefix(templates)
    elif conf["watch_prefix"] != "":
        try:
            saltconsul_kvtree.check_path(conf["watch_prefix"], what="watch_prefix")
        except saltconsul_kvtree.TemplateError as err:
            raise SaltInvocationError(f"consul ext_pillar: {err}") from None
    if conf["on_outage"] not in ("stale", "fail"):
        raise SaltInvocationError("consul ext_pillar: on_outage must be 'stale' or 'fail'")
    if conf["revalidate"] not in ("watch", "always"):
        raise SaltInvocationError("consul ext_pillar: revalidate must be 'watch' or 'always'")
    conf["env_from_grains"] = _bool(conf["env_from_grains"], "env_from_grains")
    try:
        conf["watch_wait"] = float(conf["watch_wait"])
    except (TypeError, ValueError):
        raise SaltInvocationError("consul ext_pillar: watch_wait must be a number of seconds") from None
    if not 1 <= conf["watch_wait"] <= 600:
        raise SaltInvocationError("consul ext_pillar: watch_wait must be between 1 and 600 seconds")
    for key in ("leaf_key", "stale_key"):
        if not isinstance(conf[key], str) or not conf[key]:
            raise SaltInvocationError(f"consul ext_pillar: {key} must be a non-empty string")
    if conf["pillar_root"] is not None and (not isinstance(conf["pillar_root"], str) or not conf["pillar_root"]):
        raise SaltInvocationError("consul ext_pillar: pillar_root must be a non-empty string")
    if conf["env_key"] in (False, None):
        conf["env_key"] = None
    elif not isinstance(conf["env_key"], str) or not conf["env_key"]:
        raise SaltInvocationError("consul ext_pillar: env_key must be a non-empty string or false")
    if not conf["cache_dir"]:
        conf["cache_dir"] = os.path.join((opts or {}).get("cachedir") or "/var/cache/salt/master", "consul_pillar")
    return conf


def environment(minion_id, opts, grains=None, from_grains=False):
    """
    The template values for ``minion_id``: env fields parsed from the ID with
    the master's ``consul:env`` config (or, only when ``from_grains``, the
    minion's ``env`` grain fields), plus ``minion_id`` if it is path-safe.
    Every value is a DNS label (``postfix``: labels joined by dots) or None.
    """
    env = saltconsul_env.parse(minion_id, saltconsul_env.env_config(opts))
    if from_grains:
        claimed = (grains or {}).get("env")
        if isinstance(claimed, dict):
            for field in saltconsul_env.FIELDS:
                value = claimed.get(field)
                if saltconsul_env.is_label(value):
                    env[field] = value
            postfix_tpl = saltconsul_env.env_config(opts).get("postfix") or saltconsul_env.DEFAULT_POSTFIX
            env["postfix"] = saltconsul_env.postfix(env, postfix_tpl)
    values = {field: env.get(field) for field in saltconsul_kvtree.TEMPLATE_FIELDS if field != "minion_id"}
    if not saltconsul_env.is_label(values.get("host") or ""):
        values["host"] = None
    postfix = values.get("postfix")
    if postfix is not None and not saltconsul_env.is_postfix(postfix):
        # A consul:env:postfix template with "/" or ".." in it must not add or
        # climb KV folders: only dot-separated labels are a postfix.
        log.warning("consul ext_pillar: postfix %r is not dot-separated DNS labels; layers naming {postfix} skipped", postfix)
        values["postfix"] = None
    if saltconsul_kvtree.safe_minion_id(minion_id):
        values["minion_id"] = minion_id
    else:
        log.warning("consul ext_pillar: minion ID %r is not path-safe; layers naming {minion_id} skipped", minion_id)
        values["minion_id"] = None
    return values


def layer_roots(conf, values):
    """``[(root, decode, leaf_key)]`` for the layers whose fields are all known."""
    roots = []
    for template, mode in conf["layers"]:
        root = saltconsul_kvtree.render_template(template, values)
        if root is not None:
            roots.append((root, mode, conf["leaf_key"]))
    return roots


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
