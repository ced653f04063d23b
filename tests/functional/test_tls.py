"""
TLS against a real Consul agent serving HTTPS with a CA generated here:
verification is on by default, fails clearly without the CA, supports client
certificates, and only an explicit ``verify: false`` turns it off.
"""

import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import localconsul
import saltconsul_client
from saltconsul_errors import ConsulUnreachable


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _write(path, key=None, cert=None):
    if key is not None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
    else:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def _cert(subject, key, issuer, issuer_key, *, ca=False, sans=(), usage=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        # Python 3.13 verifies with VERIFY_X509_STRICT by default: real CAs
        # carry key identifiers (and a CA its key usage), so the test's do too.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _cert("salt-consul test CA", ca_key, "salt-consul test CA", ca_key, ca=True)
    srv_key = _key()
    srv = _cert(
        "server.tls1.consul", srv_key, "salt-consul test CA", ca_key,
        sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
              x509.DNSName("server.tls1.consul")],
        usage=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    cli_key = _key()
    cli = _cert("salt-minion", cli_key, "salt-consul test CA", ca_key, usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    other_key = _key()
    other_ca = _cert("some other CA", other_key, "some other CA", other_key, ca=True)
    return {
        "ca_file": _write(d / "ca.pem", cert=ca),
        "other_ca_file": _write(d / "other-ca.pem", cert=other_ca),
        "server_cert": _write(d / "server.pem", cert=srv),
        "server_key": _write(d / "server.key", key=srv_key),
        "client_cert": _write(d / "client.pem", cert=cli),
        "client_key": _write(d / "client.key", key=cli_key),
    }


@pytest.fixture(scope="module")
def tls_agent(pki, tmp_path_factory):
    agent = localconsul.LocalConsul(
        "tls1",
        log_dir=str(tmp_path_factory.mktemp("consul-tls1")),
        tls={"cert_file": pki["server_cert"], "key_file": pki["server_key"], "ca_file": pki["ca_file"]},
    )
    agent.start()
    yield agent
    agent.cleanup()


@pytest.fixture(scope="module")
def mtls_agent(pki, tmp_path_factory):
    agent = localconsul.LocalConsul(
        "mtls1",
        log_dir=str(tmp_path_factory.mktemp("consul-mtls1")),
        tls={"cert_file": pki["server_cert"], "key_file": pki["server_key"], "ca_file": pki["ca_file"],
             "verify_incoming": True},
    )
    agent.start()
    yield agent
    agent.cleanup()


def _client(**conf):
    return saltconsul_client.get_client({"consul": dict(conf, retries=0)}, {})


def test_verifies_with_the_ca(tls_agent, pki):
    client = _client(address=tls_agent.https_addr, ca_file=pki["ca_file"])
    assert client.get("/v1/status/leader").startswith("127.0.0.1:")


def test_fails_clearly_without_the_ca(tls_agent, pki):
    # Default: system trust store, which does not know our CA.
    with pytest.raises(ConsulUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
        _client(address=tls_agent.https_addr).get("/v1/status/leader")
    # The wrong CA fails the same way.
    with pytest.raises(ConsulUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
        _client(address=tls_agent.https_addr, ca_file=pki["other_ca_file"]).get("/v1/status/leader")


def test_only_explicit_verify_false_disables(tls_agent, pki):
    assert _client(address=tls_agent.https_addr, verify=False).get("/v1/status/leader")
    # Anything that is not an explicit false keeps verification on.
    for value in (None, True, "true", "yes"):
        with pytest.raises(ConsulUnreachable):
            _client(address=tls_agent.https_addr, verify=value).get("/v1/status/leader")


def test_consul_environment_variables(tls_agent, pki, monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_ADDR", tls_agent.https_addr.replace("https://", ""))
    monkeypatch.setenv("CONSUL_HTTP_SSL", "true")
    monkeypatch.setenv("CONSUL_CACERT", pki["ca_file"])
    client = saltconsul_client.get_client({}, {})
    assert client.address == tls_agent.https_addr
    assert client.get("/v1/status/leader")


def test_client_certificates(mtls_agent, pki):
    with pytest.raises(ConsulUnreachable):
        _client(address=mtls_agent.https_addr, ca_file=pki["ca_file"]).get("/v1/status/leader")
    client = _client(
        address=mtls_agent.https_addr,
        ca_file=pki["ca_file"],
        cert_file=pki["client_cert"],
        key_file=pki["client_key"],
    )
    assert client.get("/v1/status/leader").startswith("127.0.0.1:")
    assert client.put("/v1/kv/tls/probe", content=b"ok") is True
    assert mtls_agent.api("GET", "/v1/kv/tls/probe?raw") == (200, b"ok")


def test_execution_module_over_tls(tls_agent, pki, loaders):
    loaders.opts["consul"] = {"address": tls_agent.https_addr, "ca_file": pki["ca_file"], "retries": 0}
    # The leader's address names the TLS agent's server port, so the call went there.
    assert loaders.modules.consul.status_leader() == f"127.0.0.1:{tls_agent.ports['server']}"
