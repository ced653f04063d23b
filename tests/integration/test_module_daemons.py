"""
The execution module through real salt-master + salt-minion daemons:

* a secret stored with ``consul.kv_put`` reaches Consul but not the job's
  return, the master's job cache, or the master's and minion's logs;
* a Jinja template rendered by the minion lists the healthy ``db`` instances
  of its own environment, and omits one after its TTL check goes critical.
"""

import os
import pathlib
import time
import uuid

import pytest


def _files_containing(root, needle):
    found = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb") as fh:
                    if needle in fh.read():
                        found.append(path)
            except OSError:
                continue
    return found


def _wait_for_text(path, needle, timeout=30):
    """Bounded wait until ``needle`` shows up in the file (log handlers flush asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pathlib.Path(path).exists() and needle in pathlib.Path(path).read_bytes():
            return True
        time.sleep(0.2)
    return False


def test_kv_put_secret_stays_out_of_returns_job_cache_and_logs(
    salt_master, prod_minion, salt_cli, consul_agent, tmp_path
):
    prefix = f"itest-{uuid.uuid4().hex[:8]}"
    secret = f"S3cr3t-{uuid.uuid4().hex}"
    secret_file = tmp_path / "db.password"
    secret_file.write_text(secret)
    key = f"{prefix}/db/password"
    try:
        ret = salt_cli.run("consul.kv_put", key, f"value_file={secret_file}", minion_tgt=prod_minion.id)
        assert ret.returncode == 0, ret
        assert ret.data is True
        # It is in Consul (checked without our client) ...
        assert consul_agent.api("GET", f"/v1/kv/{key}?raw") == (200, secret.encode())
        # ... and nowhere else. First make sure the job really was logged and cached,
        # so the negative checks below look at the right records.
        assert _wait_for_text(prod_minion.config["log_file"], key.encode()), "minion log never showed the call"
        assert _files_containing(salt_master.config["cachedir"], key.encode()), "job cache holds no trace of the job"
        assert secret not in ret.stdout and secret not in ret.stderr
        assert _files_containing(salt_master.config["cachedir"], secret.encode()) == []
        assert _files_containing(prod_minion.config["cachedir"], secret.encode()) == []
        for log_file in (prod_minion.config["log_file"], salt_master.config["log_file"]):
            assert secret.encode() not in pathlib.Path(log_file).read_bytes()
    finally:
        consul_agent.api("DELETE", f"/v1/kv/{prefix}?recurse")


@pytest.fixture
def db_instances(consul_agent):
    """Three ``db`` instances tagged with a tag unique to this test; removed afterwards."""
    mark = f"it{uuid.uuid4().hex[:8]}"
    instances = {
        f"db-{mark}-1": (["prod", "gg", mark], "10.1.0.1"),
        f"db-{mark}-2": (["prod", "gg", mark], "10.1.0.2"),
        f"db-{mark}-3": (["stg", "gg", mark], "10.2.0.1"),  # another environment
    }
    for sid, (tags, address) in instances.items():
        consul_agent.api_json(
            "PUT",
            "/v1/agent/service/register",
            {"Name": "db", "ID": sid, "Tags": tags, "Address": address, "Port": 5432,
             "Check": {"CheckID": f"{sid}-ttl", "TTL": "600s", "Status": "passing"}},
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the catalog sync is asynchronous
        if len(consul_agent.api_json("GET", f"/v1/health/service/db?tag={mark}")) == len(instances):
            break
        time.sleep(0.1)
    yield mark
    for sid in instances:
        consul_agent.api("PUT", f"/v1/agent/service/deregister/{sid}")


def test_template_lists_healthy_db_and_drops_critical_one(prod_minion, salt_cli, state_tree, consul_agent, db_instances):
    mark = db_instances
    template = state_tree / f"{mark}-db.conf.j2"
    template.write_text(
        "{%- for db in salt['consul.discover']('db', tags=['" + mark + "']) %}\n"
        "server {{ db.id }} {{ db.address }}:{{ db.port }}\n"
        "{%- endfor %}\n"
        "hosts={{ salt['consul.discover_hosts']('db', tags=['" + mark + "']) | join(',') }}\n"
    )

    def render():
        ret = salt_cli.run(
            "slsutil.renderer", f"path=salt://{template.name}", "default_renderer=jinja", minion_tgt=prod_minion.id
        )
        assert ret.returncode == 0, ret
        return ret.data

    try:
        first = render()
        assert first.strip().splitlines() == [
            f"server db-{mark}-1 10.1.0.1:5432",
            f"server db-{mark}-2 10.1.0.2:5432",
            "hosts=10.1.0.1:5432,10.1.0.2:5432",
        ]
        consul_agent.api_json("PUT", f"/v1/agent/check/fail/db-{mark}-2-ttl")
        # The agent syncs check status to the catalog asynchronously: wait (bounded).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            passing = consul_agent.api_json("GET", f"/v1/health/service/db?passing&tag={mark}")
            if f"db-{mark}-2" not in [e["Service"]["ID"] for e in passing]:
                break
            time.sleep(0.1)
        second = render()
        assert second.strip().splitlines() == [
            f"server db-{mark}-1 10.1.0.1:5432",
            "hosts=10.1.0.1:5432",
        ]
    finally:
        template.unlink()
