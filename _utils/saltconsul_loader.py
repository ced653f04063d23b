"""
What the loader modules need to know about how salt-consul was installed.

A ``pip install``-ed salt-consul is the one package ``saltconsul_ext``
(``saltconsul_ext:get_dirs`` is the ``salt.loader`` entry point, which also
puts this folder on ``sys.path``); a file_roots install is synced, and the
package is not there. The formulas are SLS files, which Salt only finds on
``file_roots``: :func:`formulas_dir` (also ``python3 -m saltconsul_ext
formulas`` and ``salt-run consul_formulas.path``) says where the installed
ones are, to add them there.
"""

import importlib


def formulas_dir():
    """The installed formulas folder (for ``file_roots``), or None when not pip-installed."""
    try:
        # Imported here, not at the top: in a file_roots install it is absent.
        package = importlib.import_module("saltconsul_ext")
    except ImportError:
        return None
    return package.formulas_dir()


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
