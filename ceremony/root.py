"""`hsmca ceremony root`: token set-up with split PINs, the root key inside the HSM, the root certificate.

Everything that can be checked is checked before the token is touched (plan, outputs, token
label, share files), because after `C_InitToken` the only way back is a new token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from ceremony import quorum
from ceremony.context import (
    CeremonyError,
    Options,
    check_new_file,
    environment,
    prepare,
    spki_sha256,
    write_new_file,
)
from ceremony.custodians import SO_PIN, USER_PIN, Prompter, check_share_files_absent, display_shares, write_share_files
from ceremony.plan import Plan
from ceremony.transcript import Transcript, file_digest, sha256_hex
from kms import create_key, pkcs11_admin
from kms.cacerts import root_certificate
from kms.errors import KMSError


@dataclass(frozen=True)
class RootResult:
    certificate: Path
    transcript: Path
    fingerprint: str
    so_share_set: int
    user_share_set: int
    token: pkcs11_admin.TokenInfo
    rehearsal_dir: Path | None


def run_root(plan: Plan, plan_bytes: bytes, opts: Options, io: Prompter) -> RootResult:
    assert plan.ceremony == "root" and plan.key is not None
    setting = prepare(plan, opts)
    cert_path = setting.outputs / (plan.outputs.certificate or "root_ca.crt")
    check_new_file(cert_path)
    # A rehearsal's shares are throwaway: always files in the rehearsal directory.
    share_dir = setting.outputs / "shares" if opts.dry_run else opts.share_output
    if share_dir is not None:
        check_share_files_absent(share_dir, plan.custodians, (SO_PIN, USER_PIN))
    try:
        if pkcs11_admin.find_token(setting.module, setting.token) is not None:
            raise CeremonyError(f"a token labelled {setting.token!r} already exists in {setting.module}; "
                                "a root ceremony sets up a new token")
    except KMSError as exc:
        raise CeremonyError(f"the HSM is not usable: {exc}") from None

    so_secret, user_secret = quorum.new_secret(), quorum.new_secret()
    sets = {SO_PIN: quorum.split_secret(so_secret, plan.custodians, plan.quorum.threshold),
            USER_PIN: quorum.split_secret(user_secret, plan.custodians, plan.quorum.threshold)}

    t = Transcript.open(setting.transcript, "root", clock=opts.clock)
    t.record("plan.loaded", f"Loaded the plan {opts.plan_path.name!r} ({plan.name})",
             inputs={"plan": {"sha256": sha256_hex(plan_bytes), "path": str(opts.plan_path)}},
             details=environment(plan, opts, setting))
    if share_dir is not None:
        written = write_share_files(share_dir, sets)
        method = f"written to {len(written)} files in {share_dir} (rehearsal or test)"
    else:
        display_shares(sets, plan.custodians, io)
        method = "displayed to each custodian alone"
    t.record("shares.distributed",
             f"Split a new SO PIN and a new user PIN into {plan.quorum.shares} shares each, "
             f"{plan.quorum.threshold} needed; shares {method}",
             details={"custodians": list(plan.custodians), "threshold": plan.quorum.threshold,
                      "soShareSet": sets[SO_PIN].identifier, "userShareSet": sets[USER_PIN].identifier,
                      "method": method})
    try:
        so_pin, user_pin = quorum.pin_from_secret(so_secret), quorum.pin_from_secret(user_secret)
        info = pkcs11_admin.init_token(setting.module, setting.token, so_pin, user_pin, slot_id=plan.hsm.slot)
        del so_pin, so_secret  # best effort: CPython cannot promise the memory is wiped
        t.record("hsm.token-init", f"Initialised token {info.label!r} (serial {info.serial}) with the split PINs",
                 details={"token": info.as_dict()})
        key = create_key(setting.key_uri(plan.key.label, user_pin), plan.key.spec)
        del user_pin, user_secret
        public_sha = spki_sha256(key.public_key())
        t.record("key.generate", f"Generated the root key {plan.key.label!r} ({plan.key.type}) inside the token",
                 details={"label": plan.key.label, "type": plan.key.type, "publicKeySha256": public_sha,
                          "protection": pkcs11_admin.key_protection(key)})
        not_before, not_after = plan.certificate.validity(opts.clock())
        subject = plan.certificate.name()
        assert subject is not None
        cert = root_certificate(key, subject, not_before, not_after, profile=plan.profile())
    except (KMSError, ValueError) as exc:
        t.record("ceremony.failed", f"Stopped: {exc}", details={"error": str(exc)})
        raise CeremonyError(f"the ceremony stopped: {exc}; the transcript {setting.transcript} records "
                            "how far it got and stays unsealed") from None
    pem = cert.public_bytes(Encoding.PEM)
    write_new_file(cert_path, pem)
    fingerprint = sha256_hex(cert.public_bytes(Encoding.DER))
    t.record("certificate.sign", f"Self-signed the root certificate {subject.rfc4514_string()!r} in the HSM",
             outputs={"root": file_digest(cert_path)},
             details={"subject": subject.rfc4514_string(), "serial": format(cert.serial_number, "x"),
                      "notBefore": not_before.isoformat(), "notAfter": not_after.isoformat(),
                      "sha256Fingerprint": fingerprint, "publicKeySha256": public_sha})
    t.seal(key, cert)
    return RootResult(cert_path, setting.transcript, fingerprint, sets[SO_PIN].identifier,
                      sets[USER_PIN].identifier, info, setting.rehearsal_dir)

