"""
One line for a test tier from its JUnit XML report (pytest --junitxml):

    python3 tools/junit_counts.py NAME REPORT.xml SECONDS
    -> "tier NAME: 590 tests, 588 passed, 2 skipped, 0 failed, 0 errors in 512 s"

    python3 tools/junit_counts.py --durations REPORT.xml > tests/durations.json
    -> seconds per test file (setup, call and teardown), which the parallel
       run uses to start the longest files first

Standard library only: CI runs it with the machine's Python.
"""

import collections
import json
import sys
import xml.etree.ElementTree as ET


def counts(path):
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "skipped", "failures", "errors")}
    total["passed"] = total["tests"] - total["skipped"] - total["failures"] - total["errors"]
    return total


def main(name, path, seconds):
    c = counts(path)
    print(
        f"tier {name}: {c['tests']} tests, {c['passed']} passed, {c['skipped']} skipped, "
        f"{c['failures']} failed, {c['errors']} errors in {seconds} s"
    )


def durations(path):
    """{test file: seconds}; pytest names a test's class path ``tests.unit.test_x``."""
    per_file = collections.Counter()
    for case in ET.parse(path).getroot().iter("testcase"):
        per_file[case.get("classname", "").replace(".", "/") + ".py"] += float(case.get("time") or 0)
    return {name: round(seconds, 1) for name, seconds in sorted(per_file.items())}


if __name__ == "__main__":
    if sys.argv[1] == "--durations":
        print(json.dumps(durations(sys.argv[2]), indent=1))
    else:
        main(*sys.argv[1:4])
