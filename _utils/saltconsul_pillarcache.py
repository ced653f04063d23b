"""
The master-side cache behind the ``consul`` ext_pillar: decoded KV layers
shared by every minion that uses them, revalidated by Consul's index, with a
last-good copy on disk for outages.

It lives in ``_utils`` because Salt builds a fresh pillar loader (and a fresh
``__context__``) for every pillar compile: state that must outlive one compile
(the per-process cache, the watch thread, the HTTP client) sits in this
module, which Python imports once per process.

How freshness works
-------------------

One *watch index* stands for "the state of every key under the watch prefix"
(by default the common folder of all layer templates, e.g. ``config``): it is
the ``X-Consul-Index`` of ``GET /v1/kv/<prefix>/?keys&separator=/``, which
Consul computes as the highest modify index of any key under the prefix,
deleted keys included. A cached layer records the watch index seen *before* it
was fetched, and is valid while the current watch index is the same.

``revalidate: watch`` (default)
    A daemon thread per master process holds a blocking query on that index
    (``wait`` = ``watch_wait``) and updates it as soon as Consul answers with a
    new one, so a compile with everything cached makes **no request at all**.
    While the thread is not armed (first compile; after an error, until its
    backoff has passed) the compile makes one cheap index request itself
    (``Watcher`` says why the thread never retries on its own).
``revalidate: always``
    Every compile makes that one cheap index request (no thread).

Stale layers of one compile are fetched together in **one** ``PUT /v1/txn``
with a ``get-tree`` operation per layer (read-only, at most 64 per Consul
transaction); a single stale layer with the equivalent recursive ``GET``
(:func:`fetch_trees`).

Outages
-------

Every fetched layer is also written to ``<cache_dir>/<sha256>.p`` (mode 0600,
atomic replace under a lock file, never replacing a newer fetch with an older
one), keyed by Consul address, datacenter, token hash, prefix and
decoding options, so other master processes share it and a restarted master
still has a last good copy.
"""

import contextlib
import gc
import hashlib
import logging
import os
import tempfile
import threading
import time

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import salt.payload
import salt.utils.msgpack

import saltconsul_blocking
import saltconsul_client
import saltconsul_config
import saltconsul_kv
import saltconsul_kvtree
from saltconsul_errors import ConsulError, ConsulNotFound

log = logging.getLogger(__name__)

FILE_VERSION = 1
MAX_TXN_OPS = 64

_STORES = {}
_STORES_LOCK = threading.Lock()


def _dumps(obj):
    return salt.payload.dumps(obj, use_bin_type=True)


class _SaltExt(Exception):
    """A msgpack extension type (Salt's datetimes, constants): Salt's loads handles it."""


def _no_ext(code, data):
    raise _SaltExt()


def _loads(blob):
    """
    Unpack what :func:`_dumps` packed. The trees are plain data (str, bytes,
    numbers, lists, dicts) packed with ``use_bin_type``, so msgpack gives str
    and bytes back by itself: ``salt.payload.loads`` would unpack everything
    as bytes and then walk the whole tree in Python to turn them back into str,
    which costs more than the unpacking (a warm compile is mostly this call).
    Anything else (an extension type, e.g. a date from ``decode: yaml``, or an
    old file) goes to ``salt.payload.loads``. The collector is paused like
    Salt's own loads does: the burst of new containers would trigger full
    collections that find nothing.
    """
    with paused_gc():
        try:
            return salt.utils.msgpack.unpackb(blob, raw=False, use_list=True, ext_hook=_no_ext)
        except Exception:  # pylint: disable=broad-except
            pass
    return salt.payload.loads(blob, raw=False)


@contextlib.contextmanager
def paused_gc():
    """
    Pause the cyclic garbage collector while building large plain-data trees
    (JSON answers, decoded layers): they hold no reference cycles, and the
    tens of thousands of containers they allocate would otherwise trigger
    collections that scan every object of the master process for nothing.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Layer:
    """
    One cached layer: the watch index it is valid for, the store epoch it was
    fetched in (None when read back from disk), when it was fetched, the packed tree.
    """

    __slots__ = ("root", "index", "epoch", "fetched_at", "blob")

    def __init__(self, root, index, fetched_at, blob, epoch=None):
        self.root = root
        self.index = index
        self.epoch = epoch
        self.fetched_at = fetched_at
        self.blob = blob

    def tree(self):
        """A private copy of the tree (callers and Salt's merge may mutate it)."""
        return _loads(self.blob)


# The index watch's blocking-query loop: least time between two queries, and
# the pause after failures before a compile may restart the watch.
MIN_INTERVAL = 0.5
BACKOFF = 1.0
BACKOFF_MAX = 30.0


class Watcher:
    """
    The current watch index for compiles: ``index`` is None while the watch
    is not armed (a compile then asks Consul itself), 0 when Consul sent no
    index (never watched: asked every time), else Consul's index, kept
    current (an empty prefix too: its 404 carries an index).

    A compile arms it with the index of its own plain request (:meth:`arm`);
    a daemon thread then runs the blocking-query loop
    (``saltconsul_blocking.BlockingQuery``: index, pacing, backoff) on it and
    publishes each new index the moment Consul answers. While nothing
    changes the thread holds one blocking query per ``wait`` seconds and
    compiles make **no** request: zero non-blocking requests when idle.

    A failure, an index gone backwards or an answer without an index
    *disarms* the watch and ends the thread; the next compile asks with a
    plain request and re-arms. The thread deliberately does not back off and
    retry by itself:

    * a compile must find out about an outage by its own request: that is
      what marks its pillar stale and serves the last good copy, where an
      index kept through the outage would have it trust the cache;
    * a compile's plain request after a break starts a new cache epoch in
      the :class:`Store` (a rebuilt Consul can reach the same index with
      other data); a thread re-arming itself would skip that;
    * a master that compiles nothing sends Consul nothing during an outage.

    The loop's backoff still bounds restarts: after a failure, :meth:`arm`
    does not start a new thread before the backoff has passed (doubling from
    ``BACKOFF`` to ``BACKOFF_MAX``; a permission error waits the cap at
    once). Until then compiles make their one plain index request each, as
    with ``revalidate: always``, so a watch that keeps failing (a proxy that
    cuts long requests) costs one thread start per backoff, not per compile.
    """

    def __init__(self, client, prefix, wait, clock=time.monotonic):
        self.client = client
        self.path = "/v1/kv/" + (prefix + "/" if prefix else "")
        self.wait = wait
        self.index = None
        self.loop = saltconsul_blocking.BlockingQuery(
            f"consul pillar: index watch on {self.path}",
            min_interval=MIN_INTERVAL,
            backoff=BACKOFF,
            backoff_max=BACKOFF_MAX,
            clock=clock,
        )
        self._lock = threading.Lock()
        self._thread = None

    def query(self, index=None, wait=None):
        """
        The watch index: a plain read, or with ``index`` a blocking query
        (``wait``, default the watch's). 0 if Consul sent no index.
        """
        try:
            resp = self.client.request(
                "GET",
                self.path,
                params={"keys": True, "separator": "/"},
                index=index,
                wait=(self.wait if wait is None else wait) if index is not None else None,
            )
        except ConsulNotFound as err:
            # 404: nothing under the prefix. Consul still sends an index (the
            # prefix's deleted keys, else the KV table's): keys written under
            # the prefix later answer a blocking query on it with a higher
            # one, so an empty prefix is watched like any other. Without an
            # index (an odd proxy): 0, never equal to a real index, so the
            # prefix is asked on every compile and new keys are still seen.
            return err.index or 0
        if resp.index is None:
            raise ConsulError(f"GET {self.path}: no X-Consul-Index in Consul's answer")
        return resp.index

    def _fetch(self, index=None, wait=None):
        # An answer with no index (0) leaves the loop no index to block on.
        return self.query(index, wait) or None, None

    def arm(self, index, background=True):
        """Publish ``index`` from a compile's plain request; start the watch thread if it may run."""
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
            if not (background and index) or running:
                # No watch (revalidate: always, no index), or the running
                # thread keeps the index current from here.
                self.index = index
                return
            if self.loop.pause() > 0:
                # Backing off after a failed watch (or within min_interval of
                # its last query): compiles keep asking until then.
                self.index = None
                return
            self.index = index
            self.loop.seed(index)
            self._thread = threading.Thread(
                target=self.loop.run, args=(self._step,), name="consul-pillar-watch", daemon=True
            )
            self._thread.start()

    def _step(self, _limit):
        """One blocking query of the watch thread; False ends the thread (disarmed)."""
        with self._lock:
            if self.index is None:  # disarmed meanwhile (reset())
                self._thread = None
                return False
        resets = self.loop.stats["resets"]
        try:
            self.loop.query(self._fetch, wait=self.wait)
            why = None
        except ConsulError as err:  # recorded (and logged) by the loop
            why = f"failed: {err}"
        except Exception as err:  # pylint: disable=broad-except
            why = f"failed: {type(err).__name__}"
            log.warning("consul pillar: index watch on %s %s", self.path, why)
        if why is None and self.loop.stats["resets"] != resets:
            why = "index went back: a new cache epoch starts with the next compile"
        with self._lock:
            if why is None and self.loop.index is not None:
                self.index = self.loop.index
                return True
            # Disarmed: the next compile asks with a plain request (0: no
            # index to watch).
            self.index = 0 if why is None else None
            self._thread = None
        log.info("consul pillar: index watch on %s ended (%s); the next compile re-arms it", self.path, why or "no index in Consul's answer")
        return False


def _sha(*parts):
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


class Store:
    """
    The per-process cache for one Consul endpoint + token + cache dir + watch
    prefix. Get one with :func:`get_store`.
    """

    def __init__(self, opts, cache_dir, watch_prefix, revalidate="watch", watch_wait=60):
        self.opts = opts
        # Clients cached in module-level contexts: one for compiles, one for the
        # watch thread (a blocking query must not hold a compile's connection).
        self._context = {}
        self._watch_context = {}
        self.client = saltconsul_client.get_client(opts, self._context)
        conf = self.client.conf
        self.identity = _sha(conf["address"], conf["datacenter"], conf["token"] or "", watch_prefix)
        self.cache_dir = cache_dir
        self.revalidate = revalidate
        self.watch_prefix = watch_prefix
        self.watcher = Watcher(
            saltconsul_client.get_client(opts, self._watch_context), watch_prefix, watch_wait
        )
        self.layers = {}
        self._lock = threading.Lock()
        # An equal index only proves "unchanged" within one unbroken run of
        # answers from the same Consul: a rebuilt or restored cluster can reach
        # the same index with other data. The epoch moves on whenever that run
        # may have broken (first request, after an error, index gone backwards),
        # and only layers fetched in the current epoch are trusted as fresh.
        self.epoch = 0
        self._last_index = None
        self._broken = True

    # ------------------------------------------------------------------ stats
    def stats(self):
        """Requests made by this store: ``{"requests", "watch_requests", "fetches"}``."""
        return {
            "requests": self.client.stats["requests"],
            "watch_requests": self.watcher.client.stats["requests"],
        }

    # ------------------------------------------------------------------ index
    def current_index(self):
        """The current watch index: the armed watcher's, else one plain request."""
        if self.revalidate == "watch":
            index = self.watcher.index
            # 0 (Consul sent no index) is never watched: ask every time.
            if index:
                return index
        index = self.watcher.query()
        if self._broken or self.revalidate == "watch" or (self._last_index or 0) > index:
            self.epoch += 1
        self._broken = False
        self._last_index = index
        self.watcher.arm(index, background=self.revalidate == "watch")
        return index

    # ------------------------------------------------------------------ disk
    def _file(self, layer_key):
        return os.path.join(self.cache_dir, layer_key + ".p")

    def layer_key(self, root, mode, leaf_key):
        return _sha(self.identity, root, mode, leaf_key, FILE_VERSION)

    def _read_file(self, layer_key):
        path = self._file(layer_key)
        try:
            with open(path, "rb") as fh:
                data = _loads(fh.read())
            return Layer(data["root"], data["index"], data["fetched_at"], data["blob"])
        except FileNotFoundError:
            return None
        except Exception as err:  # pylint: disable=broad-except
            log.warning("consul pillar: ignoring unreadable cache file %s: %s", path, type(err).__name__)
            return None

    @contextlib.contextmanager
    def _file_lock(self):
        """
        Serialise cache-file writes between the master's worker processes.

        Without it a worker that fetched earlier but writes later (a slow
        compile) replaces a newer copy another worker wrote: the file would
        go back in time, and an outage would serve the older pillar.
        """
        if fcntl is None:  # no flock (Windows): atomic replace only
            yield
            return
        fd = os.open(os.path.join(self.cache_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _write_file(self, layer_key, layer):
        """Write ``layer``'s cache file unless the file already holds a newer fetch."""
        payload = _dumps(
            {"root": layer.root, "index": layer.index, "fetched_at": layer.fetched_at, "blob": layer.blob}
        )
        tmp = None
        try:
            os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
            with self._file_lock():
                on_disk = self._read_file(layer_key)
                if on_disk is not None and on_disk.fetched_at > layer.fetched_at:
                    return
                # mkstemp creates the file 0600; os.replace makes the swap
                # atomic for the other master processes reading it.
                fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".tmp-", suffix=".p")
                with os.fdopen(fd, "wb") as fh:
                    fh.write(payload)
                os.chmod(tmp, 0o600)
                os.replace(tmp, self._file(layer_key))
                tmp = None
        except OSError as err:
            log.warning("consul pillar: cannot write cache file in %s: %s", self.cache_dir, err.strerror)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def _known(self, layer_key):
        """The newest copy of a layer we have: memory, else disk (then kept in memory)."""
        layer = self.layers.get(layer_key)
        if layer is None:
            layer = self._read_file(layer_key)
            if layer is not None:
                self.layers[layer_key] = layer
        return layer

    # ------------------------------------------------------------------ fetch
    def fetch(self, specs, index):
        """
        Fetch ``specs`` (``[(layer_key, root, mode, leaf_key)]``) in one txn and
        cache them as valid for ``index``. Returns ``{layer_key: (Layer, tree)}``.
        """
        if len(specs) > MAX_TXN_OPS:
            raise ConsulError(f"too many layers for one Consul transaction ({len(specs)} > {MAX_TXN_OPS})")
        started = time.time()
        trees, warnings = fetch_trees(self.client, [spec[1:] for spec in specs])
        out = {}
        for (layer_key, root, _mode, _leaf_key), tree in zip(specs, trees):
            layer = Layer(root, index, started, _dumps(tree), epoch=self.epoch)
            self.layers[layer_key] = layer
            self._write_file(layer_key, layer)
            out[layer_key] = (layer, tree)
        if warnings:
            saltconsul_kvtree.log_warnings(warnings)
        return out

    def trees(self, layers):
        """
        The trees of ``layers`` (``[(root, mode, leaf_key)]``), fresh ones
        fetched in one request. Raises ConsulError if Consul cannot be asked
        (the caller then uses :meth:`last_good`).
        """
        specs = [(self.layer_key(root, mode, leaf_key), root, mode, leaf_key) for root, mode, leaf_key in layers]
        try:
            index = self.current_index()
            stale = []
            for spec in specs:
                layer = self._known(spec[0])
                fresh = layer is not None and layer.index == index and layer.epoch == self.epoch
                if not fresh and spec not in stale:
                    stale.append(spec)
            fetched = self.fetch(stale, index) if stale else {}
        except ConsulError:
            self._broken = True
            raise
        result = []
        for spec in specs:
            if spec[0] in fetched:
                # Freshly built and not shared with anyone: no copy needed
                # (popped, so a layer listed twice gets a copy the second time).
                result.append(fetched.pop(spec[0])[1])
            else:
                result.append(self.layers[spec[0]].tree())
        return result

    def last_good(self, layers):
        """
        ``(trees, oldest_fetched_at)`` from the last good copies, or ``(None,
        missing_roots)`` if a layer has none.

        Each layer's copy is the newer (by fetch time) of this process's
        memory and the cache file: every master worker process keeps its own
        memory copies, but all of them write the one file, so a worker that
        has not compiled since a change holds an older copy in memory than
        the file another worker wrote after the change. Memory alone would
        serve that worker's older pillar during an outage.
        """
        trees = []
        oldest = None
        missing = []
        for root, mode, leaf_key in layers:
            layer_key = self.layer_key(root, mode, leaf_key)
            layer = self.layers.get(layer_key)
            on_disk = self._read_file(layer_key)
            if on_disk is not None and (layer is None or on_disk.fetched_at > layer.fetched_at):
                # Kept in memory as read from disk (no epoch): never trusted as
                # fresh by trees(), only as the last good copy.
                layer = self.layers[layer_key] = on_disk
            if layer is None:
                missing.append(root)
                continue
            trees.append(layer.tree())
            oldest = layer.fetched_at if oldest is None else min(oldest, layer.fetched_at)
        if missing:
            return None, missing
        return trees, oldest


def _group(results, roots):
    """
    Split a txn's flat result list into one entry list per get-tree op.
    Each op's entries come sorted and all start with its root; the next op
    begins where a key leaves the current root or stops increasing (nested
    roots repeat keys).
    """
    if len(roots) == 1:
        return [[item["KV"] for item in results if isinstance(item, dict) and item.get("KV")]]
    groups = [[] for _ in roots]
    op = 0
    prev = None
    prefixes = [r + "/" for r in roots]
    for item in results:
        entry = item.get("KV") if isinstance(item, dict) else None
        if not entry:
            continue
        key = entry["Key"]
        if op < len(roots) and (not key.startswith(prefixes[op]) or (prev is not None and key <= prev)):
            op += 1
            while op < len(roots) and not key.startswith(prefixes[op]):
                op += 1
            prev = None
        if op >= len(roots):
            break
        groups[op].append(entry)
        prev = key
    return groups


def get_store(opts, cache_dir, watch_prefix, revalidate="watch", watch_wait=60):
    """The process-wide :class:`Store` for this Consul config, cache dir and watch prefix."""
    conf = saltconsul_config.parse_config(opts)
    key = (
        os.getpid(),
        saltconsul_client._fingerprint(conf),  # pylint: disable=protected-access
        cache_dir,
        watch_prefix,
        revalidate,
        float(watch_wait),
    )
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            for stale_key in [k for k in _STORES if k[0] != os.getpid()]:
                _STORES.pop(stale_key, None)
            store = _STORES[key] = Store(opts, cache_dir, watch_prefix, revalidate, watch_wait)
    return store


def reset():
    """Forget every store of this process (tests and benchmarks)."""
    with _STORES_LOCK:
        for store in _STORES.values():
            store.watcher.index = None
        _STORES.clear()


def fetch_trees(client, layers):
    """
    Read ``layers`` (``[(root, mode, leaf_key)]``) from Consul in one request
    and decode them: ``(trees, warnings)``, warnings as ``(key, what)`` (key
    names only, never values). What a compile fetches (:meth:`Store.fetch`)
    and what the runners show.

    Several layers: one ``PUT /v1/txn`` with a read-only ``get-tree`` per
    layer (one consistent read of all of them). One layer: ``GET
    /v1/kv/<root>/?recurse``, the same read of the same keys (ACL filtering
    included) whose answer lacks the ``{"KV": ...}`` wrapper around every
    entry: a tenth less JSON to parse for a large layer.
    """
    if len(layers) == 1:
        (root, mode, leaf_key), = layers
        resp = client.request("GET", saltconsul_kv.kv_path(root + "/"), params={"recurse": True}, not_found_ok=True)
        with paused_gc():
            entries = (resp.json() if resp is not None else None) or []
            warnings = []
            return [saltconsul_kvtree.tree_from_consul(entries, root, mode, leaf_key, warnings)], warnings
    ops = [{"KV": {"Verb": "get-tree", "Key": root + "/"}} for root, _, _ in layers]
    resp = client.request("PUT", "/v1/txn", json=ops, idempotent=True)
    with paused_gc():
        return _decode_txn(resp, layers)


def _decode_txn(resp, layers):
    body = resp.json() or {}
    if body.get("Errors"):
        # Read-only get-tree ops do not fail; report only the ops' indexes.
        where = [e.get("OpIndex") for e in body["Errors"]]
        raise ConsulError(f"PUT /v1/txn: Consul reported errors for layer operations {where}")
    results = body.get("Results") or []
    grouped = _group(results, [root for root, _, _ in layers])
    warnings = []
    trees = [
        saltconsul_kvtree.tree_from_consul(entries, root, mode, leaf_key, warnings)
        for (root, mode, leaf_key), entries in zip(layers, grouped)
    ]
    return trees, warnings


def check_readable(client, roots):
    """
    Raise ConsulPermissionDenied unless the client's token may read each
    layer folder. Consul silently filters unreadable keys out of a
    transaction and of listings, so a token without read would look like
    empty layers; a plain read of the folder key (``<root>/``) is answered
    403 instead. One small request per folder (runners, not compiles).
    """
    for root in roots:
        client.request("GET", saltconsul_kv.kv_path(root + "/"), not_found_ok=True)


def cache_report(opts, conf, layers, index):
    """
    How the master's pillar cache stands for ``layers`` (``[(root, mode,
    leaf_key)]``) against Consul's current watch ``index``, without
    requests or writes: ``{"summary": text, "layers": {root: {"state":
    "fresh" | "stale" | "absent", "fetched_at"}}}``.

    The store of this process is used if one exists (the ext_pillar runs in
    it); otherwise the master's cache files (shared by all master processes).
    A layer is fresh when its copy was fetched at the current index.
    """
    probe = Store(opts, conf["cache_dir"], conf["watch_prefix"], "always", conf["watch_wait"])
    with _STORES_LOCK:
        live = [
            store
            for key, store in _STORES.items()
            if key[0] == os.getpid() and store.cache_dir == conf["cache_dir"] and store.identity == probe.identity
        ]
    store = live[0] if live else probe
    out = {}
    for root, mode, leaf_key in layers:
        layer_key = store.layer_key(root, mode, leaf_key)
        layer = store.layers.get(layer_key) if live else store._read_file(layer_key)
        if layer is None:
            out[root] = {"state": "absent", "fetched_at": None}
            continue
        fresh = layer.index == index and (not live or layer.epoch == store.epoch)
        out[root] = {"state": "fresh" if fresh else "stale", "fetched_at": layer.fetched_at}
    probe.client.close()
    probe.watcher.client.close()
    states = sorted({item["state"] for item in out.values()})
    where = "this process's pillar cache" if live else f"the master's pillar cache files in {conf['cache_dir']}"
    if not out:
        summary = "no layer to compare with the cache"
    elif states == ["fresh"]:
        summary = f"{where}: every layer fresh (fetched at Consul's current index)"
    elif states == ["absent"]:
        summary = f"{where}: no copy of these layers (never compiled with this config and token)"
    else:
        counts = ", ".join(f"{sum(1 for i in out.values() if i['state'] == s)} {s}" for s in states)
        summary = f"{where}: {counts} (stale: Consul changed since; the next compile fetches again)"
    return {"summary": summary, "layers": out}
