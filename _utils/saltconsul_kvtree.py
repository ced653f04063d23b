"""
Turn Consul KV entries into nested pillar-style dicts: value decoding, tree
building (including keys that are both a leaf and a folder), layer templates
and layer merging.

Pure logic: nothing here talks to Consul, and nothing here ever logs or formats
a *value* (values may be secrets); key names are not secret and do appear in
warnings.

.. code-block:: python

    import saltconsul_kvtree

    entries = [("config/global/db/pool", b"10"), ("config/global/db/opts", b'{"a": 1}')]
    saltconsul_kvtree.build_tree(entries, "config/global")
    # {"db": {"pool": "10", "opts": {"a": 1}}}

Decoding modes (per layer):

``auto`` (default)
    The exact stored string, unless it is a JSON object or array, which becomes
    the structure. No number or YAML 1.1 coercion: ``yes`` stays ``"yes"``,
    ``0123`` stays ``"0123"``, ``10`` stays ``"10"``.
``json``
    Every value parsed as JSON (``10`` becomes ``10``, ``"x"`` becomes ``x``).
``yaml``
    Every value parsed with Salt's YAML loader (YAML 1.1 rules: ``yes`` becomes
    ``True``); for operators who store YAML documents on purpose.
``raw``
    Every value is the exact stored string.

A value that fails to decode stays as its raw string, with a warning that names
the key (never the value). A value that is not UTF-8 stays as ``bytes``.

A key that is both a leaf and a folder (``db`` = ``"x"`` and ``db/pool`` =
``"5"``) keeps both: the folder keeps the name and the leaf's value moves into
it under ``leaf_key`` (default ``_value``): ``{"db": {"_value": "x", "pool": "5"}}``.
A folder placeholder key (``db/``, as the Consul UI creates) gives an empty dict.
"""

import binascii
import json
import logging

import salt.utils.dictupdate
import salt.utils.json
import salt.utils.yaml

import saltconsul_kv
import saltconsul_layers

log = logging.getLogger(__name__)

DECODE_MODES = saltconsul_kv.DECODE_MODES
DEFAULT_LEAF_KEY = "_value"

# Non-overlapping roots: no layer lies inside another one's folder, so a
# type-level layer can never carry every group's config along with it.
# The layer template language lives in saltconsul_layers (one definition);
# these names stay here for the callers that know them from this module.
DEFAULT_LAYERS = saltconsul_layers.DEFAULT_LAYERS
TEMPLATE_FIELDS = saltconsul_layers.TEMPLATE_FIELDS
TemplateError = saltconsul_layers.TemplateError
safe_minion_id = saltconsul_layers.safe_minion_id
check_path = saltconsul_layers.check_path
check_template = saltconsul_layers.check_template
render_template = saltconsul_layers.render_template
nested_templates = saltconsul_layers.nested_templates
template_fields = saltconsul_layers.template_fields
# Bound the warnings one tree build can log; the rest are counted.
MAX_WARNINGS = 10
_JSON_START = ("{", "[")
# What json.loads accepts around a document (not str.strip's Unicode whitespace).
_JSON_SPACE = " \t\n\r"
_JSON_DECODER = json.JSONDecoder()
# (outer, inner) template pairs already warned about, once per process.
WARNED_NESTED = set()


def decode_value(raw, mode="auto", key=None, warnings=None):
    """
    Decode one stored value for pillar (``saltconsul_kv.decode``, the one
    decoder): a value that does not decode is kept (the exact string, or the
    bytes) with a warning naming the key, never the value.

    raw
        The stored bytes; None (a key with no value) gives ``""``.
    mode
        ``auto``, ``json``, ``yaml`` or ``raw`` (see the module docstring).
    key
        The key name, for the warning if the value fails to decode.
    warnings
        Optional list the failing key names are appended to instead of logging
        each one (:func:`build_tree` batches them).
    """
    try:
        return saltconsul_kv.decode(raw, mode, key)
    except saltconsul_kv.DecodeError as err:
        _warn(key, err.what, warnings)
        return err.fallback


def _warn(key, what, warnings):
    if warnings is not None:
        warnings.append((key, what))
    else:
        log.warning("consul KV key %r %s", key, what)


def log_warnings(warnings):
    """Log the batched decode warnings of one tree build, bounded."""
    for key, what in warnings[:MAX_WARNINGS]:
        log.warning("consul KV key %r %s", key, what)
    if len(warnings) > MAX_WARNINGS:
        log.warning("consul KV: %d more keys failed to decode", len(warnings) - MAX_WARNINGS)


def build_tree(entries, root, mode="auto", leaf_key=DEFAULT_LEAF_KEY, warnings=None):
    """
    A nested dict from ``(key, raw_bytes_or_None)`` pairs under folder ``root``.

    entries
        Iterable of ``(key, raw)``; keys outside ``root + "/"`` are ignored.
    root
        The folder (without trailing ``/``); keys are taken relative to it. A
        key equal to ``root`` itself is ignored.
    mode
        Decoding mode, see :func:`decode_value`.
    leaf_key
        Where a leaf's value goes when the same key is also a folder.
    warnings
        List to collect decode warnings in (else they are logged, bounded).
    """
    base = root + "/" if root else ""
    cut = len(base)
    own_warnings = warnings is None
    if own_warnings:
        warnings = []
    tree = {}
    # ids of dicts that are folders (as opposed to decoded JSON objects), so a
    # leaf that decoded to a dict is still recognised as a leaf.
    folders = {id(tree)}
    # Folder nodes by relative path: Consul lists keys sorted, so siblings
    # share a parent and each key costs one lookup instead of a walk.
    nodes = {"": tree}
    fast = mode == "auto"
    loads = json.loads
    raw_decode = _JSON_DECODER.raw_decode
    for key, raw in entries:
        if not key.startswith(base):
            continue
        rel = key[cut:]
        if not rel:
            continue
        parent, _, last = rel.rpartition("/")
        node = nodes.get(parent)
        if node is None:
            node = tree
            for part in parent.split("/"):
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
                    folders.add(id(child))
                elif id(child) not in folders:
                    child = node[part] = {leaf_key: child}
                    folders.add(id(child))
                node = child
            nodes[parent] = node
        if last == "":
            # A folder placeholder ("db/"): the folder itself; a value stored on
            # it (rare) is kept like a leaf's.
            if raw:
                node[leaf_key] = decode_value(raw, mode, key, warnings)
            continue
        if fast and raw is not None:
            # The common case inline (most values are plain text): the exact
            # string, unless it looks like a JSON object or array. This is
            # saltconsul_kv.decode's "auto" rule unrolled for speed (a cold
            # 10k-key pillar spends its time here); anything unusual goes to
            # decode_value, and tests/unit/test_kvtree.py holds the two equal.
            try:
                value = raw.decode("utf-8")
            except UnicodeDecodeError:
                value = decode_value(raw, mode, key, warnings)
            else:
                head = value[:1]
                if head in _JSON_START:
                    # json.loads without its two whitespace regex runs: the
                    # text starts with the bracket; only JSON whitespace may follow.
                    try:
                        parsed, end = raw_decode(value)
                        if end != len(value) and value[end:].strip(_JSON_SPACE):
                            raise ValueError("extra data")
                        value = parsed
                    except ValueError:
                        value = decode_value(value, mode, key, warnings)  # keeps the string, warns
                elif head.isspace() and value.lstrip()[:1] in _JSON_START:
                    try:
                        value = loads(value)
                    except ValueError:
                        value = decode_value(value, mode, key, warnings)  # keeps the string, warns
        else:
            value = decode_value(raw, mode, key, warnings)
        existing = node.get(last)
        if existing is not None and id(existing) in folders:
            existing[leaf_key] = value
        else:
            node[last] = value
    if own_warnings and warnings:
        log_warnings(warnings)
    return tree


def tree_from_consul(entries, root, mode="auto", leaf_key=DEFAULT_LEAF_KEY, warnings=None):
    """:func:`build_tree` over Consul's JSON entries (``{"Key", "Value"(base64)}``)."""
    return build_tree(_raw_entries(entries), root, mode, leaf_key, warnings)


def _raw_entries(entries):
    a2b = binascii.a2b_base64
    for entry in entries:
        value = entry.get("Value")
        if value is not None:
            try:
                value = a2b(value)
            except (binascii.Error, ValueError, TypeError):
                value = None
        yield entry["Key"], value


def merge_trees(trees):
    """
    Deep-merge ``trees`` in order (later wins; dicts merge recursively, other
    values, lists included, are replaced): Salt's ``recurse`` merge strategy,
    i.e. ``salt.utils.dictupdate.update``. The first non-empty tree is updated
    in place and returned, and the later trees' branches are moved into it:
    pass private copies (what the pillar cache hands out).
    ``salt.utils.dictupdate.merge`` would first deep-copy the whole result
    for every layer merged, which for a warm compile cost more than
    unpacking the layers.
    """
    result = None
    for tree in trees:
        if not tree:
            continue
        if result is None:
            result = tree
        else:
            result = salt.utils.dictupdate.update(result, tree, merge_lists=False)
    return result if result is not None else {}
