"""
Runner ``consul_env``: the fleet by environment, in one view.

Environments come from the minion IDs the master has accepted, parsed with
the same parser and ``consul:env`` config as the ext_pillar (never from
grains). For each environment: its minions, the services registered in it
with their health, its single-holder services and who holds them, and which
of its pillar layer folders exist.

.. code-block:: bash

    salt-run consul_env.overview
    salt-run consul_env.overview --out=json

The master's Consul token needs read on the layer folders and the lock
folder, and read on services and nodes (see ``docs/runners.md``).
"""

import logging

from salt.exceptions import CommandExecutionError

import saltconsul_client
import saltconsul_env
import saltconsul_fleet
import saltconsul_kvtree
import saltconsul_pillar
import saltconsul_pillarcache
from saltconsul_errors import ConsulError, ConsulPermissionDenied

log = logging.getLogger(__name__)

__virtualname__ = "consul_env"

PER_MINION = ("minion_id", "host", "role")
UNASSIGNED = "unassigned"


def __virtual__():
    return __virtualname__


def _blank():
    return {"minions": [], "services": {}, "single_holder": {}, "layers": {}}


def _layers(conf, postfix, env, minions, keys):
    """``{folder or template: present | missing | "n of m minions"}`` for one environment."""
    values = saltconsul_pillar.environment_values(dict(env, postfix=postfix))
    shown = {}
    for template, _mode in conf["layers"]:
        fields = set(saltconsul_kvtree.template_fields(template))
        if fields & set(PER_MINION):
            if not minions:
                continue
            found = 0
            for mid in minions:
                folder = saltconsul_kvtree.render_template(template, saltconsul_pillar.environment(mid, __opts__))
                found += bool(folder and saltconsul_fleet.folder_exists(keys, folder))
            shown[template] = f"{found} of {len(minions)} minions"
            continue
        folder = saltconsul_kvtree.render_template(template, values)
        if folder is not None:
            shown[folder] = "present" if saltconsul_fleet.folder_exists(keys, folder) else "missing"
    return shown


def _env_folders(conf, envs):
    folders = []
    for postfix, env in envs.items():
        values = saltconsul_pillar.environment_values(dict(env, postfix=postfix))
        for template, _mode in conf["layers"]:
            folder = saltconsul_kvtree.render_template(template, values)
            if folder is not None and folder not in folders:
                folders.append(folder)
    return folders


def _agent_datacenter(client):
    # Consul lists datacenters nearest first: the agent's own comes first (no ACL needed).
    try:
        known = client.get("/v1/catalog/datacenters") or []
    except ConsulError:
        known = []
    return known[0] if known else None


def overview(dc=None, entry=0):
    """
    Accepted minions, registered services (instances by health), single-holder
    services (holder) and pillar layer folders (present or missing), by
    environment. Instances and minions without an environment are listed
    under ``unassigned``.

    dc
        The Consul datacenter to look at (default ``consul:datacenter``, else
        the master's agent's own).
    entry
        Which ``consul`` ext_pillar entry's layers to check (default the first).

    Health counts are instances by their worst check (node checks
    included), as Consul's ``?passing`` filter sees them.

    CLI Example:

    .. code-block:: bash

        salt-run consul_env.overview
        salt-run consul_env.overview dc=mydc2 --out=yaml
    """
    env_conf = saltconsul_env.env_config(__opts__)
    kwargs, _count = saltconsul_pillar.ext_pillar_kwargs(__opts__, entry)
    conf = saltconsul_pillar.parse_config(__opts__, kwargs)
    lock_prefix = ((__opts__.get("consul") or {}).get("runners") or {}).get("lock_prefix") or saltconsul_env.LOCK_PREFIX

    environments = {}
    known = {}
    unassigned = _blank()
    for mid in saltconsul_fleet.accepted_minions(__opts__):
        env = saltconsul_env.parse(mid, env_conf)
        if env.get("postfix"):
            known.setdefault(env["postfix"], {f: env.get(f) for f in ("type", "group", "datacenter")})
            environments.setdefault(env["postfix"], _blank())["minions"].append(mid)
        else:
            unassigned["minions"].append(mid)

    client = saltconsul_client.get_client(__opts__, __context__)  # noqa: F821
    notes = []
    try:
        entries, filtered = saltconsul_fleet.read_services(client, dc)
        locks = saltconsul_fleet.read_locks(client, lock_prefix, dc)
        # Consul leaves unreadable keys out of listings silently: check first.
        saltconsul_pillarcache.check_readable(client, [lock_prefix.strip("/")] + _env_folders(conf, known))
        keys = saltconsul_fleet.read_folders(client, conf["watch_prefix"], dc)
    except ConsulPermissionDenied as err:
        raise CommandExecutionError(
            f"consul_env.overview: the master's Consul token may not read what the overview needs ({err}). "
            "It needs read on the pillar layer folders and the lock folder, and on services and nodes "
            "(see docs/runners.md)"
        ) from None
    except ConsulError as err:
        raise CommandExecutionError(f"consul_env.overview: cannot read Consul: {err}") from None
    if filtered:
        notes.append("Consul's ACLs hid some services or nodes from the master's token")
    if client.has_token and not entries:
        notes.append("no services visible: if some are registered, the token lacks service or node read")

    for name, entry_ in entries:
        service, node = entry_.get("Service") or {}, entry_.get("Node") or {}
        postfix = saltconsul_fleet.instance_env(service, node, env_conf, known)
        target = unassigned if postfix is None else environments.setdefault(postfix, _blank())
        counts = target["services"].setdefault(name, dict({"instances": 0}, **{s: 0 for s in saltconsul_fleet.STATUSES}))
        counts["instances"] += 1
        counts[saltconsul_fleet.instance_status(entry_.get("Checks"))] += 1

    for (service, postfix), lock in sorted(locks.items(), key=lambda item: (item[0][0], item[0][1] or "")):
        target = unassigned if postfix is None else environments.setdefault(postfix, _blank())
        target["single_holder"][service] = lock

    for postfix, env in environments.items():
        parsed = known.get(postfix) or saltconsul_env.parse_postfix(postfix, env_conf) or {}
        env["layers"] = _layers(conf, postfix, parsed, env["minions"], keys) if parsed else {}

    del unassigned["layers"]
    result = {
        "datacenter": dc or client.datacenter or _agent_datacenter(client),
        "environments": dict(sorted(environments.items())),
        UNASSIGNED: unassigned,
    }
    if notes:
        result["notes"] = notes
    return result
