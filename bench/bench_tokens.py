"""
Minted minion tokens (``saltconsul_identity``, ext_pillar ``consul_token``)
on a default-deny Consul agent of this section's own, through a counting
proxy:

* ``token_mint_seconds_per_minion``: the master's first pillar compile of a
  minion's token (its policy made, the token minted, the secret sealed to the
  minion's RSA-2048 key), median over ``MINIONS`` minions;
* ``token_mint_requests_per_minion``: Consul requests for that;
* ``token_compliant_compile_requests``: requests a compile makes while the
  token is fresh (the master's stored copy answers: the floor is 0);
* ``token_renewal_requests_per_minion_hour``: requests of one rotation
  (``ensure`` past ``renew_after``) spread over the rotation period, for the
  shipped defaults (``ttl: 24h``, ``renew_after: 0.5``: one rotation every 12 h);
* ``token_seal_seconds`` / ``token_unseal_seconds``: the RSA-OAEP work, per
  token (the minion's once per token); ``token_unseal_first_seconds``: the
  first in a process, which also loads cryptography's RSA code.
"""

import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MINIONS = 50


def _key(directory, name):
    from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives.asymmetric import rsa  # pylint: disable=import-outside-toplevel

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv, pub = os.path.join(directory, name + ".pem"), os.path.join(directory, name + ".pub")
    with open(priv, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    with open(pub, "wb") as fh:
        fh.write(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def run(agent):  # pylint: disable=unused-argument
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import countingproxy  # pylint: disable=import-outside-toplevel
    import localconsul  # pylint: disable=import-outside-toplevel
    import saltconsul_client  # pylint: disable=import-outside-toplevel
    import saltconsul_env  # pylint: disable=import-outside-toplevel
    import saltconsul_identity  # pylint: disable=import-outside-toplevel

    workdir = tempfile.mkdtemp(prefix="bench-tokens-")
    acl_agent = localconsul.LocalConsul("benchacl", acl=True, log_dir=workdir)
    acl_agent.start()
    try:
        with countingproxy.CountingProxy(acl_agent.http_addr) as proxy:
            opts = {"cachedir": workdir, "consul": {"address": proxy.http_addr, "token": acl_agent.master_token, "retries": 0}}
            conf = saltconsul_identity.parse_config(opts)
            client = saltconsul_client.get_client(opts)
            mint = saltconsul_identity.Minter(client, conf)
            priv, pub = _key(workdir, "minion")
            pillar = {"consul_register": {"services": {"web": {}}}, "consul_primary": {"services": {"db": {}}}}
            times, requests, seal = [], [], []
            records = {}
            for i in range(MINIONS):
                minion = f"db{i:02d}.prod.gg.mydc1.example.com"
                env = saltconsul_env.parse(minion)
                proxy.reset()
                started = time.perf_counter()
                record = mint.ensure(minion, env, pillar)
                sealed_at = time.perf_counter()
                entry = mint.sealed(minion, record, pub)
                times.append(time.perf_counter() - started)
                seal.append(time.perf_counter() - sealed_at)
                requests.append(sum(proxy.counts().values()))
                records[minion] = (env, record, entry)
            minion, (env, record, entry) = next(iter(records.items()))
            proxy.reset()
            mint.ensure(minion, env, pillar)
            compliant = sum(proxy.counts().values())
            proxy.reset()
            rotated_at = record["created"] + (record["expires"] - record["created"]) * conf["renew_after"]
            mint.ensure(minion, env, pillar, now=rotated_at)
            renewal = sum(proxy.counts().values())
            unseals = []
            for _ in range(5):
                started = time.perf_counter()
                saltconsul_identity.unseal(priv, entry["sealed"])
                unseals.append(time.perf_counter() - started)
            period_hours = conf["ttl_seconds"] * conf["renew_after"] / 3600
            return [
                ("token_mint_seconds_per_minion", statistics.median(times)),
                ("token_mint_requests_per_minion", statistics.median(requests)),
                ("token_compliant_compile_requests", compliant),
                ("token_renewal_requests", renewal),
                ("token_renewal_requests_per_minion_hour", renewal / period_hours),
                ("token_renewal_settings", f"ttl={conf['ttl']} renew_after={conf['renew_after']} minions={MINIONS}"),
                ("token_seal_seconds", statistics.median(seal)),
                ("token_unseal_first_seconds", unseals[0]),
                ("token_unseal_seconds", statistics.median(unseals[1:])),
            ]
    finally:
        acl_agent.stop()
