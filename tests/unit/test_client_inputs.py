"""Bad local input to the client commands gives one clear line, not a traceback."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli.main import main
from appliance.client.defaults import DefaultsError, load_defaults
from appliance.client.inspect import InspectError, load_any


def test_inspect_malformed_pem(tmp_path: Path):
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nZZZ\n-----END CERTIFICATE-----\n")
    with pytest.raises(InspectError, match="malformed PEM"):
        load_any(bad)
    result = CliRunner().invoke(main, ["inspect", str(bad)])
    assert result.exit_code == 1 and "malformed PEM" in result.output and "Traceback" not in result.output


def test_damaged_defaults(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HSMCA_PATH", str(tmp_path))
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "defaults.json").write_text("{")
    with pytest.raises(DefaultsError, match="bootstrap"):
        load_defaults()
    result = CliRunner().invoke(main, ["token", "x"])
    assert result.exit_code == 1 and "hsmca bootstrap" in result.output


def test_certificate_into_a_missing_directory(tmp_path: Path):
    result = CliRunner().invoke(main, ["certificate", "a", str(tmp_path / "no" / "a.crt"), str(tmp_path / "a.key"),
                                       "--ca-url", "https://localhost:9", "--root", str(tmp_path / "r.crt")])
    assert result.exit_code == 1 and "is not a directory" in result.output
