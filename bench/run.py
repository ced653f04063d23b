"""
``make bench``: start a real local Consul, run every bench section, print
``name: value`` lines.

A section is a file ``bench/bench_<topic>.py`` exposing ``run(agent)`` that
returns a list of ``(name, value)`` pairs; ``agent`` is a started
``tools/localconsul.LocalConsul`` (dc ``bench``, no ACL) shared by all
sections, so each section keeps to its own KV prefix. Sections run in file
name order; ``python bench/run.py pillar`` runs only ``bench_pillar.py``.
A section that fails prints ``<topic>_error: <message>`` and the others still run.

Figures are measured on this machine in this run and printed as they are;
nothing here asserts a target.
"""

import importlib.util
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for extra in (os.path.join(REPO, "tools"), os.path.join(REPO, "_utils"), HERE):
    if extra not in sys.path:
        sys.path.insert(0, extra)

import localconsul  # noqa: E402


def _format(value):
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def sections(only=None):
    """``[(topic, path)]`` of bench/bench_<topic>.py, sorted, filtered by ``only``."""
    found = []
    for name in sorted(os.listdir(HERE)):
        if name.startswith("bench_") and name.endswith(".py"):
            topic = name[len("bench_") : -len(".py")]
            if not only or topic in only:
                found.append((topic, os.path.join(HERE, name)))
    return found


def _load(topic, path):
    spec = importlib.util.spec_from_file_location(f"bench_{topic}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv):
    only = set(argv[1:])
    todo = sections(only)
    if not todo:
        print(f"no bench sections match {sorted(only)}", file=sys.stderr)
        return 2
    failed = 0
    agent = localconsul.LocalConsul("bench", log_dir=None)
    agent.start()
    try:
        for topic, path in todo:
            started = time.monotonic()
            try:
                results = _load(topic, path).run(agent)
            except Exception as err:  # pylint: disable=broad-except
                failed += 1
                traceback.print_exc(file=sys.stderr)
                print(f"{topic}_error: {type(err).__name__}: {err}", flush=True)
                continue
            for name, value in results:
                print(f"{name}: {_format(value)}", flush=True)
            print(f"{topic}_section_seconds: {time.monotonic() - started:.1f}", flush=True)
    finally:
        agent.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
