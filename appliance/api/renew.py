"""`POST /renew` and `POST /rekey`: step-ca's shapes; the credential is the certificate itself.

The caller proves it holds the certificate's key either with a TLS client certificate (mTLS, what
`step ca renew` does) or with `Authorization: Bearer <x5c token>` signed by that key, for clients
behind a TLS-terminating load balancer. A bearer token, when sent, is the credential even if a
client certificate came too: an explicit header says what the client means.
"""

from __future__ import annotations

import falcon
from cryptography import x509

from appliance.api.middleware import read_body, read_json_object, remote_addr
from appliance.api.peer import client_certificate
from appliance.api.sign import MAX_OTT_LENGTH, parse_csr, sign_response
from appliance.errors import BadRequest, CAError, Unauthorized
from appliance.provisioners.x5c import X5CToken
from appliance.ra.authority import Authority, RequestContext


def credential(authority: Authority, req: falcon.Request, endpoint: str) -> tuple[x509.Certificate, X5CToken | None]:
    """The certificate to act on, from the bearer token if one is sent, else from mTLS."""
    header = req.get_header("Authorization")
    if header:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("Authorization must be 'Bearer <x5c token>'")
        if len(token) > MAX_OTT_LENGTH:
            raise BadRequest(f"bearer token is longer than {MAX_OTT_LENGTH} characters")
        verified = authority.verify_renew_token(token, endpoint)
        return verified.certificate, verified
    cert = client_certificate(req)
    if cert is None:
        raise Unauthorized(f"{endpoint} needs the certificate as credential: a TLS client certificate (mTLS) "
                           "or an 'Authorization: Bearer' x5c token signed by its key")
    return cert, None


class Renew:
    def __init__(self, authority: Authority):
        self.authority = authority

    def reject(self, req: falcon.Request, error: CAError) -> None:
        self.authority.reject("x509.renew", _ctx(req), error)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            read_body(req)  # step sends an empty body; whatever comes is bounded and ignored
            cert, token = credential(self.authority, req, "renew")
        except CAError as exc:
            self.reject(req, exc)
            raise
        sign_response(self.authority, resp, self.authority.renew(cert, token, _ctx(req)))


class Rekey:
    def __init__(self, authority: Authority):
        self.authority = authority

    def reject(self, req: falcon.Request, error: CAError) -> None:
        self.authority.reject("x509.rekey", _ctx(req), error)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            csr = _parse_csr(req)
            cert, token = credential(self.authority, req, "rekey")
        except CAError as exc:
            self.reject(req, exc)
            raise
        sign_response(self.authority, resp, self.authority.renew(cert, token, _ctx(req), csr=csr))


def _parse_csr(req: falcon.Request) -> x509.CertificateSigningRequest:
    body = read_json_object(req)
    text = body.get("csr")
    if not text:
        raise BadRequest("missing csr (the certificate request for the new key)")
    if not isinstance(text, str):
        raise BadRequest("field 'csr' must be a string")
    return parse_csr(text)


def _ctx(req: falcon.Request) -> RequestContext:
    return RequestContext(request_id=req.context.request_id, remote_addr=remote_addr(req))
