"""
Watch timing per entry (``saltconsul_watch.build_watches``): the engine's or
beacon's timing, overridden by what a ``kv`` / ``services`` mapping entry sets
for itself, so a service can have a shorter quiet period than the KV prefixes
beside it (docs/watch.md).
"""

import pytest

import saltconsul_watch


def _timing(config, shared):
    return [(w, dict(shared, **w.options)) for w in saltconsul_watch.build_watches(config)]


def test_entry_timing_overrides_the_shared_timing():
    shared = saltconsul_watch.watcher_options({"min_wait": 2, "max_wait": 30})
    config = {
        "kv": ["config/", {"prefix": "nodes/", "dc": "dc2", "min_wait": 5}],
        "services": ["web", {"name": "db", "min_wait": 0.2, "tag": "prod"}],
    }
    got = [(w.kind, w.name, getattr(w, "dc", None), o) for w, o in _timing(config, shared)]
    assert got == [
        ("kv", "config/", None, {"min_wait": 2.0, "max_wait": 30.0}),
        ("kv", "nodes/", "dc2", {"min_wait": 5.0, "max_wait": 30.0}),
        ("service", "web", None, {"min_wait": 2.0, "max_wait": 30.0}),
        ("service", "db", None, {"min_wait": 0.2, "max_wait": 30.0}),
    ]
    db, options = _timing(config, shared)[-1]
    assert db.filter_tag == "prod"  # the entry's own keys still reach the watch
    # The options build a watcher (it validates min_wait <= max_wait).
    assert saltconsul_watch.Watcher(None, db, **options).min_wait == 0.2


def test_bad_entries_still_refused():
    with pytest.raises(ValueError):
        saltconsul_watch.build_watches({"services": [{"min_wait": 0.2}]})
    with pytest.raises(ValueError):
        saltconsul_watch.build_watches({"services": [{"name": "db", "min_wait": "soon"}]})
    ((watch, options),) = _timing({"services": [{"name": "db", "min_wait": 60}]}, {"max_wait": 30.0})
    with pytest.raises(ValueError):
        saltconsul_watch.Watcher(None, watch, **options)
