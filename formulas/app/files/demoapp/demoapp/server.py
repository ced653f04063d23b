"""
The demoapp HTTP server (stdlib only).

    demoapp --config app.conf [--env-file secrets.env]            # foreground
    demoapp --config app.conf --daemon --pidfile app.pid --log app.log
    demoapp --stop --pidfile app.pid
    demoapp --config app.conf --probe                           # exit 0 if /health answers

``GET /health`` answers ``ok`` (the Consul check); ``GET /`` describes the
running configuration: environment, settings module, discovered db hosts and
the *names* of the secrets it loaded (never their values).
"""

import argparse
import configparser
import importlib
import json
import os
import signal
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def load_config(path):
    parser = configparser.ConfigParser()
    if not parser.read(path, encoding="utf-8"):
        raise SystemExit(f"demoapp: cannot read config {path}")
    host, _, port = parser.get("app", "listen").rpartition(":")
    hosts = [h for h in parser.get("db", "hosts", fallback="").split(",") if h]
    return {
        "environment": parser.get("app", "environment"),
        "settings_module": parser.get("app", "settings_module"),
        "listen": (host or "127.0.0.1", int(port)),
        "db_dns_name": parser.get("db", "dns_name", fallback=""),
        "db_hosts": hosts,
    }


def load_env_file(path):
    """``KEY=VALUE`` lines; the values are secrets and are only kept in memory."""
    values = {}
    if not path:
        return values
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                values[key.strip()] = value
    return values


def make_handler(conf, settings, secrets):
    description = {
        "environment": conf["environment"],
        "settings_module": conf["settings_module"],
        "debug": settings.DEBUG,
        "db_pool_size": settings.DB_POOL_SIZE,
        "db": {"dns_name": conf["db_dns_name"], "hosts": conf["db_hosts"]},
        "secrets": sorted(secrets),
    }

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status, body, ctype):
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                self._send(200, "ok\n", "text/plain")
            elif self.path == "/":
                self._send(200, json.dumps(description, indent=2) + "\n", "application/json")
            else:
                self._send(404, "not found\n", "text/plain")

        def log_message(self, fmt, *args):
            if settings.DEBUG:
                sys.stderr.write("demoapp: " + fmt % args + "\n")

    return Handler


def _daemonize(pidfile, logfile):
    if os.fork():
        os._exit(0)  # the caller (Salt's cmd.run) returns at once
    os.setsid()
    if os.fork():
        os._exit(0)
    fd = os.open(logfile or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    with open(pidfile, "w", encoding="utf-8") as fh:
        fh.write(f"{os.getpid()}\n")


def _stop(pidfile, timeout=10.0):
    try:
        with open(pidfile, encoding="utf-8") as fh:
            pid = int(fh.read().strip())
    except (OSError, ValueError):
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    os.unlink(pidfile)
    return 0


def _probe(conf):
    host, port = conf["listen"]
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as resp:
            return 0 if resp.status == 200 else 1
    except OSError:
        return 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="demoapp")
    parser.add_argument("--config")
    parser.add_argument("--env-file")
    parser.add_argument("--daemon", action="store_true")
    parser.add_argument("--pidfile")
    parser.add_argument("--log")
    parser.add_argument("--stop", action="store_true")
    parser.add_argument("--probe", action="store_true")
    args = parser.parse_args(argv)
    if args.stop:
        return _stop(args.pidfile)
    if not args.config:
        parser.error("--config is required")
    conf = load_config(args.config)
    if args.probe:
        return _probe(conf)
    settings = importlib.import_module(f"demoapp.{conf['settings_module']}")
    secrets = load_env_file(args.env_file)
    server = ThreadingHTTPServer(conf["listen"], make_handler(conf, settings, secrets))
    if args.daemon:
        _daemonize(args.pidfile, args.log)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
