"""
Salt loader entry point for a ``pip install``-ed salt-consul.

``setup.cfg`` installs ``_modules``, ``_states``, ``_pillar``, ``_grains`` (and
the other loader dirs, ``_sdb`` and ``_cache`` too) as data files under
``share/salt-consul/`` and registers :func:`get_dirs` under the ``salt.loader``
entry point group; Salt then loads them with no ``file_roots`` at all. Salt asks
every loader kind by its dir name: ``salt.loader.sdb`` looks up ``"sdb"`` and
``salt.loader.cache`` looks up ``"cache"`` in the returned mapping. The ``_utils`` modules install as ordinary
top-level modules (Salt loads no utils from entry points).

The formulas install under ``share/salt-consul/formulas``; they are SLS files,
which Salt only finds on ``file_roots``: :func:`formulas_dir` (also
``python3 -m saltconsul_loader formulas`` and ``salt-run consul_formulas.path``)
says where they are, to add them there.
"""

import importlib.metadata
import os
import sys

DIST = "salt-consul"
EXT_TYPES = ("modules", "states", "pillar", "grains", "beacons", "engines", "runners", "sdb", "cache")


def _share_root():
    dist = importlib.metadata.distribution(DIST)
    for entry in dist.files or ():
        parts = entry.parts
        if "share" in parts and DIST in parts:
            idx = parts.index(DIST)
            return os.path.normpath(str(dist.locate_file(os.path.join(*parts[: idx + 1]))))
    return None


def get_dirs():
    """``{ext_type: [dir]}`` for every loader dir this distribution installed."""
    root = _share_root()
    if not root:
        return {}
    dirs = {}
    for ext_type in EXT_TYPES:
        path = os.path.join(root, ext_type)
        if os.path.isdir(path):
            dirs[ext_type] = [path]
    return dirs


def formulas_dir():
    """The installed formulas folder (for ``file_roots``), or None when not pip-installed."""
    try:
        root = _share_root()
    except importlib.metadata.PackageNotFoundError:
        return None
    path = os.path.join(root, "formulas") if root else None
    return path if path and os.path.isdir(path) else None


# --------------------------------------------------------------------------- the saltext-consul clash

_CLASH_WARNED = []


def saltext_consul_installed():
    """Whether saltext-consul (the salt-extensions package) is importable here."""
    import importlib.util

    try:
        return importlib.util.find_spec("saltext.consul") is not None
    except (ImportError, ValueError):
        return False


def warn_on_saltext_consul(log):
    """
    Log one warning per process when saltext-consul is installed beside us.

    Both claim the virtual name ``consul`` for the execution module, the states
    and the ext_pillar. Since Salt 3006.7 a module synced from ``file_roots``
    (``_modules/consul.py``) wins over an installed extension; two *installed*
    extensions claiming one name load in an order Salt does not define. Called
    from our loader modules' ``__virtual__`` (cheap: one ``find_spec``, once).
    """
    if _CLASH_WARNED or not saltext_consul_installed():
        return False
    _CLASH_WARNED.append(True)
    log.warning(
        "saltext-consul is installed too: it and salt-consul both claim the virtual name 'consul'. "
        "A synced _modules/consul.py wins over an installed extension (Salt 3006.7+), two installed "
        "extensions load in an undefined order. Keep one: salt-pip uninstall saltext.consul "
        "(see README, 'Install')."
    )
    return True


if __name__ == "__main__":
    # python3 -m saltconsul_loader formulas  -> the path, for scripts that write file_roots.
    if sys.argv[1:] != ["formulas"]:
        sys.exit("usage: python3 -m saltconsul_loader formulas")
    found = formulas_dir()
    if not found:
        sys.exit("salt-consul is not pip-installed here (no share/salt-consul/formulas)")
    print(found)
