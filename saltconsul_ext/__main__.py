"""``python3 -m saltconsul_ext formulas|thin-extra-mods`` (see the package docstring)."""

import sys

from saltconsul_ext import main

sys.exit(main(sys.argv[1:]))
