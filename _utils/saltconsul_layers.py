"""
Layer templates, the one language of the consul ext_pillar's layers: their
fields, validation, rendering a template into a KV folder for one minion, and
matching a KV key back to the layer (and environment) it belongs to.

The ext_pillar, the pillar runners, the watcher (which turns a KV change into
the minions it concerns) and the targets runner all use these functions, so
adding a template field is one edit here.

.. code-block:: python

    import saltconsul_layers

    saltconsul_layers.render_template("config/group/{type}.{group}", {"type": "prod", "group": "gg"})
    # "config/group/prod.gg"
    saltconsul_layers.key_env("config/group/prod.gg/db/pool", saltconsul_layers.compile_layers())
    # {"layer": "config/group/{type}.{group}", "type": "prod", "group": "gg"}

Pure logic: nothing here talks to Consul or logs a value.
"""

import collections
import re

from saltconsul_env import DEFAULT_TYPES, LABEL_PATTERN

# Non-overlapping roots: no layer lies inside another one's folder, so a
# type-level layer can never carry every group's config along with it.
DEFAULT_LAYERS = (
    "config/global",
    "config/dc/{datacenter}",
    "config/type/{type}",
    "config/group/{type}.{group}",
    "config/env/{type}.{group}.{datacenter}",
    "config/node/{minion_id}",
)
TEMPLATE_FIELDS = ("type", "group", "datacenter", "role", "host", "postfix", "minion_id")

# The one field syntax: ``{name}``; anything in braces is a field, and an
# unknown one is refused (check_template).
_FIELD = re.compile(r"{([^{}]*)}")
# A minion ID that may become one KV path segment: hostname-like, no "/", no "..".
_MINION_ID_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}"
_MINION_ID = re.compile(f"^{_MINION_ID_PATTERN}$")
_POSTFIX = r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?"


# One configured layer: its template and decode mode. A named tuple, so code
# that unpacks ``(template, mode)`` keeps working while new code names fields.
LayerSpec = collections.namedtuple("LayerSpec", ["template", "decode"])


class TemplateError(ValueError):
    """A layer template that can never render a safe KV path."""


def safe_minion_id(minion_id):
    """True if ``minion_id`` can be one KV path segment (no ``/``, no ``..``, ASCII)."""
    return isinstance(minion_id, str) and bool(_MINION_ID.match(minion_id)) and ".." not in minion_id


def check_path(path, what="layer"):
    """
    Validate a KV folder path (no leading or trailing ``/``, no empty, ``.`` or
    ``..`` segments) and return it; raise :class:`TemplateError` otherwise.
    """
    if not isinstance(path, str) or not path:
        raise TemplateError(f"{what} path must be a non-empty string")
    if path.startswith("/") or path.endswith("/"):
        raise TemplateError(f"{what} path {path!r} must not start or end with '/'")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise TemplateError(f"{what} path {path!r} has an empty, '.' or '..' segment")
    return path


def check_template(template):
    """Validate a layer template (literal parts and field names); return it."""
    if not isinstance(template, str):
        raise TemplateError(f"layer template must be a string, not {type(template).__name__}")
    for field in _FIELD.findall(template):
        if field not in TEMPLATE_FIELDS:
            raise TemplateError(
                f"layer template {template!r}: unknown field {{{field}}} "
                f"(known: {', '.join(TEMPLATE_FIELDS)})"
            )
    # Check the literal shape with every field replaced by a harmless label.
    check_path(_FIELD.sub("x", template), what="layer template")
    if "{" in _FIELD.sub("", template) or "}" in _FIELD.sub("", template):
        raise TemplateError(f"layer template {template!r} has an unbalanced brace")
    return template


def render_template(template, values):
    """
    Render a layer template with ``values`` (env fields and ``minion_id``).

    Returns the KV folder path, or None if a field it names is unknown (None or
    empty) for this minion: the layer is then skipped, never widened.
    Field values are used verbatim; callers pass only validated labels and a
    :func:`safe_minion_id`.
    """
    missing = []

    def _sub(match):
        value = values.get(match.group(1))
        if not value or not isinstance(value, str):
            missing.append(match.group(1))
            return ""
        return value

    rendered = _FIELD.sub(_sub, template)
    if missing:
        return None
    return check_path(rendered)


def nested_templates(templates):
    """
    Pairs ``(outer, inner)`` where ``inner`` lies inside ``outer``'s folder:
    ``outer``'s tree then contains ``inner``'s keys *and* those of all its
    siblings (every group's folder inside a type's).
    """
    pairs = []
    for outer in templates:
        for inner in templates:
            if inner != outer and inner.startswith(outer + "/"):
                pairs.append((outer, inner))
    return pairs


def template_fields(template):
    """The field names a layer template uses, in order (``config/group/{type}.{group}`` -> type, group)."""
    return _FIELD.findall(template)


# --------------------------------------------------------------------------- matching a key back


def compile_layers(layers=None, types=None):
    """
    Turn layer templates (``config/group/{type}.{group}``) into matchers,
    most specific (most fields) first. ``{type}`` only matches a configured
    type; ``{datacenter}`` never matches a type or ``global``, so with a
    nested layout (``config/{datacenter}`` and ``config/{type}``)
    ``config/prod/...`` is read as a type, not a datacenter.
    """
    types = [t for t in (types or DEFAULT_TYPES) if re.fullmatch(LABEL_PATTERN, str(t))]
    type_re = "|".join(re.escape(t) for t in types) or "(?!)"
    not_type = "(?!(?:" + "|".join([re.escape(t) for t in types] + ["global"]) + ")(?:/|$))"
    compiled = []
    for template in layers or DEFAULT_LAYERS:
        template = check_template(str(template).strip("/"))
        parts = []
        pos = 0
        for match in _FIELD.finditer(template):
            parts.append(re.escape(template[pos : match.start()]))
            field = match.group(1)
            if field == "type":
                parts.append(f"(?P<type>{type_re})")
            elif field == "datacenter":
                parts.append(f"{not_type}(?P<datacenter>{LABEL_PATTERN})")
            elif field == "minion_id":
                parts.append(f"(?P<minion_id>{_MINION_ID_PATTERN})")
            elif field == "postfix":
                parts.append(f"(?P<postfix>{_POSTFIX})")
            else:
                parts.append(f"(?P<{field}>{LABEL_PATTERN})")
            pos = match.end()
        parts.append(re.escape(template[pos:]))
        regex = re.compile("^" + "".join(parts) + "(?:/|$)")
        compiled.append((template, len(_FIELD.findall(template)), regex))
    compiled.sort(key=lambda item: -item[1])
    return compiled


def layer_matches(key, compiled):
    """
    Every layer whose root contains ``key``, most specific first, as
    ``{"layer": template, <field>: value, ...}``. With the default layout
    (no layer folder inside another) that is at most one. With a nested
    layout a key under ``config/prod/gg/db/`` matches ``config/{type}/{group}/{datacenter}`` with
    ``datacenter: db`` as well as ``config/{type}/{group}``: only a caller that
    knows the real datacenters (the master, from minion IDs) can tell which.
    """
    found = []
    for template, _count, regex in compiled:
        match = regex.match(key)
        if match:
            found.append(dict(match.groupdict(), layer=template))
    return found


def known_values(envs):
    """
    ``{field: {values}}`` from ``{minion_id: env}``: the environment values that
    really exist (plus ``minion_id``), used to tell a datacenter folder from a
    nested pillar key of the same name.
    """
    known = {"minion_id": set(envs)}
    for env in envs.values():
        for field, value in env.items():
            if isinstance(value, str) and field not in ("name", "pattern"):
                known.setdefault(field, set()).add(value)
    return known


def key_env(key, compiled, known=None):
    """
    The environment ``key`` belongs to: the most specific matching layer, or
    with ``known`` (see :func:`known_values`) the most specific one whose
    values all exist (nested layouts: ``config/prod/gg/app/x`` is
    ``{type: prod, group: gg}`` when there is no datacenter called ``app``).
    None if no layer fits.
    """
    for match in layer_matches(key, compiled):
        fields = {k: v for k, v in match.items() if k != "layer"}
        if known is None or all(v in known.get(k, ()) for k, v in fields.items()):
            return match
    return None
