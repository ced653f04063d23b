"""The installed package's own logic: loader folders found relative to it, and the thin_extra_mods value."""

import importlib
import shutil
import sys

from conftest import REPO


def _package(monkeypatch, root):
    monkeypatch.syspath_prepend(str(root))
    sys.modules.pop("saltconsul_ext", None)
    try:
        return importlib.import_module("saltconsul_ext")
    finally:
        sys.modules.pop("saltconsul_ext", None)


def test_get_dirs_finds_the_folders_inside_the_package(monkeypatch, tmp_path):
    """As installed: saltconsul_ext/{modules,utils,formulas,...}; utils goes on sys.path."""
    installed = tmp_path / "saltconsul_ext"
    shutil.copytree(REPO / "saltconsul_ext", installed, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("modules", "states", "cache", "utils", "formulas"):
        (installed / name).mkdir()
    package = _package(monkeypatch, tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    dirs = package.get_dirs()
    assert dirs == {kind: [str(installed / kind)] for kind in ("modules", "states", "cache")}
    assert str(installed / "utils") in sys.path
    assert package.formulas_dir() == str(installed / "formulas")


def test_a_checkout_has_no_loader_folders_inside_the_package(monkeypatch):
    """The repo keeps the file_roots layout (_modules, ...): only an install maps them in."""
    package = _package(monkeypatch, REPO)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert package.get_dirs() == {}
    assert package.formulas_dir() is None


def test_thin_extra_mods_is_httpx_and_what_it_requires(monkeypatch):
    mods = _package(monkeypatch, REPO).thin_extra_mods()
    assert {"httpx", "httpcore", "h11", "anyio", "idna", "certifi"} <= set(mods)
    # Extras (brotli, h2, socksio, ...) are left out; the test venvs install none of them.
    assert not {"h2", "brotli", "socksio", "rich", "click"} & set(mods)
    assert mods == sorted(mods)
