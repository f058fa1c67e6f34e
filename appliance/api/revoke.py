"""`POST /revoke`: step-ca's request and response around the authority's revocation rules.

Body: `{"serial": "<decimal>", "ott": "<JWT, sub = serial>", "reasonCode": 0, "reason": "", "passive": true}`;
answer 200 `{"status": "ok"}`, also when the certificate was already revoked (the first revocation stands).
The token path is `_with_token`; a certificate-bound path (mTLS: the client certificate revokes itself)
sits beside it and is chosen when the body has no `ott`.
"""

from __future__ import annotations

from typing import Any

import falcon

from appliance.api.middleware import read_json_object, remote_addr
from appliance.api.peer import client_certificate
from appliance.errors import BadRequest, CAError, Unauthorized
from appliance.ra.authority import Authority, RequestContext
from appliance.ra.revoke import RevokeRequest, check_reason_text, parse_serial, reason_code

MAX_OTT_LENGTH = 16 * 1024
ACTION = "x509.revoke"


def parse_request(body: dict[str, Any]) -> RevokeRequest:
    serial = body.get("serial")
    if not serial:
        raise BadRequest("missing serial")
    if not isinstance(serial, str):
        raise BadRequest("field 'serial' must be a string (the decimal serial number)")
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise BadRequest("field 'reason' must be a string")
    passive = body.get("passive", True)
    if not isinstance(passive, bool):
        raise BadRequest("field 'passive' must be true or false")
    # `passive` is step-ca's: it only blocks renewal. hsmca always also publishes the revocation (CRL, OCSP).
    return RevokeRequest(serial=parse_serial(serial), reason_code=reason_code(body.get("reasonCode", 0)),
                         reason=check_reason_text(reason), passive=passive)


def _ott(body: dict[str, Any]) -> str | None:
    ott = body.get("ott")
    if ott is None or ott == "":
        return None
    if not isinstance(ott, str):
        raise BadRequest("field 'ott' must be a string")
    if len(ott) > MAX_OTT_LENGTH:
        raise BadRequest(f"ott is longer than {MAX_OTT_LENGTH} characters")
    return ott


class Revoke:
    def __init__(self, authority: Authority):
        self.authority = authority

    def reject(self, req: falcon.Request, error: CAError) -> None:
        """Audit a request refused before it reached the authority's rules."""
        self.authority.reject(ACTION, self._ctx(req), error)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            body = read_json_object(req)
            request = parse_request(body)
            ott = _ott(body)
            certificate = client_certificate(req) if ott is None else None
            if ott is None and certificate is None:
                raise Unauthorized("missing ott: a one-time revoke token (sub = the serial, audience "
                                   "…/1.0/revoke) is required, or the certificate itself as the TLS "
                                   "client certificate (mTLS)")
        except CAError as exc:
            self.reject(req, exc)
            raise
        if certificate is not None:
            self.authority.revoke_with_certificate(request, certificate, self._ctx(req))
        else:
            assert ott is not None
            self._with_token(req, request, ott)
        resp.status = 200
        resp.media = {"status": "ok"}

    def _with_token(self, req: falcon.Request, request: RevokeRequest, ott: str) -> None:
        self.authority.revoke_with_token(request, ott, self._ctx(req))

    @staticmethod
    def _ctx(req: falcon.Request) -> RequestContext:
        return RequestContext(request_id=req.context.request_id, remote_addr=remote_addr(req))
