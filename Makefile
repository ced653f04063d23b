# Two commands on a fresh machine: `make demo` and `make test`. Each does its own
# setup: a project-local virtualenv with the pinned requirements, and a Consul
# binary in tools/bin (see tools/install-consul.sh). Every step is safe to
# re-run after an interruption: a virtualenv counts as installed only once its
# stamp file is written, after pip finished.
#
# Pins: requirements/*.in are hand-written; the *.txt locks are generated from
# them by `make lock` (uv pip compile), never edited by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
LOCK_3008 := requirements/salt3008-py3.11.txt
LOCK_3006 := requirements/salt3006-py3.10.txt

# Salt 3006 LTS runs on Python 3.10 here (3006 supports 3.10 and 3.11), so the
# two sets together cover 3.10 and 3.11.
PYTHON_3006 ?= $(shell for c in python3.10 $$(pyenv root 2>/dev/null)/versions/3.10*/bin/python3.10; do \
	"$$c" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1 && { echo "$$c"; break; }; done)
VENV_3006 ?= .venv-salt3006
PY_3006 := $(VENV_3006)/bin/python

# Salt 3008 on Python 3.13 too (the newest Python installable here; the
# onedir's 3.14 is not): the unit and functional tiers.
LOCK_PY313 := requirements/salt3008-py3.13.txt
PYTHON_313 ?= $(shell for c in python3.13 $$(pyenv root 2>/dev/null)/versions/3.13*/bin/python3.13; do \
	"$$c" -c 'import sys; assert sys.version_info[:2] == (3, 13)' >/dev/null 2>&1 && { echo "$$c"; break; }; done)
VENV_PY313 ?= .venv-py313
PY_313 := $(VENV_PY313)/bin/python

# Tests run in parallel (pytest-xdist): most of the suite waits on daemons
# and Consul's timings, so there are more workers than the 2 cores. Each test
# file is one unit of work (its module fixtures, a cluster say, start once,
# on one worker); the longest files start first (tests/conftest.py,
# tests/durations.json). TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 4
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder)
# The 15 slowest tests, printed at the end of every run.
PYTEST := -m pytest $(XDIST) --durations=15 --durations-min=1

.PHONY: all venv venv-salt3006 venv-py313 consul sshd check-install flake-check test test-quick test-salt3006 test-py313 demo bench lock clean

all: test

# The virtualenvs are built by uv (from a virtualenv of its own, like `make
# lock`): the same pins as pip would install, in a fraction of the time (CI
# builds three). --seed puts pip in each, which tests use for `pip install .`;
# --compile-bytecode as pip does: with PYTHONDONTWRITEBYTECODE set (as on the
# CI machine) every Salt process would otherwise compile Salt from source.
UV := .venv-uv/bin/uv

$(UV):
	rm -rf .venv-uv
	$(PYTHON) -m venv .venv-uv
	.venv-uv/bin/python -m pip install -q --disable-pip-version-check 'uv>=0.5'

$(VENV)/.installed: $(LOCK_3008) | $(UV)
	rm -f $@
	$(UV) venv -q --seed --allow-existing --python $(PYTHON) $(VENV)
	VIRTUAL_ENV=$(VENV) $(UV) pip install -q --compile-bytecode -r $(LOCK_3008)
	touch $@

$(VENV_3006)/.installed: $(LOCK_3006) | $(UV)
	@test -n "$(PYTHON_3006)" || { echo "no Python 3.10 found for the Salt 3006 set (set PYTHON_3006=...)" >&2; exit 1; }
	rm -f $@
	$(UV) venv -q --seed --allow-existing --python $(PYTHON_3006) $(VENV_3006)
	VIRTUAL_ENV=$(VENV_3006) $(UV) pip install -q --compile-bytecode -r $(LOCK_3006)
	touch $@

$(VENV_PY313)/.installed: $(LOCK_PY313) | $(UV)
	@test -n "$(PYTHON_313)" || { echo "no Python 3.13 found (set PYTHON_313=...)" >&2; exit 1; }
	rm -f $@
	$(UV) venv -q --seed --allow-existing --python $(PYTHON_313) $(VENV_PY313)
	VIRTUAL_ENV=$(VENV_PY313) $(UV) pip install -q --compile-bytecode -r $(LOCK_PY313)
	touch $@

venv: $(VENV)/.installed

venv-salt3006: $(VENV_3006)/.installed

venv-py313: $(VENV_PY313)/.installed

tools/bin/consul:
	bash tools/install-consul.sh

consul: tools/bin/consul

# The salt-ssh tests' sshd (tests/integration/test_salt_ssh.py runs this
# itself: it also makes the privilege separation user and /run/sshd that an
# sshd started as root needs).
sshd:
	bash tools/install-sshd.sh

# The Consul install, 30 times in a row from an empty dir (it must never flake).
check-install:
	bash tools/check-install-consul.sh 30

# The whole suite on the primary set (Salt 3008 LTS).
test: venv consul
	$(PY) $(PYTEST) $(PYTEST_ARGS)

# The edit loop: the unit and functional tiers (Salt loaders on dev agents).
test-quick: venv consul
	$(PY) $(PYTEST) $(PYTEST_ARGS) tests/unit tests/functional

# Flake hunt: the integration tier 5 times in a row beside a bounded CPU burner.
flake-check: venv consul
	$(PY) tools/flake_check.py --runs 5 --burners 1 --workers $(TEST_WORKERS)

# The functional and integration tiers on Salt 3006 LTS.
test-salt3006: venv-salt3006 consul
	$(PY_3006) $(PYTEST) $(PYTEST_ARGS) tests/functional tests/integration

# The unit and functional tiers on Salt 3008 with Python 3.13.
test-py313: venv-py313 consul
	$(PY_313) $(PYTEST) $(PYTEST_ARGS) tests/unit tests/functional

demo: venv consul
	$(PY) tools/demo.py

bench: venv consul
	$(PY) bench/run.py

# Regenerate the pins from requirements/*.in (needs network access to the index).
# uv lives in a virtualenv of its own, so no system Python is touched.
lock: $(UV)
	cd requirements && ../$(UV) pip compile -q --upgrade --python-version 3.11 salt3008.in -o salt3008-py3.11.txt
	cd requirements && ../$(UV) pip compile -q --upgrade --python-version 3.10 salt3006.in -o salt3006-py3.10.txt
	cd requirements && ../$(UV) pip compile -q --upgrade --python-version 3.13 salt3008.in -o salt3008-py3.13.txt

clean:
	rm -rf $(VENV) $(VENV_3006) $(VENV_PY313) .venv-uv .venv-lock tools/bin .pytest_cache .hypothesis
