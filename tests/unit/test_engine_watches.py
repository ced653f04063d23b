"""
The ``consul_watch`` engine's watch list (``_engines/consul_watch._watches``):
engine-wide timing, overridden per entry, so a service can have a shorter
quiet period than the KV prefixes beside it (docs/watch.md).
"""

import importlib.util
import pathlib

import pytest

import saltconsul_watch

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine():
    spec = importlib.util.spec_from_file_location("consul_watch_engine", REPO / "_engines" / "consul_watch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_entry_timing_overrides_the_engines(engine):
    engine_wide = saltconsul_watch.watcher_options({"min_wait": 2, "max_wait": 30})
    config = {
        "kv": ["config/", {"prefix": "nodes/", "dc": "dc2", "min_wait": 5}],
        "services": ["web", {"name": "db", "min_wait": 0.2, "tag": "prod"}],
    }
    got = [(w.kind, w.name, getattr(w, "dc", None), o) for w, o in engine._watches(config, engine_wide)]
    assert got == [
        ("kv", "config/", None, {"min_wait": 2.0, "max_wait": 30.0}),
        ("kv", "nodes/", "dc2", {"min_wait": 5.0, "max_wait": 30.0}),
        ("service", "web", None, {"min_wait": 2.0, "max_wait": 30.0}),
        ("service", "db", None, {"min_wait": 0.2, "max_wait": 30.0}),
    ]
    db = engine._watches(config, engine_wide)[-1][0]
    assert db.filter_tag == "prod"  # the entry's own keys still reach the watch
    # The options build a watcher (it validates min_wait <= max_wait).
    assert saltconsul_watch.Watcher(None, db, **engine._watches(config, engine_wide)[-1][1]).min_wait == 0.2


def test_bad_entries_still_refused(engine):
    with pytest.raises(ValueError):
        engine._watches({"services": [{"min_wait": 0.2}]}, {})
    with pytest.raises(ValueError):
        saltconsul_watch.Watcher(None, saltconsul_watch.ServiceWatch("db"), **engine._watches(
            {"services": [{"name": "db", "min_wait": 60}]}, {"max_wait": 30.0})[0][1])
