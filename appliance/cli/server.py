"""Commands that run on the CA: `init`, `serve`, `db migrate`."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli.common import fail, password_from, read_secret_file
from appliance.config import ConfigError, default_config_path, hsmca_path, load_config

CONFIG_HELP = "Path to ca.json [default: $HSMCA_PATH/config/ca.json]."


@click.command()
@click.option("--name", default="hsmca", show_default=True,
              help="Name of the PKI: the root is '<name> Root CA', the intermediate '<name> Intermediate CA'.")
@click.option("--dns", "dns_names", multiple=True,
              help="DNS name or IP of the CA (repeatable); tokens are accepted for these. [default: localhost]")
@click.option("--address", default=":9000", show_default=True, help="HTTPS listen address, HOST:PORT.")
@click.option("--http-address", default=":9080", show_default=True,
              help="Plain-HTTP listen address: CA certificates, CRLs and OCSP.")
@click.option("--public-url", metavar="URL",
              help="Base of the CRL, OCSP and CA-certificate URLs written into certificates, as other machines "
                   "reach the plain-HTTP listener, e.g. http://ca.internal:9080 (host: an IP or a name with a "
                   "dot). [default: http://HOST:PORT of --http-address, HOST its address if it names one, else "
                   "the first --dns value that is an IP or has a dot, else 127.0.0.1]; change it later with "
                   "`hsmca public-url`.")
@click.option("--provisioner", default="admin", show_default=True, help="Name of the first JWK provisioner.")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File with the provisioner's password (prompted for when absent).")
@click.option("--kty", type=click.Choice(["EC", "RSA"], case_sensitive=False), default="EC", show_default=True,
              help="Key type of the CA keys (generated inside the SoftHSM token).")
@click.option("--crv", default=None, help="Curve for --kty EC: P-256 (default) or P-384.")
@click.option("--size", type=int, default=None, help="Size for --kty RSA: 2048 (default), 3072 or 4096.")
@click.option("--token-label", default="hsmca", show_default=True, help="Label of the SoftHSM token to create.")
@click.option("--module", default=None, help="PKCS#11 module [default: SoftHSM2's libsofthsm2.so].")
@click.option("--pin-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File with the token's user PIN [default: a random PIN in $HSMCA_PATH/secrets/pin].")
@click.option("--so-pin-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File with the token's SO PIN [default: random, in $HSMCA_PATH/secrets/so-pin].")
@click.option("--root", "root_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Use this root certificate from the offline ceremony: no root key is made here, and the "
                   "CA issues once an intermediate is made, signed at the ceremony and installed.")
@click.option("--intermediate-key", help="Create the intermediate key in this backend instead of the SoftHSM token, "
                                        "e.g. vault:transit/keys/intermediate or awskms:key-id=alias/int;region=… "
                                        "(credentials from that SDK's usual chain).")
@click.option("--existing-token", is_flag=True,
              help="With --root: the token --token-label already exists in --module (a production HSM, set up with "
                   "its vendor's tools; --pin-file holds its user PIN): no SoftHSM token is made.")
@click.option("--no-ssh", is_flag=True, help="Make no SSH CA keys (`hsmca ssh init-ca` makes them later).")
@click.option("--force", is_flag=True, help="Replace an existing CA (its token, keys and database).")
def init(name: str, dns_names: tuple[str, ...], address: str, http_address: str, public_url: str | None,
         provisioner: str, password_file: Path | None, kty: str, crv: str | None, size: int | None,
         token_label: str, module: str | None, pin_file: Path | None, so_pin_file: Path | None, root_file: Path | None,
         intermediate_key: str | None, existing_token: bool, no_ssh: bool, force: bool) -> None:
    """Create a CA: a SoftHSM token for its keys, a provisioner, the database and ca.json.

    Without --root, a development CA: root and intermediate keys both inside the token, with
    certs/root_ca.crt and certs/intermediate_ca.crt. With --root, the production layout: the
    ceremony's root (its key stays offline) and no intermediate yet; then run
    `hsmca intermediate csr`, the ceremony's sign-intermediate, and `hsmca intermediate install`.
    Everything goes under $HSMCA_PATH (default ~/.hsmca); SoftHSM's configuration and tokens
    too unless SOFTHSM2_CONF is set.
    """
    from appliance.cli.devca import InitError, InitOptions, init_ca
    from kms import key_spec_for
    from kms.errors import KMSError

    try:
        spec = key_spec_for(kty.upper(), crv, size)
    except (KMSError, ValueError) as exc:
        fail(f"invalid CA key options: {exc}")
    password = password_from(password_file, "provisioner password", confirm=True)
    opts = InitOptions(
        base=hsmca_path(), password=password, name=name, dns_names=list(dns_names) or ["localhost"],
        address=address, http_address=http_address, provisioner=provisioner, key_spec=spec,
        token_label=token_label, module=module or "", force=force,
        pin=read_secret_file(pin_file, "PIN").decode() if pin_file else None,
        so_pin=read_secret_file(so_pin_file, "SO PIN").decode() if so_pin_file else None,
        root_certificate=read_secret_file(root_file, "root certificate") if root_file else None,
        intermediate_key=intermediate_key, public_url=public_url, existing_token=existing_token, ssh=not no_ssh)
    try:
        result = init_ca(opts)
    except (InitError, KMSError, OSError) as exc:
        fail(str(exc))
    except Exception as exc:  # softhsm errors and the like: say what, not a traceback
        fail(f"{type(exc).__name__}: {exc}")
    click.echo(f"Root certificate:         {result.root_path}")
    click.echo(f"Root fingerprint:         {result.root_fingerprint}")
    if result.intermediate_path is None:
        click.echo(f"Key store (KMS):          {result.kms_uri}")
        click.echo("Intermediate:             none yet; next: hsmca intermediate csr --key "
                   f"'pkcs11:token={token_label};object=intermediate-1' --subject 'CN=...' > int.csr")
    else:
        click.echo(f"Intermediate certificate: {result.intermediate_path}")
        click.echo(f"Root key:                 {result.root_key_uri}")
        click.echo(f"Intermediate key:         {result.intermediate_key_uri}")
    if result.audit_certificate is not None:
        click.echo(f"Audit key certificate:    {result.audit_certificate} (checkpoints of the audit trail)")
    if opts.ssh:
        click.echo("SSH CA keys:              pkcs11:object=ssh-user-ca, pkcs11:object=ssh-host-ca (`hsmca ssh roots`)")
    else:
        click.echo("Audit key:                none yet; once an intermediate is installed: hsmca audit init-key")
    click.echo(f"Provisioner:              {result.provisioner} (JWK)")
    click.echo(f"Public URL:               {result.public_url} (base of the CRL, OCSP and CA-certificate URLs "
               f"in certificates; {result.derived_url.source if result.derived_url else 'from --public-url'})")
    click.echo(f"Configuration:            {result.config_path}")
    if result.derived_url is not None and result.derived_url.local_only:
        click.echo(f"warning: certificates will point relying parties at {result.public_url}, which only this "
                   "machine reaches: set --public-url (now: `hsmca public-url URL`, e.g. http://ca.internal:9080) "
                   "before other machines use the CA", err=True)
    _warn_about_constraints(result.config_path, [result.root_path, result.intermediate_path])


def _warn_about_constraints(config_path: Path, certificates: list[Path | None]) -> None:
    """Say it now if the root's or the intermediate's name constraints leave out the CA's own names: every
    leaf with them would be refused, and `hsmca serve` would not start (its certificate names them)."""
    from cryptography import x509

    from appliance.ca.intermediates import own_name_problems
    from appliance.config import load_config

    config = load_config(config_path)
    for path in filter(None, certificates):
        for problem in own_name_problems(config, x509.load_pem_x509_certificates(path.read_bytes())[0]):
            click.echo(f"warning: {problem}: change --dns, or use a CA certificate whose constraints permit them",
                       err=True)


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help=CONFIG_HELP)
@click.option("--address", help="HTTPS listen address HOST:PORT [default: ca.json 'address', :9000].")
@click.option("--http-address", help="Plain-HTTP listen address [default: ca.json 'httpAddress', :9080].")
@click.option("--workers", type=click.IntRange(1, 64),
              help="HTTPS worker processes [default: ca.json server.workers, 2].")
def serve(config_path: Path | None, address: str | None, http_address: str | None,
          workers: int | None) -> None:
    """Run the CA: the step-compatible HTTPS API and the plain-HTTP listener.

    Migrates the database, resolves reservations left by a crash, issues the server's own TLS
    certificate through the intermediate, then supervises N HTTPS worker processes, a plain-HTTP
    listener (CA certificates, CRLs, OCSP) and a housekeeping process. Slow or idle clients are cut
    by the deadlines and connection caps of ca.json's `server` block. SIGTERM stops gracefully;
    SIGHUP reloads ca.json in every HTTPS worker (keep-alive connections stay open).
    """
    from appliance.config import split_address
    from appliance.serving import logs
    from appliance.serving.supervisor import ServeOptions
    from appliance.serving.supervisor import serve as run

    logs.setup()
    path = config_path or default_config_path()
    try:
        config = load_config(path)
        for a in (address, http_address):
            if a:
                split_address(a)
    except (ConfigError, ValueError) as exc:
        fail(str(exc))
    from appliance.ca.urls import certificate_url_warning

    warning = certificate_url_warning(config)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    opts = ServeOptions(config_path=path.resolve(), address=address or config.address,
                        http_address=http_address or config.httpAddress,
                        workers=workers or config.server.workers)
    try:
        code = run(config, opts)
    except Exception as exc:  # start-up failures: a clear line, the details in the log
        import logging

        logging.getLogger("hsmca.serve").debug("start-up failed", exc_info=True)
        fail(f"cannot start: {exc}")
    raise SystemExit(code)


@click.group()
def db() -> None:
    """Database maintenance."""


@db.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help=CONFIG_HELP)
def migrate(config_path: Path | None) -> None:
    """Bring the database schema to the current version (Alembic)."""
    from appliance.store import Store, StoreError

    try:
        config = load_config(config_path)
        store = Store.from_config(config.db.model_dump(), config.base_dir)
        store.migrate()
        store.close()
    except (ConfigError, StoreError) as exc:
        fail(str(exc))
    click.echo("database schema is current")
