"""
Minted minion tokens (issue 22) on the topology an operator runs: a Consul
cluster (``tools/cluster.py``: 3 servers, a client agent per node, ACLs
default-deny), a real salt-master and two real minions, a prod DB host and a
dev DB host, each on its own node's client agent, **with no Consul token in
their config and no file copied to them**:

* the master mints each minion a token of its own (ext_pillar
  ``consul_token``, on the ``salt-mint`` token the shipped ``consul.acl``
  makes), sealed to the minion's key: the minions register their services,
  take their own environment's primary lock and discover, under
  default-deny; the token in Consul has a node identity for its node,
  service identities for its pillar's services and its environment's lock
  only; a second apply changes nothing;
* the agents' own harness tokens are deleted first: each agent then
  registers its node on the minted token ``consul.register`` gave it;
* a "compromised" dev host, root on its box (it reads its own minted token
  from its cache), tries everything against prod that Consul lets it try:
  (a) it registers ``db`` tagged ``prod``/``gg`` with prod's meta: Consul
  accepts the claim, prod's DNS name does not answer with it, prod's
  ``consul.discover db`` ignores it (and says so in the log); (b) it cannot take, delete, release or renew prod's lock, nor
  destroy prod's session or make one on prod's node; (c) it cannot read or
  write prod's layers or secrets; (d) it cannot deregister or change prod's
  node, nor re-register its services or checks there. Prod's lock holder
  and passing instance are unchanged afterwards. One thing it *can* do,
  Consul's own rule and the limit stated in docs/acl.md: deregister a prod
  ``db`` instance by its ID (catalog deregistration of a service takes
  ``service:write`` on its name), which prod's agent re-registers on its next
  anti-entropy sync; the attempt is not made here (it ends prod's lock
  session, a failover to prod's standby, never to the dev host);
* ``salt-key -d`` of the dev minion: the shipped reactor revokes its token
  (denied within the bound below), ``consul_tokens.list`` no longer shows it;
* no token secret in any return, log or the job cache.

DNS: ``db.prod.gg.mnt1.query.consul`` (``minion_tokens:dns_services``) is a
prepared query the master keeps, running on a token that may read prod's
nodes only, so Consul's ACL filtering drops the dev host's claim from the
answer.
"""

import json
import pathlib
import stat
import threading
import time

import pytest
from conftest import apply_consul_acl, consul_opts, synced_master, synced_minion

from cluster import Cluster
from dnsquery import query as dns_query

DC = "mnt1"
MASTER_NODE = "saltmaster"
PROD = "db01.prod.gg.mnt1.example.com"
DEV = "db01.dev.gg.mnt1.example.com"
# Their Consul node names (minion_tokens:node_name's default: what a node identity may name).
NODES = {PROD: "mnt1-prod-gg-db01", DEV: "mnt1-dev-gg-db01"}
PROD_LOCK = "locks/db/prod.gg.mnt1/leader"
REVOKE_BOUND = 30  # seconds from salt-key -d to the token being refused

PILLAR = """
consul_register:
  services:
    web:
      port: 8080
      checks:
        - name: alive
          ttl: 300s
          status: passing
consul_primary:
  services:
    db:
      port: 5432
      lock_delay: 1s
      checks:
        - name: alive
          ttl: 300s
          status: passing
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    logs = str(tmp_path_factory.mktemp("minted-logs"))
    with Cluster(nodes=[MASTER_NODE, *NODES.values()], datacenter=DC, acl=True, log_dir=logs) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def tokens(salt_factories, cluster, tmp_path_factory):
    """``consul.acl`` with ``mint: true``, masterless on the management token: the master's and the mint token's files."""
    root = tmp_path_factory.mktemp("minted-admin")
    files = {role: str(root / "tokens" / f"salt-{role}.token") for role in ("master", "mint")}
    pillar = {
        "mint": True,
        "dns_anonymous": True,  # DNS names answer the anonymous token (docs/acl.md)
        "tokens": {f"salt-{role}": {"policies": [f"salt-{role}"], "secret_file": path} for role, path in files.items()},
    }
    apply_consul_acl(salt_factories, "minted-admin", cluster.client(MASTER_NODE), cluster.master_token, root, pillar)
    server = cluster.live_server()
    assert server.api("PUT", "/v1/kv/config/type/prod/mnt/db_password", b"prod-layer-s3cret")[0] == 200
    assert server.api("PUT", "/v1/kv/secrets/demoapp/prod/gg/DB_PASSWORD", b"prod-app-s3cret")[0] == 200
    assert server.api("PUT", "/v1/kv/secrets/demoapp/dev/gg/DB_PASSWORD", b"dev-app-s3cret")[0] == 200
    return files


@pytest.fixture(scope="module")
def master(salt_factories, cluster, tokens, state_tree, tmp_path_factory):
    pillar = tmp_path_factory.mktemp("minted-pillar")
    (pillar / "top.sls").write_text("base:\n  '*':\n    - db\n")
    (pillar / "db.sls").write_text(PILLAR)
    consul = consul_opts(
        cluster.client(MASTER_NODE),
        token_file=tokens["master"],
        minion_tokens={
            "token_file": tokens["mint"],
            "ttl": "1h",
            "kv_read": ["secrets/demoapp/{type}/{group}/"],
            "dns_services": ["db"],
        },
    )
    with synced_master(
        salt_factories,
        "minted-master",
        cluster.client(MASTER_NODE),
        state_tree,
        pillar,
        consul=consul,
        ext_pillar=[{"consul": {}}, {"consul_token": {}}],
        reactor=[{"salt/key": ["salt://reactor/consul_token_revoke.sls"]}],
    ) as factory:
        yield factory


@pytest.fixture(scope="module")
def minions(master, cluster):
    # The harness gave each agent a token; a new node has none: take them away.
    server = cluster.live_server()
    for token in server.api_json("GET", "/v1/acl/tokens"):
        if (token.get("Description") or "").startswith("agent token of mnt1-"):
            server.api_json("DELETE", f"/v1/acl/token/{token['AccessorID']}")
    with synced_minion(master, cluster.client(NODES[PROD]), PROD) as prod:
        with synced_minion(master, cluster.client(NODES[DEV]), DEV) as dev:
            yield {PROD: prod, DEV: dev}


def _apply(factory, *args):
    ret = factory.salt_call_cli(timeout=180).run("state.apply", *args)
    assert ret.returncode == 0, ret
    assert all(s["result"] is True for s in ret.data.values()), ret.data
    return ret.data


def _changed(data):
    return sorted(k for k, s in data.items() if s["changes"])


def _record(factory):
    path = pathlib.Path(factory.config["cachedir"]) / "consul" / "minion_token.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return json.loads(path.read_text())


def _holder(cluster):
    status, raw = cluster.live_server().api("GET", f"/v1/kv/{PROD_LOCK}")
    assert status == 200, (status, raw)
    return json.loads(raw)[0].get("Session")


@pytest.fixture(scope="module")
def applied(minions, cluster):
    first = {mid: _apply(f, "consul.register") for mid, f in minions.items()}
    for mid, f in minions.items():
        _apply(f, "consul.primary")
    again = {mid: _apply(f, "consul.register") for mid, f in minions.items()}
    primary_again = {mid: _apply(f, "consul.primary") for mid, f in minions.items()}
    return {"first": first, "again": again, "primary_again": primary_again}


def test_minions_on_minted_tokens_register_lock_and_discover(applied, minions, cluster, master):
    server = cluster.live_server()
    for mid in (PROD, DEV):
        assert any("agent_token_minted" in k for k in _changed(applied["first"][mid])), applied["first"][mid]
        assert _changed(applied["again"][mid]) == [] and _changed(applied["primary_again"][mid]) == []
        # The agent registered its node (its harness token is gone: on the minted one) and the services.
        nodes = {n["Node"] for n in server.api_json("GET", "/v1/catalog/nodes")}
        assert NODES[mid] in nodes
        services = server.api_json("GET", f"/v1/catalog/node/{NODES[mid]}")
        assert {"web", "db"} <= {s["Service"] for s in services["Services"].values()}, services
    # Prod's lock is prod's; dev holds its own environment's.
    session = server.api_json("GET", f"/v1/session/info/{_holder(cluster)}")[0]
    assert session["Node"] == NODES[PROD]
    status, raw = server.api("GET", "/v1/kv/locks/db/dev.gg.mnt1/leader")
    assert status == 200
    assert server.api_json("GET", f"/v1/session/info/{json.loads(raw)[0]['Session']}")[0]["Node"] == NODES[DEV]

    # The token in Consul: its node, its services, its environment's lock.
    record = _record(minions[PROD])
    token = server.api_json("GET", f"/v1/acl/token/{record['accessor']}")
    assert token["Description"] == f"salt-minion {PROD}"
    assert token["NodeIdentities"] == [{"NodeName": NODES[PROD], "Datacenter": DC}]
    assert sorted(s["ServiceName"] for s in token["ServiceIdentities"]) == ["db", "web"]
    assert token.get("ExpirationTime")
    policy = server.api_json("GET", f"/v1/acl/policy/{token['Policies'][0]['ID']}")
    assert 'key_prefix "locks/db/prod.gg.mnt1/" { policy = "write" }' in policy["Rules"]
    assert "config/" not in policy["Rules"] and "dev.gg" not in policy["Rules"]

    # Discovery from prod: prod's instance only.
    ret = minions[PROD].salt_call_cli(timeout=60).run("consul.discover", "db")
    assert ret.returncode == 0, ret
    assert [i["node"] for i in ret.data] == [NODES[PROD]]
    # pillar.items holds ciphertext only (and Salt masks what it takes for a token).
    ret = minions[PROD].salt_call_cli(timeout=60).run("pillar.items")
    assert "consul_minion_token" in ret.data
    assert record["secret"] not in json.dumps(ret.data)


ROTATION_SLS = """
include:
  - consul.register

# Runs first: the token rotates on the master while this apply is under way.
minted-rotation-pause:
  cmd.run:
    - name: sleep 6.321
    - order: 1
"""


def _sleeping(seconds):
    """True while a ``sleep <seconds>`` process runs (the rotation SLS's pause)."""
    for proc in pathlib.Path("/proc").iterdir():
        try:
            if (proc / "cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", seconds.encode()]:
                return True
        except OSError:
            continue
    return False


def test_rotation_during_a_running_apply(applied, minions, master, cluster, state_tree):
    prod = minions[PROD]
    old = _record(prod)
    (state_tree / "minted_rotation.sls").write_text(ROTATION_SLS)
    result = {}
    worker = threading.Thread(target=lambda: result.update(data=_apply(prod, "minted_rotation")))
    worker.start()
    try:
        # Rotate only once the apply is in its pause: its pillar (the old token) is compiled by then.
        deadline = time.monotonic() + 120
        while not _sleeping("6.321") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _sleeping("6.321"), "the apply never reached its pause"
        # Past renew_after on the master: its next compile of this minion's pillar mints the next token.
        (stored,) = (pathlib.Path(master.config["cachedir"]) / "consul_tokens").glob("db01_prod_gg_mnt1*.json")
        record = json.loads(stored.read_text())
        # As if minted an hour ago with a minute left: well past renew_after (0.5) of its life.
        record["created"], record["expires"] = time.time() - 3600, time.time() + 60
        stored.write_text(json.dumps(record))
        ret = master.salt_run_cli(timeout=60).run("pillar.show_pillar", PROD)
        assert ret.returncode == 0, ret
        assert old["secret"] not in json.dumps(ret.data)
    finally:
        worker.join(timeout=180)
    # The running apply finished on the old token (all states True, _apply checks), which still works.
    assert "data" in result, result
    assert [k for k in _changed(result["data"]) if "minted-rotation-pause" not in k] == [], result
    new = json.loads(stored.read_text())
    assert new["accessor"] != old["accessor"]
    assert cluster.client(NODES[PROD]).api("GET", "/v1/acl/token/self", token=old["secret"])[0] == 200
    # The next apply takes the new token: the agent gets it, nothing else changes; then compliant.
    data = _apply(prod, "consul.register")
    assert [k for k in _changed(data)] == [k for k in data if "agent_token_minted" in k], data
    assert _record(prod)["accessor"] == new["accessor"]
    assert _changed(_apply(prod, "consul.register")) == []
    ret = prod.salt_call_cli(timeout=60).run("consul.discover", "db")
    assert ret.returncode == 0 and [i["node"] for i in ret.data] == [NODES[PROD]], ret


def _as(cluster, minion, token, method, path, body=None):
    """A request on ``minion``'s own client agent with ``token``."""
    return cluster.client(NODES[minion]).api(method, path, body, token=token)


def test_a_compromised_dev_host_cannot_act_for_prod(applied, minions, cluster):
    dev_token = _record(minions[DEV])["secret"]
    holder = _holder(cluster)
    server = cluster.live_server()
    prod_sid = f"db@{PROD}"
    refused = {}

    # (a) The claim: db tagged prod, prod's meta, a passing check. Consul accepts it ...
    claim = {
        "ID": "db-evil",
        "Name": "db",
        "Tags": ["prod", "gg"],
        "Meta": {"env": "prod.gg.mnt1"},
        "Port": 5432,
        "Check": {"TTL": "300s", "Status": "passing"},
    }
    status, raw = _as(cluster, DEV, dev_token, "PUT", "/v1/agent/service/register", claim)
    assert status == 200, raw

    def claimed():
        entries = server.api_json("GET", "/v1/health/service/db?passing=1&tag=prod")
        return {e["Node"]["Node"] for e in entries}

    deadline = time.monotonic() + 30
    while NODES[DEV] not in claimed() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert claimed() == set(NODES.values())  # the claim is in Consul, tagged prod and passing
    # ... prod's DNS name answers with prod's node only (its query runs on a token that may
    # read prod's nodes alone) ...
    prod_agent = cluster.client(NODES[PROD])
    rcode, addresses = dns_query(prod_agent.ports["dns"], "db.prod.gg.mnt1.query.consul", host=prod_agent.bind)
    assert (rcode, addresses) == (0, [prod_agent.bind]), (rcode, addresses, cluster.client(NODES[DEV]).bind)
    # ... and prod's discovery ignores it.
    ret = minions[PROD].salt_call_cli(timeout=60).run("consul.discover", "db", "refresh=True")
    assert ret.returncode == 0, ret
    assert [i["node"] for i in ret.data] == [NODES[PROD]]
    log = pathlib.Path(minions[PROD].config["log_file"]).read_text()
    assert f"ignoring db instance db-evil: it claims prod/gg but its node {NODES[DEV]}" in log

    # (b) Prod's lock and session.
    own = _as(cluster, DEV, dev_token, "PUT", "/v1/session/create", {"Node": NODES[DEV], "Name": "evil", "Checks": []})
    assert own[0] == 200, own
    own_session = json.loads(own[1])["ID"]
    attempts = {
        "acquire prod's lock": ("PUT", f"/v1/kv/{PROD_LOCK}?acquire={own_session}", b"evil"),
        "overwrite prod's lock": ("PUT", f"/v1/kv/{PROD_LOCK}", b"evil"),
        "delete prod's lock": ("DELETE", f"/v1/kv/{PROD_LOCK}", None),
        "release prod's lock": ("PUT", f"/v1/kv/{PROD_LOCK}?release={holder}", b""),
        "destroy prod's session": ("PUT", f"/v1/session/destroy/{holder}", None),
        "renew prod's session": ("PUT", f"/v1/session/renew/{holder}", None),
        "a session on prod's node": ("PUT", "/v1/session/create", {"Node": NODES[PROD], "Name": "evil"}),
        # (c) prod's layers and secrets
        "read prod's layer": ("GET", "/v1/kv/config/type/prod/?recurse", None),
        "write prod's layer": ("PUT", "/v1/kv/config/type/prod/mnt/db_password", b"evil"),
        "read prod's secrets": ("GET", "/v1/kv/secrets/demoapp/prod/gg/DB_PASSWORD", None),
        # (d) prod's node, services and checks in the catalog. Not here: deregistering prod's
        # db *instance* by its ID, which Consul allows any token with service:write on "db"
        # (hashicorp/consul#5217: service write or node write); docs/acl.md's threat model.
        "deregister prod's node": ("PUT", "/v1/catalog/deregister", {"Node": NODES[PROD]}),
        "re-register prod's db": ("PUT", "/v1/catalog/register", {"Node": NODES[PROD], "Address": "127.0.0.66", "Service": {"ID": prod_sid, "Service": "db", "Port": 1}}),
        "fail prod's check": ("PUT", "/v1/catalog/register", {"Node": NODES[PROD], "Address": "127.0.0.66", "Check": {"CheckID": "serfHealth", "Status": "critical"}}),
    }
    for what, (method, path, body) in attempts.items():
        status, raw = _as(cluster, DEV, dev_token, method, path, body)
        refused[what] = status
        if method == "GET":
            # Consul filters what a token may not read out of a (recursive) read: 404, nothing shown.
            assert status in (403, 404) and b"s3cret" not in raw, (what, status, raw)
        else:
            assert status == 403, (what, status, raw)
    # Its own environment is its own: dev's secret is readable.
    assert _as(cluster, DEV, dev_token, "GET", "/v1/kv/secrets/demoapp/dev/gg/DB_PASSWORD?raw")[1] == b"dev-app-s3cret"
    _as(cluster, DEV, dev_token, "PUT", f"/v1/session/destroy/{own_session}")
    _as(cluster, DEV, dev_token, "PUT", "/v1/agent/service/deregister/db-evil")
    # Prod is untouched.
    assert _holder(cluster) == holder
    passing = server.api_json("GET", "/v1/health/service/db?passing=1&tag=prod")
    assert {e["Node"]["Node"] for e in passing} >= {NODES[PROD]}
    assert len(refused) == 13


def test_key_deleted_token_revoked(applied, minions, cluster, master):
    dev_token = _record(minions[DEV])["secret"]
    accessor = _record(minions[DEV])["accessor"]
    ret = master.salt_run_cli(timeout=60).run("consul_tokens.list")
    assert ret.returncode == 0, ret
    assert {t["minion_id"] for t in ret.data} == {PROD, DEV}
    assert dev_token not in json.dumps(ret.data)
    started = time.monotonic()
    ret = master.salt_key_cli().run("-d", DEV, "-y")
    assert ret.returncode == 0, ret
    while time.monotonic() - started < REVOKE_BOUND:
        status, _ = _as(cluster, DEV, dev_token, "GET", "/v1/kv/secrets/demoapp/dev/gg/DB_PASSWORD")
        if status == 403:
            break
        time.sleep(0.25)
    assert status == 403, status
    server = cluster.live_server()
    assert server.api("GET", f"/v1/acl/token/{accessor}")[0] in (403, 404)
    ret = master.salt_run_cli(timeout=60).run("consul_tokens.list")
    assert {t["minion_id"] for t in ret.data} == {PROD}


def _stray(cluster, minion_id):
    """A token as the master mints them, for a minion this master never saw (made with the management token)."""
    token = cluster.live_server().api_json("PUT", "/v1/acl/token", {"Description": f"salt-minion {minion_id}", "ExpirationTTL": "1h"})
    return token["AccessorID"]


def test_documented_revoke_and_sweep(applied, master, cluster):
    run = master.salt_run_cli(timeout=60)
    # As docs/acl.md writes them.
    documented = "db01.dev.gg.mydc1.example.com"
    accessor = _stray(cluster, documented)
    ret = run.run("consul_tokens.revoke", documented)
    assert ret.returncode == 0, ret
    assert ret.data == {"minion_id": documented, "revoked": [accessor]}
    ghost = "ghost01.dev.gg.mnt1.example.com"  # no accepted key
    accessor = _stray(cluster, ghost)
    ret = run.run("consul_tokens.sweep")
    assert ret.returncode == 0, ret
    assert ret.data == {ghost: [accessor]}
    assert cluster.live_server().api("GET", f"/v1/acl/token/{accessor}")[0] in (403, 404)
    ret = run.run("consul_tokens.list")
    assert {t["minion_id"] for t in ret.data} == {PROD}


def test_no_secret_anywhere(applied, minions, master, cluster, tokens):
    secrets = [_record(minions[PROD])["secret"], pathlib.Path(tokens["mint"]).read_text().strip()]
    places = [pathlib.Path(master.config["log_file"]), pathlib.Path(minions[PROD].config["log_file"])]
    jobs = pathlib.Path(master.config["cachedir"]) / "jobs"
    places += [p for p in jobs.rglob("*") if p.is_file()]
    for path in places:
        text = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in text, path
