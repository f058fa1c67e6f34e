"""What a provisioner hands the registration authority: one typed issuance request, whatever the credential.

A provisioner only proves who is asking and says what they asked for (step-ca's `AuthorizeSign` returning
sign options, Boulder's WFE handing the RA a request): it never signs, never writes the store and never
audits. Everything after it — CSR check, policy, profile, record, sign, mark issued, audit — is the
pipeline's (`appliance/ra/pipeline.py`), the same for every provisioner.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from appliance.names import RequestedNames
from appliance.store import OneTimeToken

DEFAULT_EXT_KEY_USAGE = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)  # as step-ca issues


class CSRRule(enum.Enum):
    """How the CSR's own names must relate to the names the credential grants."""

    NONE = "none"  # no CSR, or its names were checked by the protocol already (ACME: equal to the order's)
    TOKEN = "token"  # step-ca's validators: CN is the token subject; each SAN type the CSR names equals the grant
    SAME = "same"  # a rekey: the CN and exactly the SANs of the certificate it replaces


@dataclass(frozen=True)
class Window:
    """The validity asked for: explicit times, or a lifetime (capped at the policy's maximum)."""

    not_before: datetime | None = None
    not_after: datetime | None = None
    lifetime: timedelta | None = None
    latest: datetime | None = None  # a defaulted end never passes this (the credential's own expiry: X5C)


@dataclass(frozen=True)
class SSHOptions:
    """Room for SSH certificates (OpenSSH PROTOCOL.certkeys): what differs from an X.509 request."""

    cert_type: Literal["user", "host"]
    key_id: str
    principals: tuple[str, ...] = ()
    critical_options: Mapping[str, str] = field(default_factory=dict)
    extensions: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditNote:
    """What the audit record says about who asked, beyond the names (known before authorization too)."""

    subject: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    sans: tuple[str, ...] = ()


@dataclass(frozen=True)
class IssuanceRequest:
    """One certificate asked for, authorized: everything the pipeline needs, nothing it must look up."""

    provisioner: str  # recorded with the certificate; its policy judges the request
    common_name: str  # "" for an empty subject
    names: RequestedNames  # the SANs granted (the CN joins them where it is a name)
    public_key: CertificatePublicKeyTypes
    window: Window = Window()
    csr: x509.CertificateSigningRequest | None = None
    csr_rule: CSRRule = CSRRule.NONE
    csr_names: RequestedNames | None = None  # what the CSR's SANs are held to, when not `names` (a token's own)
    ext_key_usage: tuple[x509.ObjectIdentifier, ...] = DEFAULT_EXT_KEY_USAGE
    key_usage: tuple[str, ...] | None = None  # a template's (RFC 5280 names); None: what fits the key type
    subject_extra: tuple[x509.NameAttribute, ...] = ()  # subject attributes beside the CN (templates)
    extensions: tuple[x509.Extension[x509.ExtensionType], ...] = ()
    template_data: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"token": claims}, for templates
    token: OneTimeToken | None = None  # spent with the reservation (one transaction), or when refused
    issuer: str | None = None  # an intermediate id; None: the active one (only the CA's own certificates choose)
    audit: AuditNote = AuditNote()
    ssh: SSHOptions | None = None
