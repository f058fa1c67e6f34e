"""The URLs written into issued certificates: where relying parties fetch the CRL, ask OCSP, and find the
issuing intermediate. They must be reachable without TLS (a relying party checking revocation cannot
depend on the CA's own certificate), so the default is the plain-HTTP listener.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.config import CAConfig, split_address

_ALL_INTERFACES = ("", "0.0.0.0", "::")


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

    return CertificateURLs(crl=pick(given.crl, "/crl"), ocsp=pick(given.ocsp, "/ocsp"),
                           ca_issuers=pick(given.caIssuers, "/intermediate.crt"))
