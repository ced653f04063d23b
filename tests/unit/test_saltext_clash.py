"""saltext-consul installed beside us: one clear warning per process, none otherwise."""

import logging
import sys

import saltconsul_loader


def test_no_warning_without_saltext_consul(caplog, monkeypatch):
    monkeypatch.setattr(saltconsul_loader, "_CLASH_WARNED", [])
    assert not saltconsul_loader.saltext_consul_installed()
    assert saltconsul_loader.warn_on_saltext_consul(logging.getLogger("t")) is False
    assert "saltext-consul" not in caplog.text


def test_one_warning_when_saltext_consul_is_importable(tmp_path, caplog, monkeypatch):
    # A stand-in for the installed package: saltext is a namespace package.
    (tmp_path / "saltext" / "consul").mkdir(parents=True)
    (tmp_path / "saltext" / "consul" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "saltext" or m.startswith("saltext.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(saltconsul_loader, "_CLASH_WARNED", [])
    log = logging.getLogger("t")
    with caplog.at_level(logging.WARNING):
        assert saltconsul_loader.warn_on_saltext_consul(log) is True
        assert saltconsul_loader.warn_on_saltext_consul(log) is False
    records = [r for r in caplog.records if "saltext-consul is installed too" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert "salt-pip uninstall saltext.consul" in records[0].getMessage()
