"""
The one configuration schema for salt-consul.

Everything lives under the ``consul:`` key of the minion or master opts. Consul's
own environment variables are the defaults, so a host that already talks to
Consul with the ``consul`` CLI needs no extra configuration:

.. code-block:: yaml

    consul:
      address: https://127.0.0.1:8501   # CONSUL_HTTP_ADDR (+ CONSUL_HTTP_SSL)
      token_file: /etc/salt/consul.token # CONSUL_HTTP_TOKEN_FILE
      # token: ...                       # CONSUL_HTTP_TOKEN (prefer token_file)
      datacenter: mydc1                  # default: the agent's own
      ca_file: /etc/consul/ca.pem        # CONSUL_CACERT
      cert_file: /etc/consul/client.pem  # CONSUL_CLIENT_CERT
      key_file: /etc/consul/client.key   # CONSUL_CLIENT_KEY
      verify: true                       # CONSUL_HTTP_SSL_VERIFY; only an explicit false disables it
      timeout: 10                        # seconds for one request (read)
      connect_timeout: 3
      retries: 2                         # extra tries, idempotent requests only
      retry_backoff: 0.2                 # seconds, doubled per try, capped at 5
      max_value_size: 524288             # Consul's kv_max_value_size
      compression: false                 # ask for gzip answers (worth it only over slow links;
                                         # the usual local agent answers faster uncompressed)

The ``env`` sub-key (hostname patterns and overrides) is read by
``saltconsul_env``.
"""

import os

from salt.exceptions import SaltInvocationError

import saltconsul_identity

DEFAULTS = {
    "address": "http://127.0.0.1:8500",
    "token": None,
    "token_file": None,
    "datacenter": None,
    "ca_file": None,
    "ca_path": None,
    "cert_file": None,
    "key_file": None,
    "verify": True,
    "timeout": 10.0,
    "connect_timeout": 3.0,
    "retries": 2,
    "retry_backoff": 0.2,
    "max_value_size": 512 * 1024,
    "compression": False,
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _env_bool(value):
    value = value.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SaltInvocationError(f"not a boolean: {value!r}")


def _from_environment(environ):
    """Consul's CLI environment variables, mapped onto our keys."""
    conf = {}
    addr = environ.get("CONSUL_HTTP_ADDR")
    if addr:
        conf["address"] = addr
    if environ.get("CONSUL_HTTP_TOKEN"):
        conf["token"] = environ["CONSUL_HTTP_TOKEN"]
    if environ.get("CONSUL_HTTP_TOKEN_FILE"):
        conf["token_file"] = environ["CONSUL_HTTP_TOKEN_FILE"]
    for var, key in (
        ("CONSUL_CACERT", "ca_file"),
        ("CONSUL_CAPATH", "ca_path"),
        ("CONSUL_CLIENT_CERT", "cert_file"),
        ("CONSUL_CLIENT_KEY", "key_file"),
    ):
        if environ.get(var):
            conf[key] = environ[var]
    if environ.get("CONSUL_HTTP_SSL_VERIFY"):
        conf["verify"] = _env_bool(environ["CONSUL_HTTP_SSL_VERIFY"])
    # CONSUL_HTTP_SSL=true upgrades a scheme-less address to https.
    if environ.get("CONSUL_HTTP_SSL") and _env_bool(environ["CONSUL_HTTP_SSL"]):
        conf["_ssl"] = True
    return conf


def _normalise_address(address, ssl=False):
    address = str(address).strip().rstrip("/")
    if "://" not in address:
        address = ("https://" if ssl else "http://") + address
    scheme = address.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise SaltInvocationError(f"consul:address must be http(s)://host:port, got scheme {scheme!r}")
    return address


def parse_config(opts, environ=None, **overrides):
    """
    Build the effective client configuration from ``opts['consul']``, the
    ``CONSUL_*`` environment variables and call-site ``overrides`` (later wins:
    environment < opts < overrides). Returns a plain dict; the token is read
    from ``token_file`` here so that a missing file fails early and clearly.
    """
    environ = os.environ if environ is None else environ
    conf = dict(DEFAULTS)
    env_conf = _from_environment(environ)
    ssl = env_conf.pop("_ssl", False)
    conf.update(env_conf)
    # Not ``opts or {}``: Salt 3008's master opts (OptsDict) count every key
    # of their parent chain to answer truthiness, on every compile.
    section = ({} if opts is None else opts).get("consul") or {}
    if not isinstance(section, dict):
        raise SaltInvocationError("the 'consul' config key must be a mapping")
    # A token given in opts replaces a token file from the environment, and vice versa.
    if section.get("token") or section.get("token_file"):
        conf["token"] = None
        conf["token_file"] = None
    if section.get("url") and not section.get("address"):
        # saltext-consul's (and old core Salt's) name for the address.
        section = dict(section, address=section["url"])
    conf.update({k: v for k, v in section.items() if k in DEFAULTS and v is not None})
    # A token the master minted for this minion (sealed in its pillar) wins
    # over the configured one: it is what the master scoped for this host.
    # A call-site token or token file (an sdb profile, the cache) still wins.
    if overrides.get("token") is None and not overrides.get("token_file"):
        minted = saltconsul_identity.minion_record(opts)
        if minted:
            conf["token"], conf["token_file"] = minted["secret"], None
    conf.update({k: v for k, v in overrides.items() if k in DEFAULTS and v is not None})

    conf["address"] = _normalise_address(conf["address"], ssl)
    if conf["token_file"] and not conf["token"]:
        try:
            with open(conf["token_file"], encoding="utf-8") as fh:
                conf["token"] = fh.read().strip() or None
        except OSError as err:
            raise SaltInvocationError(
                f"cannot read consul token_file {conf['token_file']}: {err.strerror}"
            ) from None
    if isinstance(conf["verify"], str):
        conf["verify"] = _env_bool(conf["verify"])
    if conf["verify"] is not True and conf["verify"] is not False:
        raise SaltInvocationError("consul:verify must be true or false (use ca_file for a CA)")
    for key in ("timeout", "connect_timeout", "retry_backoff"):
        conf[key] = float(conf[key])
        if conf[key] <= 0:
            raise SaltInvocationError(f"consul:{key} must be positive")
    conf["retries"] = int(conf["retries"])
    if conf["retries"] < 0:
        raise SaltInvocationError("consul:retries must be 0 or more")
    conf["max_value_size"] = int(conf["max_value_size"])
    if isinstance(conf["compression"], str):
        conf["compression"] = _env_bool(conf["compression"])
    conf["compression"] = bool(conf["compression"])
    return conf


def connection_overrides(section, what):
    """
    The client settings an sdb profile or the ``consul:cache`` section gives,
    as ``get_client`` overrides (they win over the ``consul:`` section).

    Only keys of this schema are taken; ``token_file`` alone also clears a
    ``consul:token``, as in :func:`parse_config`. ``what`` names the section
    in errors.
    """
    if not isinstance(section, dict):
        raise SaltInvocationError(f"{what} must be a mapping")
    conf = {k: v for k, v in section.items() if k in DEFAULTS and v is not None}
    if conf.get("token_file") and not conf.get("token"):
        # An empty token makes parse_config read the profile's token file
        # instead of keeping a token from the consul: section.
        conf["token"] = ""
    return conf
