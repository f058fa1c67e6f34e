"""The URLs written into issued certificates: where relying parties fetch the CRL, ask OCSP, and find the
issuing intermediate. They must be reachable without TLS (a relying party checking revocation cannot
depend on the CA's own certificate), so the default is the plain-HTTP listener.

The CRL and caIssuers URLs name the issuing intermediate (`{issuer}`, its id, is filled in per
intermediate): after a rotation, the retired intermediate's leaves must still find *its* CRL and
certificate, not the new active one's. Operators' own URLs may use `{issuer}` too.

Their base is `publicURL` in ca.json. `hsmca init` always writes one (`--public-url`, else
`default_public_url`), and `hsmca public-url` changes it; a CA made before that has none and gets
`default_public_url` too (see `base_url`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from appliance.config import CAConfig, split_address

_ALL_INTERFACES = ("", "0.0.0.0", "::")
ISSUER = "{issuer}"  # placeholder for the issuing intermediate's id
LOOPBACK = "127.0.0.1"  # the default host when nothing better is known: it works on the CA's machine only
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*\Z")  # RFC 3986 path characters, no braces or spaces


@dataclass(frozen=True)
class CertificateURLs:
    """Each URL or None (that extension or access method is left out)."""

    crl: str | None
    ocsp: str | None
    ca_issuers: str | None


def url_host_ok(host: str) -> bool:
    """Whether `host` may name the server in a URL written into certificates: an IP address, or a DNS name of
    two or more labels (ASCII letters, digits, inner hyphens) whose last label has two or more characters and
    ends with a letter. RFC 5280 linters refuse anything else in a CRL or AIA URI (pkilint:
    `pkix.invalid_uri_syntax` for `http://localhost:9080/...`), and so may a relying party's URI parser."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return not (isinstance(address, ipaddress.IPv6Address) and address.scope_id)
    labels = host.split(".")
    return (len(host) <= 253 and len(labels) >= 2 and all(_LABEL.match(label) for label in labels)
            and len(labels[-1]) >= 2 and labels[-1][-1].isalpha())


def _netloc(host: str, port: int | None) -> str:
    host = f"[{host}]" if ":" in host else host
    return host if port is None else f"{host}:{port}"


def check_public_url(url: str) -> str:
    """`url` as a base for the certificates' URLs, normalised (scheme and host in lower case, no trailing
    slash); ValueError saying what is wrong. Checked where an operator sets it (`hsmca init --public-url`,
    `hsmca public-url`), so that a CA is never told to write a URL relying parties cannot use."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http:// URL with a host, e.g. http://ca.internal:9080 (https:// "
                         "works too, but a relying party checking revocation should not need TLS)")
    if "@" in parts.netloc:
        raise ValueError(f"{url!r} carries credentials: a URL in a certificate is public")
    if parts.query or parts.fragment or url.strip().endswith(("?", "#")):
        raise ValueError(f"{url!r} has a query or a fragment: the base gets /crl/…, /ocsp and /intermediate/… "
                         "appended, so it must end with a path")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port must be a number between 1 and 65535") from None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{url!r}: the port must be a number between 1 and 65535")
    host = (parts.hostname or "").lower()
    if not url_host_ok(host):
        raise ValueError(f"{url!r}: the host must be an IP address or a DNS name with a dot (ca.internal, "
                         f"pki.corp.example), not {host or 'empty'!r}: RFC 5280 linters refuse other hosts in "
                         "CRL and OCSP URLs" + (", and other machines cannot reach it anyway"
                                                if host == "localhost" else ""))
    if not _PATH.match(parts.path):
        raise ValueError(f"{url!r}: the path may hold only URI path characters (no spaces, braces or "
                         "non-ASCII letters; percent-encode them)")
    return f"{scheme}://{_netloc(host, port)}{parts.path.rstrip('/')}"


@dataclass(frozen=True)
class DefaultPublicURL:
    """What `hsmca init` writes without --public-url, and why (for its output)."""

    url: str
    source: str  # where the host came from, for people
    local_only: bool  # a loopback address: other machines cannot use these URLs


def default_public_url(dns_names: Sequence[str], http_address: str) -> DefaultPublicURL:
    """http://HOST:PORT of the plain-HTTP listener (PORT from `http_address`). HOST is the listener's own
    address when it is bound to one (it is reachable nowhere else), else the first of `dns_names` that
    `url_host_ok` accepts (an IP, or a name with a dot: `localhost` has none), else 127.0.0.1."""
    host, port = split_address(http_address)
    if host not in _ALL_INTERFACES:
        candidates, source = [host], "--http-address"
    else:
        candidates, source = list(dns_names), "--dns"
    chosen = next((c.rstrip(".").lower() for c in candidates if url_host_ok(c.rstrip(".").lower())), None)
    if chosen is None:
        chosen, source = LOOPBACK, f"{LOOPBACK}: no IP or dotted name in {source}"
    else:
        source = f"host from {source}"
    loopback = _is_loopback(chosen)
    return DefaultPublicURL(f"http://{_netloc(chosen, None if port == 80 else port)}", source, loopback)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(config: CAConfig) -> str:
    """`publicURL`, else the base `hsmca init` would choose today (`default_public_url`).

    A CA made before `hsmca init` wrote a publicURL used `http://<first DNS name>:<port>`, typically
    `http://localhost:9080`; lint before sign refuses a certificate with such a URI (RFC 5280 linters and URI
    parsers refuse the host), so those CAs move to the same rule as new ones (`127.0.0.1` when no DNS name has
    a dot): the same loopback listener, in a spelling a certificate may carry. `hsmca serve` says so.
    """
    if config.publicURL:
        return config.publicURL.rstrip("/")
    return default_public_url(config.dnsNames, config.httpAddress).url


def certificate_url_warning(config: CAConfig) -> str | None:
    """What to tell the operator when the URLs certificates get have a host that linters refuse (a CA made
    before `hsmca init` wrote a publicURL, whose first DNS name is `localhost`, say), else None."""
    urls = certificate_urls(config)
    bad = [u for u in (urls.crl, urls.ocsp, urls.ca_issuers) if u and not url_host_ok(urlsplit(u).hostname or "")]
    if not bad:
        return None
    host = urlsplit(bad[0]).hostname or ""
    return (f"certificates get URLs such as {bad[0]}, whose host {host!r} RFC 5280 linters refuse and other "
            "machines cannot reach; set the base with `hsmca public-url URL` (or certificateURLs in ca.json), "
            "then restart hsmca serve")


def api_url(config: CAConfig) -> str:
    """https://HOST:PORT of the HTTPS API as clients reach it: HOST is the listener's own address when it is
    bound to one the server certificate names, else the first DNS name (the server certificate's)."""
    host, port = split_address(config.address)
    if host in _ALL_INTERFACES or host not in config.dnsNames:
        host = config.dnsNames[0]
    return f"https://{_netloc(host, None if port == 443 else port)}"


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
