"""
saltext-consul's (and core Salt's ``consul_pillar``'s) ext_pillar
configuration, translated into ours: the drop-in path for their users.

.. code-block:: yaml

    # what saltext-consul users have in their master config
    my_consul:
      consul.host: 127.0.0.1
      consul.port: 8500
      consul.token: ...
      consul.scheme: http
      consul.dc: dc1                # or {pillarenv regex: dc template}
      consul.verify: true
    ext_pillar:
      - consul: my_consul root=salt/%(minion_id)s pillar_root=consul_data expand_keys=false

Each such entry becomes one native ext_pillar run with one layer (the root)
and ``env_key: false``; its connection settings come from the profile's
``consul.*`` keys over the ``consul:`` section. The result is what saltext-consul
documents, except where its behaviour was a bug (docs/migration.md):

* values are never YAML-coerced: with ``expand_keys`` (their default) a value
  that is a YAML *document* (a mapping or a list) is expanded, every other
  value stays the exact stored string (``"08"``, ``"yes"``, ``"10"``);
* a value that does not parse stays its string, with a warning naming the key,
  instead of failing the whole ext_pillar;
* ``%(role)s`` and ``%(environment)s`` in ``root`` come from the environment
  the master derives from the minion ID (``{role}``, ``{type}``), not from the
  minion's own grains; a minion whose ID gives no such field gets no data from
  that entry (saltext-consul read ``salt/None``);
* a key that is both a value and a folder keeps both (``_value``);
* ``root`` is required: the whole KV store as every minion's pillar is refused.

Nothing here talks to Consul or logs a value.
"""

import logging
import re
import shlex

import salt.utils.dictupdate
import salt.utils.yaml
from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

# python-consul's defaults, used when a profile names some of host/port/scheme.
_PYCONSUL = {"host": "127.0.0.1", "port": 8500, "scheme": "http"}
_PROFILE_KEYS = {"host", "port", "token", "scheme", "consistency", "dc", "verify", "cert"}
_OPTIONS = {"profile", "root", "pillar_root", "expand_keys", "target"}
_ROOT_FIELDS = {"minion_id": "{minion_id}", "role": "{role}", "environment": "{type}"}
_PERCENT = re.compile(r"%(?:\((\w*)\)s|%|(.))")
# Only text that could be a YAML mapping or sequence is worth a parse.
_YAML_DOC = re.compile(r"(?:^\s*[-\[{?])|(?::(?:\s|$))", re.MULTILINE)
# Config strings already warned about, once per process.
WARNED = set()


def _fail(text):
    return SaltInvocationError(f"consul ext_pillar (saltext-consul form): {text}")


def parse_string(text):
    """
    ``{profile, root, pillar_root, expand_keys, target}`` from the string form
    ``my_profile root=... pillar_root=... expand_keys=false target="..."``
    (``profile=name`` also works). Unknown options are an error, not ignored.
    """
    if not isinstance(text, str):
        raise _fail(f"expected a string, not {type(text).__name__}")
    try:
        tokens = shlex.split(text)
    except ValueError as err:
        raise _fail(f"cannot parse {text!r}: {err}") from None
    conf = {"profile": None, "root": "", "pillar_root": "", "expand_keys": True, "target": None}
    for token in tokens:
        name, sep, value = token.partition("=")
        if not sep:
            if conf["profile"] is not None:
                raise _fail(f"two profiles given ({conf['profile']!r}, {token!r})")
            conf["profile"] = token
            continue
        if name not in _OPTIONS:
            raise _fail(f"unknown option {name!r} (known: {', '.join(sorted(_OPTIONS))})")
        if name == "expand_keys":
            lowered = value.lower()
            if lowered not in ("true", "false"):
                raise _fail("expand_keys must be true or false")
            conf[name] = lowered == "true"
        else:
            conf[name] = value
    conf["root"] = conf["root"].rstrip("/")
    conf["pillar_root"] = conf["pillar_root"].rstrip("/")
    return conf


def root_template(root):
    """saltext's ``%(minion_id)s``-style root as our layer template (``{minion_id}``)."""
    if not root:
        raise _fail(
            "root= is required: the whole Consul KV store as every minion's pillar "
            "would hand each minion every environment's secrets"
        )
    if "{" in root or "}" in root:
        raise _fail(f"root {root!r} must not contain braces")

    def _sub(match):
        field, bad = match.group(1), match.group(2)
        if bad is not None or (field is not None and field not in _ROOT_FIELDS):
            raise _fail(f"root {root!r}: unknown placeholder (known: %(minion_id)s, %(role)s, %(environment)s)")
        return "%" if field is None else _ROOT_FIELDS[field]

    return _PERCENT.sub(_sub, root)


def _resolve_dc(dc, pillarenv):
    """A ``consul.dc`` string, or the first ``{regex: template}`` (longest first) matching ``pillarenv``."""
    if not isinstance(dc, dict):
        return dc
    for pattern, template in sorted(dc.items(), key=lambda item: (-len(item[0]), item[0])):
        try:
            match = re.match(pattern, pillarenv)
        except re.error as err:
            raise _fail(f"consul.dc pattern {pattern!r}: {err}") from None
        if match:
            return str(template).format(**match.groupdict())
    return None


def connection(opts, profile):
    """
    Our ``consul:`` overrides from a saltext profile's ``consul.*`` keys (or,
    without a profile, the top-level ``consul.*`` keys of the config).
    """
    merged = {}
    pillar_opts = ({} if opts is None else opts).get("pillar") or {}
    if isinstance(pillar_opts, dict):
        merged.update(pillar_opts.get("master") or {})
        merged.update(pillar_opts)
    merged.update({} if opts is None else opts)
    if profile:
        section = merged.get(profile)
        if not isinstance(section, dict):
            raise _fail(f"profile {profile!r} is not a mapping in the master config")
    else:
        section = merged
    params = {k.split(".", 1)[1]: v for k, v in section.items() if isinstance(k, str) and k.startswith("consul.")}
    unknown = sorted(set(params) - _PROFILE_KEYS)
    if unknown and profile:
        raise _fail(f"profile {profile!r}: unknown key(s) {', '.join('consul.' + k for k in unknown)}")
    overrides = {}
    if any(k in params for k in ("host", "port", "scheme")):
        addr = {k: params.get(k) or default for k, default in _PYCONSUL.items()}
        overrides["address"] = f"{addr['scheme']}://{addr['host']}:{addr['port']}"
    if params.get("token"):
        overrides["token"] = params["token"]
    if "verify" in params:
        overrides["verify"] = params["verify"]
    if params.get("dc"):
        dc = _resolve_dc(params["dc"], ({} if opts is None else opts).get("pillarenv") or "base")
        if dc:
            overrides["datacenter"] = dc
    return overrides


_SDB_LEGACY = {"host", "port", "scheme", "dc", "consistency"}


def sdb_profile(profile):
    """
    A saltext-consul sdb profile (python-consul's ``host``, ``port``,
    ``scheme``, ``dc``, ``consistency``) in our keys; a profile without them
    is returned as it is. Logs one warning per profile naming the native keys.
    """
    legacy = sorted(set(profile) & _SDB_LEGACY)
    if not legacy:
        return profile
    out = {k: v for k, v in profile.items() if k not in _SDB_LEGACY}
    if any(k in profile for k in ("host", "port", "scheme")):
        addr = {k: profile.get(k) or default for k, default in _PYCONSUL.items()}
        out["address"] = f"{addr['scheme']}://{addr['host']}:{addr['port']}"
    if profile.get("dc"):
        out["datacenter"] = profile["dc"]
    marker = ("sdb", tuple(legacy), out.get("address"))
    if marker not in WARNED:
        WARNED.add(marker)
        log.warning(
            "sdb consul: profile keys %s are saltext-consul's; translated (docs/migration.md), "
            "the native keys are address, datacenter (consistency is not used)",
            ", ".join(legacy),
        )
    return out


def native_config(conf):
    """Our ext_pillar options for one parsed saltext entry (see :func:`parse_string`)."""
    return {
        "layers": [root_template(conf["root"])],
        # Exact strings; YAML documents are expanded afterwards (expand_documents).
        "decode": "raw",
        "env_key": False,
    }


def native_example(conf):
    """The native ext_pillar entry for the warning: what to write instead."""
    parts = [f"layers: [{root_template(conf['root'])}]"]
    parts.append("decode: auto" if conf["expand_keys"] else "decode: raw")
    if conf["pillar_root"]:
        parts.append(f"pillar_root: {conf['pillar_root']}")
    return "- consul: {" + ", ".join(parts) + "}"


def _maybe_document(text):
    if not isinstance(text, str) or not _YAML_DOC.search(text):
        return text, False
    try:
        parsed = salt.utils.yaml.safe_load(text)
    except Exception:  # pylint: disable=broad-except
        return text, None
    if isinstance(parsed, (dict, list)):
        return parsed, True
    return text, False


def expand_documents(tree, leaf_key="_value", expand=True, path="", warnings=None):
    """
    saltext-consul's tree shape from our raw tree, minus its bugs: empty values
    and empty folders dropped (saltext skips them); with ``expand``, values
    that are YAML mappings or lists expanded, every other value the exact
    string; a value that fails to parse kept, its key named in ``warnings``.
    A folder's own value that expands to a mapping is merged into the folder.
    """
    out = {}
    for key, value in tree.items():
        where = f"{path}/{key}" if path else key
        if isinstance(value, dict):
            sub = expand_documents(value, leaf_key, expand, where, warnings)
            own = sub.get(leaf_key)
            if isinstance(own, dict):
                del sub[leaf_key]
                sub = salt.utils.dictupdate.update(sub, own)
            if sub:
                out[key] = sub
            continue
        if value == "" or value is None:
            continue
        if expand:
            value, ok = _maybe_document(value)
            if ok is None and warnings is not None:
                warnings.append(where)
        out[key] = value
    return out


def nest(result, pillar_root):
    """``result`` under ``pillar_root`` split on ``/`` (saltext's nesting)."""
    if not pillar_root:
        return result
    for part in reversed(pillar_root.split("/")):
        result = {part: result}
    return result


def _targeted(opts, minion_id, target):
    import salt.utils.minions  # pylint: disable=import-outside-toplevel

    found = salt.utils.minions.CkMinions(opts).check_minions(target, "compound")
    return minion_id in (found.get("minions") or ())


def ext_pillar(minion_id, args, opts, grains, compile_pillar):
    """
    Run saltext-consul-form ext_pillar entries (``args``: the config string)
    through ``compile_pillar`` (the native ext_pillar's) and shape the result
    as saltext-consul did, minus its bugs. Logs one warning per config string
    naming the native form.
    """
    if len(args) != 1:
        raise _fail("expected one configuration string")
    conf = parse_string(args[0])
    if args[0] not in WARNED:
        WARNED.add(args[0])
        log.warning(
            "consul ext_pillar: %r is saltext-consul's configuration form; it is translated "
            "(docs/migration.md), but the native form is: %s",
            args[0],
            native_example(conf),
        )
    if conf["target"] and not _targeted(opts, minion_id, conf["target"]):
        return {}
    kwargs = native_config(conf)
    overrides = connection(opts, conf["profile"])
    if overrides:
        opts = dict(opts)
        opts["consul"] = dict((opts.get("consul") or {}), **overrides)
    result = compile_pillar(minion_id, opts, grains, **kwargs)
    stale = result.pop("consul_pillar", None)
    warnings = []
    result = expand_documents(result, expand=conf["expand_keys"], warnings=warnings)
    for key in warnings[:10]:
        log.warning("consul ext_pillar: value of %r under %r is not valid YAML; kept as the string", key, conf["root"])
    result = nest(result, conf["pillar_root"])
    if stale is not None:
        result["consul_pillar"] = stale
    return result
