"""
Shared fixtures: real Consul agents on loopback, Salt loaders for functional
tests, and real salt-master / salt-minion daemons for integration tests.

Nothing here mocks Consul or Salt.
"""

import base64
import contextlib
import copy
import functools
import json
import logging
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time
import uuid

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
for extra in (REPO / "tools", REPO / "_utils"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import localconsul  # noqa: E402
import salt._logging.impl  # noqa: E402

# Importing salt installs a deferred stderr handler that flushes at exit, after
# pytest has closed the stream; pytest's own capture handles our records.
salt._logging.impl.shutdown_temp_handler()

log = logging.getLogger(__name__)

LOADER_DIRS = ("_modules", "_states", "_grains", "_pillar", "_utils", "_beacons", "_engines", "_runners", "_sdb")
PROD_MINION = "web01.prod.gg.mydc1.example.com"
DEV_MINION = "web01.dev.gg.mydc1.example.com"


def loader_dir_opts():
    """Point Salt's loaders straight at this checkout (functional tests, no sync)."""
    return {
        "module_dirs": [str(REPO / "_modules")],
        "states_dirs": [str(REPO / "_states")],
        "grains_dirs": [str(REPO / "_grains")],
        "utils_dirs": [str(REPO / "_utils")],
        "pillar_dirs": [str(REPO / "_pillar")],
        "beacons_dirs": [str(REPO / "_beacons")],
        "engines_dirs": [str(REPO / "_engines")],
        "runner_dirs": [str(REPO / "_runners")],
    }


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def own_consul(name, tmp_path_factory, kv=None, **kwargs):
    """
    A Consul agent of a test module's own (one it may stop, pause or restart),
    seeded with ``kv`` (checked in Consul), removed afterwards.
    """
    agent = localconsul.LocalConsul(name, log_dir=str(tmp_path_factory.mktemp(f"consul-{name}")), **kwargs)
    agent.start()
    try:
        for key, value in (kv or {}).items():
            assert agent.api("PUT", f"/v1/kv/{key}", value.encode())[0] == 200
            assert agent.api("GET", f"/v1/kv/{key}?raw") == (200, value.encode())
        yield agent
    finally:
        agent.cleanup()


def _unmask_args():
    import salt.version

    return ("unmask=True",) if salt.version.__saltstack_version__.major >= 3008 else ()


# Salt 3008 masks pillar values in pillar.get/items output unless asked not
# to (3006 has no such option): append to a pillar.* call's CLI arguments.
UNMASK = _unmask_args()


def state_loader(opts, functions, utils, serializers, context):
    """
    ``salt.loader.states`` for one minion identity, under a module namespace of
    its own. Salt 3008 gives a state module one plain ``__opts__`` per Python
    module object, so two identities loading ``consul`` under the same name in
    one process (these tests; never a real minion) would share the last one's
    ``id``.
    """
    import hashlib

    import salt.loader

    tag = hashlib.sha256(str(opts.get("id")).encode()).hexdigest()[:10]
    return salt.loader.states(
        opts,
        functions,
        utils,
        serializers,
        context=context,
        loaded_base_name=f"salt.loaded.sc{tag}",
    )


def wait_for(predicate, timeout=15.0, step=0.1):
    """Poll ``predicate`` until it is truthy, at most ``timeout`` seconds; return its last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(step)
        value = predicate()
    return value


def lock_state(agent, key):
    """``(session, value)`` of a lock key, read straight from Consul; ``(None, None)`` if absent."""
    status, raw = agent.api("GET", f"/v1/kv/{key}")
    if status != 200:
        return None, None
    entry = json.loads(raw)[0]
    value = base64.b64decode(entry["Value"]).decode() if entry.get("Value") else None
    return entry.get("Session"), value


def consul_opts(agent, **extra):
    """The ``consul:`` config section for daemons talking to ``agent``."""
    return dict({"address": agent.http_addr, "retries": 0}, **extra)


def apply_consul_acl(salt_factories, admin_id, agent, management_token, root, consul_acl):
    """
    ``consul.acl`` applied masterless with ``consul_acl`` as its pillar, by an
    admin minion on ``management_token`` (an operator's ``salt-call --local``,
    docs/acl.md); every state True and every token's secret file 0600.
    """
    admin = salt_factories.salt_minion_daemon(
        admin_id,
        overrides=dict(
            loader_dir_opts(),
            file_client="local",
            file_roots={"base": [str(REPO / "formulas")]},
            pillar_roots={"base": [str(root)]},
            consul=consul_opts(agent, token=management_token),
        ),
    )
    ret = admin.salt_call_cli(timeout=120).run("--local", "state.apply", "consul.acl", f"pillar={json.dumps({'consul_acl': consul_acl})}")
    assert ret.returncode == 0, ret
    assert ret.data and all(s["result"] is True for s in ret.data.values()), ret.data
    for spec in (consul_acl.get("tokens") or {}).values():
        if spec.get("secret_file"):
            mode = os.stat(spec["secret_file"]).st_mode & 0o777
            assert mode == 0o600, (spec["secret_file"], oct(mode))
    return ret


@contextlib.contextmanager
def synced_master(salt_factories, master_id, agent, state_tree, pillar_root, **overrides):
    """
    A started salt-master on ``agent`` with this checkout on its file_roots and
    the consul ext_pillar, after ``salt-run saltutil.sync_all``; ``overrides``
    replace config keys.
    """
    config = {
        "file_roots": {"base": [str(state_tree)]},
        "pillar_roots": {"base": [str(pillar_root)]},
        "consul": consul_opts(agent),
        "ext_pillar": [{"consul": {}}],
        "log_level_logfile": "debug",
        # Two request workers, not Salt's five: still several (what the
        # pillar cache tests need), and each worker loads its own loaders on
        # its first request, CPU the 2-core machine spends once per master.
        "worker_threads": 2,
    }
    config.update(overrides)
    factory = salt_factories.salt_master_daemon(master_id, overrides=config)
    with factory.started():
        ret = factory.salt_run_cli().run("saltutil.sync_all")
        assert ret.returncode == 0, ret
        yield factory


@contextlib.contextmanager
def synced_minion(master, agent, minion_id, consul=None, **overrides):
    """A started salt-minion of ``master`` after ``saltutil.sync_all``."""
    config = dict({"consul": consul or consul_opts(agent), "log_level_logfile": "debug"}, **overrides)
    factory = master.salt_minion_daemon(minion_id, overrides=config)
    with factory.started():
        ret = factory.salt_call_cli(timeout=120).run("saltutil.sync_all")
        assert ret.returncode == 0, ret
        yield factory


# --------------------------------------------------------------------------- Consul


@pytest.fixture(scope="session")
def consul_agent(tmp_path_factory):
    """A real Consul server agent (datacenter dc1, ACLs off) on loopback ports."""
    agent = localconsul.LocalConsul("dc1", log_dir=str(tmp_path_factory.mktemp("consul-dc1")))
    agent.start()
    yield agent
    agent.cleanup()


@pytest.fixture(scope="session")
def consul_acl_agent(tmp_path_factory):
    """A real Consul agent with ACLs enabled and default-deny; ``master_token`` is root."""
    agent = localconsul.LocalConsul(
        "acl1", acl=True, log_dir=str(tmp_path_factory.mktemp("consul-acl1"))
    )
    agent.start()
    yield agent
    agent.cleanup()


@pytest.fixture
def kv_prefix(consul_agent, request):
    """A KV prefix unique to the test, deleted afterwards."""
    prefix = f"test/{request.node.name[:40].replace('[', '-').replace(']', '')}-{uuid.uuid4().hex[:6]}"
    yield prefix
    consul_agent.api("DELETE", f"/v1/kv/{prefix}?recurse")


# --------------------------------------------------------------------------- Salt loaders


@pytest.fixture(scope="session")
def event_listener():
    """
    salt-factories' event listener (every daemon forwards its events to it),
    listening on 127.0.0.1 only, where its daemons send (they never use
    another address). Its own default listens on 0.0.0.0 on a port it found
    free on 127.0.0.1 alone, which also needs the port free on every other
    loopback address, where this suite's Consul agents listen: CI saw
    "address already in use" there fail one worker's whole session (315
    errors). A port lost to a race between the probe and the bind is tried
    again with another one.
    """
    from saltfactories.plugins.event_listener import EventListener  # pylint: disable=import-outside-toplevel

    for attempt in range(3):
        listener = EventListener()
        listener.host = "127.0.0.1"
        listener.address = f"tcp://{listener.host}:{listener.port}"
        try:
            listener.start()
        except RuntimeError:
            listener.stop()
            if attempt == 2:
                raise
            continue
        try:
            yield listener
        finally:
            listener.stop()
        return


@pytest.fixture(scope="session")
def salt_factories_config():
    # A short root of our own: concurrent test runs must not share daemon dirs,
    # and unix socket paths must stay short.
    root = tempfile.mkdtemp(prefix="sc-", dir="/tmp")
    yield {"inject_sitecustomize": False, "start_timeout": 120, "root_dir": root}
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def functional_minion(salt_factories):
    """A minion *configuration* (not started) for the functional Loaders."""
    return salt_factories.salt_minion_daemon(
        "db01.prod.gg.mydc1.example.com",
        overrides=dict(loader_dir_opts(), file_client="local"),
    )


@pytest.fixture
def minion_opts(functional_minion, consul_agent):
    opts = copy.deepcopy(functional_minion.config)
    opts["consul"] = {"address": consul_agent.http_addr, "retries": 0}
    return opts


@pytest.fixture
def loaders(minion_opts):
    from saltfactories.utils.functional import Loaders

    loaders = Loaders(minion_opts)
    try:
        yield loaders
    finally:
        loaders.reset_state()


# --------------------------------------------------------------------------- Salt daemons


@pytest.fixture(scope="session")
def state_tree(tmp_path_factory):
    """
    The master's file_roots: this checkout's loader dirs and formulas (linked, as
    an operator would point file_roots at a checkout), plus a scratch dir tests
    write their own SLS files into.
    """
    root = tmp_path_factory.mktemp("state-tree")
    for name in LOADER_DIRS:
        if (REPO / name).is_dir():
            (root / name).symlink_to(REPO / name)
    formulas = REPO / "formulas"
    if formulas.is_dir():
        for entry in formulas.iterdir():
            (root / entry.name).symlink_to(entry)
    return root


@pytest.fixture(scope="session")
def pillar_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("pillar-tree")
    (root / "top.sls").write_text("base: {}\n")
    return root


@pytest.fixture(scope="session")
def salt_master(salt_factories, consul_agent, state_tree, pillar_tree):
    """A real salt-master whose ext_pillar and modules come from this checkout (synced)."""
    with synced_master(salt_factories, "master", consul_agent, state_tree, pillar_tree) as factory:
        yield factory


@pytest.fixture(scope="session")
def prod_minion(salt_master, consul_agent):
    with synced_minion(salt_master, consul_agent, PROD_MINION) as factory:
        yield factory


@pytest.fixture(scope="session")
def dev_minion(salt_master, consul_agent):
    with synced_minion(salt_master, consul_agent, DEV_MINION) as factory:
        yield factory


@pytest.fixture(scope="session")
def salt_cli(salt_master):
    return salt_master.salt_cli(timeout=120)


# Measured seconds per test file (a serial fresh-clone run on the 2-core
# machine, `python3 tools/junit_counts.py --durations REPORT.xml` writes it):
# the parallel run starts the longest units first, so no long one starts
# last and holds up the end. Files missing here weigh by tier; only the order
# depends on these numbers.
DURATIONS = REPO / "tests" / "durations.json"
_TIER_WEIGHT = {"integration": 60.0, "functional": 10.0, "unit": 1.0}
# The session's salt-master and minions (fixtures above): every test file
# that asks for one is one unit of work with the others, so they start once
# per run, not once per worker.
SESSION_DAEMONS = frozenset({"salt_master", "prod_minion", "dev_minion", "salt_cli"})
SESSION_UNIT = "session-daemons"
_SIGNATURE = re.compile(r"\bdef \w+\(([^)]*)\)")


@functools.lru_cache(maxsize=None)
def work_unit(rel):
    """
    The xdist unit of work of a test file (``tests/...py``): the file
    itself, or ``session-daemons`` for a file with a function (a test or a
    fixture) that takes one of ``SESSION_DAEMONS`` as a parameter. Read from
    the source, because xdist's controller schedules without collecting.
    """
    try:
        text = (REPO / rel).read_text(encoding="utf-8")
    except OSError:
        return rel
    for match in _SIGNATURE.finditer(text):
        params = {part.split("=")[0].split(":")[0].strip() for part in match.group(1).split(",")}
        if params & SESSION_DAEMONS:
            return SESSION_UNIT
    return rel


def _unit_weights():
    try:
        per_file = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        per_file = {}
    return per_file


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadscope``, with ``work_unit`` as the scope of each test."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return work_unit(nodeid.split("::", 1)[0])

    return FileUnits(config, log)


def pytest_collection_modifyitems(config, items):
    """
    Mark integration tests. Under xdist, order the units of work longest
    first; within a unit, files and tests keep their order.
    """
    per_file = _unit_weights()
    unit_weight = {}
    for item in items:
        rel = item.path.relative_to(REPO).as_posix()
        if "/integration/" in f"/{rel}":
            item.add_marker(pytest.mark.integration)
        tier = rel.split("/")[1] if rel.count("/") >= 2 else "unit"
        unit = work_unit(rel)
        if (unit, rel) not in unit_weight:
            unit_weight[(unit, rel)] = per_file.get(rel, _TIER_WEIGHT.get(tier, 10.0))
    totals = {}
    for (unit, _), seconds in unit_weight.items():
        totals[unit] = totals.get(unit, 0.0) + seconds
    if config.getoption("dist", "no") != "no":
        items.sort(key=lambda item: -totals[work_unit(item.path.relative_to(REPO).as_posix())])


# --------------------------------------------------------------------------- two datacenters


@pytest.fixture(scope="session")
def consul_dc_pair(tmp_path_factory):
    """
    Two real Consul servers, datacenters ``dc1`` and ``dc2``, WAN-joined on
    loopback: ``(dc1, dc2)``. Tests reach dc2 through dc1 with ``?dc=dc2``.
    """
    dc1 = localconsul.LocalConsul("dc1", node_name="wan-dc1", log_dir=str(tmp_path_factory.mktemp("wan-dc1")))
    dc2 = localconsul.LocalConsul("dc2", node_name="wan-dc2", log_dir=str(tmp_path_factory.mktemp("wan-dc2")))
    try:
        dc1.start()
        dc2.start()
        localconsul.wan_join(dc1, dc2)
        yield dc1, dc2
    finally:
        dc2.cleanup()
        dc1.cleanup()


@pytest.fixture(scope="module")
def module_loaders(functional_minion, consul_agent):
    """
    Like ``loaders`` (same opts) but built once per test module: building
    ``Loaders`` syncs and loads everything, about 1.5 s, too slow per test.
    Tests must not depend on ``__context__`` being empty.
    """
    from saltfactories.utils.functional import Loaders

    opts = copy.deepcopy(functional_minion.config)
    opts["consul"] = {"address": consul_agent.http_addr, "retries": 0}
    loaders = Loaders(opts)
    try:
        yield loaders
    finally:
        loaders.reset_state()


# --------------------------------------------------------------------------- CPU per test file (opt-in)

_CPU_REPORT = os.environ.get("SC_CPU_REPORT")
_cpu_last = {}


def _cpu_now():
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


if _CPU_REPORT:

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        """
        ``SC_CPU_REPORT=path``: CPU seconds (this process and the children it
        reaped: Consul agents, Salt daemons and CLIs) per test file, appended
        to ``path`` as JSON lines; what makes the suite slow on 2 cores.
        """
        start = _cpu_now()
        yield
        rel = item.path.relative_to(REPO).as_posix()
        _cpu_last[rel] = _cpu_last.get(rel, 0.0) + _cpu_now() - start

    def pytest_sessionfinish(session):
        if _cpu_last:
            with open(_CPU_REPORT, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({k: round(v, 1) for k, v in _cpu_last.items()}) + "\n")
