"""`POST /sign`: step-ca's request and response shapes around `Authority.sign`."""

from __future__ import annotations

from typing import Any

import falcon
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from appliance.api.middleware import read_json_object, remote_addr
from appliance.certutil import pem
from appliance.errors import BadRequest, CAError
from appliance.ra.authority import Authority, Issued, RequestContext

MAX_OTT_LENGTH = 16 * 1024


def _field(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or isinstance(value, str):
        return value
    raise BadRequest(f"field {name!r} must be a string")


def parse_csr(text: str) -> x509.CertificateSigningRequest:
    if "-----BEGIN CERTIFICATE REQUEST-----" not in text and "-----BEGIN NEW CERTIFICATE REQUEST-----" not in text:
        raise BadRequest("invalid csr: expected a PEM 'CERTIFICATE REQUEST' block")
    try:
        csr = x509.load_pem_x509_csr(text.encode())
        csr.public_key()  # an algorithm cryptography cannot read is bad input, not a 500
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BadRequest(f"invalid csr: {exc}") from None
    return csr


def sign_response(authority: Authority, resp: falcon.Response, result: Issued) -> None:
    """201 with `crt`, `ca`, `certChain`, `tlsOptions` (step-ca's shape for sign, renew and rekey)."""
    chain = [pem(c) for c in result.chain]
    resp.status = 201
    resp.media = {"crt": chain[0], "ca": chain[1] if len(chain) > 1 else "",
                  "certChain": chain, "tlsOptions": authority.tls_options.model_dump()}


class Sign:
    def __init__(self, authority: Authority):
        self.authority = authority

    def reject(self, req: falcon.Request, error: CAError) -> None:
        """Audit a request refused before it reached the authority's rules."""
        ctx = RequestContext(request_id=req.context.request_id, remote_addr=remote_addr(req))
        self.authority.reject("x509.sign", ctx, error)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = RequestContext(request_id=req.context.request_id, remote_addr=remote_addr(req))
        try:
            csr, ott, not_before, not_after = self._parse(req)
        except CAError as exc:
            self.reject(req, exc)
            raise
        sign_response(self.authority, resp, self.authority.sign(csr, ott, not_before, not_after, ctx))

    def _parse(self, req: falcon.Request) -> tuple[x509.CertificateSigningRequest, str, str | None, str | None]:
        body = read_json_object(req)
        csr_text, ott = _field(body, "csr"), _field(body, "ott")
        if not csr_text:
            raise BadRequest("missing csr")
        csr = parse_csr(csr_text)
        if not ott:
            raise BadRequest("missing ott")
        if len(ott) > MAX_OTT_LENGTH:
            raise BadRequest(f"ott is longer than {MAX_OTT_LENGTH} characters")
        return csr, ott, _field(body, "notBefore"), _field(body, "notAfter")
