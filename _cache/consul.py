"""
Cache ``consul``: Salt's cache (minion data: ``grains``, ``pillar``, ``mine``
banks, and whatever else the master keeps through ``cache:``) in Consul KV,
shared by every master that points at the same Consul and prefix.

.. code-block:: yaml

    # master config
    cache: consul
    consul:                        # the one salt-consul client config
      address: https://127.0.0.1:8501
      token_file: /etc/salt/consul-cache.token
      ca_file: /etc/consul/ca.pem
      cache:                       # this driver's own options
        prefix: salt/cache         # KV folder holding <bank>/<key>
        serializer: msgpack        # msgpack (as Salt's own consul cache) | json
        readahead_window: 2        # seconds; 0 turns the bank read-ahead off (see below)
        # Any connection key of the consul: section (address, token,
        # token_file, ca_file, cert_file, key_file, verify, datacenter,
        # timeout, ...) may be repeated here to apply to the cache only.

Settings come from ``consul:`` (``saltconsul_config``, with Consul's
``CONSUL_*`` environment variables as defaults) and ``consul:cache``; the
``consul.host``/``consul.port`` style keys of Salt's old consul cache are not
read (see docs/migration.md).

Layout and cost: ``<prefix>/<bank>/<key>`` holds the serialized data; the KV
entry's ``Flags`` field holds the store time (epoch seconds), so a value and
its timestamp are written in one request and ``updated`` is one read (Salt's
old driver wrote a second ``.tstamp`` key per store and read it separately).
``store``, ``fetch``, ``updated``, ``contains``, ``list`` and ``flush`` are one
request each (``list`` is ``?keys&separator=/``); ``list_all`` with data is
one request for the whole bank. When Salt walks a bank (``list``, then
``fetch`` per key, as grain targeting does with ``grains``), the second
``fetch`` reads the rest of the bank in one request, so targeting N minions
by grain costs about four requests instead of N + 2 (``readahead_window``).
``store(..., expires=N)`` keeps Salt's own
``{"data", "_expires"}`` envelope, which ``salt.cache.Cache.fetch`` unwraps
and ``clean_expired`` (one read for the bank, then one CAS delete per expired
entry) removes.

Loading: ``salt.loader.cache`` looks in ``<extension_modules>/cache``
(``salt-run saltutil.sync_cache``), the ``cache_dirs`` option and the
``"cache"`` entry of the ``salt.loader`` entry point (``pip install``). The
master loads its cache driver at start, so sync it (or pip install) before
setting ``cache: consul``. That loader adds no utils dirs to ``sys.path``;
this module finds the shared ``saltconsul_*`` modules itself (installed,
``utils_dirs``, ``<extension_modules>/utils`` or the checkout's ``_utils``).
"""

import base64
import logging
import os
import sys
import threading
import time

import salt.payload
import salt.utils.json
from salt.exceptions import SaltCacheError, SaltInvocationError

try:
    import saltconsul_client
    import saltconsul_config
    import saltconsul_kv
    from saltconsul_errors import ConsulError
except ImportError:  # synced or cache_dirs: found in __virtual__
    saltconsul_client = saltconsul_config = saltconsul_kv = None
    ConsulError = None

log = logging.getLogger(__name__)

__virtualname__ = "consul"
__func_alias__ = {"list_": "list"}

DEFAULT_PREFIX = "salt/cache"
SERIALIZERS = ("msgpack", "json")
OPTIONS = {"prefix", "serializer", "readahead_window"}
DEFAULT_READAHEAD_WINDOW = 2.0

# Read-ahead state of this process, per bank folder (see fetch):
# {folder: [last use, listed keys, fetches of listed keys, {key: entry} or None]}
_READAHEAD = {}
_READAHEAD_LOCK = threading.Lock()


def _import_utils(opts):
    """Import the shared modules from the dirs a synced or checkout install keeps them in."""
    global saltconsul_client, saltconsul_config, saltconsul_kv, ConsulError  # pylint: disable=global-statement
    candidates = list(opts.get("utils_dirs") or [])
    if opts.get("extension_modules"):
        candidates.append(os.path.join(opts["extension_modules"], "utils"))
    candidates.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "_utils"))
    for directory in candidates:
        if not os.path.isfile(os.path.join(directory, "saltconsul_client.py")):
            continue
        added = directory not in sys.path
        if added:
            sys.path.append(directory)
        try:
            import saltconsul_client as client_mod  # pylint: disable=import-outside-toplevel
            import saltconsul_config as config_mod  # pylint: disable=import-outside-toplevel
            import saltconsul_kv as kv_mod  # pylint: disable=import-outside-toplevel
            from saltconsul_errors import ConsulError as error_cls  # pylint: disable=import-outside-toplevel
        except ImportError:
            continue
        finally:
            if added:
                sys.path.remove(directory)
        saltconsul_client, saltconsul_config, saltconsul_kv, ConsulError = client_mod, config_mod, kv_mod, error_cls
        return True
    return False


def __virtual__():
    if saltconsul_client is None and not _import_utils(__opts__):  # noqa: F821
        return (False, "consul cache: the salt-consul shared modules (saltconsul_*) are not importable")
    return __virtualname__


def _settings():
    """``(prefix, serializer, client overrides)`` from ``consul:cache``; see also ``_window``."""
    section = ((__opts__.get("consul") or {}).get("cache")) or {}  # noqa: F821
    if not isinstance(section, dict):
        raise SaltCacheError("consul cache: consul:cache must be a mapping")
    unknown = sorted(set(section) - OPTIONS - set(saltconsul_config.DEFAULTS))
    if unknown:
        raise SaltCacheError(f"consul cache: unknown consul:cache option(s) {', '.join(unknown)}")
    prefix = section.get("prefix", DEFAULT_PREFIX)
    if not isinstance(prefix, str):
        raise SaltCacheError("consul cache: consul:cache:prefix must be a string")
    serializer = section.get("serializer", "msgpack")
    if serializer not in SERIALIZERS:
        raise SaltCacheError(f"consul cache: serializer must be one of {', '.join(SERIALIZERS)}")
    return prefix.strip("/"), serializer, saltconsul_config.connection_overrides(section, "consul:cache")


def _window():
    section = ((__opts__.get("consul") or {}).get("cache")) or {}  # noqa: F821
    try:
        window = float(section.get("readahead_window", DEFAULT_READAHEAD_WINDOW))
    except (TypeError, ValueError):
        raise SaltCacheError("consul cache: readahead_window must be a number of seconds") from None
    if window < 0:
        raise SaltCacheError("consul cache: readahead_window must be 0 (off) or more")
    return window


def _client():
    _, _, overrides = _settings()
    try:
        # The cache loader packs no __context__: one client per process.
        return saltconsul_client.get_client(__opts__, saltconsul_client.PROCESS_CONTEXT, **overrides)  # noqa: F821
    except SaltInvocationError as err:
        raise SaltCacheError(f"consul cache: {err}") from None


def _key(bank, key=None, folder=False):
    """``(name, /v1/kv/path)`` for ``<prefix>/<bank>[/<key>]`` (``folder``: trailing ``/``)."""
    prefix = _settings()[0]
    parts = [p for p in (prefix, str(bank).strip("/")) if p]
    if key is not None:
        parts.append(str(key))
    name = "/".join(parts)
    try:
        path = saltconsul_kv.kv_path(name, allow_empty=True)
    except SaltInvocationError as err:
        raise SaltCacheError(f"consul cache: {err}") from None
    if folder and name:
        return name + "/", path + "/"
    return name, path


def _failed(what, name, err):
    # ConsulError texts name method, path and cause; never the token or data.
    return SaltCacheError(f"consul cache: cannot {what} {name}: {err}")


def _dumps(data):
    if _settings()[1] == "json":
        return salt.utils.json.dumps(data, sort_keys=True).encode("utf-8")
    return salt.payload.dumps(data)


def _loads(raw, name):
    if not raw:
        return {}
    try:
        if _settings()[1] == "json":
            return salt.utils.json.loads(raw.decode("utf-8"))
        return salt.payload.loads(raw)
    except Exception:  # pylint: disable=broad-except
        # The parser's text may quote the data: name the key only.
        raise SaltCacheError(f"consul cache: {name} does not hold {_settings()[1]} data") from None


def _entry(bank, key):
    """The KV entry ``{Value, Flags, ModifyIndex, ...}`` of ``bank/key``, or None."""
    name, path = _key(bank, key)
    try:
        entries = _client().get(path, not_found_ok=True)
    except ConsulError as err:
        raise _failed("read", name, err) from None
    return (name, entries[0]) if entries else (name, None)


def store(bank, key, data, expires=None, **kwargs):  # pylint: disable=unused-argument
    """
    Store ``data`` at ``bank/key`` with the store time: one request.

    bank
        The bank (``grains``, ``mine``, ``minions/<id>``, ...).
    key
        The key in the bank.
    data
        Anything ``salt.payload`` (or JSON, with ``serializer: json``) can encode.
    expires
        Seconds until Salt's ``Cache.fetch`` treats the data as gone.

    CLI Example:

    .. code-block:: bash

        salt-run cache.store mybank mykey 'hello'
    """
    if expires:
        # Salt's own envelope: Cache.fetch unwraps it, clean_expired honours it.
        data = {"data": data, "_expires": int(time.time() + float(expires))}
    name, _ = _key(bank, key)
    client = _client()
    try:
        raw = _dumps(data)
        saltconsul_kv.check_size(raw, client.max_value_size, name)
    except (TypeError, ValueError, SaltInvocationError) as err:
        raise SaltCacheError(f"consul cache: cannot store {name}: {err}") from None
    _forget(bank)
    try:
        # The store time rides in the key's Flags, so updated() costs no second request.
        saltconsul_kv.put(client, name, raw, flags=int(time.time()))
    except ConsulError as err:
        raise _failed("write", name, err) from None


def fetch(bank, key, **kwargs):  # pylint: disable=unused-argument
    """
    The data at ``bank/key``, ``{}`` when there is none: one request.

    CLI Example:

    .. code-block:: bash

        salt-run cache.fetch grains web01
    """
    found, entry = _read_ahead(bank, key)
    if found:
        name = _key(bank, key)[0]
    else:
        name, entry = _entry(bank, key)
    if entry is None or entry.get("Value") is None:
        return {}
    return _loads(base64.b64decode(entry["Value"]), name)


def _forget(bank):
    """A write by this process ends the read-ahead of its bank."""
    folder = _key(bank, folder=True)[0]
    with _READAHEAD_LOCK:
        _READAHEAD.pop(folder, None)


def _remember_listing(bank, keys):
    window = _window()
    if not window:
        return
    folder = _key(bank, folder=True)[0]
    with _READAHEAD_LOCK:
        _READAHEAD[folder] = [time.monotonic(), frozenset(keys), 0, None]


def _read_ahead(bank, key):
    """
    ``(True, entry or None)`` when a read-ahead copy of the bank answers for
    ``key``; ``(False, None)`` when the caller must ask Consul for the key.

    Salt walks a bank as ``list`` then ``fetch`` per key (grain targeting:
    ``list("grains")`` and a ``fetch`` per minion). After a ``list`` of the
    bank, the second ``fetch`` of a listed key within ``readahead_window``
    seconds reads the whole bank in one request (``?recurse``) and answers
    the rest of the walk from that copy, so a walk costs a bounded number of
    requests, whatever the number of minions. The copy is dropped once unused
    for ``readahead_window`` seconds or when this process writes the bank; a
    walk sees the bank as it was when the copy was read. A lone ``fetch``
    (or ``list`` then one ``fetch``) stays one request for one key.
    """
    window = _window()
    if not window:
        return False, None
    folder = _key(bank, folder=True)[0]
    now = time.monotonic()
    with _READAHEAD_LOCK:
        state = _READAHEAD.get(folder)
        if state is None:
            return False, None
        if now - state[0] > window:
            _READAHEAD.pop(folder, None)
            return False, None
        if key not in state[1]:
            return False, None
        state[0] = now
        if state[3] is not None:
            return True, state[3].get(key)
        state[2] += 1
        if state[2] < 2:
            return False, None
    try:
        entries = _client().get(_key(bank, folder=True)[1], params={"recurse": True}, not_found_ok=True)
    except ConsulError as err:
        raise _failed("read", folder, err) from None
    copy = {}
    for item in entries or ():
        rest = item["Key"][len(folder) :]
        if rest and "/" not in rest:
            copy[rest] = item
    with _READAHEAD_LOCK:
        state = _READAHEAD.get(folder)
        if state is not None:
            state[3] = copy
            state[0] = time.monotonic()
    return True, copy.get(key)


def updated(bank, key, **kwargs):  # pylint: disable=unused-argument
    """
    Epoch seconds of the last store of ``bank/key`` (None if absent, or if
    something else wrote it without a timestamp): one request.

    CLI Example (no runner exposes it; Salt calls it through ``salt.cache``):

    .. code-block:: python

        salt.cache.factory(__opts__).updated("grains", "web01")
    """
    _, entry = _entry(bank, key)
    if entry is None or not entry.get("Flags"):
        return None
    return int(entry["Flags"])


def flush(bank, key=None, **kwargs):  # pylint: disable=unused-argument
    """
    Remove ``bank/key``, or the whole bank with its sub-banks when ``key`` is
    None: one request. Returns True (Consul does not say whether anything existed).

    CLI Example:

    .. code-block:: bash

        salt-run cache.flush mine web01
    """
    _forget(bank)
    if key is None:
        # The trailing "/" keeps a sibling bank sharing the name's start ("grains2").
        name, path = _key(bank, folder=True)
        params = {"recurse": True}
    else:
        name, path = _key(bank, key)
        params = None
    try:
        _client().delete(path, params=params)
    except ConsulError as err:
        raise _failed("delete", name, err) from None
    return True


def _children(bank, keys):
    folder = _key(bank, folder=True)[0]
    names = []
    for full in keys or ():
        if full.startswith(folder):
            rest = full[len(folder) :].rstrip("/")
            if rest and rest not in names:
                names.append(rest)
    return names


def list_(bank, **kwargs):  # pylint: disable=unused-argument
    """
    The keys and sub-banks directly in ``bank``: one request (``?keys&separator=/``).

    CLI Example:

    .. code-block:: bash

        salt-run cache.list grains
    """
    name, path = _key(bank, folder=True)
    try:
        keys = _client().get(path, params={"keys": True, "separator": "/"}, not_found_ok=True)
    except ConsulError as err:
        raise _failed("list", name, err) from None
    names = _children(bank, keys)
    _remember_listing(bank, names)
    return names


def list_all(bank, include_data=False, **kwargs):  # pylint: disable=unused-argument
    """
    ``{key: data}`` for the keys directly in ``bank``: one request
    (``?recurse``; without ``include_data``, ``{key: None}`` from ``list``).

    CLI Example (no runner exposes it; Salt calls it through ``salt.cache``):

    .. code-block:: python

        salt.cache.factory(__opts__).list_all("grains", include_data=True)
    """
    if not include_data:
        return {key: None for key in list_(bank)}
    name, path = _key(bank, folder=True)
    try:
        entries = _client().get(path, params={"recurse": True}, not_found_ok=True)
    except ConsulError as err:
        raise _failed("read", name, err) from None
    ret = {}
    for entry in entries or ():
        rest = entry["Key"][len(name) :]
        if rest and "/" not in rest:
            raw = base64.b64decode(entry["Value"]) if entry.get("Value") else b""
            ret[rest] = _loads(raw, entry["Key"])
    return ret


def contains(bank, key=None, **kwargs):  # pylint: disable=unused-argument
    """
    Whether ``bank/key`` exists (``key`` None: whether the bank has anything):
    one request that transfers key names only.

    CLI Example (no runner exposes it; Salt calls it through ``salt.cache``):

    .. code-block:: python

        salt.cache.factory(__opts__).contains("grains", "web01")
    """
    if key is None:
        return bool(list_(bank))
    name, path = _key(bank, key)
    try:
        # A prefix listing: "web1" must not be found because "web10" exists.
        keys = _client().get(path, params={"keys": True, "separator": "/"}, not_found_ok=True)
    except ConsulError as err:
        raise _failed("read", name, err) from None
    return name in (keys or ())


def clean_expired(bank, *args, **kwargs):  # pylint: disable=unused-argument
    """
    Remove the entries of ``bank`` stored with ``expires`` that have expired:
    one read for the bank, one check-and-set delete per expired entry (an
    entry re-stored meanwhile is kept). Returns the removed keys.

    CLI Example (no runner exposes it; Salt calls it through ``salt.cache``):

    .. code-block:: python

        salt.cache.factory(__opts__).clean_expired("tokens")
    """
    name, path = _key(bank, folder=True)
    client = _client()
    try:
        entries = client.get(path, params={"recurse": True}, not_found_ok=True)
    except ConsulError as err:
        raise _failed("read", name, err) from None
    now = time.time()
    removed = []
    for entry in entries or ():
        rest = entry["Key"][len(name) :]
        if not rest or "/" in rest or not entry.get("Value"):
            continue
        try:
            data = _loads(base64.b64decode(entry["Value"]), entry["Key"])
        except SaltCacheError:
            continue
        if isinstance(data, dict) and set(data) == {"data", "_expires"} and data["_expires"] <= now:
            try:
                ok = client.delete(saltconsul_kv.kv_path(entry["Key"]), params={"cas": entry["ModifyIndex"]})
            except ConsulError as err:
                raise _failed("delete", entry["Key"], err) from None
            if ok is True:
                removed.append(rest)
    return removed


def storage_id(kwargs=None):  # pylint: disable=unused-argument
    """
    What ``MemCache`` keys its in-memory copy by: the Consul address and prefix.

    CLI Example (no runner exposes it; Salt calls it through ``salt.cache``):

    .. code-block:: python

        salt.cache.MemCache(__opts__).storage  # keyed by storage_id
    """
    prefix = _settings()[0]
    return ("consul", _client().address, prefix)
