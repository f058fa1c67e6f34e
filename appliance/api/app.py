"""The Falcon applications: the HTTPS API and the plain-HTTP listener for relying parties."""

from __future__ import annotations

from typing import Any

import falcon

from appliance.api import ca, crl, errors, renew, revoke, sign, ssh
from appliance.api.acme import add_acme_routes
from appliance.api.metrics import Metrics, RequestMetrics
from appliance.api.middleware import BodyLimit, RequestContext
from appliance.api.ocsp import add_ocsp_routes
from appliance.ra.authority import Authority
from appliance.status.ocsp_memo import OCSPMemo

PREFIXES = ("", "/1.0")  # every step route answers at / and at /1.0


def _new_app(max_body: int, authority: Authority) -> falcon.App:
    middleware: list[Any] = [RequestMetrics(), RequestContext(), BodyLimit(max_body)]
    app = falcon.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    errors.install(app, authority)
    return app


def create_app(authority: Authority) -> falcon.App:
    app = _new_app(authority.config.server.maxRequestBytes, authority)
    for p in PREFIXES:
        app.add_route(f"{p}/health", ca.Health(authority))
        app.add_route(f"{p}/version", ca.Version())
        app.add_route(f"{p}/root/{{sha}}", ca.Root(authority))
        app.add_route(f"{p}/roots", ca.CertList(authority, "roots"))
        app.add_route(f"{p}/federation", ca.CertList(authority, "roots"))
        app.add_route(f"{p}/intermediates", ca.CertList(authority, "intermediates"))
        app.add_route(f"{p}/roots.pem", ca.CertFile(authority, "roots"))
        app.add_route(f"{p}/intermediates.pem", ca.CertFile(authority, "intermediates"))
        app.add_route(f"{p}/provisioners", ca.ProvisionerList(authority))
        app.add_route(f"{p}/provisioners/{{kid}}/encrypted-key", ca.ProvisionerKey(authority))
        app.add_route(f"{p}/sign", sign.Sign(authority))
        app.add_route(f"{p}/revoke", revoke.Revoke(authority))
        app.add_route(f"{p}/crl", crl.CRL(authority))
        app.add_route(f"{p}/crl/{{issuer_id}}", crl.CRL(authority))
        app.add_route(f"{p}/intermediate/{{issuer_id}}.crt", ca.IntermediateFile(authority))
        app.add_route(f"{p}/renew", renew.Renew(authority))
        app.add_route(f"{p}/rekey", renew.Rekey(authority))
        app.add_route(f"{p}/metrics", Metrics())
        app.add_route(f"{p}/ssh/sign", ssh.SSHSign(authority))
        app.add_route(f"{p}/ssh/roots", ssh.SSHKeys(authority))
        app.add_route(f"{p}/ssh/federation", ssh.SSHKeys(authority))
        app.add_route(f"{p}/ssh/revoke", ssh.SSHRevoke(authority))
        app.add_route(f"{p}/ssh/renew", ssh.SSHRenew(authority))
        app.add_route(f"{p}/ssh/check-host", ssh.SSHCheckHost(authority))
        app.add_route(f"{p}/ssh/hosts", ssh.SSHHosts(authority))
        app.add_route(f"{p}/ssh/config", ssh.SSHConfig(authority))
        app.add_route(f"{p}/ssh/rekey", ssh.SSHRenew(authority, rekey=True))
        app.add_route(f"{p}/ssh/krl", ssh.SSHKRL(authority))
    add_ocsp_routes(app, authority.ocsp.respond, PREFIXES)
    add_acme_routes(app, authority)
    return app


def create_http_app(authority: Authority, memo: OCSPMemo | None = None) -> falcon.App:
    """Plain HTTP: what relying parties fetch without TLS (CA certificates; OCSP/CRL later).

    `/metrics` too: a scraper need not trust the CA's root, and under `hsmca serve` every process
    reads the same metrics directory, so this listener's scrape includes the HTTPS workers.
    """
    app = _new_app(64 * 1024, authority)
    app.add_route("/health", ca.Health(authority))
    app.add_route("/roots.pem", ca.CertFile(authority, "roots"))
    app.add_route("/root.crt", ca.CertFile(authority, "roots", der=True))
    app.add_route("/intermediates.pem", ca.CertFile(authority, "intermediates"))
    app.add_route("/intermediate.crt", ca.CertFile(authority, "intermediates", der=True))
    app.add_route("/crl", crl.CRL(authority))
    app.add_route("/crl/{issuer_id}", crl.CRL(authority))
    app.add_route("/intermediate/{issuer_id}.crt", ca.IntermediateFile(authority))
    app.add_route("/metrics", Metrics())
    app.add_route("/ssh/krl", ssh.SSHKRL(authority))
    add_ocsp_routes(app, memo.answer if memo is not None else authority.ocsp.respond)
    return app
