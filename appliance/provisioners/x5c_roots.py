"""The X5C provisioner (step-ca's): a certificate that chains to the provisioner's roots vouches for a new one.

The client signs a one-time token with the key of a certificate it holds, and puts that certificate's chain in
the token's standard `x5c` header (leaf first, base64 DER; RFC 7515 §4.1.6), as `step ca certificate --x5c-cert
--x5c-key` does. What is checked, in step-ca's order:

- the chain verifies to one of `roots` now (pyca/cryptography's verifier: signatures, validity of every
  certificate, basic constraints, path length); where a certificate of the chain has extended key usages they
  must allow clientAuth (the rule Go's verifier applies for step-ca); the leaf must allow digitalSignature;
- the token is signed by the leaf's key, with an algorithm that key allows (ES256/ES384/ES512, RS*/PS*, EdDSA);
- `iss` is the provisioner's name, `exp`/`nbf`/`iat` hold with a minute of leeway, `aud` is this CA's sign URL
  (compared without the port; the step CLI appends `#x5c/NAME`, which must then name this provisioner), `sub` is
  not empty; `sans` (default `[sub]`) are the names granted, held against the CSR as for JWK tokens;
- the token id (`jti`, else the token's SHA-256 as step-ca does) is spent once, whichever replica sees it.

The new certificate never outlives the leaf (an explicit window outside the leaf's is refused, a default one is
cut at its end), and templates see the leaf as `authorizationCrt` (step-ca's `.AuthorizationCrt`).

Issuers' keys must be EC or RSA: cryptography's verifier refuses Ed25519 CA keys (an Ed25519 leaf is fine).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from appliance.certutil import read_extensions
from appliance.config import X5CProvisionerConfig, x5c_roots
from appliance.errors import Forbidden, Unauthorized
from appliance.names import RequestedNames, split_sans
from appliance.provisioners import jose
from appliance.provisioners.base import TOKEN_LEEWAY, SSHSignCredential, TokenCredential, strip_port, token_times
from appliance.provisioners.request import AuditNote, CSRRule, IssuanceRequest, Window
from appliance.provisioners.ssh_request import from_step_claim
from appliance.provisioners.validity import parse_time_or_duration
from appliance.store import OneTimeToken
from policy import Claims, PolicyConfig

TYPE = "X5C"
HEADER = "x5c"
MAX_CHAIN = 4  # leaf and at most three issuers in the header
MAX_JTI_LENGTH = 256
CLIENT_AUTH = (ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE)


def _key_cert_sign(_policy: object, cert: x509.Certificate, usage: x509.ExtensionType | None) -> None:
    if isinstance(usage, x509.KeyUsage) and not usage.key_cert_sign:
        raise ValueError(f"{cert.subject.rfc4514_string()} has a key usage without keyCertSign")


# Issuers must be CAs (basicConstraints, keyCertSign where a key usage is given); nothing else of the Web PKI
# profile (SANs, key identifiers, ...) is asked of a private PKI's certificates, as Go's verifier asks none.
_CA_POLICY = (ExtensionPolicy.permit_all()
              .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, None)
              .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _key_cert_sign))
_LEAF_POLICY = ExtensionPolicy.permit_all()


def header_chain(header: dict[str, Any]) -> list[x509.Certificate]:
    """The certificates of the `x5c` header, leaf first; Unauthorized saying what is wrong with it."""
    chain = header.get(HEADER)
    if not isinstance(chain, list) or not chain or len(chain) > MAX_CHAIN \
            or not all(isinstance(c, str) for c in chain):
        raise Unauthorized(f"token header 'x5c' must be a list of 1 to {MAX_CHAIN} base64 DER certificates, "
                           "leaf first")
    try:
        return [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in chain]
    except (ValueError, binascii.Error):
        raise Unauthorized("token header 'x5c' holds something that is not a base64 DER certificate") from None


def describe_certificate(cert: x509.Certificate) -> dict[str, Any]:
    """A certificate as templates see it (step-ca's `.AuthorizationCrt`, in hsmca's camelCase)."""
    def attrs(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
        return [str(a.value) for a in name.get_attributes_for_oid(oid)]

    def name_view(name: x509.Name) -> dict[str, Any]:
        cns = attrs(name, x509.NameOID.COMMON_NAME)
        return {"commonName": cns[0] if cns else "", "organization": attrs(name, x509.NameOID.ORGANIZATION_NAME),
                "organizationalUnit": attrs(name, x509.NameOID.ORGANIZATIONAL_UNIT_NAME),
                "country": attrs(name, x509.NameOID.COUNTRY_NAME), "serialNumber":
                (attrs(name, x509.NameOID.SERIAL_NUMBER) or [""])[0]}

    try:
        names = RequestedNames.from_general_names(
            read_extensions(cert).get_extension_for_class(x509.SubjectAlternativeName).value)
    except (x509.ExtensionNotFound, ValueError):
        names = RequestedNames()
    return {"subject": name_view(cert.subject), "issuer": name_view(cert.issuer),
            "serialNumber": str(cert.serial_number), "notBefore": cert.not_valid_before_utc.isoformat(),
            "notAfter": cert.not_valid_after_utc.isoformat(), "dnsNames": list(names.dns),
            "ipAddresses": [str(i) for i in names.ips], "emailAddresses": list(names.emails),
            "uris": list(names.uris)}


class X5CProvisioner:
    """A one-time token signed by the key of a certificate that chains to `roots`."""

    type = TYPE

    def __init__(self, name: str, roots: list[x509.Certificate], claims: Claims | None = None,
                 policy: PolicyConfig | None = None) -> None:
        if not roots:
            raise ValueError(f"X5C provisioner {name!r} has no roots")
        self.name = name
        self.roots = list(roots)
        self.claims = claims
        self.policy = policy
        self._store = Store(self.roots)

    @classmethod
    def from_config(cls, cfg: X5CProvisionerConfig) -> X5CProvisioner:
        return cls(cfg.name, x5c_roots(cfg.roots), cfg.claims, cfg.policy)

    @property
    def key_id(self) -> str:
        return f"x5c/{self.name}"  # step-ca's id for it (the fragment the step CLI puts in `aud`)

    def claims_token(self, header: dict[str, Any], claims: dict[str, Any]) -> bool:
        """An x5c token names its provisioner by `iss` (the step CLI's `kid` is the key file's name)."""
        return HEADER in header and claims.get("iss") == self.name

    def verify_chain(self, header: dict[str, Any], now: datetime) -> x509.Certificate:
        """The leaf of the header's chain, once the chain verifies to a root now and may sign tokens."""
        chain = header_chain(header)
        leaf = chain[0]
        if now > leaf.not_valid_after_utc:
            raise Unauthorized(f"the x5c certificate {leaf.subject.rfc4514_string()} expired at "
                               f"{leaf.not_valid_after_utc.isoformat()}")
        if now < leaf.not_valid_before_utc:
            raise Unauthorized(f"the x5c certificate {leaf.subject.rfc4514_string()} is not valid before "
                               f"{leaf.not_valid_before_utc.isoformat()}")
        verifier = (PolicyBuilder().store(self._store).time(now).max_chain_depth(MAX_CHAIN)
                    .extension_policies(ca_policy=_CA_POLICY, ee_policy=_LEAF_POLICY).build_client_verifier())
        try:
            verified = verifier.verify(leaf, chain[1:]).chain
        except (VerificationError, ValueError, UnsupportedAlgorithm) as exc:
            raise Unauthorized(f"the x5c certificate chain does not verify to a root of provisioner "
                               f"{self.name!r}: {_reason(exc)}") from None
        for cert in verified:
            try:
                ekus = read_extensions(cert).get_extension_for_class(x509.ExtendedKeyUsage).value
            except x509.ExtensionNotFound:
                continue
            except ValueError as exc:
                raise Unauthorized(f"the x5c certificate chain cannot be read: {exc}") from None
            if not any(oid in ekus for oid in CLIENT_AUTH):
                raise Unauthorized(f"the x5c certificate chain does not allow client authentication: "
                                   f"{cert.subject.rfc4514_string()} has extended key usages without clientAuth")
        try:
            usage = read_extensions(leaf).get_extension_for_class(x509.KeyUsage).value
            signs = usage.digital_signature
        except x509.ExtensionNotFound:
            signs = False
        except ValueError as exc:
            raise Unauthorized(f"the x5c certificate cannot be read: {exc}") from None
        if not signs:
            raise Unauthorized(f"the x5c certificate {leaf.subject.rfc4514_string()} does not allow digital "
                               "signatures (key usage digitalSignature), so it cannot sign tokens")
        return leaf

    def _audience_ok(self, aud: str, audiences: frozenset[str]) -> bool:
        base, hashmark, fragment = aud.partition("#")
        return (not hashmark or fragment == self.key_id) and strip_port(base) in audiences

    def _verify(self, token: str, audiences: frozenset[str], now: datetime
                ) -> tuple[x509.Certificate, dict[str, Any], str, str, list[str], datetime]:
        """(leaf, claims, subject, jti, sans, expiry) of a token whose x5c chain verifies and whose leaf signed it."""
        try:
            header, _ = jose.peek(token)
        except jose.JOSEError as exc:
            raise Unauthorized(f"cannot parse token: {exc}") from None
        leaf = self.verify_chain(header, now)
        try:
            key = jose.import_public_key(leaf.public_key())
        except (ValueError, UnsupportedAlgorithm, jose.JOSEError) as exc:
            raise Unauthorized(f"the x5c certificate's key cannot sign tokens: {exc}") from None
        try:
            _, claims = jose.verify_token(token, key)
        except jose.JOSEError as exc:
            raise Unauthorized(f"the token is not signed by the key of its x5c certificate: {exc}") from None
        if claims.get("iss") != self.name:
            raise Unauthorized(f"token issuer (iss) must be the provisioner name {self.name!r}")
        expires, _, _ = token_times(claims, now)
        aud = claims.get("aud")
        got = [aud] if isinstance(aud, str) else aud
        if not isinstance(got, list) or not all(isinstance(a, str) for a in got) \
                or not any(self._audience_ok(a, audiences) for a in got):
            raise Unauthorized(f"token audience {aud!r} is not this CA's endpoint for this request "
                               f"(expected one of {sorted(audiences)}, optionally with #{self.key_id})")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthorized("token subject (sub) cannot be empty")
        jti = claims.get("jti")
        if jti is None:
            jti = "sha256:" + hashlib.sha256(token.encode()).hexdigest()  # step-ca's id for a token without one
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
            raise Unauthorized(f"token id (jti) must be 1 to {MAX_JTI_LENGTH} characters")
        sans = claims.get("sans") or [subject]
        if not isinstance(sans, list) or not all(isinstance(s, str) and s for s in sans):
            raise Unauthorized("token claim 'sans' must be a list of names")
        return leaf, claims, subject, jti, sans, expires

    def authorize(self, credential: object, now: datetime) -> IssuanceRequest:
        """The token's subject and SANs for the CSR's key, within the leaf's validity; or, with `step.ssh`, an SSH
        host certificate (X5C vouches for hosts, as step-ca's does)."""
        if isinstance(credential, SSHSignCredential):
            leaf, claims, subject, jti, _, expires = self._verify(credential.token, credential.audiences, now)
            request = from_step_claim(self.name, credential, claims, subject,
                                      OneTimeToken(jti, self.name, expires + TOKEN_LEEWAY), now, host_only=True,
                                      details={"x5cSubject": leaf.subject.rfc4514_string(),
                                               "x5cSerial": str(leaf.serial_number)})
            if request.window.not_after is not None and request.window.not_after > leaf.not_valid_after_utc:
                raise Forbidden("requested validBefore is after the x5c certificate expires "
                                f"({leaf.not_valid_after_utc.isoformat()})")
            return request
        if not isinstance(credential, TokenCredential):
            raise Unauthorized(f"provisioner {self.name!r} accepts x5c tokens only")
        leaf, claims, subject, jti, sans, expires = self._verify(credential.token, credential.audiences, now)

        not_before = parse_time_or_duration(credential.not_before, now, "notBefore")
        not_after = parse_time_or_duration(credential.not_after, now, "notAfter")
        if not_before is not None and not_before < leaf.not_valid_before_utc:
            raise Forbidden(f"requested notBefore {not_before.isoformat()} is before the x5c certificate's "
                            f"validity ({leaf.not_valid_before_utc.isoformat()})")
        if not_after is not None and not_after > leaf.not_valid_after_utc:
            raise Forbidden(f"requested notAfter {not_after.isoformat()} is after the x5c certificate expires "
                            f"({leaf.not_valid_after_utc.isoformat()})")
        names = split_sans(sans)
        vouching = {"x5cSubject": leaf.subject.rfc4514_string(), "x5cSerial": str(leaf.serial_number),
                    "x5cIssuer": leaf.issuer.rfc4514_string()}
        return IssuanceRequest(
            provisioner=self.name, common_name=subject, names=names.with_common_name(subject),
            public_key=credential.csr.public_key(), csr=credential.csr, csr_rule=CSRRule.TOKEN, csr_names=names,
            window=Window(not_before=not_before, not_after=not_after, latest=leaf.not_valid_after_utc),
            token=OneTimeToken(jti, self.name, expires + TOKEN_LEEWAY), audit=AuditNote(subject=subject,
                                                                                        details=vouching),
            template_data={"token": dict(claims), "authorizationCrt": describe_certificate(leaf)})

    def describe(self, *, with_encrypted_key: bool) -> dict[str, Any]:
        """As step-ca lists it: the roots as the base64 of their PEM bundle."""
        pem = b"".join(r.public_bytes(Encoding.PEM) for r in self.roots)
        out: dict[str, Any] = {"type": self.type, "name": self.name, "roots": base64.b64encode(pem).decode()}
        if self.claims is not None:
            out["claims"] = self.claims.model_dump(exclude_none=True)
        return out


def _reason(exc: Exception) -> str:
    """The verifier's words, without its debugging tail (the certificate's repr)."""
    text = str(exc)
    cut = text.find(" (encountered processing")
    return (text[:cut] if cut >= 0 else text).removeprefix("validation failed: ")
