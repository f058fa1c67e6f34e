"""The ceremony plan: one reviewed YAML file declares everything a ceremony will do.

The plan is read and checked completely before any HSM is touched, so a typo found on the day
costs a re-review, never a half-made key. Paths inside a plan are relative to the plan file.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kms.cacerts import KEY_USAGES, CAProfile
from kms.keyspec import KeySpec

MAX_PLAN_BYTES = 256 * 1024
EXT_KEY_USAGES = {
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH, "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING, "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "OCSPSigning": ExtendedKeyUsageOID.OCSP_SIGNING,
}


class PlanError(Exception):
    """The plan cannot be used; the message lists every problem with its place in the file."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HSM(_Model):
    module: str = Field(description="Path of the PKCS#11 module (the HSM vendor's library).")
    token: str = Field(min_length=1, max_length=32, description="Label of the token.")
    slot: int | None = Field(default=None, description="Root ceremony: slot of the uninitialised token.")


class Quorum(_Model):
    threshold: int = Field(ge=1, le=16)
    shares: int = Field(ge=1, le=16)
    share_set: int | None = Field(default=None, ge=0, lt=2**15,
                                  description="SLIP-39 identifier of the user-PIN shares (from the root ceremony).")


class Key(_Model):
    label: str = Field(min_length=1, max_length=64)
    type: Literal["EC-P256", "EC-P384", "RSA-3072", "RSA-4096"] = "EC-P384"

    @property
    def spec(self) -> KeySpec:
        return KeySpec.parse(self.type)


class Names(_Model):
    dns: list[str] = []
    ip: list[str] = []
    email: list[str] = []
    uri: list[str] = []

    @field_validator("ip")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in v:
            ipaddress.ip_network(net, strict=True)  # ValueError names the bad one
        return v

    def general_names(self) -> list[x509.GeneralName]:
        out: list[x509.GeneralName] = [x509.DNSName(d) for d in self.dns]
        out += [x509.IPAddress(ipaddress.ip_network(n)) for n in self.ip]
        out += [x509.RFC822Name(e) for e in self.email]
        out += [x509.UniformResourceIdentifier(u) for u in self.uri]
        return out


class NameConstraints(_Model):
    permitted: Names = Names()
    excluded: Names = Names()
    critical: bool = True

    def extension(self) -> x509.NameConstraints | None:
        permitted, excluded = self.permitted.general_names(), self.excluded.general_names()
        if not permitted and not excluded:
            return None
        return x509.NameConstraints(permitted_subtrees=permitted or None, excluded_subtrees=excluded or None)


class Certificate(_Model):
    subject: str | None = Field(default=None, description="RFC 4514 DN, e.g. 'CN=Corp Root CA,O=Corp'.")
    not_before: datetime | None = None
    not_after: datetime | None = None
    lifetime_days: int | None = Field(default=None, ge=1, le=36500)
    path_length: int | Literal["none"] | None = Field(
        default=None, description="Absent: the ceremony's default; 'none': no pathLenConstraint.")
    key_usage: list[str] = ["keyCertSign", "cRLSign"]
    ext_key_usage: list[str] = []
    name_constraints: NameConstraints | None = None
    crl_urls: list[str] = []
    ocsp_urls: list[str] = []
    ca_issuers_urls: list[str] = []
    public_key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                                          description="Intermediate ceremony: the CSR key's SPKI SHA-256.")

    @field_validator("path_length")
    @classmethod
    def _path_length(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and not 0 <= v <= 8:
            raise ValueError("path_length is 0 to 8, or 'none' for no constraint")
        return v

    @field_validator("subject")
    @classmethod
    def _subject(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                name = x509.Name.from_rfc4514_string(v)
            except ValueError as exc:
                reason = str(exc) or "expected NAME=value pairs, e.g. CN=Corp Root CA"
                raise ValueError(f"not an RFC 4514 name ({reason})") from None
            if not name.rdns:
                raise ValueError("the subject cannot be empty")
        return v

    @field_validator("not_before", "not_after")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("give times in UTC with a zone, e.g. 2026-12-01T00:00:00Z")
        return v.astimezone(UTC) if v is not None else None

    @field_validator("key_usage")
    @classmethod
    def _key_usage(cls, v: list[str]) -> list[str]:
        unknown = set(v) - set(KEY_USAGES)
        if unknown:
            raise ValueError(f"unknown key usage {sorted(unknown)}; choose from {', '.join(KEY_USAGES)}")
        if "keyCertSign" not in v:
            raise ValueError("a CA certificate needs keyCertSign")
        return v

    @field_validator("ext_key_usage")
    @classmethod
    def _ext_key_usage(cls, v: list[str]) -> list[str]:
        unknown = set(v) - set(EXT_KEY_USAGES)
        if unknown:
            raise ValueError(f"unknown extended key usage {sorted(unknown)}; choose from {', '.join(EXT_KEY_USAGES)}")
        return v

    @field_validator("crl_urls", "ocsp_urls", "ca_issuers_urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        bad = [u for u in v if not (u.startswith("http://") or u.startswith("https://") or u.startswith("ldap://"))]
        if bad:
            raise ValueError(f"not an http(s) or ldap URL: {', '.join(bad)}")
        return v

    @model_validator(mode="after")
    def _validity(self) -> Certificate:
        if self.not_after is not None and self.lifetime_days is not None:
            raise ValueError("give not_after or lifetime_days, not both")
        if self.not_after is None and self.lifetime_days is None:
            raise ValueError("give not_after or lifetime_days")
        if self.not_before and self.not_after and self.not_after <= self.not_before:
            raise ValueError("not_after must be later than not_before")
        return self

    def validity(self, now: datetime) -> tuple[datetime, datetime]:
        """(not_before, not_after); an unset start is a minute ago (clock skew between machines)."""
        start = self.not_before or (now - timedelta(minutes=1)).replace(microsecond=0)
        end = self.not_after or start + timedelta(days=self.lifetime_days or 0)
        return start, end

    def name(self) -> x509.Name | None:
        return x509.Name.from_rfc4514_string(self.subject) if self.subject else None

    def profile(self, default_path_length: int | None) -> CAProfile:
        ekus: list[ObjectIdentifier] = [EXT_KEY_USAGES[e] for e in self.ext_key_usage]
        nc = self.name_constraints
        path_length = default_path_length if self.path_length is None else self.path_length
        return CAProfile(
            path_length=None if path_length == "none" else path_length,
            key_usage=tuple(self.key_usage), name_constraints=nc.extension() if nc else None,
            name_constraints_critical=nc.critical if nc else True, crl_urls=tuple(self.crl_urls),
            ocsp_urls=tuple(self.ocsp_urls), ca_issuers_urls=tuple(self.ca_issuers_urls), ext_key_usage=tuple(ekus))


class RootRef(_Model):
    key_label: str = Field(min_length=1, max_length=64)
    certificate: str = Field(description="The root certificate made by the root ceremony.")


class Outputs(_Model):
    directory: str = "."
    certificate: str | None = None
    transcript: str = "transcript.jsonl"


class Plan(_Model):
    ceremony: Literal["root", "intermediate", "cross-sign"]
    name: str = Field(min_length=1, max_length=200)
    hsm: HSM
    custodians: list[str] = Field(min_length=1, max_length=16)
    quorum: Quorum
    key: Key | None = None
    root: RootRef | None = None
    certificate: Certificate
    outputs: Outputs = Outputs()

    @field_validator("custodians")
    @classmethod
    def _custodians(cls, v: list[str]) -> list[str]:
        clean = [c.strip() for c in v]
        if any(not c or not c.replace("-", "").replace("_", "").replace(".", "").isalnum() for c in clean):
            raise ValueError("custodian names are letters, digits, '-', '_' or '.' (they name share files)")
        if len(set(clean)) != len(clean):
            raise ValueError("custodian names must be unique")
        return clean

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        if self.quorum.shares != len(self.custodians):
            raise ValueError(f"quorum.shares is {self.quorum.shares} but {len(self.custodians)} custodians are listed")
        if self.quorum.threshold > self.quorum.shares:
            raise ValueError("quorum.threshold cannot exceed quorum.shares")
        if self.ceremony == "root":
            if self.key is None:
                raise ValueError("a root ceremony needs 'key' (label and type of the root key)")
            if self.root is not None:
                raise ValueError("'root' belongs in an intermediate ceremony's plan")
            if self.certificate.subject is None:
                raise ValueError("a root ceremony needs certificate.subject")
            if self.certificate.public_key_sha256:
                raise ValueError("certificate.public_key_sha256 belongs in an intermediate ceremony's plan")
        else:
            if self.root is None:
                article = "an" if self.ceremony == "intermediate" else "a"
                raise ValueError(f"{article} {self.ceremony} ceremony needs 'root' (key_label and certificate of "
                                 "the signing root)")
            if self.key is not None:
                raise ValueError("'key' belongs in a root ceremony's plan (the key signed here is the CSR's or "
                                 "the new root's)")
        return self

    @property
    def default_path_length(self) -> int | None:
        """Roots carry no pathLenConstraint (CA/B BR 7.1.2.1; a root's own constraint would also stop a
        later rollover: validators count a cross-certificate beneath it); intermediates 0; a
        cross-certificate copies the new root's (see `profile`)."""
        return 0 if self.ceremony == "intermediate" else None

    def profile(self, default_path_length: int | None | Literal["plan"] = "plan") -> CAProfile:
        return self.certificate.profile(self.default_path_length if default_path_length == "plan"
                                        else default_path_length)


def load_plan(path: Path) -> tuple[Plan, bytes]:
    """The plan and its exact bytes (their hash goes into the transcript)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PlanError(f"cannot read the plan {path}: {exc.strerror}") from None
    if len(raw) > MAX_PLAN_BYTES:
        raise PlanError(f"{path} is larger than {MAX_PLAN_BYTES // 1024} KiB: not a ceremony plan")
    try:
        data: Any = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise PlanError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PlanError(f"{path}: a plan is a YAML mapping (ceremony:, name:, hsm:, ...)")
    try:
        plan = Plan.model_validate(data)
        plan.profile()  # the certificate profile's own checks
    except ValidationError as exc:
        raise PlanError(f"{path} has {exc.error_count()} problem(s):\n" + "\n".join(
            f"  {'.'.join(str(p) for p in e['loc']) or '(plan)'}: {e['msg']}" for e in exc.errors())) from None
    except ValueError as exc:
        raise PlanError(f"{path}: {exc}") from None
    return plan, raw


def resolve(plan_path: Path, relative: str) -> Path:
    """Plan paths are relative to the plan file, so a reviewed plan means the same anywhere."""
    p = Path(relative).expanduser()
    return p if p.is_absolute() else (plan_path.parent / p)


def describe(plan: Plan) -> list[str]:
    """What the ceremony will do, in the order it does it (for --check and --dry-run)."""
    c, q = plan.certificate, plan.quorum
    who = ", ".join(plan.custodians)
    lines = [f"{plan.ceremony} ceremony: {plan.name}",
             f"custodians ({q.shares}): {who}; quorum {q.threshold} of {q.shares}"]
    if plan.ceremony == "root":
        assert plan.key is not None
        lines += [f"1. initialise token {plan.hsm.token!r} in {plan.hsm.module}"
                  + (f" (slot {plan.hsm.slot})" if plan.hsm.slot is not None else " (first free slot)"),
                  f"2. split a new SO PIN and a new user PIN into {q.shares} shares each, {q.threshold} needed",
                  f"3. generate the root key {plan.key.label!r} ({plan.key.type}) inside the token",
                  f"4. self-sign the root certificate {c.subject!r}"]
    else:
        assert plan.root is not None
        what = ("the intermediate certificate for the CSR's key, subject " + (c.subject or "(the CSR subject)")
                if plan.ceremony == "intermediate" else
                "a cross-certificate for the new root's key and subject, so clients of this root trust it")
        lines += [f"1. collect {q.threshold} custodians' user-PIN shares and rebuild the PIN in memory",
                  f"2. log in to token {plan.hsm.token!r} and open the root key {plan.root.key_label!r}",
                  f"3. sign {what}"]
    prof = plan.profile()
    lines.append(f"   validity: {c.not_before or 'now'} to {c.not_after or f'+{c.lifetime_days} days'}; "
                 f"path length {'none' if prof.path_length is None else prof.path_length}"
                 f"{' (or the new root’s)' if plan.ceremony == 'cross-sign' else ''}; "
                 f"key usage {', '.join(prof.key_usage)}")
    if prof.name_constraints is not None:
        lines.append(f"   name constraints: {prof.name_constraints}")
    for what, urls in (("CRL", c.crl_urls), ("OCSP", c.ocsp_urls), ("CA issuers", c.ca_issuers_urls)):
        if urls:
            lines.append(f"   {what}: {', '.join(urls)}")
    lines.append(f"last: seal the transcript {plan.outputs.transcript} with the root key")
    return lines
