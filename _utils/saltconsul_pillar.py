"""
The ``consul`` ext_pillar's configuration, environment and layer folders, in
one place for the ext_pillar (``_pillar/consul.py``) and the master-side
runners that explain and compare pillar (``_runners/consul_pillar.py``).

Pure logic: nothing here talks to Consul, and nothing here ever logs or
formats a KV *value* (values may be secrets); key names do appear.

* :func:`parse_config`, :func:`environment`, :func:`layer_roots`: what the
  ext_pillar reads for a minion (moved here from ``_pillar/consul.py``
  unchanged);
* :func:`ext_pillar_kwargs`: the options of the master's ``consul``
  ext_pillar entry, as Salt passes them;
* :func:`layer_plan`: every layer with its folder, or why it is skipped;
* :func:`provenance`: the merged pillar with the layer each value comes from
  (the same deep merge as the ext_pillar);
* :func:`secret_rule` / :func:`is_secret`: which values are shown hidden.
"""

import logging
import os
import re

from salt.exceptions import SaltInvocationError

import saltconsul_env
import saltconsul_kvtree
import saltconsul_layers
import saltconsul_pillarcache

log = logging.getLogger(__name__)

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
    section = (({} if opts is None else opts).get("consul") or {}).get("pillar") or {}
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
        layers.append(saltconsul_layers.LayerSpec(template, mode))
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
        conf["cache_dir"] = os.path.join(({} if opts is None else opts).get("cachedir") or "/var/cache/salt/master", "consul_pillar")
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


# --------------------------------------------------------------------------- runners: explain and diff

# Pillar keys and KV folders whose values the runners show hidden: a path
# segment equal to a marker (or ending in _<marker> / -<marker>, as in
# db_password), or a key inside a listed folder. consul:runners replaces them.
DEFAULT_SECRET_MARKERS = ("secret", "secrets", "password", "passwd", "token", "private_key", "api_key")
HIDDEN = "<hidden>"
PATH_DELIM = ":"


def ext_pillar_kwargs(opts, entry=0):
    """
    The options of the master's ``entry``-th ``consul`` ext_pillar entry (as
    Salt passes them to :func:`ext_pillar`) and how many such entries there
    are: ``(kwargs, count)``; ``({}, 0)`` without one (then ``consul:pillar``
    and the defaults apply, as they would to a bare ``- consul: {}``).
    """
    entries = []
    for item in ({} if opts is None else opts).get("ext_pillar") or []:
        if isinstance(item, dict) and "consul" in item:
            entries.append(item["consul"])
    if not entries:
        return {}, 0
    if not isinstance(entry, int) or isinstance(entry, bool) or not 0 <= entry < len(entries):
        raise SaltInvocationError(f"entry must be 0 to {len(entries) - 1}: the master has {len(entries)} consul ext_pillar entries")
    kwargs = entries[entry]
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise SaltInvocationError("the master's consul ext_pillar entry must be a mapping of options")
    return dict(kwargs), len(entries)


def field_reasons(minion_id, opts, values):
    """
    Why each template field :func:`environment` left unknown for ``minion_id``
    is unknown: ``{field: reason}`` (reasons name fields and patterns, never values).
    """
    env_conf = saltconsul_env.env_config(opts)
    parsed = saltconsul_env.parse(minion_id, env_conf)
    reasons = {}
    for field in saltconsul_kvtree.TEMPLATE_FIELDS:
        if values.get(field):
            continue
        if field == "minion_id":
            reasons[field] = "the minion ID is not path-safe (letters, digits, '_', '.', '-'; no '..')"
        elif field == "postfix":
            template = env_conf.get("postfix") or saltconsul_env.DEFAULT_POSTFIX
            missing = [f for f in re.findall(r"{(\w+)}", template) if not values.get(f)]
            if missing:
                reasons[field] = "the postfix needs " + ", ".join(f"{{{f}}}" for f in missing)
            else:
                reasons[field] = "the postfix template does not give dot-separated DNS labels"
        elif parsed.get("pattern") is None:
            reasons[field] = "the minion ID matches no hostname pattern (consul:env:patterns)"
        else:
            reasons[field] = f"the minion ID (pattern {parsed['pattern']}) has no {field}"
    return reasons


def layer_plan(conf, values, reasons=None):
    """
    Every configured layer in order: ``{"layer": n, "template", "folder",
    "decode", "status": "read" | "skipped", "reason"}``, rendered exactly as
    :func:`layer_roots` renders them (a skipped layer has folder None and the
    reasons of the fields it lacks).
    """
    reasons = reasons or {}
    plan = []
    for number, (template, mode) in enumerate(conf["layers"], 1):
        folder = saltconsul_kvtree.render_template(template, values)
        item = {"layer": number, "template": template, "folder": folder, "decode": mode}
        if folder is None:
            missing = [f for f in dict.fromkeys(saltconsul_kvtree.template_fields(template)) if not values.get(f)]
            item["status"] = "skipped"
            # Fields unknown for the same reason share one sentence.
            by_reason = {}
            for field in missing:
                by_reason.setdefault(reasons.get(field) or "no value", []).append(f"{{{field}}}")
            item["reason"] = "; ".join(f"{', '.join(fields)} unknown: {why}" for why, fields in by_reason.items())
        else:
            item["status"] = "read"
        plan.append(item)
    return plan


class _Leaf:
    """A value and the layer it came from. Not a mapping, so the merge replaces it like any value."""

    __slots__ = ("source", "value")

    def __init__(self, source, value):
        self.source = source
        self.value = value

    def __deepcopy__(self, memo):
        # Values are never mutated here; the merge's copies need not copy them.
        return self


def _annotate(tree, source):
    # Dicts (folders and decoded JSON objects alike) stay dicts, so the merge
    # recurses exactly where the ext_pillar's does; everything else is a leaf.
    return {k: _annotate(v, source) if isinstance(v, dict) else _Leaf(source, v) for k, v in tree.items()}


def flatten(tree, parts=(), out=None):
    out = {} if out is None else out
    for key, value in tree.items():
        path = parts + (str(key),)
        if isinstance(value, dict) and value:
            flatten(value, path, out)
        else:
            out[path] = value
    return out


def provenance(trees, sources):
    """
    The layers' trees (in merge order) merged with the ext_pillar's own deep
    merge, keeping where each value comes from.

    trees
        The decoded layer trees (not modified).
    sources
        One label per tree (its KV folder).

    Returns ``{path_tuple: {"value", "from", "layers": [(source, value)]}}``
    for every leaf path of any layer. ``from`` is the layer whose value the
    merged pillar holds, or None when a later layer replaced the whole
    branch (``replaced_by``: that layer, ``at``: the path it replaced).
    """
    merged = saltconsul_kvtree.merge_trees([_annotate(tree, source) for tree, source in zip(trees, sources)])
    final = flatten(merged)
    per_layer = [(source, flatten(tree)) for tree, source in zip(trees, sources)]
    result = {}
    for source, flat in per_layer:
        for path, value in flat.items():
            entry = result.setdefault(path, {"layers": []})
            entry["layers"].append((source, value))
    for path, entry in result.items():
        won = final.get(path)
        if isinstance(won, _Leaf):
            entry["value"], entry["from"] = won.value, won.source
        elif path in final:
            # An empty folder in the merged pillar: the last layer that has it.
            entry["value"], entry["from"] = {}, entry["layers"][-1][0]
        else:
            entry["value"], entry["from"] = None, None
            node, depth = merged, 0
            while depth < len(path) and isinstance(node, dict) and path[depth] in node:
                node, depth = node[path[depth]], depth + 1
            entry["at"] = path[:depth]
            if isinstance(node, _Leaf):
                entry["replaced_by"] = node.source
            else:
                # A folder replaced this value: the first later layer with that folder.
                last = max(i for i, (src, _) in enumerate(per_layer) if path in per_layer[i][1])
                entry["replaced_by"] = next(
                    (src for src, flat in per_layer[last + 1 :] if any(p[: len(path)] == path for p in flat)),
                    None,
                )
    return result


def secret_rule(opts):
    """
    Which values the runners hide: ``consul:runners:secret_markers`` (path
    segments, default :data:`DEFAULT_SECRET_MARKERS`) and
    ``consul:runners:secret_folders`` (KV folders). Raises SaltInvocationError.
    """
    section = (({} if opts is None else opts).get("consul") or {}).get("runners") or {}
    if not isinstance(section, dict):
        raise SaltInvocationError("consul:runners must be a mapping")
    markers = section.get("secret_markers")
    markers = DEFAULT_SECRET_MARKERS if markers is None else markers
    folders = section.get("secret_folders") or []
    for name, items in (("secret_markers", markers), ("secret_folders", folders)):
        if isinstance(items, str) or not all(isinstance(i, str) and i.strip("/") for i in items):
            raise SaltInvocationError(f"consul:runners:{name} must be a list of non-empty strings")
    return {
        "markers": tuple(m.lower() for m in markers),
        "folders": tuple(f.strip("/") + "/" for f in folders),
    }


def is_secret(folder, path, rule):
    """
    True if the value at pillar ``path`` (a tuple) from KV ``folder`` is
    secret by ``rule`` (:func:`secret_rule`): a marker segment in the folder
    or the path, or a listed folder containing ``folder/path`` (or ``path``
    inside any layer).
    """
    segments = (folder.split("/") if folder else []) + list(path)
    for segment in segments:
        lowered = str(segment).lower()
        for marker in rule["markers"]:
            if lowered == marker or lowered.endswith(("_" + marker, "-" + marker)):
                return True
    inner = "/".join(str(p) for p in path) + "/"
    full = (folder + "/" if folder else "") + inner
    return any(full.startswith(f) or inner.startswith(f) for f in rule["folders"])


def path_text(path):
    """``("db", "pool")`` -> ``db:pool``, as ``pillar.get`` spells it."""
    return PATH_DELIM.join(path)


def environment_values(postfix_env):
    """
    The template values for a whole environment (``parse_postfix``'s
    answer): type, group, datacenter and postfix; the per-minion fields
    (role, host, minion_id) unknown, so layers naming them are skipped.
    """
    values = {field: None for field in saltconsul_kvtree.TEMPLATE_FIELDS}
    for field in ("type", "group", "datacenter", "postfix"):
        value = postfix_env.get(field)
        if field == "postfix" and saltconsul_env.is_postfix(value) or saltconsul_env.is_label(value):
            values[field] = value
    return values
