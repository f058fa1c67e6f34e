"""`hsmca public-url [URL]`: show or change the base of the URLs written into certificates (ca.json's
`publicURL`), so that nobody hand-edits the 0600 ca.json for it."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli.common import fail
from appliance.config import ConfigError, default_config_path, load_config, save_config


@click.command("public-url")
@click.argument("url", required=False)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Path to ca.json [default: $HSMCA_PATH/config/ca.json].")
def public_url(url: str | None, config_path: Path | None) -> None:
    """Show, or set to URL, the base of the CRL, OCSP and CA-certificate URLs in certificates.

    URL is how other machines reach the plain-HTTP listener of `hsmca serve`, e.g. http://ca.internal:9080
    or http://pki.corp.example (a path is kept); its host must be an IP address or a DNS name with a dot.
    Leaves get URL/crl/{issuer}, URL/ocsp and URL/intermediate/{issuer}.crt ({issuer}: the issuing
    intermediate's id), unless ca.json's certificateURLs sets one.

    \b
    A change applies to certificates issued after `hsmca serve` is restarted (a SIGHUP applies it to what
    the HTTPS API issues; the server's own TLS certificate follows at the next start). Certificates already
    issued keep the URLs they were signed with (`hsmca renew` gets a certificate with the new ones).
    Every replica needs the same ca.json.
    """
    from appliance.ca.urls import certificate_url_warning, certificate_urls, check_public_url

    path = config_path or default_config_path()
    try:
        config = load_config(path)
    except ConfigError as exc:
        fail(str(exc))
    if url is not None:
        try:
            normalised = check_public_url(url)
        except ValueError as exc:
            fail(str(exc))
        previous = config.publicURL
        config.publicURL = normalised
        try:
            save_config(config, path)
        except OSError as exc:
            fail(f"cannot write {path}: {exc.strerror}")
        click.echo(f"publicURL: {normalised} (was: {previous or 'not set'}), written to {path}")
    elif config.publicURL:
        click.echo(f"publicURL: {config.publicURL}")
    else:
        click.echo("publicURL: not set (a CA made before `hsmca init` wrote one): the base is the plain-HTTP "
                   "listener's address, else the first IP or dotted name of dnsNames, else 127.0.0.1")
    urls = certificate_urls(config)
    given = config.certificateURLs
    for label, value, override in (("CRL", urls.crl, given.crl), ("OCSP", urls.ocsp, given.ocsp),
                                   ("CA issuers", urls.ca_issuers, given.caIssuers)):
        note = " (certificateURLs in ca.json)" if override is not None else ""
        click.echo(f"  {label + ':':12}{value or 'left out'}{note}")
    if url is not None:
        click.echo("Restart `hsmca serve` for new certificates to carry it (SIGHUP: what the HTTPS API issues; "
                   "the server's own TLS certificate at the next start). Certificates already issued keep "
                   "the URLs they were signed with; a renewal carries the new ones.")
    warning = certificate_url_warning(config)
    if warning:
        click.echo(f"warning: {warning}", err=True)
