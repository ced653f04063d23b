"""`make demo` runs to the end and leaves no process behind."""

import pathlib
import subprocess
import sys

import psutil

REPO = pathlib.Path(__file__).resolve().parents[2]


def _demo_processes():
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "consul-mydc1-" in cmdline or "salt-consul-demo-" in cmdline:
            found.append(cmdline)
    return found


def test_demo_runs_and_cleans_up():
    assert _demo_processes() == []
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "demo.py")],
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "demo: ok" in out
    for postfix in ("prod.gg.mydc1", "dev.gg.mydc1"):
        assert postfix in out
    # Environment DNS names answer with that environment's db only.
    assert "db.prod.gg.mydc1.query.consul      -> 127.0.0.11" in out
    assert "db.dev.gg.mydc1.query.consul       -> 127.0.0.12" in out
    # The same SLS rendered each environment's value from the layered KV.
    assert "rendered pool_size = 50" in out and "rendered pool_size = 5" in out
    second = out.split("Second state.apply", 1)[1]
    assert second.count(", 0 changed") == 4
    assert "unchanged: nothing was re-registered" in second
    assert _demo_processes() == []
