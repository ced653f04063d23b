"""
Runner ``consul_formulas``: where a ``pip install``-ed salt-consul put its
formulas, so that the master's ``file_roots`` can include them.

.. code-block:: bash

    salt-run consul_formulas.path
    # /usr/local/lib/python3.11/dist-packages/saltconsul_ext/formulas

.. code-block:: yaml

    # master config
    file_roots:
      base:
        - /srv/salt
        - /usr/local/lib/python3.11/dist-packages/saltconsul_ext/formulas   # the path printed above
"""

from salt.exceptions import CommandExecutionError

import saltconsul_loader

__virtualname__ = "consul_formulas"


def __virtual__():
    return __virtualname__


def path():
    """
    The installed formulas folder (``<site-packages>/saltconsul_ext/formulas``).
    Fails when salt-consul was not installed with pip (with file_roots + sync,
    the formulas are wherever the checkout is).

    CLI Example:

    .. code-block:: bash

        salt-run consul_formulas.path
    """
    found = saltconsul_loader.formulas_dir()
    if not found:
        raise CommandExecutionError(
            "salt-consul is not pip-installed for this master's Python (no saltconsul_ext/formulas); "
            "with a checkout, put its formulas/ folder on file_roots"
        )
    return found
