#!/usr/bin/env python3
"""
A stand-in for a replicated database server, for failover tests, the bench and
the docs: a tiny stdlib HTTP server on loopback whose only state is a *role
file* holding ``primary`` or ``replica``.

Server::

    standin_db.py serve --port 15432 --role-file /srv/db/role [--pid-file F] [--daemon]

      GET  /health   200 "<role>"           (what a Consul http/tcp check probes)
      GET  /role     200 "<role>"
      POST /promote  writes "primary" to the role file, 200 "primary"
      POST /demote   writes "replica" to the role file, 200 "replica"

Commands an operator (or the failover formula, from pillar) runs::

    standin_db.py promote --port 15432              # asks the running server; fails if it is down
    standin_db.py demote --port 15432 --role-file F # asks the server, or, if it is down, rewrites
                                                    # the role file so it restarts as a replica
    standin_db.py role --role-file F                # prints the role; exit 0
    standin_db.py is-role primary --role-file F     # exit 0 if the role file says so, else 1

A real database is promoted the same way (``pg_ctl promote``, ``SELECT
pg_promote()``); what matters to the failover is that promotion is a command
that succeeds only on a live server, and that the role is observable.

Stdlib only, loopback only, every wait bounded.
"""

import argparse
import http.server
import os
import sys
import urllib.error
import urllib.request

ROLES = ("primary", "replica")


def read_role(path):
    """The role in ``path``; a missing or unreadable file means ``replica``."""
    try:
        with open(path, encoding="ascii") as handle:
            role = handle.read().strip()
    except OSError:
        return "replica"
    return role if role in ROLES else "replica"


def write_role(path, role):
    """Atomically replace the role file (a reader never sees it half written)."""
    if role not in ROLES:
        raise ValueError(f"bad role {role!r}")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="ascii") as handle:
        handle.write(role + "\n")
    os.replace(tmp, path)


def _handler(role_file):
    class Handler(http.server.BaseHTTPRequestHandler):
        def _reply(self, status, text):
            body = (text + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 (http.server API)
            if self.path in ("/health", "/role"):
                self._reply(200, read_role(role_file))
            else:
                self._reply(404, "not found")

        def do_POST(self):  # noqa: N802
            if self.path == "/promote":
                write_role(role_file, "primary")
                self._reply(200, "primary")
            elif self.path == "/demote":
                write_role(role_file, "replica")
                self._reply(200, "replica")
            else:
                self._reply(404, "not found")

        def log_message(self, *args):  # quiet: health checks poll every second
            pass

    return Handler


def serve(port, role_file, pid_file=None, daemon=False):
    # The role exists before the port answers: whoever sees the port open can read it.
    if not os.path.exists(role_file):
        write_role(role_file, "replica")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _handler(role_file))
    if daemon:
        # Classic double fork, so a state's cmd.run returns while the server lives on.
        if os.fork():
            server.server_close()
            return
        os.setsid()
        if os.fork():
            os._exit(0)  # pylint: disable=protected-access
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
    if pid_file:
        with open(pid_file, "w", encoding="ascii") as handle:
            handle.write(f"{os.getpid()}\n")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


def _post(port, path, timeout=3.0):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read().decode().strip()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve")
    p_serve.add_argument("--port", type=int, required=True)
    p_serve.add_argument("--role-file", required=True)
    p_serve.add_argument("--pid-file")
    p_serve.add_argument("--daemon", action="store_true")
    p_promote = sub.add_parser("promote")
    p_promote.add_argument("--port", type=int, required=True)
    p_demote = sub.add_parser("demote")
    p_demote.add_argument("--port", type=int, required=True)
    p_demote.add_argument("--role-file", required=True)
    p_role = sub.add_parser("role")
    p_role.add_argument("--role-file", required=True)
    p_is = sub.add_parser("is-role")
    p_is.add_argument("role", choices=ROLES)
    p_is.add_argument("--role-file", required=True)
    args = parser.parse_args(argv)

    if args.command == "serve":
        serve(args.port, args.role_file, args.pid_file, args.daemon)
        return 0
    if args.command == "promote":
        try:
            print(_post(args.port, "/promote"))
        except (OSError, urllib.error.URLError) as err:
            print(f"promote failed: server on port {args.port} unreachable ({err})", file=sys.stderr)
            return 1
        return 0
    if args.command == "demote":
        try:
            print(_post(args.port, "/demote"))
        except (OSError, urllib.error.URLError):
            # Down: make sure it comes back as a replica.
            write_role(args.role_file, "replica")
            print("replica (server down; role file rewritten)")
        return 0
    if args.command == "role":
        print(read_role(args.role_file))
        return 0
    if args.command == "is-role":
        return 0 if read_role(args.role_file) == args.role else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
