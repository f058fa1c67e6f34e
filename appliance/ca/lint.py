"""Lint before sign: the exact bytes about to be signed, checked against the issuing intermediate and RFC 5280.

A certificate that cannot validate is worse than none: the client gets a certificate, installs it, and every
relying party refuses it (`openssl verify`: "permitted subtree violation"). So the issuer hands the
to-be-signed bytes to the pipeline's lint step before they are recorded or signed; the bytes are parsed as a
certificate (wrapped with an empty signature) and judged as a verifier would judge them:

- names inside the intermediate's name constraints (RFC 5280 §4.2.1.10: DNS, IP, email, URI; directory names);
- extended key usages the intermediate's EKU allows (what OpenSSL and browsers enforce down the chain);
- CA:FALSE on a leaf, and an intermediate that may sign certificates (CA:TRUE, keyCertSign);
- a validity inside the intermediate's;
- the RFC 5280 profile: serial positive and at most 20 octets, key usage consistent with the key type, a
  SAN (critical when the subject is empty), CRL distribution point and AIA URIs whose host is a dotted DNS
  name or an IP address.

Each refusal names its rule (`LintRefused.rule`), so the audit record and the client say which.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, PublicKeyAlgorithmOID

from appliance.ca.urls import url_host_ok
from appliance.certutil import der, general_name_text
from appliance.errors import LintRefused

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T", bound=x509.ExtensionType)
MAX_SERIAL_OCTETS = 20
NAME_CONSTRAINTS = "nameConstraints"


@dataclass(frozen=True)
class Finding:
    rule: str  # e.g. "nameConstraints", "extKeyUsage", "validity", "rfc5280.keyUsage"
    message: str


def lint(tbs: bytes, issuer: x509.Certificate) -> None:
    """Raise LintRefused naming the first rule the to-be-signed certificate breaks; return when it passes."""
    findings = check(parse_tbs(tbs), issuer)
    if findings:
        first = findings[0]
        raise LintRefused(first.rule, "; ".join(f.message for f in findings),
                          reasons=tuple(f"lint {f.rule}: {f.message}" for f in findings))


def check(cert: x509.Certificate, issuer: x509.Certificate) -> list[Finding]:
    """Every finding, name-constraint ones first (what an ACME client can fix by asking for other names)."""
    leaf = _Extensions(cert)
    san = leaf.get(x509.SubjectAlternativeName)
    findings = name_findings(list(san.value) if san is not None else [], cert.subject, issuer)
    findings += _eku_findings(leaf, issuer)
    findings += _ca_findings(leaf, issuer)
    findings += _validity_findings(cert, issuer)
    findings += _profile_findings(cert, leaf)
    return findings


class _Extensions:
    """A certificate's extensions by class, read once (lint runs on every issuance)."""

    def __init__(self, cert: x509.Certificate) -> None:
        self._by_class = {type(e.value): e for e in cert.extensions}

    def get(self, kind: type[T]) -> x509.Extension[T] | None:
        return self._by_class.get(kind)


@functools.lru_cache(maxsize=32)
def _issuer_extensions(issuer: x509.Certificate) -> _Extensions:
    """An intermediate's, kept: the same few intermediates sign every certificate."""
    return _Extensions(issuer)


def name_findings(names: Iterable[x509.GeneralName], subject: x509.Name | None,
                  issuer: x509.Certificate) -> list[Finding]:
    """What the intermediate's name constraints say of these names (also used for the CA's own names)."""
    found = _issuer_extensions(issuer).get(x509.NameConstraints)
    if found is None:
        return []
    constraints = found.value
    findings = []
    candidates = list(names)
    if subject is not None and len(subject) > 0:
        candidates.append(x509.DirectoryName(subject))
    for name in candidates:
        why = _outside(name, constraints)
        if why:
            findings.append(Finding(NAME_CONSTRAINTS, f"{general_name_text(name)} {why} of the intermediate "
                                                      f"{issuer.subject.rfc4514_string()}"))
    return findings


def _outside(name: x509.GeneralName, nc: x509.NameConstraints) -> str | None:
    """Why `name` breaks the constraints, or None. A type with no permitted subtree of its own is unconstrained."""
    excluded = [s for s in nc.excluded_subtrees or () if type(s) is type(name)]
    hit = next((s for s in excluded if _within(name, s)), None)
    if hit is not None:
        return f"is in the excluded subtree {general_name_text(hit)}"
    permitted = [s for s in nc.permitted_subtrees or () if type(s) is type(name)]
    if permitted and not any(_within(name, s) for s in permitted):
        return "is outside the permitted subtrees (" + ", ".join(general_name_text(s) for s in permitted) + ")"
    return None


def _within(name: x509.GeneralName, subtree: x509.GeneralName) -> bool:
    if isinstance(name, x509.DNSName) and isinstance(subtree, x509.DNSName):
        return _dns_within(name.value, subtree.value)
    if isinstance(name, x509.IPAddress) and isinstance(subtree, x509.IPAddress):
        network = subtree.value
        return isinstance(network, IPNetwork) and name.value in network
    if isinstance(name, x509.RFC822Name) and isinstance(subtree, x509.RFC822Name):
        return _email_within(name.value, subtree.value)
    if isinstance(name, x509.UniformResourceIdentifier) and isinstance(subtree, x509.UniformResourceIdentifier):
        host = urlsplit(name.value).hostname
        return host is not None and _host_within(host, subtree.value)
    if isinstance(name, x509.DirectoryName) and isinstance(subtree, x509.DirectoryName):
        return list(name.value.rdns[:len(subtree.value.rdns)]) == list(subtree.value.rdns)
    return False


def _dns_within(name: str, constraint: str) -> bool:
    """RFC 5280: any name built by adding labels to the left of the constraint ("corp" covers "a.corp");
    a leading dot means strictly below it, as implementations read it."""
    name, constraint = name.lower().rstrip("."), constraint.lower().rstrip(".")
    if not constraint:
        return True
    if name.startswith("*."):  # a wildcard stands for one label more: it must lie wholly inside
        name = "wildcard" + name[1:]
    if constraint.startswith("."):
        return name.endswith(constraint)
    return name == constraint or name.endswith("." + constraint)


def _host_within(host: str, constraint: str) -> bool:
    """URI constraints (RFC 5280): "host" exactly, ".domain" any host below it."""
    host, constraint = host.lower().rstrip("."), constraint.lower().rstrip(".")
    return host.endswith(constraint) if constraint.startswith(".") else host == constraint


def _email_within(address: str, constraint: str) -> bool:
    """RFC 5280: "user@host" one mailbox, "host" every mailbox at host, ".domain" any host below domain."""
    local, _, domain = address.rpartition("@")
    if "@" in constraint:
        c_local, _, c_domain = constraint.rpartition("@")
        return local == c_local and domain.lower() == c_domain.lower()
    domain, constraint = domain.lower(), constraint.lower()
    return domain.endswith(constraint) if constraint.startswith(".") else domain == constraint


def _eku_findings(leaf: _Extensions, issuer: x509.Certificate) -> list[Finding]:
    constraint = _issuer_extensions(issuer).get(x509.ExtendedKeyUsage)
    if constraint is None:
        return []
    allowed = set(constraint.value)
    if ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in allowed:
        return []
    eku = leaf.get(x509.ExtendedKeyUsage)
    asked = set(eku.value) if eku is not None else set()
    beyond = sorted(o._name for o in asked - allowed)
    if beyond:
        return [Finding("extKeyUsage", f"extended key usage {', '.join(beyond)} is not allowed by the intermediate's "
                                       f"({', '.join(sorted(o._name for o in allowed))})")]
    return []


def _ca_findings(leaf: _Extensions, issuer: x509.Certificate) -> list[Finding]:
    findings = []
    bc = leaf.get(x509.BasicConstraints)
    if bc is None or bc.value.ca:
        findings.append(Finding("basicConstraints", "a leaf must carry BasicConstraints CA:FALSE"))
    ibc = _issuer_extensions(issuer).get(x509.BasicConstraints)
    if ibc is None or not ibc.value.ca:
        findings.append(Finding("basicConstraints", "the intermediate is not a CA (CA:TRUE is missing)"))
    iku = _issuer_extensions(issuer).get(x509.KeyUsage)  # absent: RFC 5280 lets such a CA sign anything
    if iku is not None and not iku.value.key_cert_sign:
        findings.append(Finding("keyUsage", "the intermediate's key usage does not allow keyCertSign"))
    return findings


def _validity_findings(cert: x509.Certificate, issuer: x509.Certificate) -> list[Finding]:
    if cert.not_valid_after_utc > issuer.not_valid_after_utc:
        return [Finding("validity", f"notAfter {cert.not_valid_after_utc.isoformat()} is after the intermediate's "
                                    f"{issuer.not_valid_after_utc.isoformat()}")]
    return []


def _profile_findings(cert: x509.Certificate, leaf: _Extensions) -> list[Finding]:
    findings = []
    serial = cert.serial_number
    if serial <= 0 or (serial.bit_length() + 8) // 8 > MAX_SERIAL_OCTETS:
        findings.append(Finding("rfc5280.serial", "the serial must be positive and at most 20 octets"))
    ku = leaf.get(x509.KeyUsage)
    if ku is not None:
        # The key's algorithm from the SPKI, without decoding the key itself (that costs an EC point check).
        findings += _key_usage_findings(cert.public_key_algorithm_oid, ku.value)
    san = leaf.get(x509.SubjectAlternativeName)
    if san is None or not list(san.value):
        if len(cert.subject) == 0:
            findings.append(Finding("rfc5280.san", "an empty subject needs a subjectAltName"))
    elif len(cert.subject) == 0 and not san.critical:
        findings.append(Finding("rfc5280.san", "with an empty subject the subjectAltName must be critical"))
    for url in _distribution_urls(leaf):
        why = uri_host_problem(url)
        if why:
            findings.append(Finding("rfc5280.uri", f"{url}: {why}"))
    return findings


_SIGNING_ONLY = {PublicKeyAlgorithmOID.ED25519: "Ed25519", PublicKeyAlgorithmOID.ED448: "Ed448"}
_RSA = {PublicKeyAlgorithmOID.RSAES_PKCS1_v1_5, PublicKeyAlgorithmOID.RSASSA_PSS}


def _key_usage_findings(algorithm: x509.ObjectIdentifier, ku: x509.KeyUsage) -> list[Finding]:
    """RFC 5280 §4.2.1.3 and RFC 8410: no key transport on EC or EdDSA keys, no key agreement on RSA or EdDSA."""
    wrong = []
    if algorithm == PublicKeyAlgorithmOID.EC_PUBLIC_KEY or algorithm in _SIGNING_ONLY:
        wrong = [n for n, v in (("keyEncipherment", ku.key_encipherment), ("dataEncipherment", ku.data_encipherment))
                 if v]
    if (algorithm in _RSA or algorithm in _SIGNING_ONLY) and ku.key_agreement:
        wrong.append("keyAgreement")
    if ku.key_cert_sign or ku.crl_sign:
        wrong += [n for n, v in (("keyCertSign", ku.key_cert_sign), ("cRLSign", ku.crl_sign)) if v]
    if wrong:
        kind = "EC" if algorithm == PublicKeyAlgorithmOID.EC_PUBLIC_KEY else "RSA" if algorithm in _RSA else \
            _SIGNING_ONLY.get(algorithm, algorithm.dotted_string)
        return [Finding("rfc5280.keyUsage", f"key usage {', '.join(wrong)} does not fit the leaf's {kind} key")]
    return []


def _distribution_urls(leaf: _Extensions) -> list[str]:
    urls: list[str] = []
    cdp = leaf.get(x509.CRLDistributionPoints)
    for point in cdp.value if cdp is not None else []:
        urls += [n.value for n in point.full_name or [] if isinstance(n, x509.UniformResourceIdentifier)]
    aia = leaf.get(x509.AuthorityInformationAccess)
    for desc in aia.value if aia is not None else []:
        if isinstance(desc.access_location, x509.UniformResourceIdentifier):
            urls.append(desc.access_location.value)
    return urls


def uri_host_problem(url: str) -> str | None:
    """None when the URL's host is one certificates may carry (`ca.urls.url_host_ok`, the rule `hsmca
    public-url` applies: an IP, or a dotted DNS name, which is what pkilint's RFC 5280 lint asks)."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return "not a URL"
    if not host:
        return "the URL has no host"
    if not url_host_ok(host):
        return f"host {host!r} is neither a dotted DNS name nor an IP address (set publicURL)"
    return None


def parse_tbs(tbs: bytes) -> x509.Certificate:
    """The to-be-signed bytes as a certificate object, to read them as a verifier would.

    A Certificate is SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }; the TBS carries the
    same AlgorithmIdentifier as its third element, so it is reused, with an empty signature. (Hand-written:
    cryptography parses only whole certificates, and only this much DER is needed.)
    """
    body = _contents(tbs)
    first = _element(body, 0)  # [0] version
    second = _element(body, first)  # serialNumber
    third = _element(body, second)  # signature AlgorithmIdentifier
    algorithm = body[second:third]
    return x509.load_der_x509_certificate(der(0x30, tbs + algorithm + der(0x03, b"\x00")))


def _header(der: bytes, at: int) -> tuple[int, int]:
    """(start of contents, length) of the element at `at`."""
    first = der[at + 1]
    if first < 0x80:
        return at + 2, first
    count = first & 0x7F
    return at + 2 + count, int.from_bytes(der[at + 2:at + 2 + count], "big")


def _contents(der: bytes) -> bytes:
    start, length = _header(der, 0)
    return der[start:start + length]


def _element(der: bytes, at: int) -> int:
    """Where the element starting at `at` ends."""
    start, length = _header(der, at)
    return start + length
