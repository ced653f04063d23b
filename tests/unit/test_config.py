"""Pure-logic tests of the one config schema (environment defaults, precedence)."""

import pytest
from salt.exceptions import SaltInvocationError

from saltconsul_config import parse_config


def test_defaults():
    conf = parse_config({}, environ={})
    assert conf["address"] == "http://127.0.0.1:8500"
    assert conf["token"] is None and conf["verify"] is True


def test_consul_environment_variables_are_defaults(tmp_path):
    token_file = tmp_path / "tok"
    token_file.write_text("from-file\n")
    environ = {
        "CONSUL_HTTP_ADDR": "127.0.0.1:8501",
        "CONSUL_HTTP_SSL": "true",
        "CONSUL_HTTP_TOKEN_FILE": str(token_file),
        "CONSUL_CACERT": "/ca.pem",
        "CONSUL_CLIENT_CERT": "/c.pem",
        "CONSUL_CLIENT_KEY": "/c.key",
        "CONSUL_HTTP_SSL_VERIFY": "false",
    }
    conf = parse_config({}, environ=environ)
    assert conf["address"] == "https://127.0.0.1:8501"
    assert conf["token"] == "from-file"
    assert (conf["ca_file"], conf["cert_file"], conf["key_file"]) == ("/ca.pem", "/c.pem", "/c.key")
    assert conf["verify"] is False


def test_opts_win_over_environment():
    environ = {"CONSUL_HTTP_ADDR": "http://10.9.9.9:8500", "CONSUL_HTTP_TOKEN": "env-token"}
    conf = parse_config({"consul": {"address": "http://127.0.0.2:8500", "token": "opts-token"}}, environ=environ)
    assert conf["address"] == "http://127.0.0.2:8500"
    assert conf["token"] == "opts-token"
    assert parse_config({}, environ=environ)["token"] == "env-token"


def test_call_overrides_win():
    conf = parse_config({"consul": {"token": "a"}}, environ={}, token="b")
    assert conf["token"] == "b"


def test_missing_token_file_is_clear_and_tokenless(tmp_path):
    with pytest.raises(SaltInvocationError, match="token_file"):
        parse_config({"consul": {"token_file": str(tmp_path / "nope")}}, environ={})


@pytest.mark.parametrize("bad", [{"address": "ftp://x"}, {"verify": "/path/ca.pem"}, {"timeout": 0}, {"retries": -1}])
def test_bad_values_rejected(bad):
    with pytest.raises(SaltInvocationError):
        parse_config({"consul": bad}, environ={})


def test_verify_only_disabled_explicitly():
    assert parse_config({"consul": {"verify": None}}, environ={})["verify"] is True
    assert parse_config({"consul": {"verify": False}}, environ={})["verify"] is False


def test_url_is_an_alias_of_address():
    import saltconsul_config

    conf = saltconsul_config.parse_config({"consul": {"url": "http://127.0.0.9:8500"}}, environ={})
    assert conf["address"] == "http://127.0.0.9:8500"
    both = saltconsul_config.parse_config(
        {"consul": {"url": "http://127.0.0.9:8500", "address": "http://127.0.0.8:8500"}}, environ={}
    )
    assert both["address"] == "http://127.0.0.8:8500"
