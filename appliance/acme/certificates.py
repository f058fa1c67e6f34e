"""Finalize (CSR checks, policy, issuance), certificate download and revokeCert (RFC 8555 §7.4, §7.4.2, §7.6).

Issuance goes through the active intermediate's `Issuer.issue`, the same path as /1.0/sign: the serial and
the to-be-signed body are recorded before the KMS signs, and the decision is audited with its reasons.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance.acme import jws
from appliance.acme.call import Answer, Call
from appliance.acme.identifiers import Identifier, parse_identifier, policy_subproblems
from appliance.acme.objects import order_json
from appliance.acme.orders import own_order
from appliance.acme.problems import Problem, from_subproblems
from appliance.audit import AuditEvent
from appliance.ca.issuer import LeafProfile
from appliance.errors import BadRequest, CAError
from appliance.names import RequestedNames
from appliance.ra.revoke import RevokeRequest, reason_code, revoke
from appliance.store import StoreError
from policy import Request, key_info

PEM_CHAIN = "application/pem-certificate-chain"


def csr_names(csr: x509.CertificateSigningRequest) -> tuple[set[Identifier], str | None]:
    """The identifiers a CSR asks for (SAN DNS names and IPs, plus its CN) and its CN; badCSR otherwise."""
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    except ValueError as exc:
        raise Problem("badCSR", f"the CSR's extensions cannot be read: {exc}") from None
    names: set[Identifier] = set()
    if san is not None:
        asked = RequestedNames.from_general_names(san)
        if asked.emails or asked.uris:
            raise Problem("badCSR", "the CSR asks for email addresses or URIs, which ACME orders cannot hold")
        try:
            names |= {parse_identifier("dns", d) for d in asked.dns}
            names |= {parse_identifier("ip", str(i)) for i in asked.ips}
        except Problem as exc:
            raise Problem("badCSR", f"the CSR names something no order can hold: {exc.detail}") from None
    cns = csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else None
    if cn:
        try:
            ipaddress.ip_address(cn)
            names.add(parse_identifier("ip", cn))
        except ValueError:
            try:
                names.add(parse_identifier("dns", cn))
            except Problem as exc:
                raise Problem("badCSR", f"the CSR's common name is not a name an order can hold: {exc.detail}") \
                    from None
    return names, cn


def finalize(call: Call, order_id: str) -> Answer:
    order = own_order(call, order_id)
    if order.status != "ready":
        raise Problem("orderNotReady", f"the order is {order.status}, not ready: "
                      + ("prove every authorization first" if order.status == "pending"
                         else "it cannot be finalized again"))
    payload = call.jws.json()
    raw = payload.get("csr")
    if not isinstance(raw, str):
        raise Problem("malformed", "finalize needs a csr (base64url DER)")
    try:
        csr = x509.load_der_x509_csr(jws.b64decode(raw, "csr"))
    except ValueError as exc:
        raise Problem("badCSR", f"the CSR cannot be parsed: {exc}") from None
    if not csr.is_signature_valid:
        raise Problem("badCSR", "the CSR's signature does not verify")
    names, cn = csr_names(csr)
    ordered = {Identifier(i["type"], i["value"]) for i in order.identifiers}
    if names != ordered:
        extra = sorted(i.value for i in names - ordered)
        missing = sorted(i.value for i in ordered - names)
        raise Problem("badCSR", "the CSR's names must equal the order's identifiers"
                      + (f"; not in the order: {', '.join(extra)}" if extra else "")
                      + (f"; missing from the CSR: {', '.join(missing)}" if missing else ""))
    public_key = csr.public_key()
    spki = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if spki == call.jws.key.as_der(private=False):
        raise Problem("badCSR", "the certificate key must not be the account key")
    now = call.now
    idents = sorted(names)
    dns = tuple(i.value for i in idents if i.type == "dns")
    ips = tuple(ipaddress.ip_address(i.value) for i in idents if i.type == "ip")
    policy = call.authority.policy_for(call.provisioner.name)
    assert policy is not None
    decision = policy.evaluate(Request(dns_names=dns, ip_addresses=ips, key=key_info(public_key),
                                       not_before=order.not_before, not_after=order.not_after, now=now))
    if not decision.allowed:
        refused = policy_subproblems(policy, idents, now)
        problem = from_subproblems(refused, "the policy refuses some names") if refused else Problem(
            "badCSR", "the policy refuses this request: " + "; ".join(decision.reasons))
        _audit(call, "denied", order_id, dns, ips, reasons=decision.reasons, status=problem.status)
        raise problem
    if not call.store.begin_finalize(order.id):
        raise Problem("orderNotReady", "the order is being finalized by another request")
    names_obj = RequestedNames(dns, ips).canonical()  # serverAuth and clientAuth, as step-ca's ACME issues
    common = names_obj.canonical_common_name(cn) if cn else (dns[0] if dns else str(ips[0]))
    profile = LeafProfile(common_name=common, public_key=public_key, not_before=decision.not_before,
                          not_after=decision.not_after, dns_names=names_obj.dns, ip_addresses=names_obj.ips)
    try:
        issuer = call.authority.issuer
        cert = issuer.issue(profile, provisioner=call.provisioner.name, request_id=call.ctx.request_id)
    except CAError as exc:
        call.store.finish_order(order.id, error={"type": "urn:ietf:params:acme:error:serverInternal",
                                                 "detail": f"issuance failed: {exc.message}"})
        _audit(call, "error", order_id, dns, ips, reasons=exc.reasons, status=exc.status)
        raise
    except Exception:  # never leave the order in processing: the client would poll it forever
        call.store.finish_order(order.id, error={"type": "urn:ietf:params:acme:error:serverInternal",
                                                 "detail": "issuance failed inside the CA; see its log"})
        raise
    call.store.finish_order(order.id, serial=cert.serial_number)
    _audit(call, "allowed", order_id, dns, ips, serial=cert.serial_number, status=200, issuer=issuer.id)
    done = call.store.order(order.id)
    assert done is not None
    return Answer(200, order_json(call.links, done), headers={"Location": call.links.order(order.id)})


def download(call: Call, order_id: str, alternate: bool = False) -> Answer:
    """The leaf and what follows it; where the intermediate has a cross-certificate (a root rollover), the
    chain without it is offered too, as `Link: rel="alternate"` (RFC 8555 §7.4.2)."""
    order = own_order(call, order_id)
    if order.status != "valid" or order.serial is None:
        raise Problem("malformed", f"the order is {order.status}; it has no certificate", 404)
    rec = call.authority.store.certificates.get(order.serial)
    if rec is None or rec.der is None:
        raise Problem("serverInternal", f"certificate {order.serial} is not on record", 500)
    chain = _chain(call, rec.issuer)
    url = call.links.certificate(order_id)
    if alternate and len(chain) < 2:
        raise Problem("malformed", "this certificate has no alternate chain", 404)
    served = chain[:1] if alternate else chain
    others = [url] if alternate else ([f"{url}/alternate"] if len(chain) > 1 else [])
    leaf = x509.load_der_x509_certificate(rec.der)
    pem = leaf.public_bytes(Encoding.PEM) + b"".join(c.public_bytes(Encoding.PEM) for c in served)
    return Answer(200, raw=pem, content_type=PEM_CHAIN, links=[f'<{u}>;rel="alternate"' for u in others])


def download_alternate(call: Call, order_id: str) -> Answer:
    return download(call, order_id, alternate=True)


def _chain(call: Call, issuer_id: str) -> tuple[x509.Certificate, ...]:
    """The intermediate that signed the leaf, then any certificate served after it (a cross-certificate)."""
    try:
        rec = call.authority.store.intermediates.get(issuer_id)
    except StoreError:
        rec = None
    if rec is None or rec.certificate is None:  # an in-process issuer (tests) is not in the database
        issuer = call.authority.issuer
        return issuer.chain if issuer.id == issuer_id else ()
    extra = tuple(x509.load_pem_x509_certificates(rec.chain)) if rec.chain else ()
    return (x509.load_der_x509_certificate(rec.certificate), *extra)


def revoke_cert(call: Call) -> Answer:
    """By the account that ordered it (kid), or by the certificate's own key (jwk)."""
    payload = call.jws.json()
    raw = payload.get("certificate")
    if not isinstance(raw, str):
        raise Problem("malformed", "revokeCert needs the certificate (base64url DER)")
    try:
        der = jws.b64decode(raw, "certificate")
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise Problem("malformed", f"the certificate cannot be parsed: {exc}") from None
    try:
        reason = reason_code(payload.get("reason", 0))
    except BadRequest as exc:
        raise Problem("badRevocationReason", exc.message) from None
    serial = cert.serial_number
    rec = call.authority.store.certificates.get(serial) if 0 < serial < 2**159 else None
    if rec is None or rec.der != der:
        raise Problem("malformed", f"certificate {serial} was not issued by this CA", 404)
    if call.account is not None:
        owner = call.store.order_account_for_serial(serial)
        if owner != call.account.id:
            raise Problem("unauthorized", "this account did not order the certificate; revoke it with its own key")
        source = f"acme:{call.provisioner.name}:account"
    else:
        spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        if spki != call.jws.key.as_der(private=False):
            raise Problem("unauthorized", "the JWS key is not the certificate's key")
        source = f"acme:{call.provisioner.name}:certificate-key"
    done = revoke(call.authority, RevokeRequest(serial, reason), source=source, ctx=call.ctx,
                  provisioner=call.provisioner.name)
    if not done.created:
        raise Problem("alreadyRevoked", f"certificate {serial} was already revoked at "
                      f"{done.record.revoked_at.isoformat()}")
    return Answer(200, raw=b"", content_type="application/json")


Decision = Literal["allowed", "denied", "error"]


def _audit(call: Call, decision: Decision, order_id: str, dns: tuple[str, ...], ips: tuple[object, ...], *,
           reasons: tuple[str, ...] = (), serial: int | None = None, status: int | None = None,
           issuer: str | None = None) -> None:
    details: dict[str, object] = {"order": order_id, "account": call.acct.id}
    if issuer:
        details["issuer"] = issuer
    call.authority.record(AuditEvent(
        action="acme.finalize", decision=decision, request_id=call.ctx.request_id,
        remote_addr=call.ctx.remote_addr, provisioner=call.provisioner.name,
        subject=call.links.account(call.acct.id),
        sans=tuple([f"dns:{d}" for d in dns] + [f"ip:{i}" for i in ips]), serial=str(serial) if serial else None,
        reasons=reasons, status=status, details=details))
