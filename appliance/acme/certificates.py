"""Finalize (CSR checks, then the pipeline), certificate download and revokeCert (RFC 8555 §7.4, §7.4.2, §7.6).

Finalize checks what only ACME knows (the CSR names exactly the order's identifiers, its key is not the
account's), claims the order (ready → processing, one request wins) and hands it to the registration
authority's one pipeline as an `OrderCredential`: policy, recording before signing, signing and the audit
record are the same as for /1.0/sign.
"""

from __future__ import annotations

import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance.acme import jws
from appliance.acme.call import Answer, Call
from appliance.acme.identifiers import Identifier, parse_identifier, policy_subproblems
from appliance.acme.objects import order_json
from appliance.acme.orders import own_order
from appliance.acme.problems import Problem, from_subproblems
from appliance.ca.lint import NAME_CONSTRAINTS
from appliance.certutil import read_extensions
from appliance.errors import BadRequest, CAError, LintRefused, PolicyDenied
from appliance.names import RequestedNames
from appliance.provisioners import AuditNote
from appliance.provisioners.acme import OrderCredential
from appliance.ra.revoke import RevokeRequest, reason_code
from appliance.store.records import MAX_SERIAL

BEFORE_RECORD = ("authorize", "csr", "template", "policy", "profile", "lint")  # steps that leave nothing recorded

PEM_CHAIN = "application/pem-certificate-chain"


def csr_names(csr: x509.CertificateSigningRequest) -> tuple[set[Identifier], str | None]:
    """The identifiers a CSR asks for (SAN DNS names and IPs, plus its CN) and its CN; badCSR otherwise."""
    try:
        san = read_extensions(csr).get_extension_for_class(x509.SubjectAlternativeName).value
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
    idents = sorted(names)
    dns = tuple(i.value for i in idents if i.type == "dns")
    ips = tuple(ipaddress.ip_address(i.value) for i in idents if i.type == "ip")
    if not call.store.begin_finalize(order.id):
        raise Problem("orderNotReady", "the order is being finalized by another request")
    credential = OrderCredential(
        provisioner=call.provisioner.name, order_id=order.id, account_id=call.acct.id, names=RequestedNames(dns, ips),
        common_name=cn or (dns[0] if dns else str(ips[0])), csr=csr, not_before=order.not_before,
        not_after=order.not_after)
    try:
        issued = call.ra.issue(credential, call.ctx, action="acme.finalize",
                               note=AuditNote(subject=call.links.account(call.acct.id)))
    except Exception as exc:
        _finish_refused(call, order.id, exc)
        if isinstance(exc, PolicyDenied):
            policy = call.ra.policy_for(call.provisioner.name)
            refused = policy_subproblems(policy, idents, call.now) if policy is not None else []
            raise (from_subproblems(refused, "the policy refuses some names") if refused else Problem(
                "badCSR", "the policy refuses this request: " + "; ".join(exc.reasons))) from None
        if isinstance(exc, LintRefused):  # the intermediate could not vouch for it: names, or the CSR's key
            raise Problem("rejectedIdentifier" if exc.rule == NAME_CONSTRAINTS else "badCSR", exc.message) from None
        raise
    call.store.finish_order(order.id, serial=issued.certificate.serial_number)
    done = call.store.order(order.id)
    assert done is not None
    return Answer(200, order_json(call.links, done), headers={"Location": call.links.order(order.id)})


def _finish_refused(call: Call, order_id: str, exc: Exception) -> None:
    """Never leave the order in processing (the client would poll it forever): refused before anything was
    recorded, it is ready again (Boulder's way: a bad CSR can be replaced); once recorded, it failed."""
    if getattr(exc, "step", None) in BEFORE_RECORD:
        call.store.finish_order(order_id, back_to_ready=True)
        return
    detail = f"issuance failed: {exc.message}" if isinstance(exc, CAError) else \
        "issuance failed inside the CA; see its log"
    call.store.finish_order(order_id, error={"type": "urn:ietf:params:acme:error:serverInternal", "detail": detail})


def download(call: Call, order_id: str, alternate: bool = False) -> Answer:
    """The leaf and what follows it; where the intermediate has a cross-certificate (a root rollover), the
    chain without it is offered too, as `Link: rel="alternate"` (RFC 8555 §7.4.2)."""
    order = own_order(call, order_id)
    if order.status != "valid" or order.serial is None:
        raise Problem("malformed", f"the order is {order.status}; it has no certificate", 404)
    rec = call.sa.certificates.get(order.serial)
    if rec is None or rec.der is None:
        raise Problem("serverInternal", f"certificate {order.serial} is not on record", 500)
    chain = call.ra.chain(rec.issuer)
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
    rec = call.sa.certificates.get(serial) if 0 < serial <= MAX_SERIAL else None
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
    done = call.ra.revoke(RevokeRequest(serial, reason), source=source, ctx=call.ctx,
                          provisioner=call.provisioner.name)
    if not done.created:
        raise Problem("alreadyRevoked", f"certificate {serial} was already revoked at "
                      f"{done.record.revoked_at.isoformat()}")
    return Answer(200, raw=b"", content_type="application/json")
