"""
Every ``_utils/*.py`` installs as a top-level module (Salt loads no utils from
entry points, and the loader modules ``import saltconsul_*``). Listing them
here from the directory means a new util module can never be forgotten.
"""

import pathlib

from setuptools import setup

HERE = pathlib.Path(__file__).resolve().parent

setup(py_modules=sorted(p.stem for p in (HERE / "_utils").glob("saltconsul_*.py")))
