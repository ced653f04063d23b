"""
Salt loader entry point for a ``pip install``-ed salt-consul.

``setup.cfg`` installs ``_modules``, ``_states``, ``_pillar``, ``_grains`` (and
the other loader dirs) as data files under ``share/salt-consul/`` and registers
:func:`get_dirs` under the ``salt.loader`` entry point group; Salt then loads
them with no ``file_roots`` at all. The ``_utils`` modules install as ordinary
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
EXT_TYPES = ("modules", "states", "pillar", "grains", "beacons", "engines", "runners", "sdb")


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


if __name__ == "__main__":
    # python3 -m saltconsul_loader formulas  -> the path, for scripts that write file_roots.
    if sys.argv[1:] != ["formulas"]:
        sys.exit("usage: python3 -m saltconsul_loader formulas")
    found = formulas_dir()
    if not found:
        sys.exit("salt-consul is not pip-installed here (no share/salt-consul/formulas)")
    print(found)
