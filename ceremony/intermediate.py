"""`hsmca ceremony sign-intermediate` and `cross-sign`: the root certifies another CA's key.

An intermediate for a CSR the online appliance made in its KMS, or a cross-certificate for a new
root (rollover).

Order: the plan, the CSR, the root certificate and the custodians' shares are all checked before
the HSM is opened, so a refused quorum changes nothing (not even a failed-login counter). The
transcript is opened only once the root key is in hand, so every segment it starts is sealed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from ceremony import quorum
from ceremony.context import (
    CeremonyError,
    Options,
    Setting,
    check_new_file,
    environment,
    prepare,
    spki_sha256,
    write_new_file,
)
from ceremony.custodians import USER_PIN, Prompter, prompt_shares, read_share_files
from ceremony.plan import Plan, resolve
from ceremony.transcript import Transcript, file_digest, sha256_hex
from kms import CAKey, create_key, open_key, pkcs11_admin
from kms.cacerts import CAProfile, intermediate_certificate, root_certificate
from kms.errors import KMSError
from kms.signer import spec_of_public


@dataclass(frozen=True)
class IntermediateResult:
    certificate: Path
    transcript: Path
    fingerprint: str
    custodians: tuple[str, ...]
    rehearsal_dir: Path | None


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(data) if b"-----BEGIN" in data else x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise CeremonyError(f"the CSR cannot be read: {exc}") from None
    if not csr.is_signature_valid:
        raise CeremonyError("the CSR's signature does not verify: it was not made by the key it names")
    return csr


def load_root(path: Path) -> tuple[x509.Certificate, bytes]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CeremonyError(f"cannot read the root certificate {path}: {exc.strerror}") from None
    return _load_cert(raw, str(path)), raw


def collect_shares(plan: Plan, opts: Options, io: Prompter) -> tuple[bytes, tuple[str, ...]]:
    """The user-PIN secret from the custodians present; QuorumError before anything else happens."""
    present = list(opts.custodians_present) or list(plan.custodians)
    unknown = [c for c in present if c not in plan.custodians]
    if unknown:
        raise quorum.QuorumError(f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not a custodian "
                                 f"in this plan ({', '.join(plan.custodians)})")
    if opts.shares_from is not None:
        shares = read_share_files(opts.shares_from, present, USER_PIN)
    else:
        shares = prompt_shares(present, plan.quorum.threshold, USER_PIN, io)
    secret = quorum.combine(shares, plan.custodians, plan.quorum.threshold,
                            expected_identifier=plan.quorum.share_set)
    return secret, tuple(shares)


@dataclass(frozen=True)
class _Request:
    """What the root is asked to certify: from a CSR (intermediate) or a new root (cross-sign)."""

    public_key: Any
    subject: x509.Name
    input_label: str
    input_bytes: bytes
    input_path: str
    check: tuple[str, dict[str, Any]]  # the transcript's account of the input's check
    profile: CAProfile
    output_label: str
    default_file: str


def run_intermediate(plan: Plan, plan_bytes: bytes, csr_bytes: bytes, csr_name: str, opts: Options,
                     io: Prompter) -> IntermediateResult:
    assert plan.ceremony == "intermediate"
    csr = load_csr(csr_bytes)
    return _certify(plan, plan_bytes, _Request(
        public_key=csr.public_key(), subject=_subject(plan, csr), input_label="csr", input_bytes=csr_bytes,
        input_path=csr_name, profile=plan.profile(), output_label="intermediate",
        default_file="intermediate_ca.crt",
        check=("Checked the CSR: its signature verifies with the key it names",
               {"csrSubject": csr.subject.rfc4514_string(), "publicKeySha256": spki_sha256(csr.public_key())})),
        opts, io)


def run_cross_sign(plan: Plan, plan_bytes: bytes, new_root_bytes: bytes, new_root_name: str, opts: Options,
                   io: Prompter) -> IntermediateResult:
    """A cross-certificate: the new root's subject and key, issued by this root (root rollover).

    Clients that trust only this root then validate chains that end at the new root's intermediates.
    """
    assert plan.ceremony == "cross-sign"
    new_root = _load_cert(new_root_bytes, new_root_name)
    try:
        new_root.verify_directly_issued_by(new_root)
        bc = new_root.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        raise CeremonyError(f"{new_root_name} is not a self-signed CA certificate: only a new root is cross-signed")\
            from None
    if not bc.ca:
        raise CeremonyError(f"{new_root_name} is not a CA certificate")
    planned = plan.certificate.name()
    if planned is not None and planned != new_root.subject:
        raise CeremonyError(f"the plan names subject {planned.rfc4514_string()!r} but the new root is "
                            f"{new_root.subject.rfc4514_string()!r}")
    ski = x509.SubjectKeyIdentifier.from_public_key(new_root.public_key())
    try:
        if new_root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value != ski:
            raise CeremonyError("the new root's key identifier is not the SHA-1 of its key (RFC 5280 method 1), "
                                "so a cross-certificate would not match its intermediates' AKI")
    except x509.ExtensionNotFound:
        pass
    return _certify(plan, plan_bytes, _Request(
        public_key=new_root.public_key(), subject=new_root.subject, input_label="newRoot",
        input_bytes=new_root_bytes, input_path=new_root_name, profile=plan.profile(bc.path_length),
        output_label="cross-certificate", default_file="cross.crt",
        check=("Checked the new root: self-signed CA certificate",
               {"newRootSubject": new_root.subject.rfc4514_string(),
                "newRootSha256": sha256_hex(new_root.public_bytes(Encoding.DER)),
                "publicKeySha256": spki_sha256(new_root.public_key())})), opts, io)


def _certify(plan: Plan, plan_bytes: bytes, req: _Request, opts: Options, io: Prompter) -> IntermediateResult:
    assert plan.root is not None
    setting = prepare(plan, opts)
    root_path = resolve(opts.plan_path, plan.root.certificate)
    root, root_raw = load_root(root_path)
    public_sha = spki_sha256(req.public_key)
    if plan.certificate.public_key_sha256 and plan.certificate.public_key_sha256 != public_sha:
        raise CeremonyError(f"the {req.input_label}'s key (SPKI sha256 {public_sha}) is not the one the plan "
                            f"names ({plan.certificate.public_key_sha256})")
    cert_path = setting.outputs / (plan.outputs.certificate or req.default_file)
    check_new_file(cert_path)
    not_before, not_after = plan.certificate.validity(opts.clock())

    secret, givers = collect_shares(plan, opts, io)
    try:
        if opts.dry_run:
            info, key, root = _rehearsal_root(setting, plan.root.key_label, root)
        else:
            found = pkcs11_admin.find_token(setting.module, setting.token)
            if found is None:
                raise CeremonyError(f"no token labelled {setting.token!r} in {setting.module}")
            info = found
            key = open_key(setting.key_uri(plan.root.key_label, quorum.pin_from_secret(secret)))
    except KMSError as exc:
        raise CeremonyError(f"cannot open the root key: {exc}") from None
    finally:
        del secret  # best effort: CPython cannot promise the memory is wiped
    if spki_sha256(key.public_key()) != spki_sha256(root.public_key()):
        raise CeremonyError(f"the key {plan.root.key_label!r} on token {setting.token!r} is not the key of "
                            f"the root certificate {root_path}")

    t = Transcript.open(setting.transcript, plan.ceremony, clock=opts.clock)
    try:
        t.record("plan.loaded", f"Loaded the plan {opts.plan_path.name!r} ({plan.name})",
                 inputs={"plan": {"sha256": sha256_hex(plan_bytes), "path": str(opts.plan_path)},
                         req.input_label: {"sha256": sha256_hex(req.input_bytes), "path": req.input_path},
                         "root": {"sha256": sha256_hex(root_raw), "path": str(root_path)}},
                 details=environment(plan, opts, setting))
        t.record("quorum.reconstructed", f"{len(givers)} of {plan.quorum.shares} custodians gave their user-PIN "
                 f"shares: {', '.join(givers)}", details={"custodians": list(givers),
                                                         "threshold": plan.quorum.threshold})
        t.record("hsm.login", f"Logged in to token {info.label!r} (serial {info.serial}) and opened the root key "
                 f"{plan.root.key_label!r}", details={"token": info.as_dict(),
                                                     "rootKeySha256": spki_sha256(key.public_key())})
        t.record(f"{req.input_label}.checked", req.check[0], details=req.check[1])
        cert = intermediate_certificate(key, root, req.public_key, req.subject, not_before, not_after,
                                        profile=req.profile)
        cert.verify_directly_issued_by(root)
    except (KMSError, ValueError) as exc:
        t.record("ceremony.failed", f"Stopped: {exc}", details={"error": str(exc)})
        t.seal(key, root)
        raise CeremonyError(f"the ceremony stopped: {exc}") from None
    write_new_file(cert_path, cert.public_bytes(Encoding.PEM))
    fingerprint = sha256_hex(cert.public_bytes(Encoding.DER))
    t.record("certificate.sign", f"Signed the {req.output_label} {req.subject.rfc4514_string()!r} with the root key",
             outputs={req.output_label: file_digest(cert_path)},
             details={"subject": req.subject.rfc4514_string(), "serial": format(cert.serial_number, "x"),
                      "notBefore": not_before.isoformat(), "notAfter": not_after.isoformat(),
                      "sha256Fingerprint": fingerprint, "publicKeySha256": public_sha,
                      "pathLength": "none" if req.profile.path_length is None else req.profile.path_length})
    t.seal(key, root)
    return IntermediateResult(cert_path, setting.transcript, fingerprint, givers, setting.rehearsal_dir)


def _load_cert(data: bytes, name: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CeremonyError(f"{name} is not a certificate: {exc}") from None


def _subject(plan: Plan, csr: x509.CertificateSigningRequest) -> x509.Name:
    planned = plan.certificate.name()
    if planned is None:
        if not csr.subject.rdns:
            raise CeremonyError("the CSR has an empty subject and the plan names none (certificate.subject)")
        return csr.subject
    if csr.subject.rdns and csr.subject != planned:
        raise CeremonyError(f"the CSR asks for subject {csr.subject.rfc4514_string()!r} but the plan says "
                            f"{planned.rfc4514_string()!r}")
    return planned


def _rehearsal_root(setting: Setting, label: str, real_root: x509.Certificate,
                    ) -> tuple[pkcs11_admin.TokenInfo, CAKey, x509.Certificate]:
    """A stand-in root of the same subject, key type and validity on the throwaway token."""
    pin = secrets.token_hex(16)
    info = pkcs11_admin.init_token(setting.module, setting.token, secrets.token_hex(16), pin)
    key = create_key(setting.key_uri(label, pin), spec_of_public(real_root.public_key()))
    bc = real_root.extensions.get_extension_for_class(x509.BasicConstraints).value
    stand_in = root_certificate(key, real_root.subject, real_root.not_valid_before_utc,
                                real_root.not_valid_after_utc, path_length=bc.path_length)
    return info, key, stand_in
