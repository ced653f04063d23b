"""
Bench section ``pillar``: the ``consul`` ext_pillar against a real Consul.

1. A 10,000-key tree (about 2 MB: short strings, numbers, JSON objects, YAML
   lists) under one layer. Times (median of several runs):

   * ``floor``: one recursive ``GET /v1/kv/<root>/?recurse`` + JSON parse +
     base64 decode + nested dict, with the same HTTP client;
   * ours, cold: the layer cache emptied (memory and disk) before each compile,
     so each compile fetches (one request), decodes, builds and caches the tree;
   * ours, warm: nothing changed since the last compile;
   * saltext-consul 1.1.0's ``consul`` ext_pillar on the same tree, run in a
     subprocess from ``.bench-venv-saltext/`` (created here with pip, pinned).

   ``pillar_10k_vs_floor`` is the median over 5 rounds of (ours cold / floor),
   each round timing the two alternately (5 runs each, their medians), so a
   busy moment of the machine weighs on both sides of one round's ratio; the
   rounds are printed too (``pillar_10k_vs_floor_rounds``).

2. 100 minions of one environment compiling pillar with five layers (global,
   type, group, env, node): ours from an empty cache, then again with nothing
   changed; saltext-consul with one ext_pillar entry per layer (it has no
   cache). Times and the HTTP requests each made.
"""

import base64
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SALTEXT_VENV = os.path.join(REPO, ".bench-venv-saltext")
SALTEXT_PINS = ["saltext-consul==1.1.0", "python-consul==1.1.0"]
BIG_ROOT = "bench/pillar/big"
FLEET = "bench/pillar/fleet"
BIG_KEYS = 10_000
# pillar_10k_vs_floor: the median over ROUNDS of (our cold compile / the floor),
# each side the median of RUNS_PER_ROUND runs alternating with the other.
ROUNDS = 5
RUNS_PER_ROUND = 5
MINIONS = [f"web{i:03d}.prod.gg.mydc1.example.com" for i in range(100)]
FLEET_LAYERS = [
    f"{FLEET}/global",
    f"{FLEET}/type/{{type}}",
    f"{FLEET}/group/{{type}}.{{group}}",
    f"{FLEET}/env/{{type}}.{{group}}.{{datacenter}}",
    f"{FLEET}/node/{{minion_id}}",
]
# The same layers for saltext-consul (it cannot derive an environment from the ID).
SALTEXT_FLEET_ROOTS = [
    f"{FLEET}/global",
    f"{FLEET}/type/prod",
    f"{FLEET}/group/prod.gg",
    f"{FLEET}/env/prod.gg.mydc1",
    f"{FLEET}/node/%(minion_id)s",
]


# --------------------------------------------------------------------------- data


def _value(rng, i):
    kind = i % 20
    if kind < 8:  # short and medium strings
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz-_.") for _ in range(rng.randint(8, 240)))
    if kind < 12:  # numbers, some with leading zeros
        return str(rng.randint(0, 10**9)).zfill(rng.choice((1, 1, 6)))
    if kind < 17:  # JSON objects
        obj = {
            "name": f"svc{i}",
            "port": rng.randint(1024, 65535),
            "enabled": rng.random() < 0.5,
            "tags": [f"t{rng.randint(0, 99)}" for _ in range(rng.randint(2, 8))],
            "limits": {"cpu": rng.randint(1, 64), "mem": f"{rng.randint(1, 512)}Mi"},
            "note": "".join(rng.choice("abcdefghij ") for _ in range(rng.randint(100, 400))),
        }
        return json.dumps(obj)
    # YAML lists
    return "\n".join(f"- item{rng.randint(0, 9999)}" for _ in range(rng.randint(5, 40)))


def big_tree(count=BIG_KEYS, seed=42):
    """``{key: value}``: ``count`` keys nested 2-4 levels under BIG_ROOT."""
    rng = random.Random(seed)
    data = {}
    for i in range(count):
        depth = 2 + i % 3
        parts = [f"app{i % 37}", f"section{i % 11}", f"group{i % 7}"][: depth - 1]
        data[f"{BIG_ROOT}/{'/'.join(parts)}/key{i}"] = _value(rng, i)
    return data


def fleet_tree(seed=7):
    rng = random.Random(seed)
    data = {}
    for layer in ("global", "type/prod", "group/prod.gg", "env/prod.gg.mydc1"):
        for i in range(150):
            data[f"{FLEET}/{layer}/app{i % 10}/key{i}"] = _value(rng, i)
    for minion in MINIONS:
        for i in range(5):
            data[f"{FLEET}/node/{minion}/app{i}/weight"] = str(rng.randint(1, 100))
    return data


def seed(agent, data):
    """Write ``data`` with transactions of 64 sets (Consul's limit per txn)."""
    items = list(data.items())
    for start in range(0, len(items), 64):
        ops = [
            {"KV": {"Verb": "set", "Key": k, "Value": base64.b64encode(v.encode()).decode()}}
            for k, v in items[start : start + 64]
        ]
        status, raw = agent.api("PUT", "/v1/txn", json.dumps(ops).encode())
        if status != 200:
            raise RuntimeError(f"seeding failed: {status} {raw[:200]!r}")


# --------------------------------------------------------------------------- ours and the floor


def _pillar_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("saltconsul_bench_pillar", os.path.join(REPO, "_pillar", "consul.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def floor_once(client, root):
    """One recursive GET + JSON + base64 + nested dict: the least any KV pillar must do."""
    resp = client.request("GET", f"/v1/kv/{root}/", params={"recurse": True})
    cut = len(root) + 1
    tree = {}
    for entry in json.loads(resp.content):
        value = entry["Value"]
        value = base64.b64decode(value).decode("utf-8") if value is not None else ""
        parts = entry["Key"][cut:].split("/")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def _median_time(func, runs):
    times = []
    result = None
    for _ in range(runs):
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


# --------------------------------------------------------------------------- saltext-consul


def _saltext_python():
    python = os.path.join(SALTEXT_VENV, "bin", "python")
    check = [python, "-c", "import importlib.metadata as m; print(m.version('saltext.consul'))"]
    if os.path.exists(python):
        done = subprocess.run(check, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode == 0 and done.stdout.strip() == "1.1.0":
            return python
    pins = ["-r", os.path.join(REPO, "requirements", "salt3008-py3.11.txt"), *SALTEXT_PINS]
    uv = os.path.join(REPO, ".venv-uv", "bin", "uv")  # the Makefile's, when there (much faster than pip)
    if os.access(uv, os.X_OK):
        steps = [
            [uv, "venv", "-q", "--allow-existing", "--python", sys.executable, SALTEXT_VENV],
            [uv, "pip", "install", "-q", "--compile-bytecode", "--python", python, *pins],
        ]
    else:
        steps = [
            [sys.executable, "-m", "venv", SALTEXT_VENV],
            [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins],
        ]
    for step in steps:
        subprocess.run(step, check=True, timeout=1800, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return python


def run_saltext(python, address, minions, roots, runs):
    """Time saltext-consul's ext_pillar in its own venv; returns its JSON report."""
    job = {"address": address, "minions": minions, "roots": roots, "runs": runs}
    done = subprocess.run(
        [python, os.path.join(HERE, "saltext_pillar_timing.py"), json.dumps(job)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"saltext-consul run failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the section


def run(agent):
    import saltconsul_client
    import saltconsul_pillarcache

    results = []
    pillar = _pillar_module()
    big = big_tree()
    seed(agent, big)
    results.append(("pillar_10k_keys", len(big)))
    results.append(("pillar_10k_bytes", sum(len(v) for v in big.values())))

    workdir = tempfile.mkdtemp(prefix="bench-pillar-")
    try:
        opts = {"consul": {"address": agent.http_addr, "retries": 0}, "cachedir": workdir}
        client = saltconsul_client.get_client(opts, {})
        floor_once(client, BIG_ROOT)  # warm the connection and Consul
        floor_tree = floor_once(client, BIG_ROOT)

        # env_key off: the figures (and the completeness check) are about the KV tree alone.
        conf = {"layers": [BIG_ROOT], "watch_prefix": BIG_ROOT, "env_key": False}
        minion = "bench01.prod.gg.mydc1.example.com"
        saltconsul_pillarcache.reset()
        ours = pillar.compile_pillar(minion, opts, **conf)  # arms the watch, connects
        store = next(iter(saltconsul_pillarcache._STORES.values()))  # pylint: disable=protected-access
        if len(_flatten(ours)) != len(big) or len(_flatten(floor_tree)) != len(big):
            raise RuntimeError("the bench tree did not come back whole")
        cache_dir = os.path.join(workdir, "consul_pillar")

        def cold():
            store.layers.clear()
            shutil.rmtree(cache_dir, ignore_errors=True)
            return pillar.compile_pillar(minion, opts, **conf)

        # Rounds: in each, the floor and our cold compile run back to back
        # (interleaved, median of their own runs), so a busy moment of the
        # machine hits both sides of that round's ratio; the figure is the
        # median ratio over the rounds.
        ratios, floor_times, cold_times = [], [], []
        for _ in range(ROUNDS):
            round_floor, round_cold = [], []
            for _ in range(RUNS_PER_ROUND):
                round_floor.append(_median_time(lambda: floor_once(client, BIG_ROOT), 1)[0])
                round_cold.append(_median_time(cold, 1)[0])
            floor_times.append(statistics.median(round_floor))
            cold_times.append(statistics.median(round_cold))
            ratios.append(cold_times[-1] / floor_times[-1])
        floor_s = statistics.median(floor_times)
        ours_cold_s = statistics.median(cold_times)
        ours_warm_s, _ = _median_time(lambda: pillar.compile_pillar(minion, opts, **conf), 7)
        results += [
            ("pillar_10k_floor_seconds", floor_s),
            ("pillar_10k_ours_seconds", ours_cold_s),
            ("pillar_10k_ours_warm_seconds", ours_warm_s),
            ("pillar_10k_vs_floor", statistics.median(ratios)),
            ("pillar_10k_vs_floor_rounds", " ".join(f"{r:.2f}" for r in ratios)),
            ("pillar_10k_warm_vs_floor", ours_warm_s / floor_s),
        ]

        saltext = None
        try:
            saltext = _saltext_python()
        except (subprocess.SubprocessError, OSError) as err:
            results.append(("pillar_saltext_consul_error", f"cannot install saltext-consul: {err}"))
        if saltext:
            report = run_saltext(saltext, agent.http_addr, [minion], [BIG_ROOT], 3)
            if report["keys"] != len(big):
                raise RuntimeError(f"saltext-consul returned {report['keys']} keys, not {len(big)}")
            saltext_s = statistics.median(report["times"])
            results += [
                ("pillar_10k_saltext_consul_seconds", saltext_s),
                ("pillar_10k_saltext_consul_vs_floor", saltext_s / floor_s),
                ("pillar_10k_vs_saltext_consul", ours_cold_s / saltext_s),
                ("pillar_10k_warm_vs_saltext_consul", ours_warm_s / saltext_s),
            ]

        # ---- 100 minions of one environment
        seed(agent, fleet_tree())
        saltconsul_pillarcache.reset()
        shutil.rmtree(cache_dir, ignore_errors=True)
        conf = {"layers": FLEET_LAYERS}
        start = time.perf_counter()
        for name in MINIONS:
            pillar.compile_pillar(name, opts, **conf)
        cold_s = time.perf_counter() - start
        store = next(iter(saltconsul_pillarcache._STORES.values()))  # pylint: disable=protected-access
        cold_stats = store.stats()
        start = time.perf_counter()
        for name in MINIONS:
            pillar.compile_pillar(name, opts, **conf)
        warm_s = time.perf_counter() - start
        warm_stats = store.stats()
        warm_requests = warm_stats["requests"] - cold_stats["requests"]
        warm_index = warm_stats["watch_requests"] - cold_stats["watch_requests"]
        results += [
            ("pillar_100_minions_ours_cold_seconds", cold_s),
            ("pillar_100_minions_ours_cold_kv_requests", cold_stats["requests"] + cold_stats["watch_requests"]),
            ("pillar_100_minions_ours_seconds", warm_s),
            # compiles made no request; the watch thread's blocking queries that
            # completed during the round (normally none) are counted separately
            ("pillar_100_minions_ours_kv_requests", warm_requests),
            ("pillar_100_minions_ours_watch_requests", warm_index),
            ("pillar_100_minions_ours_kv_requests_per_env", warm_requests / 1),
        ]
        if saltext:
            report = run_saltext(saltext, agent.http_addr, MINIONS, SALTEXT_FLEET_ROOTS, 1)
            saltext_s = report["times"][0]
            results += [
                ("pillar_100_minions_saltext_consul_seconds", saltext_s),
                ("pillar_100_minions_saltext_consul_kv_requests", report["requests"]),
                ("pillar_100_minions_vs_saltext_consul", warm_s / saltext_s),
                ("pillar_100_minions_cold_vs_saltext_consul", cold_s / saltext_s),
            ]
    finally:
        saltconsul_pillarcache.reset()
        shutil.rmtree(workdir, ignore_errors=True)
        agent.api("DELETE", "/v1/kv/bench/pillar?recurse")
    return results


def _flatten(tree, out=None):
    out = [] if out is None else out
    for value in tree.values():
        if isinstance(value, dict) and not value.get("name", "").startswith("svc"):
            _flatten(value, out)
        else:
            out.append(value)
    return out
