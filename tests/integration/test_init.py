"""`hsmca init`: keys born in the token, sensitive and never extractable; a usable ca.json."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pkcs11
import pytest
from click.testing import CliRunner
from cryptography import x509
from pkcs11 import Attribute, ObjectClass

import softhsm
from appliance.cli.main import main
from appliance.config import load_config
from appliance.store import Store
from kms import pkcs11_module
from tests.integration.conftest import DevCA, hsmca


def _private_keys(ca: DevCA) -> dict[str, dict[str, bool]]:
    """Read the attributes with python-pkcs11 itself, not through kms/ (which could be wrong)."""
    lib = pkcs11.lib(softhsm.DEFAULT_MODULE)
    token = lib.get_token(token_label=ca.token_label)
    pin = (ca.base / "secrets" / "pin").read_text().strip()
    with pkcs11_module.lock():
        try:
            session = token.open(user_pin=pin)
        except pkcs11.exceptions.UserAlreadyLoggedIn:  # login is per process: kms/ did it
            session = token.open()
        with session:
            return {k.label: {a.name: bool(k[a]) for a in (Attribute.SENSITIVE, Attribute.ALWAYS_SENSITIVE,
                                                       Attribute.EXTRACTABLE, Attribute.NEVER_EXTRACTABLE,
                                                       Attribute.TOKEN, Attribute.PRIVATE)}
                for k in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})}


def test_init_creates_the_ca_files(dev_ca):
    config = load_config(dev_ca.config_path)
    assert config.dnsNames == ["localhost"] and config.address == ":9000"
    assert config.kms.environment["SOFTHSM2_CONF"]
    assert config.authority.provisioners[0].name == "admin"
    root = x509.load_pem_x509_certificate(dev_ca.root.read_bytes())
    inter = x509.load_pem_x509_certificate(dev_ca.intermediate.read_bytes())
    inter.verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)
    assert inter.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    for name in ("pin", "so-pin"):
        assert (dev_ca.base / "secrets" / name).stat().st_mode & 0o777 == 0o600
    assert dev_ca.config_path.stat().st_mode & 0o777 == 0o600
    with Store.from_config(config.db.model_dump(), config.base_dir) as store:
        store.check_schema()
    out = subprocess.run(["openssl", "verify", "-CAfile", str(dev_ca.root), str(dev_ca.intermediate)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_ca_keys_are_sensitive_and_never_extractable(dev_ca):
    keys = _private_keys(dev_ca)
    # audit: the key that seals the audit trail; ssh-*: the SSH CA keys
    assert set(keys) == {"root_ca", "intermediate_ca", "audit", "ssh-user-ca", "ssh-host-ca"}
    for attrs in keys.values():
        assert attrs == {"SENSITIVE": True, "ALWAYS_SENSITIVE": True, "EXTRACTABLE": False,
                         "NEVER_EXTRACTABLE": True, "TOKEN": True, "PRIVATE": True}


def test_pkcs11_tool_sees_them_that_way(dev_ca):
    pin = (dev_ca.base / "secrets" / "pin").read_text().strip()
    conf = dev_ca.config.kms.environment["SOFTHSM2_CONF"]
    out = subprocess.run(["pkcs11-tool", "--module", softhsm.DEFAULT_MODULE, "--token-label", dev_ca.token_label,
                          "--login", "--pin", pin, "--list-objects", "--type", "privkey"],
                         capture_output=True, text=True, env={"SOFTHSM2_CONF": conf})
    assert out.returncode == 0, out.stderr
    blocks = [b for b in out.stdout.split("Private Key Object") if "label" in b]
    assert len(blocks) == 5  # root, intermediate, audit, SSH user CA, SSH host CA
    for block in blocks:
        assert "sensitive" in block and "never extractable" in block
        assert "extractable" not in block.replace("never extractable", "")


def test_init_refuses_to_overwrite_without_force(tmp_path: Path):
    # As a user would: each command a new process, and SoftHSM's config under $HSMCA_PATH.
    base = tmp_path / "ca"
    base.mkdir()
    ca = DevCA(base, base / "config" / "ca.json", base / "pw", "hsmca")
    ca.password_file.write_text("a dev password\n")
    no_conf = {"SOFTHSM2_CONF": ""}
    hsmca(ca, "init", "--password-file", str(ca.password_file), "--kty", "RSA", "--size", "2048", env=no_conf)
    assert (base / "softhsm" / "softhsm2.conf").exists()
    old = ca.root.read_bytes()
    refused = hsmca(ca, "init", "--password-file", str(ca.password_file), check=False, env=no_conf)
    assert refused.returncode == 1
    assert "already exists" in refused.stderr and "--force" in refused.stderr
    assert ca.root.read_bytes() == old
    hsmca(ca, "init", "--password-file", str(ca.password_file), "--force", "--dns", "ca.internal",
          "--dns", "10.0.0.5", env=no_conf)
    assert ca.root.read_bytes() != old
    assert load_config(ca.config_path).dnsNames == ["ca.internal", "10.0.0.5"]
    assert load_config(ca.config_path).publicURL == "http://ca.internal:9080"  # the first dotted --dns value
    hsmca(ca, "init", "--password-file", str(ca.password_file), "--force", "--public-url",
          "HTTP://PKI.corp.example/hsmca/", env=no_conf)
    assert load_config(ca.config_path).publicURL == "http://pki.corp.example/hsmca"


@pytest.mark.parametrize("args, message", [
    (["--kty", "EC", "--size", "2048"], "invalid CA key options"),
    (["--address", "nonsense"], "HOST:PORT"),
    (["--public-url", "http://localhost:9080"], "--public-url: 'http://localhost:9080': the host must be"),
])
def test_init_rejects_bad_options_clearly(tmp_path: Path, args, message):
    pw = tmp_path / "pw"
    pw.write_text("secret-password\n")
    result = CliRunner().invoke(main, ["init", "--password-file", str(pw), "--token-label", "never", *args],
                                env={"HSMCA_PATH": str(tmp_path / "ca")})
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "ca" / "config" / "ca.json").exists()


def test_init_without_password_file_needs_a_terminal(tmp_path: Path):
    result = CliRunner().invoke(main, ["init"], env={"HSMCA_PATH": str(tmp_path / "ca")})
    assert result.exit_code == 1 and "--password-file" in result.output
