"""ACME over HTTP (the WFE part): `/acme/{provisioner}/...` routes, bounded bodies, RFC 8555 headers and
problem documents. Every answer carries `Replay-Nonce` (errors too: a client retries a badNonce with it),
`Link: <directory>;rel="index"` and `Cache-Control: no-store`; the rules live in appliance/acme/.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import falcon

from appliance.acme.call import Answer
from appliance.acme.objects import Links
from appliance.acme.problems import Problem
from appliance.acme.service import ACMEService
from appliance.api.errors import audit_unexpected
from appliance.api.middleware import read_body, remote_addr
from appliance.ca.lint import NAME_CONSTRAINTS
from appliance.errors import CAError, LintRefused, PolicyDenied
from appliance.provisioners.acme import ACMEProvisioner
from appliance.ra.authority import Authority, RequestContext
from appliance.store import StoreError, as_ca_error

log = logging.getLogger("hsmca.api.acme")

JOSE_JSON = "application/jose+json"
URL_SAFE = ":/?#[]@!$&'()*+,;=%"  # RFC 3986 reserved characters and escapes stay as they are
PROBLEM_JSON = "application/problem+json"
MAX_JWS_BYTES = 64 * 1024  # a CSR with a hundred names and an RSA-8192 jwk fit several times over

# route name → URL template under /acme/{name}; the names of the template's fields are the handlers' arguments.
POST_ROUTES = {
    "new-account": "/new-account",
    "account": "/account/{account_id}",
    "orders": "/account/{account_id}/orders",
    "key-change": "/key-change",
    "new-order": "/new-order",
    "order": "/order/{order_id}",
    "finalize": "/order/{order_id}/finalize",
    "authz": "/authz/{authz_id}",
    "chall": "/chall/{chall_id}",
    "certificate": "/certificate/{order_id}",
    "certificate-alternate": "/certificate/{order_id}/alternate",
    "revoke-cert": "/revoke-cert",
}


def problem_for(exc: CAError) -> Problem:
    """The CA's own errors (database down, signing failed, revocation conflicts) as ACME problems."""
    if isinstance(exc, PolicyDenied):
        return Problem("rejectedIdentifier", exc.message, 400)
    if isinstance(exc, LintRefused):
        return Problem("rejectedIdentifier" if exc.rule == NAME_CONSTRAINTS else "badCSR", exc.message, 400)
    kind = {401: "unauthorized", 403: "unauthorized"}.get(exc.status)
    if kind is None:
        kind = "serverInternal" if exc.status >= 500 else "malformed"
    return Problem(kind, exc.message, exc.status)


class _ACMEResource:
    def __init__(self, service: ACMEService, authority: Authority) -> None:
        self.service = service
        self.authority = authority

    def _serve(self, req: falcon.Request, resp: falcon.Response, name: str,
               work: Callable[[ACMEProvisioner, Links], Answer | None]) -> None:
        links = Links(f"{req.prefix}/acme/{name}")
        known = False
        try:
            prov = self.service.provisioner(name)
            known = True
            answer = work(prov, links)
        except Problem as exc:
            self._problem(req, resp, exc)
        except CAError as exc:
            self._problem(req, resp, problem_for(exc))
        except StoreError as exc:
            self._problem(req, resp, problem_for(as_ca_error(exc)))
        except Exception as exc:
            rid = getattr(req.context, "request_id", "-")
            log.exception("unexpected error in ACME request %s", rid)
            audit_unexpected(self.authority, req, exc)
            self._problem(req, resp, Problem("serverInternal", f"internal error; the server log has the details "
                                                                f"(request id {rid})", 500))
        else:
            if answer is not None:
                _render(resp, answer)
        resp.set_header("Cache-Control", "no-store")
        if known:  # a name from the path is never echoed into a header (it may hold any Unicode)
            resp.append_header("Link", f'<{quote(links.directory, safe=URL_SAFE)}>;rel="index"')
        if resp.get_header("Replay-Nonce"):  # issued with the request's own (see ACMEService.handle)
            return
        try:
            resp.set_header("Replay-Nonce", self.service.new_nonce())
        except StoreError as exc:  # the database is down: the answer says so already, or it will soon
            log.warning("no Replay-Nonce for request %s: %s", getattr(req.context, "request_id", "-"), exc)

    def _problem(self, req: falcon.Request, resp: falcon.Response, exc: Problem) -> None:
        if exc.status >= 500:
            log.warning("ACME request %s failed: %s", getattr(req.context, "request_id", "-"), exc.detail)
        resp.status = exc.status
        resp.content_type = PROBLEM_JSON
        resp.text = json.dumps(exc.document())
        for header, value in exc.headers.items():
            resp.set_header(header, value)


def _render(resp: falcon.Response, answer: Answer) -> None:
    resp.status = answer.status
    resp.content_type = answer.content_type
    if answer.body is not None:
        resp.text = json.dumps(answer.body)
    elif answer.raw is not None:
        resp.data = answer.raw
    for header, value in answer.headers.items():
        resp.set_header(header, value)
    for link in answer.links:
        resp.append_header("Link", link)


class Directory(_ACMEResource):
    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        self._serve(req, resp, name, lambda prov, links: Answer(200, self.service.directory(prov, links)))


class NewNonce(_ACMEResource):
    """HEAD → 200, GET → 204 (RFC 8555 §7.2); the nonce itself rides on every response."""

    def on_head(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        self._serve(req, resp, name, lambda prov, links: Answer(200, raw=b""))

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        self._serve(req, resp, name, lambda prov, links: Answer(204, raw=b""))


class RenewalInfo(_ACMEResource):
    """RFC 9773: GET renewal-info/{certID}, unauthenticated."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str, cert_id: str) -> None:
        self._serve(req, resp, name, lambda prov, links: self.service.renewal_info(cert_id))


class Post(_ACMEResource):
    """A JWS-authenticated route; GET is refused as the RFC asks (POST-as-GET instead)."""

    def __init__(self, service: ACMEService, authority: Authority, route: str) -> None:
        super().__init__(service, authority)
        self.route = route

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str, **params: str) -> None:
        self._serve(req, resp, name, lambda prov, links: self._post(req, prov, links, params))

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str, **params: Any) -> None:
        def refuse(prov: ACMEProvisioner, links: Links) -> Answer:
            raise Problem("malformed", f"{req.path} only answers POST (use POST-as-GET to read it)", 405,
                          headers={"Allow": "POST"})
        self._serve(req, resp, name, refuse)

    def _post(self, req: falcon.Request, prov: ACMEProvisioner, links: Links, params: dict[str, str]) -> Answer:
        media = (req.content_type or "").split(";")[0].strip().lower()
        if media != JOSE_JSON:
            raise Problem("malformed", f"Content-Type must be {JOSE_JSON}, not {media or 'absent'!r}", 415)
        body = read_body(req)
        if len(body) > MAX_JWS_BYTES:
            raise Problem("malformed", f"the JWS exceeds {MAX_JWS_BYTES} bytes", 413)
        ctx = RequestContext(request_id=getattr(req.context, "request_id", None), remote_addr=remote_addr(req))
        return self.service.handle(self.route, prov, links, f"{req.prefix}{req.path}", body, ctx, **params)


def add_acme_routes(app: falcon.App, authority: Authority) -> ACMEService:
    """Register every ACME route on the HTTPS app; the service (and its validation pool) is per process."""
    service = ACMEService(authority, authority.store)
    base = "/acme/{name}"
    app.add_route(f"{base}/directory", Directory(service, authority))
    app.add_route(f"{base}/new-nonce", NewNonce(service, authority))
    app.add_route(f"{base}/renewal-info/{{cert_id}}", RenewalInfo(service, authority))
    for route, template in POST_ROUTES.items():
        app.add_route(base + template, Post(service, authority, route))
    return service
