"""Certificate templates: a provisioner's JSON document, rendered with the request's data, that shapes a leaf.

`ca.json` names them as step-ca does (`options.x509.template` or `templateFile`, and `templateData`), but
the language is Jinja2, not Go's text/template: Python has no maintained Go template engine, and Jinja's
immutable sandbox is a well-kept answer to "run a template an operator wrote, safely". A step-ca template
(`{{ .Subject.CommonName }}`, `{{ toJson .SANs }}`) is recognised and refused at load with the hsmca
spelling, never mis-rendered.

Rendering is bounded: no loader (no `include`, no files), no globals but a counted `range`, attribute
escapes refused by the sandbox, at most `MAX_ITERATIONS` loop steps and `MAX_SECONDS`, output at most
`MAX_OUTPUT` bytes, large string products refused. The output must be JSON matching `CertificateTemplate`
(step-ca's field names); a leaf template can never set CA:TRUE, nor replace an extension hsmca manages.
The result only shapes the request: policy and lint still judge it, so a template cannot add a name the
policy denies or the intermediate's constraints refuse.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from appliance.ca.issuer import key_usage
from appliance.certutil import der
from appliance.config import CAConfig, ConfigError
from appliance.errors import BadRequest
from appliance.names import RequestedNames
from appliance.provisioners.request import IssuanceRequest

MAX_OUTPUT = 64 * 1024
MAX_SECONDS = 0.25
MAX_ITERATIONS = 10_000
MAX_TEMPLATE = 64 * 1024

# A Go template action starts `{{` (or `{{-`) with a field (`.Subject`), a keyword or a function called
# without parentheses (`toJson .SANs`); a Jinja expression never does.
_GO_SYNTAX = re.compile(r"\{\{-?\s*(\.|(?:if|with|else|end|template|define|toJson|printf|fail)\b(?!\s*\()"
                        r"|range\s+[$.])")

KeyUsageName = Literal["digitalSignature", "contentCommitment", "keyEncipherment", "dataEncipherment",
                       "keyAgreement", "encipherOnly", "decipherOnly"]
EKU_NAMES = {"serverAuth": ExtendedKeyUsageOID.SERVER_AUTH, "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
             "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING, "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
             "timeStamping": ExtendedKeyUsageOID.TIME_STAMPING, "ocspSigning": ExtendedKeyUsageOID.OCSP_SIGNING}
# Extensions hsmca writes itself: a template sets them through their own fields, or not at all.
MANAGED = {x509.SubjectAlternativeName.oid, x509.KeyUsage.oid, x509.ExtendedKeyUsage.oid, x509.BasicConstraints.oid,
           x509.SubjectKeyIdentifier.oid, x509.AuthorityKeyIdentifier.oid, x509.CRLDistributionPoints.oid,
           x509.AuthorityInformationAccess.oid, x509.CertificatePolicies.oid, x509.NameConstraints.oid}
SUBJECT_FIELDS = {"country": NameOID.COUNTRY_NAME, "province": NameOID.STATE_OR_PROVINCE_NAME,
                  "locality": NameOID.LOCALITY_NAME, "streetAddress": NameOID.STREET_ADDRESS,
                  "postalCode": NameOID.POSTAL_CODE, "organization": NameOID.ORGANIZATION_NAME,
                  "organizationalUnit": NameOID.ORGANIZATIONAL_UNIT_NAME, "serialNumber": NameOID.SERIAL_NUMBER}
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")


class TemplateProblem(Exception):
    """A template that cannot be loaded (the message says where and how to write it for hsmca)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubjectTemplate(_Strict):
    commonName: str | None = None
    country: str | list[str] | None = None
    province: str | list[str] | None = None
    locality: str | list[str] | None = None
    streetAddress: str | list[str] | None = None
    postalCode: str | list[str] | None = None
    organization: str | list[str] | None = None
    organizationalUnit: str | list[str] | None = None
    serialNumber: str | None = None


class SANTemplate(_Strict):
    type: Literal["dns", "ip", "email", "uri"]
    value: str = Field(min_length=1, max_length=1024)


class BasicConstraintsTemplate(_Strict):
    isCA: Literal[False] = Field(default=False, description="a leaf template can never make a CA")


class ExtensionTemplate(_Strict):
    id: str
    critical: bool = False
    value: str  # base64 of the extension's DER value

    @field_validator("id")
    @classmethod
    def _oid(cls, v: str) -> str:
        if not _OID.fullmatch(v):
            raise ValueError(f"{v!r} is not a dotted OID")
        if x509.ObjectIdentifier(v) in MANAGED:
            raise ValueError(f"extension {v} is written by hsmca; use the template's own field for it")
        return v

    @field_validator("value")
    @classmethod
    def _der(cls, v: str) -> str:
        try:
            base64.b64decode(v, validate=True)
        except ValueError:
            raise ValueError("value must be the base64 of the extension's DER (see the asn1 filter)") from None
        return v


class CertificateTemplate(_Strict):
    """What a rendered template may say (step-ca's field names)."""

    subject: SubjectTemplate | None = None
    sans: list[SANTemplate] | None = Field(default=None, max_length=100)
    keyUsage: list[KeyUsageName] | None = None
    extKeyUsage: list[str] | None = None
    basicConstraints: BasicConstraintsTemplate | None = None
    policyIdentifiers: list[str] | None = None
    extensions: list[ExtensionTemplate] | None = Field(default=None, max_length=20)

    @field_validator("extKeyUsage")
    @classmethod
    def _ekus(cls, v: list[str] | None) -> list[str] | None:
        for item in v or []:
            if item not in EKU_NAMES and not _OID.fullmatch(item):
                raise ValueError(f"{item!r} is neither one of {sorted(EKU_NAMES)} nor a dotted OID")
        return v

    @field_validator("policyIdentifiers")
    @classmethod
    def _policies(cls, v: list[str] | None) -> list[str] | None:
        for item in v or []:
            if not _OID.fullmatch(item):
                raise ValueError(f"policy {item!r} is not a dotted OID")
        return v


class SSHCertificateTemplate(_Strict):
    """What an SSH template renders (step-ca's names); what it leaves out stays as the request had it."""

    type: Literal["user", "host"] | None = None
    keyId: str | None = None
    principals: list[str] | None = None
    extensions: dict[str, str] | None = None
    criticalOptions: dict[str, str] | None = None


def ssh_variables(request: IssuanceRequest, provisioner: str, provisioner_type: str) -> dict[str, Any]:
    """What an SSH template sees: the request (`type`, `keyId`, `principals`) and the provisioner's data (`token`…)."""
    ssh = request.ssh
    assert ssh is not None
    return {**dict(request.template_data), "type": ssh.cert_type, "keyId": ssh.key_id,
            "principals": list(ssh.principals), "provisioner": {"name": provisioner, "type": provisioner_type}}


def apply_ssh(request: IssuanceRequest, rendered: SSHCertificateTemplate) -> IssuanceRequest:
    """The request as the template shaped it; the certificate type cannot change (the credential decided it)."""
    ssh = request.ssh
    assert ssh is not None
    if rendered.type is not None and rendered.type != ssh.cert_type:
        raise BadRequest(f"the provisioner's SSH template changed the certificate type from {ssh.cert_type} to "
                         f"{rendered.type}; a template cannot")
    shaped = replace(ssh, key_id=rendered.keyId if rendered.keyId is not None else ssh.key_id,
                     principals=tuple(rendered.principals) if rendered.principals is not None else ssh.principals,
                     extensions=rendered.extensions if rendered.extensions is not None else ssh.extensions,
                     critical_options=rendered.criticalOptions if rendered.criticalOptions is not None
                     else ssh.critical_options)
    audit = replace(request.audit, subject=shaped.key_id, sans=tuple(f"principal:{p}" for p in shaped.principals))
    return replace(request, ssh=shaped, common_name=shaped.key_id, audit=audit)


class _Budget:
    """Loop steps and time left for one rendering."""

    def __init__(self) -> None:
        self.deadline = time.monotonic() + MAX_SECONDS
        self.steps = 0

    def spend(self) -> None:
        self.steps += 1
        if self.steps > MAX_ITERATIONS:
            raise TemplateError(f"the template ran more than {MAX_ITERATIONS} loop steps")
        if time.monotonic() > self.deadline:
            raise TemplateError(f"the template ran longer than {MAX_SECONDS} s")


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with every call, loop step and large product charged to the budget."""

    intercepted_binops = frozenset({"*", "**"})

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget: _Budget | None = __context.get("__budget__")
        if budget is not None:
            budget.spend()
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise TemplateError("exponents above 64 are refused in templates")
        if operator == "*":
            size = next((len(v) * n for v, n in ((left, right), (right, left))
                         if isinstance(v, str | list | tuple) and isinstance(n, int)), 0)
            if size > MAX_OUTPUT:
                raise TemplateError(f"a product of {size} items is refused in templates")
        return super().call_binop(context, operator, left, right)


def _asn1(value: Any, kind: str = "utf8") -> str:
    """Base64 of `value` DER-encoded as an ASN.1 `kind` (utf8, ia5, printable, integer, boolean, octets), for
    `extensions[].value`."""
    if kind in ("utf8", "ia5", "printable"):
        text = str(value)
        tag = {"utf8": 0x0C, "ia5": 0x16, "printable": 0x13}[kind]
        data = text.encode("utf-8" if kind == "utf8" else "ascii", errors="strict")
        if kind == "printable" and not re.fullmatch(r"[A-Za-z0-9 '()+,\-./:=?]*", text):
            raise TemplateError(f"{text!r} is not a PrintableString")
    elif kind == "integer":
        number = int(value)
        tag, data = 0x02, number.to_bytes((number + (number < 0)).bit_length() // 8 + 1, "big", signed=True)
    elif kind == "boolean":
        tag, data = 0x01, b"\xff" if value else b"\x00"
    elif kind == "octets":
        tag, data = 0x04, value if isinstance(value, bytes) else str(value).encode()
    else:
        raise TemplateError(f"asn1 kind {kind!r} is not one of utf8, ia5, printable, integer, boolean, octets")
    return base64.b64encode(der(tag, data)).decode()


def _environment() -> _Sandbox:
    env = _Sandbox(undefined=StrictUndefined, autoescape=False, loader=None, auto_reload=False)
    env.globals.clear()  # no lipsum, cycler, joiner, namespace, dict; `range` comes with each rendering
    env.filters["asn1"] = _asn1
    return env


_ENV = _environment()


@dataclass(frozen=True)
class Template:
    """One provisioner's compiled template and its `templateData`."""

    source: str
    data: Mapping[str, Any]
    where: str  # e.g. "authority.provisioners[admin].options.x509.template", for messages
    compiled: Any  # the jinja2 Template, compiled once

    @classmethod
    def load(cls, source: str, data: Mapping[str, Any] | None, where: str) -> Template:
        """Compile now, so a broken template stops `hsmca serve` (or `provisioner add`) with a clear message."""
        if len(source) > MAX_TEMPLATE:
            raise TemplateProblem(f"{where}: the template is longer than {MAX_TEMPLATE} characters")
        go = _GO_SYNTAX.search(source)
        if go:
            raise TemplateProblem(
                f"{where}: {go.group(0)!r} is step-ca's Go template syntax, which hsmca does not run; hsmca "
                "templates are Jinja2: write {{ subject.commonName }} for {{ .Subject.CommonName }}, "
                "{{ sans | tojson }} for {{ toJson .SANs }}, {{ token.email }} for {{ .Token.email }}, "
                "{{ authorizationCrt.dnsNames }} for {{ .AuthorizationCrt.DNSNames }}, and "
                "{% if ... %}…{% endif %} for {{ if ... }}…{{ end }} (see the README: Certificate templates)")
        try:
            compiled = _ENV.from_string(source)
        except TemplateError as exc:
            raise TemplateProblem(f"{where}: {exc}") from None
        return cls(source, dict(data or {}), where, compiled)

    def render(self, variables: Mapping[str, Any]) -> CertificateTemplate:
        """The rendered, validated document; BadRequest saying what went wrong (the request's data may be why)."""
        document = self.render_json(variables)
        try:
            return CertificateTemplate.model_validate(document)
        except ValidationError as exc:
            raise BadRequest(f"the provisioner's certificate template rendered {_schema_message(exc)}") from None

    def render_ssh(self, variables: Mapping[str, Any]) -> SSHCertificateTemplate:
        """The rendered SSH certificate document (step-ca's JSON shape), validated."""
        document = self.render_json(variables)
        try:
            return SSHCertificateTemplate.model_validate(document)
        except ValidationError as exc:
            raise BadRequest(f"the provisioner's SSH template rendered {_schema_message(exc)}") from None

    def render_json(self, variables: Mapping[str, Any]) -> Any:
        """Render within the budget and parse the output as JSON; BadRequest saying what went wrong."""
        budget = _Budget()

        def counted_range(*args: int) -> Iterator[int]:
            for i in range(*args):
                budget.spend()
                yield i

        try:
            out: list[str] = []
            size = 0
            for chunk in self.compiled.generate(**variables, data=self.data, range=counted_range,
                                                __budget__=budget):
                size += len(chunk)
                if size > MAX_OUTPUT:
                    raise TemplateError(f"the output exceeds {MAX_OUTPUT} characters")
                budget.spend()
                out.append(chunk)
            return json.loads("".join(out))
        except json.JSONDecodeError as exc:
            raise BadRequest(f"the provisioner's certificate template rendered not JSON ({exc})") from None
        except (TemplateError, RecursionError) as exc:
            raise BadRequest(f"the provisioner's certificate template failed: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - whatever a template's expression raises (1/0, include, ...)
            raise BadRequest(f"the provisioner's certificate template failed: {type(exc).__name__}: {exc}") from None


def load_templates(config: CAConfig, kind: str = "x509") -> dict[str, Template]:
    """Every provisioner's template (`options.x509`, or `options.ssh` with kind="ssh"), compiled; ConfigError naming
    the field when one cannot be used."""
    found: dict[str, Template] = {}
    for cfg in config.authority.provisioners:
        x509_options = getattr(cfg.options, kind) if cfg.options is not None else None
        if x509_options is None or (x509_options.template is None and x509_options.templateFile is None):
            continue
        where = f"authority.provisioners[{cfg.name}].options.{kind}"
        if x509_options.template is not None:
            source, where = x509_options.template, f"{where}.template"
        else:
            path = config.resolve(str(x509_options.templateFile))
            where = f"{where}.templateFile ({path})"
            try:
                source = path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{where}: cannot read the template: {exc}") from None
        try:
            found[cfg.name] = Template.load(source, x509_options.templateData, where)
        except TemplateProblem as exc:
            raise ConfigError(str(exc)) from None
    return found


def _schema_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg']}")
    return "a document hsmca cannot use: " + "; ".join(parts)


def variables(request: IssuanceRequest, provisioner: str, provisioner_type: str) -> dict[str, Any]:
    """What a template sees: `subject`, `sans`, `token`, `csr`, `provisioner` (and `data`, its templateData), and
    what the provisioner adds: X5C `authorizationCrt` (the certificate that vouched), K8sSA `k8s` (the service
    account)."""
    csr = request.csr
    csr_view: dict[str, Any] = {}
    if csr is not None:
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        csr_view = {"subject": {"commonName": str(cns[0].value) if cns else ""},
                    "publicKeyAlgorithm": _key_type(request)}
    seen: dict[str, Any] = {
        "subject": {"commonName": request.common_name}, "sans": _sans(request.names),
        "token": dict(request.template_data.get("token", {})), "csr": csr_view,
        "provisioner": {"name": provisioner, "type": provisioner_type}, "keyType": _key_type(request)}
    for name, value in request.template_data.items():
        if name not in ("data", "range", "__budget__"):  # what `render` passes itself
            seen.setdefault(name, value)
    return seen


def apply(request: IssuanceRequest, rendered: CertificateTemplate) -> IssuanceRequest:
    """The request as the template shapes it (only what the template says changes)."""
    changes: dict[str, Any] = {}
    subject = rendered.subject
    if subject is not None:
        if subject.commonName is not None:
            changes["common_name"] = subject.commonName
        changes["subject_extra"] = tuple(
            x509.NameAttribute(SUBJECT_FIELDS[field], value)
            for field in SUBJECT_FIELDS for value in _listed(getattr(subject, field)))
    if rendered.sans is not None:
        changes["names"] = _names(rendered.sans)
    if rendered.keyUsage is not None:
        try:
            key_usage(request.public_key, tuple(rendered.keyUsage))
        except ValueError as exc:
            raise BadRequest(f"the certificate template's keyUsage: {exc}") from None
        changes["key_usage"] = tuple(rendered.keyUsage)
    if rendered.extKeyUsage is not None:
        changes["ext_key_usage"] = tuple(EKU_NAMES.get(e) or x509.ObjectIdentifier(e) for e in rendered.extKeyUsage)
    extensions = list(request.extensions)
    if rendered.policyIdentifiers:
        extensions.append(x509.Extension(x509.CertificatePolicies.oid, False, x509.CertificatePolicies(
            [x509.PolicyInformation(x509.ObjectIdentifier(p), None) for p in rendered.policyIdentifiers])))
    for ext in rendered.extensions or []:
        oid = x509.ObjectIdentifier(ext.id)
        extensions.append(x509.Extension(oid, ext.critical,
                                         x509.UnrecognizedExtension(oid, base64.b64decode(ext.value))))
    if len({e.oid for e in extensions}) != len(extensions):
        raise BadRequest("the provisioner's certificate template sets an extension twice")
    changes["extensions"] = tuple(extensions)
    return replace(request, **changes)


def _names(sans: list[SANTemplate]) -> RequestedNames:
    dns: list[str] = []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    emails: list[str] = []
    uris: list[str] = []
    for san in sans:
        if san.type == "ip":
            try:
                ips.append(ipaddress.ip_address(san.value))
            except ValueError:
                raise BadRequest(f"the certificate template's SAN {san.value!r} is not an IP address") from None
        else:
            {"dns": dns, "email": emails, "uri": uris}[san.type].append(san.value)
    return RequestedNames(tuple(dict.fromkeys(dns)), tuple(dict.fromkeys(ips)), tuple(dict.fromkeys(emails)),
                          tuple(dict.fromkeys(uris)))


def _sans(names: RequestedNames) -> list[dict[str, str]]:
    return ([{"type": "dns", "value": d} for d in names.dns] + [{"type": "ip", "value": str(i)} for i in names.ips]
            + [{"type": "email", "value": e} for e in names.emails]
            + [{"type": "uri", "value": u} for u in names.uris])


def _listed(value: str | list[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def _key_type(request: IssuanceRequest) -> str:
    key = request.public_key
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC"
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    return "Ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else type(key).__name__
