# Two commands on a fresh machine: `make demo` and `make test`. Each does its own
# setup: a project-local virtualenv with the pinned requirements, and a Consul
# binary in tools/bin (see tools/install-consul.sh).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: all venv consul test demo bench clean

all: test

$(VENV)/.installed: requirements/runtime.txt requirements/test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements/test.txt
	touch $@

venv: $(VENV)/.installed

tools/bin/consul:
	bash tools/install-consul.sh

consul: tools/bin/consul

test: venv consul
	$(PY) -m pytest $(PYTEST_ARGS)

demo: venv consul
	$(PY) tools/demo.py

bench: venv consul
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) tools/bin .pytest_cache .hypothesis
