"""The ACME provisioner in ca.json and `hsmca provisioner add|list|remove` (no server needed)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from appliance.cli.main import main
from appliance.config import ACMEProvisionerConfig, AuthorityConfig, load_config
from appliance.provisioners import Provisioners


def ca_json(tmp_path: Path) -> Path:
    path = tmp_path / "config" / "ca.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"root": "certs/root_ca.crt", "dnsNames": ["localhost"],
                                "db": {"type": "sqlite", "dataSource": "db/hsmca.sqlite"}}))
    return path


def test_acme_provisioners_are_a_type_of_their_own() -> None:
    auth = AuthorityConfig.model_validate({"provisioners": [
        {"type": "ACME", "name": "acme", "http01Port": 8080, "resolvers": ["127.0.0.1:5353"],
         "denyValidationTo": ["169.254.0.0/16"]}]})
    prov = next(iter(Provisioners.from_config(auth.provisioners)))
    assert prov.type == "ACME" and prov.describe(with_encrypted_key=True)["challenges"] == [
        "http-01", "dns-01", "tls-alpn-01"]
    with pytest.raises(Exception, match="ACME protocol"):
        prov.authorize(object(), datetime.now(timezone.utc))


@pytest.mark.parametrize(("field", "value"), [("resolvers", ["nope"]), ("denyValidationTo", ["10.0.0.0/33"]),
                                              ("challenges", ["http-02"]), ("http01Port", 0), ("key", {}),
                                              ("termsOfService", "see the wiki")])
def test_bad_acme_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        ACMEProvisionerConfig.model_validate({"type": "ACME", "name": "acme", field: value})


def test_provisioner_add_list_remove(tmp_path: Path) -> None:
    path = ca_json(tmp_path)
    run = CliRunner().invoke
    done = run(main, ["provisioner", "add", "acme", "--type", "ACME", "--http01-port", "8080",
                      "--tlsalpn01-port", "8443", "--resolver", "127.0.0.1:5353", "--challenge", "http-01",
                      "--terms-of-service", "https://ca.test/tos", "--config", str(path)])
    assert done.exit_code == 0, done.output
    (prov,) = load_config(path).authority.provisioners
    assert isinstance(prov, ACMEProvisionerConfig)
    assert (prov.http01Port, prov.tlsalpn01Port, prov.resolvers, prov.challenges, prov.termsOfService) == (
        8080, 8443, ["127.0.0.1:5353"], ["http-01"], "https://ca.test/tos")
    again = run(main, ["provisioner", "add", "acme", "--config", str(path)])
    assert again.exit_code == 1 and "exists already" in again.output
    bad = run(main, ["provisioner", "add", "other", "--resolver", "no-port", "--config", str(path)])
    assert bad.exit_code == 1 and "resolvers" in bad.output
    assert run(main, ["provisioner", "list", "--config", str(path)]).output.split() == ["ACME", "acme"]
    assert run(main, ["provisioner", "remove", "acme", "--config", str(path)]).exit_code == 0
    assert load_config(path).authority.provisioners == []
    assert run(main, ["provisioner", "remove", "acme", "--config", str(path)]).exit_code == 1
