"""`GET /crl`: the active intermediate's latest CRL, DER (`application/pkix-crl`) or PEM with `?pem`.

The bytes were signed by the housekeeping process and stored; serving costs one small query. Caches may
keep the CRL until its nextUpdate (`Cache-Control`, `Expires`); `Last-Modified` is its thisUpdate.
"""

from __future__ import annotations

import base64
import textwrap
from datetime import datetime, timezone

import falcon

from appliance.ra.authority import Authority

DER_TYPE = "application/pkix-crl"
PEM_TYPE = "application/x-pem-file"


def to_pem(der: bytes) -> bytes:
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN X509 CRL-----\n{body}\n-----END X509 CRL-----\n".encode()


def wants_pem(req: falcon.Request) -> bool:
    """`?pem` (step-ca's switch; Falcon drops blank query values from `params`, so read the raw string)."""
    return any(part.split("=", 1)[0] == "pem" for part in req.query_string.split("&"))


class CRL:
    def __init__(self, authority: Authority):
        self.authority = authority

    def on_get(self, req: falcon.Request, resp: falcon.Response, issuer_id: str | None = None) -> None:
        """`/crl`: the active intermediate's; `/crl/{issuer_id}`: that intermediate's (the URL in its leaves)."""
        if issuer_id is not None:
            self.authority.intermediate(issuer_id)
        rec = self.authority.current_crl(issuer_id)
        info = rec.info
        now = datetime.now(timezone.utc)
        max_age = max(0, int((info.next_update - now).total_seconds()))
        resp.cache_control = ["public", f"max-age={max_age}"]
        resp.expires = info.next_update
        resp.last_modified = info.this_update
        resp.etag = f'"{info.issuer[:16]}-{info.number}"'
        if wants_pem(req):
            resp.content_type = PEM_TYPE
            resp.data = to_pem(rec.der)
        else:
            resp.content_type = DER_TYPE
            resp.data = rec.der

    on_head = on_get
