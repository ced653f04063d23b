"""
The stand-in database (``tools/standin_db.py``) used by the failover test and
bench behaves like the thing it stands in for: promotion needs a live server,
the role is observable, a server that is down can still be told to come back
as a replica. Real processes on loopback.
"""

import subprocess
import sys
import urllib.request

from standin_failover import STANDIN, StandIn


def _cli(*args):
    return subprocess.run([sys.executable, str(STANDIN), *args], capture_output=True, text=True, timeout=30, check=False)


def test_promote_demote_and_role(tmp_path):
    server = StandIn(tmp_path, "db01")
    server.start()
    try:
        assert server.role == "replica"  # a new server starts as a replica
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=5) as resp:
            assert resp.status == 200 and resp.read().decode().strip() == "replica"
        assert _cli("is-role", "primary", "--role-file", str(server.role_file)).returncode == 1

        assert _cli("promote", "--port", str(server.port)).returncode == 0
        assert server.role == "primary"
        assert _cli("is-role", "primary", "--role-file", str(server.role_file)).returncode == 0

        server.kill()
        # Promotion needs a live server; demotion of a dead one rewrites the role file.
        failed = _cli("promote", "--port", str(server.port))
        assert failed.returncode == 1 and "unreachable" in failed.stderr
        assert server.role == "primary"
        assert _cli("demote", "--port", str(server.port), "--role-file", str(server.role_file)).returncode == 0
        assert server.role == "replica"
        server.start()
        assert _cli("role", "--role-file", str(server.role_file)).stdout.strip() == "replica"
    finally:
        server.kill()
