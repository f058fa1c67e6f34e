"""`hsmca ocsp CERT`: is this certificate good, revoked or unknown, according to its CA's OCSP responder?"""

from __future__ import annotations

from pathlib import Path

import click

from appliance.certutil import CertificateFileError, load_certificates
from appliance.cli.common import fail
from kms.keyspec import KeySpec

FileType = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command()
@click.argument("cert_file", type=FileType)
@click.option("--issuer", "issuer_file", type=FileType,
              help="The issuing intermediate [default: the certificate after the leaf in CERT_FILE].")
@click.option("--url", help="The OCSP responder [default: the certificate's AIA OCSP URL].")
@click.option("--nonce", is_flag=True, help="Send a nonce (hsmca answers from cache and ignores it unless "
                                             "ocsp.echoNonce is set; an echoed nonce must match).")
def ocsp(cert_file: Path, issuer_file: Path | None, url: str | None, nonce: bool) -> None:
    """Ask the OCSP responder about CERT_FILE and print its verified answer.

    Exit status: 0 good, 1 error, 2 revoked, 3 unknown.
    """
    from appliance.client.ocsp import OCSPCheckError, check, ocsp_url

    try:
        certs = load_certificates(cert_file)
        issuers = load_certificates(issuer_file) if issuer_file else certs[1:]
    except CertificateFileError as exc:
        fail(str(exc))
    if not issuers:
        fail(f"{cert_file} holds no issuer certificate after the leaf: give --issuer")
    leaf = certs[0]
    target = url or ocsp_url(leaf)
    if not target:
        fail("the certificate names no OCSP responder (no AIA OCSP URL): give --url, "
             "e.g. http://CA-HOST:9080/ocsp (the CA's plain-HTTP listener)")
    try:
        result = check(leaf, issuers[0], target, nonce=nonce)
    except OCSPCheckError as exc:
        fail(str(exc))
    click.echo(f"{cert_file}: {result.status}")
    if result.status == "revoked":
        click.echo(f"  revoked at:  {result.revocation_time.isoformat() if result.revocation_time else '?'}")
        click.echo(f"  reason:      {result.revocation_reason or 'unspecified'}")
    click.echo(f"  this update: {result.this_update.isoformat()}")
    if result.next_update is not None:
        click.echo(f"  next update: {result.next_update.isoformat()}")
    click.echo(f"  responder:   {result.url}")
    raise SystemExit({"good": 0, "revoked": 2, "unknown": 3}[result.status])


@click.command("ocsp-responder")
@click.argument("key_uri")
@click.option("--intermediate", "ident", help="Name or id of the issuing intermediate [default: the active one].")
@click.option("--key-type", "spec", type=click.Choice([s.value for s in KeySpec]), default="EC-P256",
              show_default=True, help="Type of the responder key created in the KMS.")
@click.option("--existing", is_flag=True, help="Use a key that already exists at KEY_URI instead of creating it.")
@click.option("--lifetime", default="2160h", show_default=True, help="Validity of the responder certificate.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Path to ca.json [default: $HSMCA_PATH/config/ca.json].")
def ocsp_responder(key_uri: str, ident: str | None, spec: str, existing: bool, lifetime: str,
                   config_path: Path | None) -> None:
    """Make a delegated OCSP responder: a key in the KMS and a certificate the intermediate issues to it
    (EKU OCSPSigning, id-pkix-ocsp-nocheck), added to `ocsp.responders` in ca.json.

    KEY_URI names the new key, e.g. pkcs11:object=ocsp-responder (the rest comes from kms.uri).
    Restart `hsmca serve` afterwards: every responder process reads ca.json when it starts.
    """
    from cryptography.hazmat.primitives.serialization import Encoding

    from appliance.ca.intermediates import IntermediateError, stored_key_uri
    from appliance.config import ConfigError, DelegatedResponder, default_config_path, load_config, save_config
    from appliance.errors import CAError
    from appliance.ra.authority import Authority
    from appliance.store import StoreError
    from kms import create_key, open_key
    from kms.errors import KMSError
    from policy import parse_duration

    path = config_path or default_config_path()
    try:
        config = load_config(path)
        valid = parse_duration(lifetime)
        stored = stored_key_uri(key_uri)
        authority = Authority.from_config(config)
        try:
            store = authority.store
            rec = store.intermediates.find(ident) if ident else store.intermediates.active()
            if rec is None:
                fail("no active intermediate: give --intermediate")
            config.apply_kms_environment()
            full = config.key_uri(stored)
            key = open_key(full) if existing else create_key(full, KeySpec(spec))
            cert = authority.issue_ocsp_responder_certificate(rec, key.public_key(), valid, stored).certificate
        finally:
            authority.close()
    except (ConfigError, StoreError, KMSError, CAError, IntermediateError, ValueError) as exc:
        fail(getattr(exc, "message", None) or str(exc))
    out = config.resolve(f"certs/ocsp_responder_{cert.serial_number:x}.crt")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(cert.public_bytes(Encoding.PEM))
    config.ocsp.responders.append(DelegatedResponder(key=stored, certificate=str(out)))
    save_config(config, path)
    click.echo(f"Responder certificate: {out} (serial {cert.serial_number}, until {cert.not_valid_after_utc})")
    click.echo(f"Issued by:             {rec.name} ({rec.subject})")
    click.echo("Added to ocsp.responders in ca.json; restart `hsmca serve` to sign OCSP responses with it.")
