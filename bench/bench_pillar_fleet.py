"""
Bench section ``pillar_fleet``: the master compiling pillar for 1,000 minions,
our ``consul`` ext_pillar against the same data kept as SLS files.

The fleet: 20 environments (types prod, stg, dev, qa, test x groups gg, hh x
datacenters mydc1, mydc2), 50 minions each, IDs like
``web001.prod.gg.mydc1.example.com`` (the default ``fqdn`` pattern of
``saltconsul_env``). Per environment about 200 pillar keys in four layers
(global, type, group, env: 50 keys each, ten of them overridden by every later
layer; a quarter of the values JSON objects), plus 5 node keys per minion.

Both sides go through Salt's own compiler, ``salt.pillar.Pillar`` with master
opts (what the master's ``_pillar`` request runs, without the minion data
cache write that ``get_pillar`` adds for both alike), the grains a minion of
ours would send (``id``, ``env`` from ``_grains/consul_env.py``, a few core
grains):

* ours: no SLS at all (an empty ``pillar_roots``) and
  ``ext_pillar: [{consul: {layers: [<prefix>/global, <prefix>/type/{type},
  <prefix>/group/{type}.{group}, <prefix>/env/{type}.{group}.{datacenter},
  <prefix>/node/{minion_id}]}}]`` as docs/pillar.md documents;
* SLS: ``pillar_roots`` with ``global.sls``, ``type/<type>.sls``,
  ``group/<type>_<group>.sls``, ``env/<type>_<group>_<dc>.sls`` and one
  ``nodes/<id with dots as underscores>.sls`` per minion, and a top file an
  operator would write: globs on the ID pattern (``'*.prod.*'``,
  ``'*.prod.gg.*'``, ``'*.prod.gg.mydc1.*'``) and one Jinja line for the
  node file (``- nodes.{{ grains['id'] | replace('.', '_') }}``). The node
  files carry the ``consul_env`` mapping our ext_pillar adds, so both sides
  hold exactly the same pillar.

Building a ``salt.pillar.Pillar`` (loaders, file clients: ~0.2 s here) is the
same work whatever the pillar source, and 1,000 of them per side would take
most of the run: one object per side is built once and pointed at each minion
in turn (ID, grains, fresh pillar data; see ``_retarget``); the timed part is
``compile_pillar()``. So Salt's loader does not re-execute our module per
compile here, as it does in a master (where the SLS renderers are reloaded
too).

Per minion, in turn: the SLS compile, ours from a cold cache (reset once before
the first minion: the first minion of an environment fetches its five layers,
the others only their node layer) and ours again (warm: nothing changed).
Every minion's two pillars are compared; any difference fails the section.

``pillar_cache_mb``: Python memory still allocated (tracemalloc) after
compiling all 1,000 minions with an emptied cache through ``compile_pillar``
and dropping the results, i.e. what the cache holds; measured in a separate
untimed pass (the store and its HTTP clients exist before tracing starts;
what was allocated inside the unpacking of compiles' private copies is left
out, see ``_held_by_cache``).
"""

import copy
import gc
import json
import os
import random
import shutil
import sys
import tempfile
import time
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PREFIX = "bench/pfleet"
TYPES = ("prod", "stg", "dev", "qa", "test")
GROUPS = ("gg", "hh")
DATACENTERS = ("mydc1", "mydc2")
ROLES = ("web", "db", "app", "cache", "queue")
PER_ENV = 50
KEYS_PER_LAYER = 50
OVERRIDDEN = 10  # keys set in every layer: the last one must win on both sides
NODE_KEYS = 5
LAYERS = [
    f"{PREFIX}/global",
    f"{PREFIX}/type/{{type}}",
    f"{PREFIX}/group/{{type}}.{{group}}",
    f"{PREFIX}/env/{{type}}.{{group}}.{{datacenter}}",
    f"{PREFIX}/node/{{minion_id}}",
]


def environments():
    return [(t, g, d) for t in TYPES for g in GROUPS for d in DATACENTERS]


def minions():
    out = []
    for t, g, d in environments():
        for i in range(PER_ENV):
            out.append(f"{ROLES[i % len(ROLES)]}{i:03d}.{t}.{g}.{d}.example.com")
    return out


# --------------------------------------------------------------------------- data


def _value(rng, i):
    """(stored KV string, pillar value): plain strings mostly, some JSON objects."""
    kind = i % 8
    if kind < 4:
        text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz-_.") for _ in range(rng.randint(4, 60)))
        return text, text
    if kind < 6:  # numbers stay strings in decode: auto (leading zeros too)
        text = str(rng.randint(0, 10**6)).zfill(rng.choice((1, 1, 7)))
        return text, text
    obj = {
        "port": rng.randint(1024, 65535),
        "enabled": rng.random() < 0.5,
        "tags": [f"t{rng.randint(0, 99)}" for _ in range(rng.randint(1, 4))],
        "limits": {"cpu": rng.randint(1, 64), "mem": f"{rng.randint(1, 512)}Mi"},
    }
    return json.dumps(obj), obj


def _layer(rng, label):
    """``{relative key: (stored, value)}`` for one shared layer."""
    out = {}
    for i in range(KEYS_PER_LAYER):
        if i < OVERRIDDEN:
            key = f"common/key{i}"
            stored = f"{label}-{i}"
            out[key] = (stored, stored)
        else:
            out[f"app{i % 7}/{label}_key{i}"] = _value(rng, i)
    return out


def fleet_data(seed=11):
    """``{layer folder: {relative key: (stored, value)}}`` for every layer folder."""
    rng = random.Random(seed)
    data = {f"{PREFIX}/global": _layer(rng, "global")}
    for t in TYPES:
        data[f"{PREFIX}/type/{t}"] = _layer(rng, f"type_{t}")
    for t in TYPES:
        for g in GROUPS:
            data[f"{PREFIX}/group/{t}.{g}"] = _layer(rng, f"group_{t}_{g}")
    for t, g, d in environments():
        data[f"{PREFIX}/env/{t}.{g}.{d}"] = _layer(rng, f"env_{t}_{g}_{d}")
    for minion in minions():
        values = [str(rng.randint(1, 1000)) for _ in range(NODE_KEYS)]
        data[f"{PREFIX}/node/{minion}"] = {f"node/setting{i}": (v, v) for i, v in enumerate(values)}
    return data


def _nested(flat):
    tree = {}
    for key, (_, value) in flat.items():
        node = tree
        parts = key.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = copy.deepcopy(value)
    return tree


def seed_consul(agent, data):
    """Write every layer's keys (``bench_pillar.seed``: transactions of 64 sets)."""
    import bench_pillar

    flat = {f"{folder}/{key}": stored for folder, keys in data.items() for key, (stored, _) in keys.items()}
    bench_pillar.seed(agent, flat)
    return len(flat)


def write_sls(root, data, env_of):
    """The same data as SLS files and a top file; see the module docstring."""
    import salt.utils.yaml

    def dump(path, tree):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            salt.utils.yaml.safe_dump(tree, fh, default_flow_style=False)

    dump(os.path.join(root, "global.sls"), _nested(data[f"{PREFIX}/global"]))
    top = ["base:", "  '*':", "    - global"]
    for t in TYPES:
        dump(os.path.join(root, "type", f"{t}.sls"), _nested(data[f"{PREFIX}/type/{t}"]))
        top += [f"  '*.{t}.*':", f"    - type.{t}"]
    for t in TYPES:
        for g in GROUPS:
            dump(os.path.join(root, "group", f"{t}_{g}.sls"), _nested(data[f"{PREFIX}/group/{t}.{g}"]))
            top += [f"  '*.{t}.{g}.*':", f"    - group.{t}_{g}"]
    for t, g, d in environments():
        dump(os.path.join(root, "env", f"{t}_{g}_{d}.sls"), _nested(data[f"{PREFIX}/env/{t}.{g}.{d}"]))
        top += [f"  '*.{t}.{g}.{d}.*':", f"    - env.{t}_{g}_{d}"]
    for minion in minions():
        tree = _nested(data[f"{PREFIX}/node/{minion}"])
        tree["consul_env"] = env_of(minion)
        dump(os.path.join(root, "nodes", minion.replace(".", "_") + ".sls"), tree)
    top += ["  '*.example.com':", "    - nodes.{{ grains['id'] | replace('.', '_') }}"]
    with open(os.path.join(root, "top.sls"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(top) + "\n")


# --------------------------------------------------------------------------- Salt


def master_opts(workdir, agent, pillar_root, ext_pillar):
    import salt.config

    opts = salt.config.master_config(os.path.join(workdir, "master"))
    opts.update(
        {
            "root_dir": workdir,
            "cachedir": os.path.join(workdir, "cache"),
            "pki_dir": os.path.join(workdir, "pki"),
            "file_roots": {"base": [os.path.join(workdir, "files")]},
            "pillar_roots": {"base": [pillar_root]},
            "pillar_dirs": [os.path.join(REPO, "_pillar")],
            "utils_dirs": [os.path.join(REPO, "_utils")],
            "ext_pillar": ext_pillar,
            "consul": {"address": agent.http_addr, "retries": 0},
        }
    )
    return opts


def grains_of(minion):
    import saltconsul_env

    host, _, domain = minion.partition(".")
    return {
        "id": minion,
        "env": saltconsul_env.parse(minion, {}),
        "fqdn": minion,
        "host": host,
        "domain": domain,
        "os": "Debian",
        "os_family": "Debian",
        "osmajorrelease": 12,
        "kernel": "Linux",
    }


def _retarget(pillar, minion, grains):
    """Point one built ``salt.pillar.Pillar`` at ``minion`` (what its __init__ sets per minion)."""
    pillar.minion_id = minion
    pillar.opts["id"] = minion
    pillar.opts["minion_id"] = minion
    # The loaders hold the grains dict itself: refill it rather than replace it.
    pillar.opts["grains"].clear()
    pillar.opts["grains"].update(grains)
    pillar.pillar_data = {}
    pillar._update_loader_packs()  # pylint: disable=protected-access


def _compile(pillar, minion, grains):
    _retarget(pillar, minion, grains)
    start = time.perf_counter()
    result = pillar.compile_pillar()
    return time.perf_counter() - start, result


def _plain(obj):
    """Salt's YAML loader gives dict subclasses and ordered maps: compare as plain data."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def _held_by_cache(snapshot, cache_module):
    """
    Bytes still allocated, leaving out what was allocated while unpacking a
    layer's private copy for a compile (``_loads``): those copies are the
    compile's and are gone; what tracemalloc still charges there is the
    interpreter's interned-string table, which msgpack grows (it interns map
    keys) and which is not the cache's.
    """
    import inspect

    lines, start = inspect.getsourcelines(cache_module._loads)  # pylint: disable=protected-access
    path = inspect.getsourcefile(cache_module._loads)  # pylint: disable=protected-access
    end = start + len(lines)
    total = 0
    for trace in snapshot.traces:
        if not any(frame.filename == path and start <= frame.lineno < end for frame in trace.traceback):
            total += trace.size
    return total


def run(agent):
    import salt.pillar

    import saltconsul_pillar
    import saltconsul_pillarcache

    results = []
    workdir = tempfile.mkdtemp(prefix="bench-pillar-fleet-")
    try:
        data = fleet_data()
        keys = seed_consul(agent, data)
        names = minions()
        results.append(("pillar_1000_minions_kv_keys", keys))

        sls_root = os.path.join(workdir, "sls")
        empty_root = os.path.join(workdir, "empty")
        os.makedirs(empty_root)
        ext = [{"consul": {"layers": list(LAYERS)}}]
        ours_opts = master_opts(workdir, agent, empty_root, ext)
        sls_opts = master_opts(workdir, agent, sls_root, [])
        write_sls(sls_root, data, lambda m: dict(saltconsul_pillar.environment(m, ours_opts)))

        first = names[0]
        saltconsul_pillarcache.reset()
        shutil.rmtree(os.path.join(ours_opts["cachedir"], "consul_pillar"), ignore_errors=True)
        ours = salt.pillar.Pillar(ours_opts, dict(grains_of(first)), first, "base")
        sls = salt.pillar.Pillar(sls_opts, dict(grains_of(first)), first, "base")

        sls_s = cold_s = warm_s = 0.0
        for minion in names:
            grains = grains_of(minion)
            took, expected = _compile(sls, minion, grains)
            sls_s += took
            took, got_cold = _compile(ours, minion, grains)
            cold_s += took
            took, got = _compile(ours, minion, grains)
            warm_s += took
            expected = _plain(expected)
            for label, pillar in (("cold", got_cold), ("warm", got)):
                if _plain(pillar) != expected:
                    raise RuntimeError(f"{minion}: our pillar ({label}) differs from the SLS pillar")
            if expected.get("common", {}).get("key0") != f"env_{'_'.join(minion.split('.')[1:4])}-0":
                raise RuntimeError(f"{minion}: the SLS pillar is not this minion's environment's")
            if expected.get("consul_env", {}).get("minion_id") != minion:
                raise RuntimeError(f"{minion}: the SLS pillar is not this minion's")
        store = next(iter(saltconsul_pillarcache._STORES.values()))  # pylint: disable=protected-access
        stats = store.stats()

        results += [
            ("pillar_1000_minions_sls_seconds", sls_s),
            ("pillar_1000_minions_ours_cold_seconds", cold_s),
            ("pillar_1000_minions_ours_seconds", warm_s),
            ("pillar_1000_minions_ours_kv_requests", stats["requests"]),
            ("pillar_1000_minions_vs_sls_pillar", warm_s / sls_s),
            ("pillar_1000_minions_cold_vs_sls_pillar", cold_s / sls_s),
        ]

        # ---- memory held by the cache (separate, untimed pass)
        import importlib.util

        spec = importlib.util.spec_from_file_location("saltconsul_bench_pillar_fleet", os.path.join(REPO, "_pillar", "consul.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        kwargs = dict(ext[0]["consul"])
        saltconsul_pillarcache.reset()
        shutil.rmtree(os.path.join(ours_opts["cachedir"], "consul_pillar"), ignore_errors=True)
        # The store, its HTTP clients and the watch exist before tracing
        # starts: what is measured is the layers the cache keeps.
        module.compile_pillar(first, ours_opts, **kwargs)
        store = next(iter(saltconsul_pillarcache._STORES.values()))  # pylint: disable=protected-access
        store.layers.clear()
        shutil.rmtree(os.path.join(ours_opts["cachedir"], "consul_pillar"), ignore_errors=True)
        gc.collect()
        tracemalloc.start(32)
        for minion in names:
            module.compile_pillar(minion, ours_opts, **kwargs)
        gc.collect()
        held = _held_by_cache(tracemalloc.take_snapshot(), saltconsul_pillarcache)
        tracemalloc.stop()
        results.append(("pillar_cache_mb", held / 2**20))
    finally:
        saltconsul_pillarcache.reset()
        shutil.rmtree(workdir, ignore_errors=True)
        agent.api("DELETE", f"/v1/kv/{PREFIX}?recurse")
    return results


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run through bench/run.py: python bench/run.py pillar_fleet")
