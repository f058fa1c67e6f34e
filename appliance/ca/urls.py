"""The URLs written into issued certificates: where relying parties fetch the CRL, ask OCSP, and find the
issuing intermediate. They must be reachable without TLS (a relying party checking revocation cannot
depend on the CA's own certificate), so the default is the plain-HTTP listener.

The CRL and caIssuers URLs name the issuing intermediate (`{issuer}`, its id, is filled in per
intermediate): after a rotation, the retired intermediate's leaves must still find *its* CRL and
certificate, not the new active one's. Operators' own URLs may use `{issuer}` too.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.config import CAConfig, split_address

_ALL_INTERFACES = ("", "0.0.0.0", "::")
ISSUER = "{issuer}"  # placeholder for the issuing intermediate's id


@dataclass(frozen=True)
class CertificateURLs:
    """Each URL or None (that extension or access method is left out)."""

    crl: str | None
    ocsp: str | None
    ca_issuers: str | None


def base_url(config: CAConfig) -> str:
    """`publicURL`, else http://HOST:PORT of the plain-HTTP listener (HOST: its address, or the first DNS
    name when it listens on every interface)."""
    if config.publicURL:
        return config.publicURL.rstrip("/")
    host, port = split_address(config.httpAddress)
    if host in _ALL_INTERFACES:
        host = config.dnsNames[0]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def certificate_urls(config: CAConfig) -> CertificateURLs:
    base = base_url(config)
    given = config.certificateURLs

    def pick(value: str | None, path: str) -> str | None:
        if value is None:
            return base + path
        return value or None  # "" leaves it out

    return CertificateURLs(crl=pick(given.crl, f"/crl/{ISSUER}"), ocsp=pick(given.ocsp, "/ocsp"),
                           ca_issuers=pick(given.caIssuers, f"/intermediate/{ISSUER}.crt"))


def for_issuer(urls: CertificateURLs, issuer_id: str) -> CertificateURLs:
    """The URLs as written into the certificates of intermediate `issuer_id`."""
    def fill(url: str | None) -> str | None:
        return url.replace(ISSUER, issuer_id) if url else url
    return CertificateURLs(fill(urls.crl), fill(urls.ocsp), fill(urls.ca_issuers))
