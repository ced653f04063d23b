"""
`make demo` runs to the end, prints every section as a line a person can
check, and leaves no process behind (Consul agents, Salt daemons, stand-ins).
"""

import pathlib
import re
import subprocess
import sys

import psutil

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tools"))
import docs_run  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]


def _demo_processes():
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "/tmp/scdemo-" in cmdline or "consul-mydc1-" in cmdline or "consul-mydc2-" in cmdline:
            found.append(cmdline)
    return found


def test_demo_runs_shows_each_section_and_cleans_up():
    assert _demo_processes() == []
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "demo.py")],
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"^demo: ok \(\d+s\)$", out, re.M), out[-2000:]
    # Two datacenters, ACLs on, default deny; the shipped policies, secrets only in 0600 files.
    assert "datacenters: mydc1, mydc2" in out
    assert "no token: PUT /v1/kv/config/global/x -> 403 (denied)" in out
    for policy in ("salt-dns", "salt-master", "salt-minion"):
        assert f"policy {policy}" in out
    assert out.count("(mode 600), never in a return or log") == 3
    assert "anonymous token policies: ['salt-dns']" in out
    # Layered pillar per environment, decided by the master from the minion ID.
    assert re.search(r"web01\.prod\.gg\.mydc1\.example\.com +env prod\.gg\.mydc1 +pool_size = 50", out)
    assert re.search(r"web01\.dev\.gg\.mydc1\.example\.com +env dev\.gg\.mydc1 +pool_size = 5$", out, re.M)
    assert re.search(r"web01\.prod\.gg\.mydc2\.example\.com +env prod\.gg\.mydc2 +pool_size = 50", out)
    # The spoofer: prod in its grains, dev's pillar, no prod secret, not matched by pillar targeting.
    assert "grains env:type = prod (its claim)" in out
    assert "pillar pool_size = 5, prod's db_password = (none)" in out
    assert re.search(r"salt -G 'env:type:prod' +matches 5: spoofer included = True", out)
    assert re.search(r"salt -I 'consul_env:type:prod' +matches 4: spoofer included = False", out)
    assert "prod-only-s3cret" not in out.split("A minion spoofing", 1)[1]
    # Registration and environment DNS names.
    assert "registered with tags dev,gg (its real environment)" in out
    assert re.search(r"db\.prod\.gg\.mydc1\.query\.consul +-> 127\.0\.0\.1", out)
    assert re.search(r"db\.dev\.gg\.mydc1\.query\.consul +-> NXDOMAIN", out)
    assert re.search(r"web\.dev\.gg\.mydc1\.query\.consul +-> 127\.0\.0\.3", out)
    assert "held by db01.prod.gg.mydc1.example.com" in out
    # Failover with its time; the old primary fenced.
    assert re.search(r"failover took \d+\.\ds: .* db_primary_node = db02\.prod\.gg\.mydc1\.example\.com", out)
    assert "lock held by db02.prod.gg.mydc1.example.com; stand-in roles: db02 primary, db01 replica" in out
    assert "registered db instances db@db02.prod.gg.mydc1.example.com)" in out
    # Cross-datacenter discovery.
    assert "web in mydc2 -> ['127.0.0.2:8080']" in out
    assert "web.prod.gg.mydc2.query.consul on mydc2 -> 127.0.0.2" in out
    # The outage: last good pillar, marked stale; fresh again afterwards.
    assert re.search(r'pool_size = 50, consul_pillar = \{"age": \d+, "stale": true\}', out)
    assert "mydc1 back: consul_pillar = null (fresh)" in out
    assert _demo_processes() == []
    # Every command the README and docs/ show, run as written on the shipped tokens
    # (tools/docs_run.py); none disturbed the primary.
    documented = [c for c in docs_run.doc_commands() if c not in docs_run.ELSEWHERE]
    assert len(documented) >= 25
    for command in documented:
        assert re.search(rf"^  \$ {re.escape(command[:78])} +ok \(", out, re.M), command
    assert f"docs: {len(documented)} documented commands run as written, all ok" in out
    assert f"still held by {'db01.prod.gg.mydc1.example.com'}; passing db: db@db01.prod.gg.mydc1.example.com" in out
