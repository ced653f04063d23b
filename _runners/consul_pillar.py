"""
Runner ``consul_pillar``: where a minion's Consul pillar comes from, and how
two environments' pillars differ.

Both read Consul KV exactly as the master's ``consul`` ext_pillar does: the
options of the master's ``ext_pillar`` ``consul`` entry (and ``consul:pillar``),
the environment the master derives from the minion ID (``consul:env``), the
same layer templates, the same decoding and deep merge, and the master's
Consul token (``consul:`` config). Values are read live from Consul in one
transaction; the master's pillar cache is only compared, never written.

.. code-block:: bash

    salt-run consul_pillar.explain web01.prod.gg.mydc1.example.com
    salt-run consul_pillar.explain web01.prod.gg.mydc1.example.com db:pool_size
    salt-run consul_pillar.diff prod.gg.mydc1 stg.gg.mydc1

Secret values (a path segment such as ``password`` or ``secret``, or a folder
listed in ``consul:runners:secret_folders``; see ``docs/runners.md``) are
shown as ``<hidden>`` unless ``show_secrets=True`` is passed. Runner returns
land in the master's job cache: show secrets only where that is acceptable.
The token needs ``read`` on the layer folders and nothing else.
"""

import logging
import time

from salt.exceptions import CommandExecutionError, SaltInvocationError

import saltconsul_client
import saltconsul_env
import saltconsul_fleet
import saltconsul_kvtree
import saltconsul_pillar
import saltconsul_pillarcache
from saltconsul_errors import ConsulError, ConsulPermissionDenied

log = logging.getLogger(__name__)

__virtualname__ = "consul_pillar"


def __virtual__():
    return __virtualname__


def _config(entry, show_secrets):
    if not isinstance(show_secrets, bool):
        # Only an explicit True shows secrets: a stray string must not.
        raise SaltInvocationError("show_secrets must be True or False")
    kwargs, count = saltconsul_pillar.ext_pillar_kwargs(__opts__, entry)
    return saltconsul_pillar.parse_config(__opts__, kwargs), count


def _minion_values(minion_id, conf):
    """The template values and skip reasons for a minion, as the ext_pillar derives them."""
    if not isinstance(minion_id, str) or not minion_id:
        raise SaltInvocationError("minion_id must be a non-empty string")
    grains = None
    if conf["env_from_grains"]:
        # The ext_pillar gets the minion's grains with its request; the runner
        # has only the master's cached copy of them.
        cached = __salt__["cache.grains"](tgt=minion_id, tgt_type="list") or {}  # noqa: F821
        grains = cached.get(minion_id) or {}
    values = saltconsul_pillar.environment(minion_id, __opts__, grains, conf["env_from_grains"])
    return values, saltconsul_pillar.field_reasons(minion_id, __opts__, values)


def _side(name, conf, accepted):
    """What ``diff`` compares for ``name``: an accepted minion, an environment postfix, else a minion ID."""
    if not isinstance(name, str) or not name:
        raise SaltInvocationError("each side must be an environment postfix or a minion ID")
    env = None if name in accepted else saltconsul_env.parse_postfix(name, saltconsul_env.env_config(__opts__))
    if env is not None:
        values = saltconsul_pillar.environment_values(env)
        per_minion = "per-minion field: not part of an environment's pillar"
        reasons = {"role": per_minion, "host": per_minion, "minion_id": per_minion}
        return {"name": name, "kind": "environment"}, values, reasons
    values, reasons = _minion_values(name, conf)
    return {"name": name, "kind": "minion", "accepted": name in accepted}, values, reasons


def _fail(what, err, folders):
    if isinstance(err, ConsulPermissionDenied):
        # The client's message names the request and Consul's reason, never the token.
        raise CommandExecutionError(
            f"consul_pillar.{what}: the master's Consul token may not read the pillar layer folders "
            f"{', '.join(folders) or '(none)'} ({err}). It needs read on them, e.g. "
            'key_prefix "config/" { policy = "read" } (see docs/runners.md)'
        ) from None
    raise CommandExecutionError(f"consul_pillar.{what}: cannot read the pillar layers from Consul: {err}") from None


def _read(what, conf, folders):
    """
    ``(trees_by_folder, warnings, index)`` for ``folders``, read live in one
    transaction after checking the token may read each folder (Consul
    filters unreadable keys out of a transaction silently).
    """
    client = saltconsul_client.get_client(__opts__, __context__)  # noqa: F821
    layers = [(folder, mode, conf["leaf_key"]) for folder, mode in folders]
    try:
        saltconsul_pillarcache.check_readable(client, [folder for folder, _ in folders])
        index = saltconsul_pillarcache.Watcher(client, conf["watch_prefix"], conf["watch_wait"]).query()
        trees, warnings = saltconsul_pillarcache.fetch_trees(client, layers) if layers else ([], [])
    except ConsulError as err:
        _fail(what, err, [folder for folder, _ in folders])
    return dict(zip([folder for folder, _ in folders], trees)), warnings, index


def _entry_note(entry, count):
    if count == 0:
        return {"note": "the master config has no consul ext_pillar entry: this is what '- consul: {}' would read"}
    if count > 1:
        return {"entry": f"{entry} of {count} consul ext_pillar entries (entry=N picks another)"}
    return {}


def _warnings(warnings):
    bounded = [f"{key}: {what}" for key, what in warnings[: saltconsul_kvtree.MAX_WARNINGS]]
    if len(warnings) > saltconsul_kvtree.MAX_WARNINGS:
        bounded.append(f"{len(warnings) - saltconsul_kvtree.MAX_WARNINGS} more keys failed to decode")
    return bounded


def _show(value, secret, show_secrets):
    return saltconsul_pillar.HIDDEN if secret and not show_secrets else value


def _rooted(path, conf):
    return ((conf["pillar_root"],) + path) if conf["pillar_root"] else path


def _provenance(plan, trees, conf, rule):
    """``{path: entry}`` (paths with ``pillar_root``) and which paths are secret."""
    read = [item["folder"] for item in plan if item["status"] == "read"]
    prov = saltconsul_pillar.provenance([trees[f] for f in read], read)
    secret = {
        path: any(saltconsul_pillar.is_secret(src, path, rule) for src, _ in entry["layers"])
        for path, entry in prov.items()
    }
    return {_rooted(p, conf): e for p, e in prov.items()}, {_rooted(p, conf): s for p, s in secret.items()}


def _wanted(path, key):
    if key is None:
        return True
    want = tuple(str(key).split(saltconsul_pillar.PATH_DELIM))
    return path[: len(want)] == want


def explain(minion_id, key=None, show_secrets=False, entry=0):
    """
    Where each value of ``minion_id``'s Consul pillar comes from.

    minion_id
        The minion ID (it need not be accepted yet: the pillar depends on the
        ID only).
    key
        Only this pillar key and what lies below it, ``a:b:c`` style.
    show_secrets
        True shows secret values instead of ``<hidden>`` (they then reach the
        master's job cache).
    entry
        Which ``consul`` ext_pillar entry of the master config (default the first).

    Returns the environment the master derives, every layer in order (its KV
    folder; read, or skipped and why; how the master's pillar cache stands),
    each pillar key with the value every layer gives it and the layer that
    wins, and decode warnings (key names only).

    CLI Example:

    .. code-block:: bash

        salt-run consul_pillar.explain web01.prod.gg.mydc1.example.com
        salt-run consul_pillar.explain web01.prod.gg.mydc1.example.com db:pool_size
    """
    conf, count = _config(entry, show_secrets)
    rule = saltconsul_pillar.secret_rule(__opts__)
    values, reasons = _minion_values(minion_id, conf)
    plan = saltconsul_pillar.layer_plan(conf, values, reasons)
    folders = [(item["folder"], item["decode"]) for item in plan if item["status"] == "read"]
    trees, warnings, index = _read("explain", conf, folders)
    report = saltconsul_pillarcache.cache_report(
        __opts__, conf, [(f, mode, conf["leaf_key"]) for f, mode in folders], index
    )
    now = time.time()
    layers = []
    for item in plan:
        shown = {"layer": item["layer"], "template": item["template"], "folder": item["folder"], "status": item["status"]}
        if item["status"] == "skipped":
            shown["reason"] = item["reason"]
        else:
            shown["keys"] = len(saltconsul_pillar.flatten(trees[item["folder"]]))
            cached = report["layers"].get(item["folder"])
            shown["cache"] = cached["state"]
            if cached.get("fetched_at") is not None:
                shown["cache_age"] = max(0, int(now - cached["fetched_at"]))
        layers.append(shown)
    prov, secret = _provenance(plan, trees, conf, rule)
    keys = {}
    for path in sorted(prov):
        if not _wanted(path, key):
            continue
        entry_ = prov[path]
        hide = secret[path]
        shown = {
            "value": _show(entry_["value"], hide, show_secrets),
            "from": entry_["from"],
            "layers": [{src: _show(val, hide, show_secrets)} for src, val in entry_["layers"]],
        }
        if hide:
            shown["secret"] = True
        if entry_["from"] is None:
            shown["replaced_by"] = entry_.get("replaced_by")
            shown["at"] = saltconsul_pillar.path_text(entry_["at"])
        keys[saltconsul_pillar.path_text(path)] = shown
    result = {
        "minion_id": minion_id,
        "environment": {k: v for k, v in values.items()},
        "source": f"read live from Consul (index {index})",
        "cache": report["summary"],
        "layers": layers,
        "keys": keys,
        "warnings": _warnings(warnings),
    }
    if key is not None and not keys:
        result["note"] = f"no layer sets {key}"
    if conf["env_key"]:
        result["env_key"] = conf["env_key"]
    result.update(_entry_note(entry, count))
    return result


def diff(a, b, show_secrets=False, entry=0):
    """
    The Consul pillar keys that differ between ``a`` and ``b``, with the
    layer each value comes from (null: not set on that side).

    a / b
        An environment postfix (``prod.gg.mydc1``: the layers of that
        environment; layers naming a minion, host or role are left out) or a
        minion ID (that minion's whole Consul pillar).
    show_secrets
        True shows secret values instead of ``<hidden>``.
    entry
        Which ``consul`` ext_pillar entry of the master config (default the first).

    CLI Example:

    .. code-block:: bash

        salt-run consul_pillar.diff prod.gg.mydc1 stg.gg.mydc1
        salt-run consul_pillar.diff web01.prod.gg.mydc1.example.com web01.stg.gg.mydc1.example.com
    """
    conf, count = _config(entry, show_secrets)
    rule = saltconsul_pillar.secret_rule(__opts__)
    accepted = set(saltconsul_fleet.accepted_minions(__opts__))
    sides = []
    wanted = {}
    for name in (a, b):
        info, values, reasons = _side(name, conf, accepted)
        plan = saltconsul_pillar.layer_plan(conf, values, reasons)
        info["layers"] = [item["folder"] for item in plan if item["status"] == "read"]
        if info["kind"] == "environment":
            info["minions"] = sum(
                1
                for mid in accepted
                if saltconsul_env.parse(mid, saltconsul_env.env_config(__opts__)).get("postfix") == values["postfix"]
            )
        sides.append((info, plan))
        for item in plan:
            if item["status"] == "read":
                wanted.setdefault(item["folder"], item["decode"])
    # One transaction for both sides: one consistent snapshot of KV.
    trees, warnings, index = _read("diff", conf, list(wanted.items()))
    provs = [_provenance(plan, trees, conf, rule) for _, plan in sides]
    labels = [info["name"] for info, _ in sides]
    if labels[0] == labels[1]:
        labels = ["a", "b"]
    differences = {}
    same = 0
    for path in sorted(set(provs[0][0]) | set(provs[1][0])):
        entries = [prov.get(path) for prov, _ in provs]
        present = [e is not None and e["from"] is not None for e in entries]
        if all(present) and entries[0]["value"] == entries[1]["value"]:
            same += 1
            continue
        if not any(present):
            continue
        hide = any(secret.get(path) for _, secret in provs)
        row = {}
        for label, entry_, is_set in zip(labels, entries, present):
            row[label] = {"value": _show(entry_["value"], hide, show_secrets), "from": entry_["from"]} if is_set else None
        differences[saltconsul_pillar.path_text(path)] = row
    result = {
        "a": sides[0][0],
        "b": sides[1][0],
        "source": f"read live from Consul (index {index})",
        "differences": differences,
        "same": same,
        "warnings": _warnings(warnings),
    }
    result.update(_entry_note(entry, count))
    return result
