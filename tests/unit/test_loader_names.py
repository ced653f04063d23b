"""
Files of one loader type that share a virtual name (``_states/consul.py`` and
``_states/consul_acl.py`` are both ``consul``) are merged by Salt's loader into
one namespace; a function defined in two of them would silently shadow the
other, depending on load order. This fails when that happens.
"""

import ast
import collections
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]
LOADER_DIRS = ("_modules", "_states", "_grains", "_pillar", "_beacons", "_engines", "_runners", "_sdb")


def _virtualname(tree, default):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__virtualname__" for t in node.targets):
            return ast.literal_eval(node.value)
    return default


def _public_functions(tree):
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")
    }


def namespaces(loader_dir):
    """``{virtualname: {function: [files]}}`` of one loader dir."""
    spaces = collections.defaultdict(lambda: collections.defaultdict(list))
    for path in sorted((REPO / loader_dir).glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        name = _virtualname(tree, path.stem)
        for fun in _public_functions(tree):
            spaces[name][fun].append(path.name)
    return spaces


def test_no_function_defined_twice_under_one_virtual_name():
    clashes = [
        f"{loader_dir}: {name}.{fun} in {', '.join(files)}"
        for loader_dir in LOADER_DIRS
        if (REPO / loader_dir).is_dir()
        for name, funs in namespaces(loader_dir).items()
        for fun, files in funs.items()
        if len(files) > 1
    ]
    assert clashes == []


def test_the_check_sees_the_merged_state_files():
    # Guards the guard: both state files are read as one ``consul`` namespace.
    funs = namespaces("_states")["consul"]
    assert funs["acl_policy_present"] == ["consul_acl.py"]
    assert funs["service_present"] == ["consul.py"]
