"""
Bench section ``states``: ``state.apply`` of an SLS declaring 100 services
with two checks each (a TTL and a TCP check), run by Salt's state compiler
(``salt.state.State``, as ``state.apply`` does) against a real Consul agent.

Prints, for the second apply (nothing changed since the first):

* ``state_100_services_second_apply_writes`` — PUT/DELETE requests (must be 0:
  a compliant re-run writes nothing and so never resets a check);
* ``state_100_services_second_apply_requests`` — all HTTP requests (reads;
  goal at most 3: one snapshot of the agent's services and checks per run);
* ``state_100_services_first_apply_{requests,writes}`` — the first run: 100
  registrations plus the snapshot's reads;
* ``state_100_services_{first,second}_apply_seconds`` — wall time.

The counters are the shared client's own (``ConsulClient.stats``): the State
is built with the context the client is cached in.
"""

import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for extra in (os.path.join(REPO, "_utils"), os.path.join(REPO, "tools")):
    if extra not in sys.path:
        sys.path.insert(0, extra)

MINION_ID = "bench01.prod.gg.mydc1.example.com"
SERVICES = 100


def _sls(agent):
    tcp = f"127.0.0.1:{agent.ports['http']}"
    blocks = []
    for i in range(SERVICES):
        blocks.append(
            f"""
bench-svc-{i:03d}:
  consul.service_present:
    - name: bench-svc-{i:03d}
    - service_id: bench-svc-{i:03d}@{MINION_ID}
    - port: {20000 + i}
    - tags: [bench]
    - env_tags: true
    - checks:
      - name: alive
        ttl: 300s
        status: passing
      - name: port
        tcp: "{tcp}"
        interval: 30s
"""
        )
    return "".join(blocks)


def _opts(agent, root):
    import salt.config

    opts = salt.config.minion_config(None)
    opts.update(
        {
            "id": MINION_ID,
            "file_client": "local",
            "root_dir": root,
            "cachedir": os.path.join(root, "cache"),
            "pki_dir": os.path.join(root, "pki"),
            "sock_dir": os.path.join(root, "sock"),
            "log_file": os.path.join(root, "minion.log"),
            "file_roots": {"base": [os.path.join(root, "srv")]},
            "module_dirs": [os.path.join(REPO, "_modules")],
            "states_dirs": [os.path.join(REPO, "_states")],
            "grains_dirs": [os.path.join(REPO, "_grains")],
            "utils_dirs": [os.path.join(REPO, "_utils")],
            "consul": {"address": agent.http_addr, "retries": 0},
        }
    )
    for key in ("cachedir", "pki_dir", "sock_dir"):
        os.makedirs(opts[key], exist_ok=True)
    os.makedirs(opts["file_roots"]["base"][0], exist_ok=True)
    return opts


def _apply(opts, context, sls):
    import salt.state

    state = salt.state.State(opts, context=context)
    started = time.monotonic()
    result = state.call_template_str(sls)
    elapsed = time.monotonic() - started
    if not isinstance(result, dict):
        raise RuntimeError(f"state run failed: {result}")
    failed = [key for key, val in result.items() if val.get("result") is not True]
    if failed:
        raise RuntimeError(f"{len(failed)} state(s) failed, e.g. {result[failed[0]]['comment']}")
    changed = sum(1 for val in result.values() if val.get("changes"))
    return elapsed, changed


def run(agent):
    import salt.loader.context  # noqa: F401  (Salt's loader machinery first)

    import saltconsul_client

    root = tempfile.mkdtemp(prefix="bench-states-")
    try:
        opts = _opts(agent, root)
        context = {}
        sls = _sls(agent)
        first_s, first_changed = _apply(opts, context, sls)
        stats = saltconsul_client.get_client(opts, context).stats
        before = dict(stats)  # the first run's counts (the client is new)
        second_s, second_changed = _apply(opts, context, sls)
        after = dict(saltconsul_client.get_client(opts, context).stats)
        if first_changed != SERVICES or second_changed != 0:
            raise RuntimeError(f"unexpected changes: first {first_changed}, second {second_changed}")
        return [
            ("state_100_services_first_apply_seconds", first_s),
            ("state_100_services_second_apply_seconds", second_s),
            ("state_100_services_first_apply_requests", before["requests"]),
            ("state_100_services_first_apply_writes", before["writes"]),
            ("state_100_services_second_apply_writes", after["writes"] - before["writes"]),
            ("state_100_services_second_apply_requests", after["requests"] - before["requests"]),
        ]
    finally:
        for i in range(SERVICES):
            agent.api("PUT", f"/v1/agent/service/deregister/bench-svc-{i:03d}@{MINION_ID}")
        shutil.rmtree(root, ignore_errors=True)
