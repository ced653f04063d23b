"""
The documented commands (tools/docs_run.py): what the docs show is what `make
demo` runs, and every command said to run elsewhere is still in the docs and
names a test file that exists and runs it.
"""

import pathlib
import re
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import docs_run  # noqa: E402


def test_commands_are_found_with_their_places():
    found = docs_run.doc_commands()
    assert len(found) >= 30
    # The README's day-to-day block and an output example's `$ ` line are both read.
    assert "salt-run consul_env.overview" in found
    assert any(w.startswith("README.md:") for w in found["salt-run consul_env.overview"])
    assert "salt-run consul_pillar.explain build-runner --out=yaml" in found
    # Comments are not part of a command; YAML blocks are not commands.
    assert all("#" not in c for c in found)
    assert not any(c.startswith("consul:") for c in found)


def test_elsewhere_names_documented_commands_and_real_tests():
    found = docs_run.doc_commands()
    for command, where in docs_run.ELSEWHERE.items():
        assert command in found, f"{command!r} is no longer in the docs: drop it from ELSEWHERE"
        for test in re.findall(r"(?:tests/integration/)?(test_\w+\.py)", where):
            path = REPO / "tests" / "integration" / test
            assert path.exists(), (command, test)
    assert set(docs_run.MUST_SHOW) <= set(found), set(docs_run.MUST_SHOW) - set(found)
