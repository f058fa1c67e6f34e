"""The TLS client certificate of the request, as the HTTPS listener's handshake verified it.

The HTTPS listener asks every client for a certificate but requires none (CERT_OPTIONAL, trusting
the CA's roots; see appliance/serving/tls.py), so a client without one is served as before. The
handshake checks the chain to a root but *not* the validity period: the endpoints that accept a
client certificate (renew, rekey, revoke) check expiry themselves, so that an expired certificate
gets a clear JSON refusal (or the configured renewal grace) instead of a bare TLS alert.
"""

from __future__ import annotations

import falcon
from cryptography import x509

from appliance.errors import BadRequest

PEER_CERTIFICATE = "hsmca.peer_certificate"  # the server puts the client's certificate (DER) in the WSGI environ


def client_certificate(req: falcon.Request) -> x509.Certificate | None:
    """The verified peer certificate, or None (no certificate, or plain HTTP)."""
    der = req.env.get(PEER_CERTIFICATE)
    if not der:
        return None
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise BadRequest(f"the TLS client certificate cannot be parsed: {exc}") from None
