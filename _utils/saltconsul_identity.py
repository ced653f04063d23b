"""
Minion identity in Consul: a token of its own for every minion, minted by the
master from the **authenticated minion ID** and the environment the master
derives from it (never from grains or anything the minion says).

What a minted token holds (docs/acl.md, "Minted minion tokens"):

* a *node identity* for the minion's own node (``node "<node>" write``,
  service and node reads): its client agent can use the same token;
* a *service identity* for each service its pillar has it register
  (``consul_register``, ``consul_primary``, ``consul_failover``, ``app``):
  ``service "<name>" write`` and nothing for other names;
* one policy of its own, ``salt-minion-<id>``: sessions and the agent of its
  own node only, the single-holder lock keys **of its own environment** only
  (``locks/<service>/<postfix>/``), reads of the lock folder and sessions
  (who holds a lock), and the KV reads the operator templated per
  environment (``secrets/demoapp/{type}/{group}/``); nothing under the pillar
  layer folders (pillar flows through the master only);
* an ``ExpirationTTL``: a stolen token dies on its own. Consul tokens cannot
  be extended, so renewal is rotation: past ``renew_after`` of its life the
  master mints the next one and the old one lives on until it expires (no
  gap for anything still holding it).

Delivery: the secret is *sealed* to the minion's accepted public key
(RSA-OAEP) and put in that minion's pillar (``consul_minion_token``): only
the minion's private key opens it, so ``pillar.items``, the job cache and the
master's pillar cache hold ciphertext only. The minion unseals it once per
new token into ``<cachedir>/consul/minion_token.json`` (0600), and every
salt-consul component on the minion uses it (``saltconsul_config``).

Discovery trusts identity, not tags: a tag is a claim anyone with ``service
"db" write`` can make, a node name is bound to a token by its node identity.
With minted tokens (the sealed record says ``trust: node``) environment-scoped
discovery keeps an instance only if its **node name** parses to the wanted
environment (:func:`node_matches`).

Plain module, no Salt dunders; raises the project's exceptions only.
"""

import base64
import fcntl
import hashlib
import json
import logging
import os
import re
import time

import saltconsul_duration
import saltconsul_env
import saltconsul_secrets
from saltconsul_errors import ConsulACLNotFound, ConsulError, ConsulInvalidRequest, ConsulNotFound

log = logging.getLogger(__name__)

PILLAR_KEY = "consul_minion_token"
DESCRIPTION_PREFIX = "salt-minion "
TRUST_NODE = "node"

DEFAULTS = {
    "enabled": False,
    "ttl": "24h",  # ExpirationTTL of each minted token
    "renew_after": 0.5,  # fraction of the TTL after which the next token is minted
    "policy_prefix": "salt-minion-",
    # The minion's Consul node name (its node identity; Consul allows letters,
    # digits, - and _ only). The default parses back to the environment by the
    # default hostname patterns (mydc1-prod-gg-db01): discovery checks that.
    "node_name": "{datacenter}-{type}-{group}-{host}",
    "datacenter": None,  # the node identity's datacenter; default: the env's datacenter
    "local": False,  # Local tokens (outside the primary ACL datacenter)
    "policies": [],  # extra policies linked to every minted token
    "kv_read": [],  # KV prefixes to read, templated by the environment
    "lock_prefix": saltconsul_env.LOCK_PREFIX,
    "service_keys": [
        "consul_register:services",
        "consul_primary:services",
        "consul_failover:services",
        "app:service",
    ],
    "single_holder_keys": ["consul_primary:services", "consul_failover:services"],
    "store_dir": None,  # default <master cachedir>/consul_tokens
    # Environment DNS names answered by identity: for each of these services the
    # master keeps <service>.<postfix> (a prepared query, exact name, so it wins
    # over consul.dns's template) running with a token that may read only the
    # nodes of that environment (node_prefix of node_name up to {host}).
    "dns_services": [],
    "dns_ttl": "",
    # The minting token (acl = "write"); default: the master's consul: token.
    "token": None,
    "token_file": None,
}

_SAFE = re.compile(r"[^A-Za-z0-9_-]")


# --------------------------------------------------------------------------- config


def parse_config(opts, overrides=None):
    """
    The ``consul:minion_tokens`` section of the master opts (``overrides``,
    e.g. ext_pillar arguments, win). Raises ConsulInvalidRequest on bad values.
    """
    section = ({} if opts is None else opts).get("consul") or {}
    section = section.get("minion_tokens") if isinstance(section, dict) else None
    conf = dict(DEFAULTS)
    for source, what in ((section, "consul:minion_tokens"), (overrides, "ext_pillar consul_token")):
        if source is None:
            continue
        if not isinstance(source, dict):
            raise ConsulInvalidRequest(f"{what} must be a mapping")
        unknown = set(source) - set(DEFAULTS)
        if unknown:
            raise ConsulInvalidRequest(f"{what}: unknown option(s) {', '.join(sorted(unknown))}")
        conf.update({k: v for k, v in source.items() if v is not None})
    try:
        conf["ttl_seconds"] = saltconsul_duration.seconds(conf["ttl"], "minion_tokens:ttl")
    except saltconsul_duration.DurationError as err:
        raise ConsulInvalidRequest(str(err)) from None
    if conf["ttl_seconds"] < 60:
        raise ConsulInvalidRequest("minion_tokens:ttl must be at least 1m (Consul's minimum)")
    renew = conf["renew_after"]
    if isinstance(renew, bool) or not isinstance(renew, (int, float)) or not 0 < renew < 1:
        raise ConsulInvalidRequest("minion_tokens:renew_after must be a fraction between 0 and 1")
    for key in ("policies", "kv_read", "service_keys", "single_holder_keys", "dns_services"):
        if not isinstance(conf[key], list) or not all(isinstance(v, str) and v for v in conf[key]):
            raise ConsulInvalidRequest(f"minion_tokens:{key} must be a list of strings")
    bad = [name for name in conf["dns_services"] if not saltconsul_env.is_service_name(name)]
    if bad:
        raise ConsulInvalidRequest(f"minion_tokens:dns_services: not service names: {', '.join(map(repr, bad))}")
    if not _SAFE.sub("", conf["policy_prefix"]) == conf["policy_prefix"]:
        raise ConsulInvalidRequest("minion_tokens:policy_prefix may hold letters, digits, - and _ only")
    conf["store_dir"] = conf["store_dir"] or os.path.join(
        (opts or {}).get("cachedir") or "/var/cache/salt/master", "consul_tokens"
    )
    return conf


# --------------------------------------------------------------------------- the scope


def _pillar_path(pillar, path):
    value = pillar
    for part in path.split(":"):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _names(pillar, keys):
    names = set()
    for key in keys:
        value = _pillar_path(pillar or {}, key)
        if isinstance(value, dict):
            names.update(value)
        elif isinstance(value, str):
            names.add(value)
        elif isinstance(value, list):
            names.update(v for v in value if isinstance(v, str))
    return sorted(n for n in names if isinstance(n, str) and saltconsul_env.is_service_name(n))


def scope(minion_id, env, pillar, conf):
    """
    What the token of ``minion_id`` may do, from its master-derived ``env``
    and its master-compiled ``pillar``: ``{node, datacenter, services,
    single_holders, kv_read, postfix}``.
    """
    fields = {k: v for k, v in env.items() if isinstance(v, str)}
    fields["minion_id"] = minion_id
    node = node_name(minion_id, fields, conf["node_name"])
    kv_read = []
    for template in conf["kv_read"]:
        try:
            prefix = template.format(**fields)
        except (KeyError, IndexError, ValueError):
            # A field this minion has no value for: the prefix is skipped, never widened.
            continue
        kv_read.append(prefix)
    return {
        "node": node,
        "datacenter": conf["datacenter"] or env.get("datacenter"),
        "services": _names(pillar, conf["service_keys"]),
        "single_holders": _names(pillar, conf["single_holder_keys"]) if env.get("postfix") else [],
        "kv_read": sorted(set(kv_read)),
        "postfix": env.get("postfix"),
    }


def node_name(minion_id, fields, template):
    """
    The node name of ``minion_id``: ``template`` over its environment fields,
    or (a field unknown) the minion ID itself; either with every character
    Consul refuses in a node identity turned into ``-``.
    """
    try:
        name = template.format(**fields)
    except (KeyError, IndexError, ValueError):
        name = minion_id
    name = _SAFE.sub("-", name).strip("-")
    if not name:
        raise ConsulInvalidRequest(f"minion {minion_id!r} has no usable Consul node name")
    return name


def node_prefix(env, conf):
    """
    The node-name prefix every node of ``env`` has (``node_name`` up to its
    trailing ``{host}``: ``mydc1-prod-gg-``), or None when the template does
    not end in ``{host}`` or a field is unknown.
    """
    template = conf["node_name"]
    if not template.endswith("{host}"):
        return None
    fields = {k: v for k, v in env.items() if isinstance(v, str)}
    try:
        prefix = template[: -len("{host}")].format(**fields)
    except (KeyError, IndexError, ValueError):
        return None
    prefix = _SAFE.sub("-", prefix)
    return prefix if prefix.strip("-") else None


def dns_plan(env, conf):
    """
    The identity-filtered DNS names of ``env``: ``{policy, rules, queries:
    {name: definition-without-token}}``, or None when there is nothing to do.
    """
    postfix, prefix = env.get("postfix"), node_prefix(env, conf)
    if not conf["dns_services"] or not postfix or not prefix:
        return None
    rules = (
        "# The environment's DNS names answer with the nodes of that environment only.\n"
        'service_prefix "" { policy = "read" }\n'
        f"node_prefix {json.dumps(prefix)} {{ policy = \"read\" }}\n"
    )
    queries = {
        f"{service}.{postfix}": {
            "Name": f"{service}.{postfix}",
            "Service": {"Service": service, "Tags": [env["type"], env["group"]], "OnlyPassing": True},
            "DNS": {"TTL": conf["dns_ttl"] or ""},
        }
        for service in conf["dns_services"]
    }
    return {"policy": f"salt-dns-env-{_SAFE.sub('_', postfix)}", "rules": rules, "queries": queries, "postfix": postfix}


def policy_name(minion_id, conf):
    """``salt-minion-<id>`` (Consul policy names: letters, digits, ``-`` and ``_``, at most 128)."""
    digest = hashlib.sha256(minion_id.encode()).hexdigest()[:8]
    return f"{conf['policy_prefix']}{_SAFE.sub('_', minion_id)[:100]}-{digest}"


def rules(scope_):
    """The HCL rules of a minion's own policy (see the module docstring)."""
    q = json.dumps
    node = scope_["node"]
    lines = [
        "# Its own node: the lock session of consul.primary, and its agent (the agent token).",
        f"session {q(node)} {{ policy = \"write\" }}",
        f"agent {q(node)} {{ policy = \"write\" }}",
        "# Discovery and who holds a lock: reads only.",
        'node_prefix "" { policy = "read" }',
        'service_prefix "" { policy = "read" }',
        'session_prefix "" { policy = "read" }',
    ]
    lock_prefix = scope_.get("lock_prefix", saltconsul_env.LOCK_PREFIX).strip("/")
    lines.append(f"key_prefix {q(lock_prefix + '/')} {{ policy = \"read\" }}")
    postfix = scope_["postfix"]
    for service in scope_["single_holders"]:
        lines.append(f"# {service}: the lock of its own environment only.")
        key = f"{lock_prefix}/{service}/{postfix}/"
        lines.append(f"key_prefix {q(key)} {{ policy = \"write\" }}")
    for prefix in scope_["kv_read"]:
        lines.append(f"key_prefix {q(prefix)} {{ policy = \"read\" }}")
    return "\n".join(lines) + "\n"


def token_body(minion_id, scope_, policy, conf):
    """The request body of a new minted token (no secret: Consul generates it)."""
    node_identity = {"NodeName": scope_["node"]}
    if scope_["datacenter"]:
        node_identity["Datacenter"] = scope_["datacenter"]
    return {
        "Description": DESCRIPTION_PREFIX + minion_id,
        "Policies": [{"Name": policy}] + [{"Name": name} for name in conf["policies"]],
        "NodeIdentities": [node_identity],
        "ServiceIdentities": [{"ServiceName": name} for name in scope_["services"]],
        "ExpirationTTL": saltconsul_duration.for_consul(conf["ttl"], "minion_tokens:ttl"),
        "Local": bool(conf["local"]),
    }


def scope_digest(scope_, conf):
    """A digest of what a token may do: a change of scope mints a new token."""
    material = {"scope": scope_, "policies": conf["policies"], "local": bool(conf["local"])}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def needs_mint(record, digest, conf, now=None):
    """True when ``record`` (the master's copy of the minion's current token) must be replaced."""
    if not record or record.get("digest") != digest:
        return True
    now = time.time() if now is None else now
    created, expires = record.get("created", 0), record.get("expires", 0)
    return now >= created + (expires - created) * conf["renew_after"]


# --------------------------------------------------------------------------- sealing


def _load_public(path):
    from cryptography.hazmat.primitives import serialization

    with open(path, "rb") as fh:
        return serialization.load_pem_public_key(fh.read())


def _oaep():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def seal(public_key_path, secret):
    """``secret`` encrypted to the RSA public key in ``public_key_path`` (base64 text)."""
    return base64.b64encode(_load_public(public_key_path).encrypt(secret.encode(), _oaep())).decode()


def unseal(private_key_path, sealed):
    """The secret ``seal`` sealed, opened with the private key in ``private_key_path``."""
    from cryptography.hazmat.primitives import serialization

    try:
        with open(private_key_path, "rb") as fh:
            key = serialization.load_pem_private_key(fh.read(), password=None)
        return key.decrypt(base64.b64decode(sealed), _oaep()).decode()
    except (ValueError, TypeError) as err:
        # Never the ciphertext or the key in the message.
        raise ConsulInvalidRequest(f"the minted Consul token cannot be opened with {private_key_path}: {type(err).__name__}") from None


# --------------------------------------------------------------------------- the minion side


def _minion_store(opts):
    return os.path.join(opts.get("cachedir") or "/var/cache/salt/minion", "consul", "minion_token.json")


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("salt-consul: ignoring unreadable token record %s (%s)", path, type(err).__name__)
        return None


def minion_record(opts, now=None):
    """
    On a minion: the minted token record ``{secret, accessor, expires, node,
    trust}`` this minion holds, or None. A new sealed token in ``opts['pillar']``
    is opened once and stored 0600; with none in pillar (the master down, say)
    the stored one is used until it expires.
    """
    if opts is None or not hasattr(opts, "get") or opts.get("__role") == "master":
        return None
    pillar = opts.get("pillar")
    sealed = pillar.get(PILLAR_KEY) if isinstance(pillar, dict) else None
    path = _minion_store(opts)
    stored = _read_json(path)
    if isinstance(sealed, dict) and isinstance(sealed.get("sealed"), str):
        digest = hashlib.sha256(sealed["sealed"].encode()).hexdigest()
        if not stored or stored.get("sealed_digest") != digest:
            key = os.path.join(opts.get("pki_dir") or "/etc/salt/pki/minion", "minion.pem")
            secret = unseal(key, sealed["sealed"])
            stored = {
                "secret": secret,
                "sealed_digest": digest,
                "accessor": sealed.get("accessor"),
                "expires": sealed.get("expires"),
                "node": sealed.get("node"),
                "trust": sealed.get("trust"),
                "agent_accessor": (stored or {}).get("agent_accessor"),
            }
            write_json_private(path, stored)
    if not stored or not stored.get("secret"):
        return None
    now = time.time() if now is None else now
    if stored.get("expires") and now >= stored["expires"]:
        log.warning("salt-consul: the minted Consul token %s has expired", stored.get("accessor"))
        return None
    return stored


def mark_agent_token(opts, accessor):
    """Remember that the local agent holds the minted token ``accessor`` (no write when it already does)."""
    path = _minion_store(opts)
    stored = _read_json(path) or {}
    if stored.get("agent_accessor") != accessor:
        stored["agent_accessor"] = accessor
        write_json_private(path, stored)


def write_json_private(path, data):
    """``data`` as JSON in ``path``, mode 0600, written whole or not at all."""
    saltconsul_secrets.write_secret_file(path, json.dumps(data, sort_keys=True))


def trusts_nodes(opts):
    """True when this minion runs on a minted token: discovery then trusts node names, not tags."""
    pillar = opts.get("pillar") if opts is not None and hasattr(opts, "get") else None
    sealed = pillar.get(PILLAR_KEY) if isinstance(pillar, dict) else None
    return isinstance(sealed, dict) and sealed.get("trust") == TRUST_NODE


def node_matches(node, wanted, env_conf=None):
    """
    True when the node name ``node`` parses (by the hostname patterns, never
    the host's own overrides) to an environment with every field of
    ``wanted`` (``{"type": "prod", "group": "gg"}``).
    """
    patterns = {k: v for k, v in (env_conf or {}).items() if k not in saltconsul_env.FIELDS}
    parsed = saltconsul_env.parse(node, patterns)
    return all(parsed.get(field) == value for field, value in wanted.items())


# --------------------------------------------------------------------------- the master side


class Minter:
    """
    Mints, finds, renews and revokes minion tokens on the master (``client``
    holds a token with ``acl = "write"``). The master keeps each minion's
    current token in ``store_dir/<id>.json`` (0600) so that a pillar compile
    makes no Consul request while the token is fresh.
    """

    def __init__(self, client, conf):
        self.client = client
        self.conf = conf

    def _path(self, minion_id):
        return os.path.join(self.conf["store_dir"], _SAFE.sub("_", minion_id) + "-" + hashlib.sha256(minion_id.encode()).hexdigest()[:8] + ".json")

    def record(self, minion_id):
        return _read_json(self._path(minion_id))

    def ensure(self, minion_id, env, pillar, now=None):
        """The minion's current token record, minting (and storing) a new one when needed."""
        scope_ = dict(scope(minion_id, env, pillar, self.conf), lock_prefix=self.conf["lock_prefix"])
        digest = scope_digest(scope_, self.conf)
        record = self.record(minion_id)
        if not needs_mint(record, digest, self.conf, now):
            return record
        # The master's worker processes compile pillar side by side: one mint per minion at a time.
        os.makedirs(self.conf["store_dir"], mode=0o700, exist_ok=True)
        with open(self._path(minion_id) + ".lock", "a", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            record = self.record(minion_id)
            if not needs_mint(record, digest, self.conf, now):
                return record
            return self.mint(minion_id, scope_, digest)

    def mint(self, minion_id, scope_, digest):
        policy = policy_name(minion_id, self.conf)
        self._put_policy(minion_id, policy, rules(scope_))
        body = token_body(minion_id, scope_, policy, self.conf)
        created = self.client.put("/v1/acl/token", json=body)
        now = time.time()
        record = {
            "minion_id": minion_id,
            "accessor": created["AccessorID"],
            "secret": created["SecretID"],
            "created": now,
            "expires": now + self.conf["ttl_seconds"],
            "node": scope_["node"],
            "digest": digest,
            "sealed": None,
        }
        write_json_private(self._path(minion_id), record)
        log.info("consul minion tokens: minted %s for %s (node %s)", created["AccessorID"], minion_id, scope_["node"])
        return record

    def _policy(self, policy):
        """The policy named ``policy``, or None (Consul 1.8 answers 403 "ACL not found", newer ones 404)."""
        try:
            return self.client.get(f"/v1/acl/policy/name/{policy}")
        except (ConsulNotFound, ConsulACLNotFound):
            return None

    def _put_policy(self, minion_id, policy, hcl):
        self._put_policy_named(policy, f"salt-minion {minion_id}: its own node, sessions and locks", hcl)

    def _put_policy_named(self, policy, description, hcl):
        body = {"Name": policy, "Description": description, "Rules": hcl}
        current = self._policy(policy)
        if not current:
            self.client.put("/v1/acl/policy", json=body)
        elif current.get("Rules") != hcl:
            self.client.put(f"/v1/acl/policy/{current['ID']}", json=dict(body, ID=current["ID"]))

    def ensure_dns(self, env):
        """Keep ``env``'s identity-filtered DNS names (:func:`dns_plan`); no request once they are in place."""
        plan = dns_plan(env, self.conf)
        if plan is None:
            return None
        path = os.path.join(self.conf["store_dir"], "dns-" + _SAFE.sub("_", plan["postfix"]) + ".json")
        digest = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]
        record = _read_json(path)
        if record and record.get("digest") == digest:
            return record
        self._put_policy_named(plan["policy"], f"salt-dns {plan['postfix']}: the environment's nodes", plan["rules"])
        if not record or not record.get("secret"):
            created = self.client.put(
                "/v1/acl/token",
                json={"Description": f"salt-dns {plan['postfix']}", "Policies": [{"Name": plan["policy"]}], "Local": bool(self.conf["local"])},
            )
            record = {"accessor": created["AccessorID"], "secret": created["SecretID"]}
        existing = {q.get("Name"): q for q in self.client.get("/v1/query") or []}
        for name, definition in plan["queries"].items():
            body = dict(definition, Token=record["secret"])
            if name in existing:
                self.client.put(f"/v1/query/{existing[name]['ID']}", json=dict(body, ID=existing[name]["ID"]))
            else:
                self.client.request("POST", "/v1/query", json=body)
        record.update(digest=digest, queries=sorted(plan["queries"]))
        write_json_private(path, record)
        log.info("consul minion tokens: DNS names %s answer by node identity", ", ".join(record["queries"]))
        return record

    def sealed(self, minion_id, record, public_key_path):
        """The pillar entry for ``record``: its secret sealed to the minion's key (sealed once per token)."""
        if not record.get("sealed"):
            record["sealed"] = seal(public_key_path, record["secret"])
            write_json_private(self._path(minion_id), record)
        return {
            "sealed": record["sealed"],
            "accessor": record["accessor"],
            "expires": record["expires"],
            "node": record["node"],
            "trust": TRUST_NODE,
        }

    def tokens(self):
        """Every minted token in Consul: ``[{minion_id, accessor, expires}]`` (no secrets)."""
        listed = self.client.get("/v1/acl/tokens") or []
        out = []
        for token in listed:
            description = token.get("Description") or ""
            if description.startswith(DESCRIPTION_PREFIX):
                out.append(
                    {
                        "minion_id": description[len(DESCRIPTION_PREFIX):],
                        "accessor": token.get("AccessorID"),
                        "expires": token.get("ExpirationTime"),
                    }
                )
        return sorted(out, key=lambda t: (t["minion_id"], t["accessor"] or ""))

    def revoke(self, minion_id):
        """Delete every token and the policy of ``minion_id``; returns the accessors deleted."""
        deleted = []
        for token in self.tokens():
            if token["minion_id"] == minion_id:
                try:
                    self.client.delete(f"/v1/acl/token/{token['accessor']}")
                except ConsulNotFound:
                    pass
                deleted.append(token["accessor"])
        policy = self._policy(policy_name(minion_id, self.conf))
        if policy:
            self.client.delete(f"/v1/acl/policy/{policy['ID']}")
        for path in (self._path(minion_id), self._path(minion_id) + ".lock"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return deleted


def get_minter(opts, context=None, overrides=None):
    """The master's :class:`Minter` for ``opts`` (the ext_pillar and the runner share it)."""
    # Here, not at the top: saltconsul_config (which the client imports) asks
    # this module for a minion's minted token.
    import saltconsul_client  # pylint: disable=import-outside-toplevel

    conf = parse_config(opts, overrides)
    connection = {}
    if conf["token_file"] and not conf["token"]:
        connection = {"token": "", "token_file": conf["token_file"]}
    elif conf["token"]:
        connection = {"token": conf["token"]}
    return Minter(saltconsul_client.get_client(opts, context, **connection), conf)


def describe_error(err):
    """A short, secret-free description of a ConsulError for log lines."""
    return f"{type(err).__name__}: {err}" if isinstance(err, ConsulError) else type(err).__name__
