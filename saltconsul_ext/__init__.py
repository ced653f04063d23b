"""
The installed salt-consul: one package that carries everything it needs.

``pip install salt-consul`` (``salt-pip install`` with the packaged Salt) puts
this package in site-packages with the repo's folders mapped into it by
``setup.cfg``::

    saltconsul_ext/modules   <- _modules     saltconsul_ext/utils     <- _utils
    saltconsul_ext/states    <- _states      saltconsul_ext/formulas  <- formulas
    saltconsul_ext/pillar    <- _pillar      ... one folder per loader kind

Everything is found relative to this file, not through the distribution's
RECORD or a ``share/`` prefix: salt-ssh's thin carries an entry-point
extension as the root package of its entry point (and a bare
``entry_points.txt``), so on an agentless target this folder is all there is.

:func:`get_dirs` is the ``salt.loader`` entry point. It also puts ``utils`` on
``sys.path``: Salt loads no utils from entry points, and the loader modules do
``import saltconsul_*``. Salt calls it when it builds a loader, before it
imports any module of that loader.

Salt 3006's salt-ssh sends neither (``salt.client.ssh.mod_data`` ships a
``modules``/``states``/``grains``/``renderers``/``returners`` folder, no
``utils``; ``salt.utils.thin.gen_thin`` has no extension discovery), so there
``thin-extra-mods`` also names the shared ``saltconsul_*`` modules: the thin
then carries them, flat, on the target's ``sys.path`` (:func:`ssh_thin_mods`).

.. code-block:: bash

    python3 -m saltconsul_ext formulas          # the formulas folder, for file_roots
    python3 -m saltconsul_ext thin-extra-mods   # salt-ssh's thin_extra_mods value
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# Salt asks every loader kind by its folder name (salt.loader.sdb looks up
# "sdb", salt.loader.cache "cache", ...).
EXT_TYPES = ("modules", "states", "pillar", "grains", "beacons", "engines", "runners", "sdb", "cache")
# What salt-consul's HTTP client imports beyond what salt-ssh's thin already
# carries (certifi, idna): walked from here through the installed metadata.
HTTP_CLIENT_DIST = "httpx"


def utils_dir():
    """The shared ``saltconsul_*`` modules (``_utils`` in the repo)."""
    return os.path.join(HERE, "utils")


def get_dirs():
    """``{ext_type: [dir]}`` for every loader folder of this package; puts ``utils`` on ``sys.path``."""
    utils = utils_dir()
    # Appended, not inserted: utils synced from file_roots (which Salt puts on
    # sys.path first) win, as synced modules win over installed extensions.
    if os.path.isdir(utils) and utils not in sys.path:
        sys.path.append(utils)
    dirs = {}
    for ext_type in EXT_TYPES:
        path = os.path.join(HERE, ext_type)
        if os.path.isdir(path):
            dirs[ext_type] = [path]
    return dirs


def formulas_dir():
    """The installed formulas folder (for the master's ``file_roots``), or None in a checkout."""
    path = os.path.join(HERE, "formulas")
    return path if os.path.isdir(path) else None


def thin_extra_mods(dist=HTTP_CLIENT_DIST):
    """
    The top-level modules of ``dist`` and of everything it requires (extras
    left out), as installed for this Python: the master's ``thin_extra_mods``
    value, so that salt-ssh's thin carries the HTTP client to the target.
    Requirements marked for other Python versions are included when they are
    installed (the target's Python may be older than the master's). Modules
    the thin always carries (certifi, idna) are listed too: harmless, and the
    list stays right if Salt stops carrying them.
    """
    import importlib.metadata  # pylint: disable=import-outside-toplevel

    from packaging.requirements import Requirement  # pylint: disable=import-outside-toplevel

    seen, todo, modules = set(), [dist], set()
    while todo:
        name = _canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            found = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        modules.update(_top_level(found))
        for line in found.requires or []:
            req = Requirement(line)
            if req.marker is not None and "extra" in str(req.marker):
                continue
            todo.append(req.name)
    return sorted(modules)


def _canonical(name):
    return name.lower().replace("_", "-").replace(".", "-")


def _top_level(dist):
    """
    The importable top-level names a distribution installed: its
    ``top_level.txt``, else read from its files (hatchling-built wheels such
    as httpx's have no top_level.txt, and Python 3.10's
    ``packages_distributions`` reads nothing else). Private names
    (``_cffi_backend``) travel with their package.
    """
    declared = (dist.read_text("top_level.txt") or "").split()
    if declared:
        return {name for name in declared if not name.startswith("_")}
    names = set()
    for path in dist.files or ():
        parts = path.parts
        if len(parts) > 1 and not parts[0].endswith((".dist-info", ".data")) and parts[0] not in ("..", "__pycache__"):
            names.add(parts[0])
        elif len(parts) == 1 and parts[0].endswith(".py"):
            names.add(parts[0][:-3])
    return {name for name in names if not name.startswith("_") and name.isidentifier()}


# --------------------------------------------------------------------------- salt-ssh on Salt 3006


def shared_dir():
    """The shared ``saltconsul_*`` modules' folder: ``utils`` when installed, the checkout's ``_utils`` beside it."""
    utils = utils_dir()
    if os.path.isdir(utils):
        return utils
    checkout = os.path.join(os.path.dirname(HERE), "_utils")
    return checkout if os.path.isdir(checkout) else None


def shared_modules():
    """The names of the shared ``saltconsul_*`` modules (sorted), or [] when neither folder is there."""
    found = shared_dir()
    if not found:
        return []
    return sorted(
        name[:-3] for name in os.listdir(found) if name.startswith("saltconsul_") and name.endswith(".py")
    )


def salt_ssh_sends_utils():
    """
    Whether this Python's salt-ssh sends ``_utils`` with each call: from Salt
    3008 on (its ``mod_data`` syncs ``utils``, its thin carries an installed
    extension's package). Salt 3006's does neither. Without Salt here, assume a
    current one.
    """
    try:
        import salt.version  # pylint: disable=import-outside-toplevel
    except ImportError:
        return True
    return salt.version.__saltstack_version__.major >= 3008


def ssh_thin_mods():
    """
    The ``thin_extra_mods`` value for this master: :func:`thin_extra_mods`
    and, on Salt 3006, the shared ``saltconsul_*`` modules after them, which
    the thin then carries flat (its ``py3`` folder is on the target's
    ``sys.path``; the loader modules reach the target in 3006's ext_mods).

    Salt 3006's ``salt.utils.thin.get_tops`` imports each name on the master
    when it builds the thin, and skips (logging "Unable to import
    extra-module") a name it cannot import. Both ways they are importable
    there. From file_roots: ``salt-run saltutil.sync_all`` has copied them to
    the master's ``extension_modules/utils``, which
    ``salt.config.apply_master_config`` puts on ``sys.path``
    (``insert_system_path`` of ``utils_dirs``) when salt-ssh reads its config.
    Pip-installed: ``salt.client.ssh.SSH.__init__`` builds its roster and
    returner loaders before ``gen_thin``, and each calls :func:`get_dirs`,
    which puts ``utils`` on ``sys.path``. Salt 3006 builds the thin once per
    Salt version: ``salt-ssh --regen-thin`` after salt-consul changes.
    """
    mods = thin_extra_mods()
    if not salt_ssh_sends_utils():
        mods += shared_modules()
    return mods


def main(argv):
    """``python3 -m saltconsul_ext formulas|thin-extra-mods``: print the path or the value."""
    if argv == ["formulas"]:
        found = formulas_dir()
        if not found:
            return "salt-consul is not pip-installed here (no saltconsul_ext/formulas)"
        print(found)
        return 0
    if argv == ["thin-extra-mods"]:
        print(",".join(ssh_thin_mods()))
        return 0
    return "usage: python3 -m saltconsul_ext formulas|thin-extra-mods"
