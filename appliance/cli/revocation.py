"""Client commands for revocation: `revoke` (step's `step ca revoke`) and `crl` (fetch and check the CRL)."""

from __future__ import annotations

from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.cli.client import PathType, _client_errors, _mint, _resolve, ca_options
from appliance.cli.common import fail

REASONS = "0 unspecified, 1 keyCompromise, 2 cACompromise, 3 affiliationChanged, 4 superseded, " \
          "5 cessationOfOperation, 6 certificateHold, 9 privilegeWithdrawn, 10 aACompromise"


def decimal_serial(text: str) -> str:
    """The serial as the CA and the token name it: decimal. Accepted here too: 0x-prefixed hex, and the
    colon-separated hex that `openssl x509 -text` prints."""
    value = text.strip()
    try:
        if ":" in value:
            serial = int(value.replace(":", ""), 16)
        else:
            serial = int(value, 16) if value[:2].lower() == "0x" else int(value, 10)
    except ValueError:
        fail(f"serial {text!r} is not a decimal number (or 0x-prefixed hex)")
    if serial <= 0:
        fail("serial must be positive")
    return str(serial)


@click.command()
@click.argument("serial", required=False)
@click.option("--reason-code", type=int, default=0, show_default=True, help=f"RFC 5280 reason: {REASONS}.")
@click.option("--reason", default="", help="Free text kept with the revocation (not in the CRL).")
@ca_options
@click.option("--token", help="Use this one-time revoke token (sub = the serial) instead of minting one.")
@click.option("--cert", "cert_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Revoke this certificate with itself as the credential (mTLS, with --key): no provisioner.")
@click.option("--key", "key_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The private key of --cert.")
def revoke(serial: str | None, reason_code: int, reason: str, ca_url: str | None, root: Path | None,
           provisioner: str, password_file: Path | None, provisioner_key: Path | None, token: str | None,
           cert_file: Path | None, key_file: Path | None) -> None:
    """Revoke the certificate with SERIAL (decimal, as `hsmca certificate` prints it), or --cert/--key.

    The CA lists it in its CRL within seconds and its OCSP answers "revoked"; it can no longer be renewed.
    Revoking a certificate that is already revoked succeeds and keeps the first revocation's time and reason.
    """
    from appliance.client.http import CAClient

    if cert_file is not None or key_file is not None:
        _revoke_with_certificate(serial, cert_file, key_file, reason_code, reason, ca_url, root)
        return
    if serial is None:
        fail("give the SERIAL to revoke, or --cert and --key to revoke a certificate with itself")
    number = decimal_serial(serial)
    o = _resolve(ca_url, root, provisioner, password_file, provisioner_key)
    try:
        ott = token or _mint(o, number, [], endpoint="revoke")
        CAClient(o.ca_url, o.root).post_json("/revoke", {
            "serial": number, "ott": ott, "reasonCode": reason_code, "reason": reason, "passive": True})
    except _client_errors() as exc:
        fail(str(exc))
    click.echo(f"Certificate with serial number {number} has been revoked.", err=True)


def _revoke_with_certificate(serial: str | None, cert_file: Path | None, key_file: Path | None, reason_code: int,
                             reason: str, ca_url: str | None, root: Path | None) -> None:
    """mTLS: the certificate is the credential, and it can only revoke itself."""
    from appliance.client.http import CAClient

    if cert_file is None or key_file is None:
        fail("--cert and --key go together")
    try:
        leaf = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
    except (OSError, ValueError) as exc:
        fail(f"{cert_file} holds no PEM certificate: {exc}")
    number = str(leaf.serial_number)
    if serial is not None and decimal_serial(serial) != number:
        fail(f"{cert_file} has serial {number}, not {serial}: a certificate can only revoke itself")
    o = _resolve(ca_url, root, "admin", None, None)
    try:
        CAClient(o.ca_url, o.root, client_cert=(cert_file, key_file)).post_json("/revoke", {
            "serial": number, "reasonCode": reason_code, "reason": reason, "passive": True})
    except _client_errors() as exc:
        fail(str(exc))
    click.echo(f"Certificate with serial number {number} has been revoked.", err=True)


@click.command()
@click.option("--ca-url", help="The CA's URL, e.g. https://ca.internal:9000 [default: from `hsmca bootstrap`].")
@click.option("--root", type=PathType, help="The root certificate to trust [default: $HSMCA_PATH/certs/root_ca.crt].")
@click.option("--out", type=PathType, help="Write the CRL here (DER, or PEM with --pem).")
@click.option("--pem", "as_pem", is_flag=True, help="PEM instead of DER (to standard output without --out).")
def crl(ca_url: str | None, root: Path | None, out: Path | None, as_pem: bool) -> None:
    """Download the CA's current CRL, check its signature, and show its number, dates and entry count."""
    from appliance.client.http import CAClient

    o = _resolve(ca_url, root, "admin", None, None)
    try:
        client = CAClient(o.ca_url, o.root)
        der = client.get_bytes("/crl")
        crts = client.get_json("/intermediates").get("crts") or []
    except _client_errors() as exc:
        fail(str(exc))
    try:
        crl_obj = x509.load_der_x509_crl(der)
    except ValueError as exc:
        fail(f"the CA sent something that is not a DER CRL: {exc}")
    signer = next((c for c in (x509.load_pem_x509_certificate(str(p).encode()) for p in crts)
                   if c.subject == crl_obj.issuer and crl_obj.is_signature_valid(c.public_key())), None)  # type: ignore[arg-type]
    if signer is None:
        fail("the CRL's signature does not verify with any of the CA's intermediates")
    data = crl_obj.public_bytes(Encoding.PEM) if as_pem else der
    if out is not None:
        try:
            out.write_bytes(data)
        except OSError as exc:
            fail(f"cannot write {out}: {exc.strerror}")
    elif as_pem:
        click.echo(data.decode(), nl=False)
    number = crl_obj.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    next_update = crl_obj.next_update_utc.isoformat() if crl_obj.next_update_utc else "-"
    info = [f"Issuer:      {crl_obj.issuer.rfc4514_string()} (signature verified)",
            f"CRL number:  {number}",
            f"This update: {crl_obj.last_update_utc.isoformat()}",
            f"Next update: {next_update}",
            f"Entries:     {len(crl_obj)}"]
    if out is not None:
        info.append(f"Saved in {out} ({'PEM' if as_pem else 'DER'}).")
    click.echo("\n".join(info), err=as_pem and out is None)
