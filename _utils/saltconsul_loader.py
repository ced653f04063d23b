"""
Salt loader entry point for a ``pip install``-ed salt-consul.

``setup.cfg`` installs ``_modules``, ``_states``, ``_pillar``, ``_grains`` (and
the other loader dirs, ``_sdb`` and ``_cache`` too) as data files under
``share/salt-consul/`` and registers :func:`get_dirs` under the ``salt.loader``
entry point group; Salt then loads them with no ``file_roots`` at all. Salt asks
every loader kind by its dir name: ``salt.loader.sdb`` looks up ``"sdb"`` and
``salt.loader.cache`` looks up ``"cache"`` in the returned mapping. The ``_utils`` modules install as ordinary
top-level modules (Salt loads no utils from entry points).
"""

import importlib.metadata
import os

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
