"""
Derive a host's environment from its hostname or minion ID.

``parse(name, env_conf)`` returns::

    {"type": "prod", "group": "gg", "datacenter": "mydc1", "role": "db",
     "host": "db01", "postfix": "prod.gg.mydc1",
     "sources": {"type": "hostname", ...}, "pattern": "fqdn", "name": "db01.prod.gg.mydc1.example.com"}

Patterns are ordered regular expressions with named groups (``type``,
``group``, ``datacenter``, ``host``, optionally ``role``); the first that
matches wins. ``{types}`` inside a pattern expands to the configured list of
environment types, so ``www.example.com`` is not mistaken for an environment.
Explicit values "specified in Salt" (``consul:env:type`` etc.) override what
the hostname says. Every value must be a lowercase DNS label (``[a-z0-9-]``,
at most 63 characters, no leading/trailing dash): anything else is dropped with
a log line, so nothing derived here can carry ``/``, ``..``, spaces or
non-ASCII into a KV path or a DNS name. Parsing never raises.

Configuration (minion config for the grains, master config for the pillar):

.. code-block:: yaml

    consul:
      env:
        types: [prod, stg, dev, qa, test, uat]
        patterns:                       # replaces the defaults, tried in order
          - name: fqdn
            regex: '^(?P<host>[^.]+)\\.(?P<type>{types})\\.(?P<group>[^.]+)\\.(?P<datacenter>[^.]+)(\\..*)?$'
        postfix: '{type}.{group}.{datacenter}'
        # "specified in Salt": these win over the hostname
        type: prod
        group: gg
        datacenter: mydc1
        role: db
"""

import logging
import re

log = logging.getLogger(__name__)

FIELDS = ("type", "group", "datacenter", "role")
DEFAULT_TYPES = ("prod", "stg", "dev", "qa", "test", "uat")
DEFAULT_POSTFIX = "{type}.{group}.{datacenter}"
DEFAULT_PATTERNS = (
    # db01.prod.gg.mydc1[.example.com]
    {
        "name": "fqdn",
        "regex": r"^(?P<host>[^.]+)\.(?P<type>{types})\.(?P<group>[^.]+)\.(?P<datacenter>[^.]+)(?:\..+)?$",
    },
    # mydc1-prod-gg-db01[.example.com]
    {
        "name": "dash",
        "regex": r"^(?P<datacenter>[^.-]+)-(?P<type>{types})-(?P<group>[^.-]+)-(?P<host>[^.]+)(?:\..+)?$",
    },
    # db01-prod-gg[.example.com]: no datacenter in the name
    {
        "name": "short-dash",
        "regex": r"^(?P<host>[^.]+?)-(?P<type>{types})-(?P<group>[^.-]+)(?:\..+)?$",
    },
)

# A lowercase DNS label, as a pattern other modules can embed in their own regexes.
LABEL_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_LABEL = re.compile(f"^{LABEL_PATTERN}$")
# db01 -> db, web-03 -> web, kafka-broker2 -> kafka-broker
_ROLE = re.compile(r"^(?P<role>[a-z](?:[a-z0-9-]*[a-z])?)-?[0-9]*$")
_MAX_NAME = 253


def is_label(value):
    """True if ``value`` is a lowercase DNS label, safe in KV paths and DNS names."""
    return isinstance(value, str) and bool(_LABEL.match(value))


def _compile(env_conf):
    types = env_conf.get("types") or DEFAULT_TYPES
    types_re = "|".join(re.escape(str(t).lower()) for t in types if is_label(str(t).lower()))
    compiled = []
    for idx, pat in enumerate(env_conf.get("patterns") or DEFAULT_PATTERNS):
        if isinstance(pat, str):
            pat = {"name": f"pattern{idx}", "regex": pat}
        try:
            compiled.append((pat.get("name", f"pattern{idx}"), re.compile(pat["regex"].replace("{types}", types_re))))
        except (re.error, KeyError, TypeError, AttributeError) as err:
            log.error("consul:env: ignoring invalid hostname pattern #%d: %s", idx, err)
    return compiled


def is_postfix(value):
    """True if ``value`` is dot-separated DNS labels (``prod.gg.mydc1``)."""
    return isinstance(value, str) and all(is_label(part) for part in value.split("."))


def is_service_name(name):
    """
    True if ``name`` can be a service's DNS name (``<name>.service.consul``):
    one label of letters, digits and inner dashes. Consul registers other names
    too, but DNS can never resolve them, so we refuse them up front.
    """
    return isinstance(name, str) and bool(_LABEL.match(name.lower()))


def role_of(host):
    """The role part of a host label: ``db01`` -> ``db``; None if there is none."""
    match = _ROLE.match(host or "")
    return match.group("role") if match else None


def parse(name, env_conf=None):
    """
    Parse ``name`` (a hostname or minion ID) into an environment dict.

    name
        The hostname or minion ID. Case and a trailing dot are ignored.
    env_conf
        The ``consul:env`` config mapping (patterns, types, postfix, overrides).

    Never raises: an unparseable name gives the fields it could find (possibly
    none) and a log line.
    """
    env_conf = env_conf if isinstance(env_conf, dict) else {}
    result = {field: None for field in FIELDS}
    result.update({"host": None, "postfix": None, "pattern": None, "sources": {}})
    text = name if isinstance(name, str) else ""
    text = text.strip().rstrip(".").lower()
    result["name"] = text[:_MAX_NAME] if text.isascii() else None

    if not text or len(text) > _MAX_NAME or not text.isascii():
        log.info("consul:env: %r is not a usable hostname; environment from config only", name)
    else:
        for pat_name, regex in _compile(env_conf):
            match = regex.match(text)
            if not match:
                continue
            groups = {k: v for k, v in match.groupdict().items() if v}
            if groups.get("host") and "role" not in groups:
                role = role_of(groups["host"])
                if role:
                    groups["role"] = role
            result["pattern"] = pat_name
            for field in FIELDS + ("host",):
                value = groups.get(field)
                if value is None:
                    continue
                if is_label(value):
                    result[field] = value
                    if field != "host":
                        result["sources"][field] = "hostname"
                else:
                    log.warning(
                        "consul:env: %s %r from hostname %r is not a DNS label; ignored",
                        field,
                        value,
                        text,
                    )
            break
        else:
            log.info("consul:env: hostname %r matches no pattern; environment from config only", text)

    for field in FIELDS:
        override = env_conf.get(field)
        if override is None:
            continue
        value = str(override).strip().lower()
        if is_label(value):
            result[field] = value
            result["sources"][field] = "config"
        else:
            log.error("consul:env:%s %r is not a DNS label; ignored", field, override)

    result["postfix"] = postfix(result, env_conf.get("postfix") or DEFAULT_POSTFIX)
    return result


def postfix(env, template=DEFAULT_POSTFIX):
    """
    Render the postfix template (``{type}.{group}.{datacenter}``) from ``env``,
    or None if any field it names is unknown: a partial postfix would name a
    wider environment than the host belongs to.
    """
    fields = re.findall(r"{(\w+)}", template)
    if not fields or any(not is_label(env.get(f) or "") for f in fields):
        return None
    return template.format(**{f: env[f] for f in fields})


def service_name(service, env, template=DEFAULT_POSTFIX):
    """``db`` + env -> ``db.prod.gg.mydc1``; None if the environment is incomplete."""
    post = postfix(env, template)
    return f"{service}.{post}" if post else None


def env_config(opts):
    """The ``consul:env`` mapping from opts (empty if absent or malformed)."""
    section = ({} if opts is None else opts).get("consul") or {}
    conf = section.get("env") if isinstance(section, dict) else None
    return conf if isinstance(conf, dict) else {}


def local_name(opts):
    """The name the grains parse: ``consul:env:source`` is ``id`` (default) or ``fqdn``."""
    source = env_config(opts).get("source", "id")
    if source == "fqdn":
        import socket

        return socket.getfqdn()
    return ({} if opts is None else opts).get("id") or ""


def parse_postfix(text, env_conf=None):
    """
    The environment a postfix names (``prod.gg.mydc1`` -> ``{type: prod, group:
    gg, datacenter: mydc1}``), read back through the ``consul:env:postfix``
    template; None unless every field is a label and the type a configured one.
    """
    env_conf = env_conf if isinstance(env_conf, dict) else {}
    template = env_conf.get("postfix") or DEFAULT_POSTFIX
    if not isinstance(text, str) or not text or len(text) > _MAX_NAME:
        return None
    seen = set()
    parts = []
    pos = 0
    for match in re.finditer(r"{(\w+)}", template):
        parts.append(re.escape(template[pos : match.start()]))
        field = match.group(1)
        parts.append(f"(?P={field})" if field in seen else f"(?P<{field}>{LABEL_PATTERN})")
        seen.add(field)
        pos = match.end()
    parts.append(re.escape(template[pos:]))
    found = re.fullmatch("".join(parts), text.strip().lower())
    if not found:
        return None
    env = {field: found.group(field) for field in seen}
    types = [str(t).lower() for t in (env_conf.get("types") or DEFAULT_TYPES)]
    if "type" in env and env["type"] not in types:
        return None
    env["postfix"] = postfix(env, template)
    return env if env["postfix"] else None


# Where single-holder services keep their locks (``consul.single_holder_service``):
# ``locks/<service>/<postfix>/leader``, one holder per environment.
LOCK_PREFIX = "locks"


def lock_key(service, env_postfix=None):
    """The default lock key of a single-holder service in an environment."""
    if env_postfix:
        return f"{LOCK_PREFIX}/{service}/{env_postfix}/leader"
    return f"{LOCK_PREFIX}/{service}/leader"


def parse_lock_key(key, prefix=LOCK_PREFIX):
    """``(service, postfix_or_None)`` for a key shaped like :func:`lock_key` under ``prefix``, else None."""
    if not isinstance(key, str):
        return None
    parts = key.split("/")
    base = [p for p in prefix.strip("/").split("/") if p]
    if parts[: len(base)] != base or parts[-1:] != ["leader"]:
        return None
    rest = parts[len(base) : -1]
    if len(rest) == 1 and is_service_name(rest[0]):
        return rest[0], None
    if len(rest) == 2 and is_service_name(rest[0]) and is_postfix(rest[1]):
        return rest[0], rest[1]
    return None
