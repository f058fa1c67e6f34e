"""Read-only step-ca endpoints: health, version, roots, intermediates, provisioners."""

from __future__ import annotations

import falcon
from cryptography.hazmat.primitives.serialization import Encoding

import appliance
from appliance.certutil import pem
from appliance.errors import BadRequest, NotFound
from appliance.ra.authority import Authority

PEM_MEDIA = "application/x-pem-file"
DER_CERT_MEDIA = "application/pkix-cert"


class Health:
    def __init__(self, authority: Authority):
        self.authority = authority

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        detail = self.authority.health()
        ok = all(v == "ok" for k, v in detail.items() if isinstance(v, str))
        resp.status = 200 if ok else 503
        resp.media = {"status": "ok" if ok else "unavailable", "detail": detail}


class Version:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"version": f"hsmca/{appliance.__version__}",
                      "requireClientAuthentication": False}


class Root:
    """`GET /root/{sha256}`: how a client bootstraps trust from a fingerprint."""

    def __init__(self, authority: Authority):
        self.authority = authority

    def on_get(self, req: falcon.Request, resp: falcon.Response, sha: str) -> None:
        cert = self.authority.root_by_fingerprint(sha)
        if cert is None:
            raise NotFound(f"{req.path} was not found: no root with that SHA-256 fingerprint")
        resp.media = {"ca": pem(cert)}


class CertList:
    """`/roots`, `/federation`, `/intermediates` as `{"crts": [...]}`."""

    def __init__(self, authority: Authority, which: str):
        self.authority, self.which = authority, which

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        certs = self.authority.intermediates if self.which == "intermediates" else self.authority.roots
        resp.media = {"crts": [pem(c) for c in certs]}


class CertFile:
    """The same certificates as files: PEM bundles, and DER for AIA `caIssuers` URLs."""

    def __init__(self, authority: Authority, which: str, der: bool = False):
        self.authority, self.which, self.der = authority, which, der

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        certs = self.authority.intermediates if self.which == "intermediates" else self.authority.roots
        if self.der:
            resp.content_type = DER_CERT_MEDIA
            resp.data = certs[0].public_bytes(Encoding.DER)
        else:
            resp.content_type = PEM_MEDIA
            resp.text = "".join(pem(c) for c in certs)
        resp.cache_control = ["public", "max-age=3600"]


class IntermediateFile:
    """`/intermediate/{issuer_id}.crt`: one intermediate's certificate (DER), the caIssuers URL in its leaves,
    so that a retired intermediate's leaves still find their issuer after a rotation."""

    def __init__(self, authority: Authority):
        self.authority = authority

    def on_get(self, req: falcon.Request, resp: falcon.Response, issuer_id: str) -> None:
        rec = self.authority.intermediate(issuer_id)
        if rec.certificate is None:
            raise NotFound(f"intermediate {issuer_id} has no certificate installed")
        resp.content_type = DER_CERT_MEDIA
        resp.data = rec.certificate
        resp.cache_control = ["public", "max-age=3600"]


class ProvisionerList:
    def __init__(self, authority: Authority):
        self.authority = authority

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            limit = int(req.get_param("limit") or 0)
        except ValueError:
            raise BadRequest("limit must be an integer") from None
        items, nxt = self.authority.provisioners.page(
            req.get_param("cursor") or "", limit,
            published=self.authority.config.authority.publishEncryptedKeys)
        resp.media = {"provisioners": items, "nextCursor": nxt}


class ProvisionerKey:
    def __init__(self, authority: Authority):
        self.authority = authority

    def on_get(self, req: falcon.Request, resp: falcon.Response, kid: str) -> None:
        key = self.authority.provisioners.encrypted_key(
            kid, published=self.authority.config.authority.publishEncryptedKeys)
        resp.media = {"key": key}
