"""
The integration tier N times in a row under CPU contention, the way issue 20
asks a flake to be hunted: beside each run, a bounded CPU burner (one busy
process per ``--burners``, each stopping by itself after ``--seconds`` or when
the run ends) takes cores from the tests' daemons.

    .venv/bin/python tools/flake_check.py --runs 5 --burners 1

Prints one line per run (``flake_run N: passed/failed ... in S s``) and a
summary; exits 1 if any run failed. Extra arguments after ``--`` go to pytest.
"""

import argparse
import multiprocessing
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def burn(seconds):
    """Spin one core until ``seconds`` have passed (bounded: it always stops)."""
    deadline = time.monotonic() + seconds
    count = 0
    while time.monotonic() < deadline:
        count += 1
    return count


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--burners", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3600.0, help="upper bound of each burner's life")
    parser.add_argument("--workers", default=os.environ.get("TEST_WORKERS", "4"))
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args(argv)
    failed = 0
    for run in range(1, args.runs + 1):
        burners = [multiprocessing.Process(target=burn, args=(args.seconds,), daemon=True) for _ in range(args.burners)]
        for proc in burners:
            proc.start()
        started = time.monotonic()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", str(args.workers),
                 "--dist", "loadscope", "--no-loadscope-reorder", "tests/integration", *args.pytest_args],
                cwd=REPO, capture_output=True, text=True, check=False,
            )
        finally:
            for proc in burners:
                proc.terminate()
                proc.join(10)
        # pytest -q ends with "58 passed in 527.12s (0:08:47)" (framed by "=" without -q).
        summary = (re.findall(r"^=* ?(\d+ (?:passed|failed).* in [\d.]+s.*?) ?=*$", done.stdout, re.M) or ["(no summary)"])[-1]
        ok = done.returncode == 0
        failed += not ok
        print(f"flake_run {run}: {'passed' if ok else 'FAILED'} ({summary}) in {time.monotonic() - started:.0f} s", flush=True)
        if not ok:
            print("\n".join(line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))), flush=True)
    print(f"flake_runs: {args.runs}, failed: {failed}, burners: {args.burners}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
