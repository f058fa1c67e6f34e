"""`hsmca kms sign`: a detached signature through kms/ (the image's SHA256SUMS), checked by openssl alone."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SoftHSMToken
from tests.integration.conftest import HSMCA


def _hsmca(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HSMCA_PATH": str(tmp_path / "no-ca")}  # no ca.json: the URI is complete by itself
    return subprocess.run([HSMCA, *args], env=env, capture_output=True, text=True, timeout=60)


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("key_type", ["EC-P256", "RSA-3072", "Ed25519"])
def test_a_signature_made_in_the_token_verifies_with_openssl_and_fails_on_a_changed_file(
        key_type: str, softhsm_token: SoftHSMToken, tmp_path: Path) -> None:
    uri = softhsm_token.key_uri(f"image-{key_type.lower()}", pin="source")
    made = _hsmca(tmp_path, "kms", "create-key", uri, "--type", key_type)
    assert made.returncode == 0, made.stderr
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("0" * 64 + "  hsmca.qcow2\n")
    pub = tmp_path / "signing.pub.pem"
    signed = _hsmca(tmp_path, "kms", "sign", uri, str(sums), "--public-key", str(pub))
    assert signed.returncode == 0, signed.stderr
    sig = tmp_path / "SHA256SUMS.sig"
    assert f"{sig}: " in signed.stdout and "pin-value" not in signed.stdout

    def verify() -> subprocess.CompletedProcess[str]:
        if key_type == "Ed25519":
            return _openssl("pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin", "-in", str(sums),
                            "-sigfile", str(sig))
        return _openssl("dgst", "-sha256", "-verify", str(pub), "-signature", str(sig), str(sums))

    good = verify()
    assert good.returncode == 0 and "Verified" in good.stdout, good.stdout + good.stderr
    sums.write_text("1" * 64 + "  hsmca.qcow2\n")
    assert verify().returncode != 0


def test_sign_refuses_a_missing_key_and_a_huge_file_plainly(softhsm_token: SoftHSMToken, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.write_text("x\n")
    missing = _hsmca(tmp_path, "kms", "sign", softhsm_token.key_uri("nope", pin="source"), str(small))
    assert missing.returncode == 1 and missing.stderr.startswith("error: KeyNotFound"), missing.stderr
    huge = tmp_path / "huge"
    with huge.open("wb") as f:
        f.truncate((64 << 20) + 1)
    refused = _hsmca(tmp_path, "kms", "sign", softhsm_token.key_uri("nope", pin="source"), str(huge))
    assert refused.returncode == 1 and "sign a checksum list" in refused.stderr, refused.stderr
    assert "Traceback" not in missing.stderr + refused.stderr
