"""
``tools/junit_counts.py``: CI's per-tier line and the README's
``python3 tools/junit_counts.py --durations report.xml`` (seconds per test file),
run as the commands are written, on a JUnit report of pytest's shape.
"""

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
REPORT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="2" tests="7" time="9.0">
<testcase classname="tests.unit.test_a" name="t1" time="1.25"/>
<testcase classname="tests.unit.test_a" name="t2" time="0.5"/>
<testcase classname="tests.integration.test_b" name="t3" time="6.0"/>
</testsuite></testsuites>
"""


def _run(*args):
    done = subprocess.run([sys.executable, str(REPO / "tools" / "junit_counts.py"), *args],
                          capture_output=True, text=True, check=True, timeout=60)
    return done.stdout


def test_tier_line_and_durations(tmp_path):
    report = tmp_path / "report.xml"
    report.write_text(REPORT)
    assert _run("salt3008-py3.11", str(report), "42").strip() == (
        "tier salt3008-py3.11: 7 tests, 3 passed, 2 skipped, 1 failed, 1 errors in 42 s"
    )
    assert json.loads(_run("--durations", str(report))) == {
        "tests/integration/test_b.py": 6.0,
        "tests/unit/test_a.py": 1.8,
    }
