#!/usr/bin/env python3
"""
Self-fencing watchdog for a single-holder service (a DB primary): demote the
local server when this node cannot confirm, within a bound, that it holds the
service's Consul lock. Installed on every DB candidate by the failover
formula (``failover.watchdog``); Patroni's leader does the same when it cannot
renew its leader key.

    fence_watchdog.py --consul http://127.0.0.1:8500 --key locks/db/prod.gg.mydc1/leader \\
        --me db01.prod.gg.mydc1.example.com --fence-after 2 --interval 0.25 --timeout 0.5 \\
        --demote 'pg_ctl stop -m fast'   [--token-file /etc/consul.d/salt.token]

The rule. Every ``interval`` seconds the watchdog asks the local Consul agent
for the lock with ``?consistent`` (the leader answers, after checking it still
is the leader). The time it *sent* a request whose answer was "held by a
session, value = this minion ID" is ``last_ok``. The local server is demoted
(``--demote``, a command that must be idempotent and succeed on a replica)

* at once when the answer says the lock is free or held by another minion;
* when ``now - last_ok > fence_after`` and no confirmation came (the agent
  does not answer, the cluster has no leader, this node is cut off).

Why it is safe. At ``last_ok`` the session was valid. Consul invalidates it
(node failed, check critical) at some ``T >= last_ok``; nobody else can take
the lock before ``T + lock_delay``. The watchdog has demoted by ``last_ok +
fence_after + interval + timeout + demote time``. So with

    fence_after + interval + timeout + demote_timeout < lock_delay

the old primary has stopped accepting writes before anyone else may become
primary, whatever the network does. The formula checks that inequality.

Stdlib only. Prints one line per state change; never prints the token.
"""

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def holder(consul, key, token, timeout):
    """``(session, value)`` of the lock key from a consistent read; raises on no answer."""
    url = f"{consul.rstrip('/')}/v1/kv/{urllib.parse.quote(key)}?consistent"
    req = urllib.request.Request(url)
    if token:
        req.add_header("X-Consul-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            entry = json.loads(resp.read())[0]
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None, None  # an answer: nobody holds it
        raise
    import base64

    value = base64.b64decode(entry["Value"]).decode() if entry.get("Value") else None
    return entry.get("Session"), value


def demote(command, timeout):
    """Run the demote command (bounded); True if it succeeded."""
    try:
        return subprocess.run(command, shell=True, timeout=timeout, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def run(args, clock=time.monotonic, sleep=time.sleep, out=sys.stdout):
    token = None
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as handle:
            token = handle.read().strip() or None
    last_ok = clock()  # from start: a primary that never confirms is fenced too
    fenced = False
    rounds = 0
    while args.rounds is None or rounds < args.rounds:
        rounds += 1
        sent = clock()
        try:
            session, value = holder(args.consul, args.key, token, args.timeout)
            confirmed, answered = bool(session) and value == args.me, True
        except (OSError, ValueError, urllib.error.URLError):
            confirmed, answered = False, False
        if confirmed:
            last_ok = sent
            if fenced:
                print(f"lock {args.key} held by this node again", file=out, flush=True)
            fenced = False
        elif not fenced and (answered or clock() - last_ok > args.fence_after):
            why = "held elsewhere or free" if answered else f"not confirmed for {clock() - last_ok:.2f}s"
            ok = demote(args.demote, args.demote_timeout)
            print(f"fencing: lock {args.key} {why}; demote {'done' if ok else 'FAILED'}", file=out, flush=True)
            fenced = ok
        sleep(max(0.0, args.interval - (clock() - sent)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--consul", default="http://127.0.0.1:8500", help="the local agent's HTTP address")
    parser.add_argument("--key", required=True, help="the lock key")
    parser.add_argument("--me", required=True, help="this minion's ID (the lock's value while it holds it)")
    parser.add_argument("--demote", required=True, help="shell command that demotes the local server (idempotent)")
    parser.add_argument("--fence-after", type=float, default=2.0)
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--timeout", type=float, default=0.5)
    parser.add_argument("--demote-timeout", type=float, default=1.0)
    parser.add_argument("--token-file")
    parser.add_argument("--rounds", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        run(args)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
