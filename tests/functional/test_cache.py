"""
Cache ``consul`` through Salt's own cache layer (``salt.cache.factory`` ->
``salt.loader.cache``) against real Consul agents: layout, one request per
operation, timestamps in the same entry, expiry, errors without secrets, and
loading from a synced ``extension_modules`` dir with no utils on ``sys.path``.
"""

import base64
import copy
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest
import salt.cache
import salt.payload
import salt.version
from salt.exceptions import SaltCacheError

import saltconsul_client
from conftest import REPO


def cache_opts(functional_minion, node_address, **cache_section):
    opts = copy.deepcopy(functional_minion.config)
    opts["cache"] = "consul"
    opts["cache_dirs"] = [str(REPO / "_cache")]
    opts["consul"] = {"address": node_address, "retries": 0, "cache": cache_section}
    return opts


@pytest.fixture
def prefix(consul_agent):
    prefix = f"cachetest-{uuid.uuid4().hex[:6]}"
    yield prefix
    consul_agent.api("DELETE", f"/v1/kv/{prefix}?recurse")


@pytest.fixture
def cache(functional_minion, consul_agent, prefix):
    return salt.cache.factory(cache_opts(functional_minion, consul_agent.http_addr, prefix=prefix))


def entry(agent, key):
    status, body = agent.api("GET", f"/v1/kv/{key}")
    return json.loads(body)[0] if status == 200 else None


def list_all(cache, bank, include_data=False):
    """``Cache.list_all`` (Salt 3008); the driver function itself on Salt 3006."""
    if hasattr(cache, "list_all"):
        return cache.list_all(bank, include_data=include_data)
    return cache.modules["consul.list_all"](bank, include_data=include_data)


SALT_3008 = salt.version.__saltstack_version__.info >= (3008,)


def requests_to(address):
    """Requests the shared client for ``address`` has sent so far."""
    clients = saltconsul_client.PROCESS_CONTEXT.get(saltconsul_client.CONTEXT_KEY, {})
    return sum(c.stats["requests"] for c in clients.values() if c.address == address)


def test_store_fetch_layout_and_timestamp(cache, consul_agent, prefix):
    grains = {"id": "web01", "os": "Debian", "num_cpus": 4, "roles": ["web"], "blob": b"\x00\xff"}
    before = int(time.time())
    cache.store("grains", "web01", grains)
    raw = entry(consul_agent, f"{prefix}/grains/web01")
    # Salt's own encoding (msgpack), the store time in Flags: one key, not two
    assert salt.payload.loads(base64.b64decode(raw["Value"])) == grains
    assert before <= raw["Flags"] <= int(time.time())
    assert consul_agent.api("GET", f"/v1/kv/{prefix}/grains/web01.tstamp")[0] == 404
    assert cache.fetch("grains", "web01") == grains
    assert cache.updated("grains", "web01") == raw["Flags"]


def test_missing(cache):
    assert cache.fetch("grains", "nobody") == {}
    assert cache.updated("grains", "nobody") is None
    assert cache.contains("grains", "nobody") is False
    assert cache.contains("nobank") is False
    assert list(cache.list("nobank")) == []


def test_one_request_each(cache, consul_agent):
    cache.store("mine", "web01", {"network.ip_addrs": ["10.0.0.1"]})
    address = consul_agent.http_addr
    for call in (
        lambda: cache.store("mine", "web01", {"network.ip_addrs": ["10.0.0.2"]}),
        lambda: cache.fetch("mine", "web01"),
        lambda: cache.updated("mine", "web01"),
        lambda: cache.list("mine"),
        lambda: cache.contains("mine", "web01"),
        lambda: cache.contains("mine"),
        lambda: list_all(cache, "mine", include_data=True),
        lambda: cache.flush("mine", "web01"),
    ):
        before = requests_to(address)
        call()
        assert requests_to(address) - before == 1


def test_list_contains_and_siblings(cache, consul_agent, prefix):
    cache.store("grains", "web10", {"id": "web10"})
    cache.store("grains", "web2", {"id": "web2"})
    cache.store("grains2", "other", {"id": "other"})
    cache.store("minions/web10", "data", {"x": 1})
    assert sorted(cache.list("grains")) == ["web10", "web2"]
    assert cache.list("minions") == ["web10"]
    # a prefix of an existing key is not contained
    assert cache.contains("grains", "web1") is False
    assert cache.contains("grains", "web10") is True
    assert cache.contains("grains") is True
    assert list_all(cache, "grains", include_data=True) == {"web10": {"id": "web10"}, "web2": {"id": "web2"}}
    assert list_all(cache, "grains") == {"web10": None, "web2": None}

    cache.flush("grains", "web2")
    assert consul_agent.api("GET", f"/v1/kv/{prefix}/grains/web2")[0] == 404
    assert entry(consul_agent, f"{prefix}/grains/web10") is not None
    cache.flush("grains")
    assert consul_agent.api("GET", f"/v1/kv/{prefix}/grains/web10")[0] == 404
    # the sibling bank sharing the name's start survives a bank flush
    assert cache.fetch("grains2", "other") == {"id": "other"}


@pytest.mark.skipif(not SALT_3008, reason="store(expires=) and clean_expired are Salt 3008's cache API")
def test_expires_and_clean_expired(cache, consul_agent, prefix):
    cache.store("tokens", "short", {"name": "a"}, expires=1)
    cache.store("tokens", "long", {"name": "b"}, expires=3600)
    cache.store("tokens", "plain", {"name": "c"})
    assert cache.fetch("tokens", "short") == {"name": "a"}
    time.sleep(2.1)
    assert cache.fetch("tokens", "short") == {}
    assert cache.fetch("tokens", "long") == {"name": "b"}
    address = consul_agent.http_addr
    before = requests_to(address)
    cache.clean_expired("tokens")
    assert requests_to(address) - before == 2  # one read, one delete
    assert consul_agent.api("GET", f"/v1/kv/{prefix}/tokens/short")[0] == 404
    assert sorted(cache.list("tokens")) == ["long", "plain"]


def test_json_serializer(functional_minion, consul_agent, prefix):
    cache = salt.cache.factory(
        cache_opts(functional_minion, consul_agent.http_addr, prefix=prefix, serializer="json")
    )
    cache.store("grains", "web01", {"os": "Debian", "num_cpus": 4})
    raw = entry(consul_agent, f"{prefix}/grains/web01")
    assert json.loads(base64.b64decode(raw["Value"])) == {"os": "Debian", "num_cpus": 4}
    assert cache.fetch("grains", "web01") == {"os": "Debian", "num_cpus": 4}


def test_bad_option_and_bad_key(functional_minion, consul_agent, cache):
    bad = salt.cache.factory(cache_opts(functional_minion, consul_agent.http_addr, prefx="x"))
    with pytest.raises(SaltCacheError, match="prefx"):
        bad.fetch("grains", "web01")
    with pytest.raises(SaltCacheError, match=r"\.\."):
        cache.store("grains", "../../escape", {"a": 1})


def test_acl_denied_no_token_in_error(functional_minion, consul_acl_agent, tmp_path, caplog):
    wrong = str(uuid.uuid4())
    token_file = tmp_path / "cache.token"
    token_file.write_text(wrong)
    cache = salt.cache.factory(
        cache_opts(functional_minion, consul_acl_agent.http_addr, prefix="aclcache", token_file=str(token_file))
    )
    for call in (lambda: cache.store("grains", "web01", {"a": "payload-secret"}), lambda: cache.fetch("grains", "web01")):
        with pytest.raises(SaltCacheError, match="permission denied|ACL not found") as err:
            call()
        assert wrong not in str(err.value) and "payload-secret" not in str(err.value)
    assert wrong not in caplog.text
    assert consul_acl_agent.api("GET", "/v1/kv/aclcache/grains/web01")[0] == 404

    # with a token that may write the prefix, it works
    policy = consul_acl_agent.api_json(
        "PUT", "/v1/acl/policy", json.dumps({"Name": f"cache-{wrong[:8]}", "Rules": 'key_prefix "aclcache/" { policy = "write" }'}).encode()
    )
    token = consul_acl_agent.api_json(
        "PUT", "/v1/acl/token", json.dumps({"Policies": [{"ID": policy["ID"]}]}).encode()
    )
    try:
        token_file.write_text(token["SecretID"])
        good = salt.cache.factory(
            cache_opts(functional_minion, consul_acl_agent.http_addr, prefix="aclcache", token_file=str(token_file))
        )
        good.store("grains", "web01", {"a": 1})
        assert good.fetch("grains", "web01") == {"a": 1}
    finally:
        consul_acl_agent.api("DELETE", "/v1/kv/aclcache?recurse")
        consul_acl_agent.api("DELETE", f"/v1/acl/token/{token['AccessorID']}")
        consul_acl_agent.api("DELETE", f"/v1/acl/policy/{policy['ID']}")


def test_loads_from_synced_extension_modules(tmp_path, consul_agent, prefix):
    """As after ``salt-run saltutil.sync_cache``: no cache_dirs, utils not on sys.path."""
    extmods = tmp_path / "extmods"
    shutil.copytree(REPO / "_cache", extmods / "cache")
    shutil.copytree(REPO / "_utils", extmods / "utils")
    script = (
        "import json, sys, salt.cache, salt.config\n"
        "opts = salt.config.master_config(None)\n"
        "opts.update(json.loads(sys.argv[1]))\n"
        "c = salt.cache.factory(opts)\n"
        "c.store('grains', 'synced', {'ok': True})\n"
        "print(json.dumps([c.fetch('grains', 'synced'), c.list('grains'),"
        " 'saltconsul_client' in sys.modules]))\n"
    )
    opts = {
        "cache": "consul",
        "extension_modules": str(extmods),
        "cachedir": str(tmp_path / "cachedir"),
        "consul": {"address": consul_agent.http_addr, "cache": {"prefix": prefix}},
    }
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(opts)],
        capture_output=True, text=True, timeout=120, check=False, env=env, cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [{"ok": True}, ["synced"], True]
    assert entry(consul_agent, f"{prefix}/grains/synced") is not None


def walk(cache, bank):
    return {name: cache.fetch(bank, name) for name in cache.list(bank)}


@pytest.mark.parametrize("window, expected", [(None, 3), (0, 41)])
def test_bank_walk_request_count(functional_minion, consul_agent, prefix, window, expected):
    section = {"prefix": prefix}
    if window is not None:
        section["readahead_window"] = window
    cache = salt.cache.factory(cache_opts(functional_minion, consul_agent.http_addr, **section))
    data = {f"m{i:02d}": {"id": f"m{i:02d}", "role": "web" if i % 2 else "db"} for i in range(40)}
    for name, grains in data.items():
        cache.store("grains", name, grains)
    before = requests_to(consul_agent.http_addr)
    assert walk(cache, "grains") == data
    # list + one fetch + (read-ahead on) one read of the whole bank
    assert requests_to(consul_agent.http_addr) - before == expected


def test_read_ahead_copy_is_short_lived_and_dropped_on_write(functional_minion, consul_agent, prefix):
    cache = salt.cache.factory(
        cache_opts(functional_minion, consul_agent.http_addr, prefix=prefix, readahead_window=0.5)
    )
    for name in ("a", "b", "c"):
        cache.store("grains", name, {"v": name})
    assert walk(cache, "grains") == {"a": {"v": "a"}, "b": {"v": "b"}, "c": {"v": "c"}}
    # another master rewrites "c"; a key deleted meanwhile is gone from the copy too
    consul_agent.api("PUT", f"/v1/kv/{prefix}/grains/c", salt.payload.dumps({"v": "c2"}))
    time.sleep(0.7)  # the copy expires unused
    assert cache.fetch("grains", "c") == {"v": "c2"}
    # a write by this process ends the copy at once
    assert walk(cache, "grains")["c"] == {"v": "c2"}
    cache.store("grains", "a", {"v": "a2"})
    assert cache.fetch("grains", "a") == {"v": "a2"}
    names = cache.list("grains")
    consul_agent.api("DELETE", f"/v1/kv/{prefix}/grains/b")
    assert {n: cache.fetch("grains", n) for n in names} == {"a": {"v": "a2"}, "b": {}, "c": {"v": "c2"}}


def test_pip_install_entry_point_serves_cache_and_sdb(tmp_path, consul_agent, prefix):
    """`pip install .`: Salt finds the cache and sdb drivers through the entry point alone."""
    src = tmp_path / "src"
    shutil.copytree(
        REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "tools", "tests", "bench", "__pycache__", ".bench-venv*")
    )
    site_prefix = tmp_path / "prefix"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--prefix", str(site_prefix), str(src)],
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    site = site_prefix / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    script = (
        "import json, sys, salt.cache, salt.config, salt.loader, salt.utils.sdb\n"
        "opts = salt.config.master_config(None)\n"
        "opts.update(json.loads(sys.argv[1]))\n"
        "c = salt.cache.factory(opts)\n"
        "c.store('grains', 'piped', {'ok': 1})\n"
        "path = sys.modules[c.modules['consul.fetch'].__module__].__file__\n"
        "print(json.dumps([c.fetch('grains', 'piped'), path,"
        " salt.utils.sdb.sdb_get('sdb://psdb/grains/raw', opts)]))\n"
    )
    opts = {
        "cache": "consul",
        "cachedir": str(tmp_path / "cachedir"),
        "extension_modules": str(tmp_path / "extmods"),
        "consul": {"address": consul_agent.http_addr, "cache": {"prefix": prefix}},
        "psdb": {"driver": "consul", "prefix": prefix},
    }
    consul_agent.api("PUT", f"/v1/kv/{prefix}/grains/raw", b"via-entry-point")
    env = dict({k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, PYTHONPATH=str(site))
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(opts)],
        capture_output=True, text=True, timeout=120, check=False, env=env, cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    fetched, path, sdb_value = json.loads(proc.stdout.strip().splitlines()[-1])
    assert fetched == {"ok": 1}
    assert path.startswith(str(site_prefix)) and path.endswith("site-packages/saltconsul_ext/cache/consul.py")
    assert sdb_value == "via-entry-point"


from test_tls import mtls_agent, pki  # noqa: E402,F401  (fixtures: a TLS agent that wants client certificates)


def test_tls_with_client_certificate(functional_minion, mtls_agent, pki):  # noqa: F811
    tls = {"ca_file": pki["ca_file"], "cert_file": pki["client_cert"], "key_file": pki["client_key"]}
    # TLS settings for the cache alone, in consul:cache (consul: names the plain agent)
    opts = cache_opts(functional_minion, "http://127.0.0.1:1", prefix="tlscache", address=mtls_agent.https_addr, **tls)
    cache = salt.cache.factory(opts)
    cache.store("grains", "web01", {"tls": True})
    assert cache.fetch("grains", "web01") == {"tls": True}
    status, body = mtls_agent.api("GET", "/v1/kv/tlscache/grains/web01")
    assert status == 200 and json.loads(body)[0]["Flags"] > 0
    # without the client certificate the agent refuses the handshake: a cache error
    no_cert = salt.cache.factory(
        cache_opts(functional_minion, mtls_agent.https_addr, prefix="tlscache", ca_file=pki["ca_file"])
    )
    with pytest.raises(SaltCacheError, match="cannot read"):
        no_cert.fetch("grains", "web01")
