"""
Run saltext-consul 1.1.0's ``consul`` ext_pillar and print its timing as JSON.

Runs inside ``.bench-venv-saltext/`` (see bench_pillar.py), never in the
project venv. Argument: a JSON job ``{"address", "minions", "roots", "runs"}``;
``roots`` are saltext ``root=`` values (``%(minion_id)s`` allowed), one
ext_pillar entry each, merged in order as Salt would. Prints one JSON line:
``{"times": [seconds per run over all minions], "requests": n, "keys": n}``.
"""

import json
import sys
import time
import urllib.parse

import requests
import salt.utils.dictupdate
from saltext.consul.pillar import consul_pillar

REQUESTS = {"count": 0}
_send = requests.Session.send


def _counting_send(self, *args, **kwargs):
    REQUESTS["count"] += 1
    return _send(self, *args, **kwargs)


requests.Session.send = _counting_send


def _leaves(tree):
    count = 0
    for value in tree.values():
        if isinstance(value, dict) and not str(value.get("name", "")).startswith("svc"):
            count += _leaves(value)
        else:
            count += 1
    return count


def main():
    job = json.loads(sys.argv[1])
    url = urllib.parse.urlsplit(job["address"])
    consul_pillar.__opts__ = {
        "bench_consul": {"consul.host": url.hostname, "consul.port": url.port, "consul.scheme": url.scheme}
    }
    consul_pillar.__salt__ = {"grains.get": lambda key, default=None: default}
    times = []
    keys = 0
    for _ in range(job["runs"]):
        REQUESTS["count"] = 0
        start = time.perf_counter()
        for minion in job["minions"]:
            pillar = {}
            for root in job["roots"]:
                ext = consul_pillar.ext_pillar(minion, pillar, f"bench_consul root={root}")
                pillar = salt.utils.dictupdate.merge(pillar, ext, strategy="recurse")
            keys = _leaves(pillar)
        times.append(time.perf_counter() - start)
    print(json.dumps({"times": times, "requests": REQUESTS["count"], "keys": keys}))


if __name__ == "__main__":
    main()
