"""`hsmca audit`: verify the audit trail offline, make (or rotate) the audit key that seals it, and record what
operators do outside the CA's own commands (`note`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from appliance.cli.common import fail, parse_when
from kms.keyspec import KeySpec

if TYPE_CHECKING:
    from appliance.audit import AuditEvent
    from appliance.config import CAConfig

FileType = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group()
def audit() -> None:
    """The audit trail: hash-chained records, checkpoints signed by the audit key (README, Audit trail)."""


@audit.command()
@click.argument("files", nargs=-1, required=True, type=FileType)
@click.option("--key", "keys", multiple=True, type=FileType,
              help="The audit key's certificate to check checkpoint signatures with (repeatable, e.g. before and "
                   "after a key rotation) [default: audit.certificate of --config].")
@click.option("--db", "db_url", help="The CA's database URL (e.g. sqlite:////var/lib/hsmca/db/hsmca.sqlite): its "
                                     "checkpoints reveal a file truncated after its last checkpoint.")
@click.option("--config", "config_path", type=FileType,
              help="ca.json: its audit certificate and database (instead of --key and --db).")
@click.option("--since", help="Only expect the database's checkpoints from this time on (older files archived).")
def verify(files: tuple[Path, ...], keys: tuple[Path, ...], db_url: str | None, config_path: Path | None,
           since: str | None) -> None:
    """Check every chain and checkpoint signature of the audit FILES (rotated files first, e.g.
    `audit/audit-*.jsonl audit/audit.jsonl`) and print a summary an auditor can file.

    Reports, by file and line, the first record that was changed, removed, inserted or moved. Records after a
    stream's last checkpoint are reported as an unsealed tail (a warning); with the database (--db or --config),
    a checkpoint it holds that the files lack is a truncation. Exit status: 0 verified, 1 not verified, 2 could
    not check (no key certificate, bad --since, database unreachable).
    """
    from appliance.audit.verify import summary
    from appliance.audit.verify import verify as verify_files
    from appliance.certutil import CertificateFileError, load_certificates

    when = parse_when(since, "--since", 2)
    certificates = []
    try:
        for path in keys:
            certificates += load_certificates(path)[:1]
    except CertificateFileError as exc:
        fail(str(exc), 2)
    known: list[Any] | None = None
    db: Any = None  # a database URL, or ca.json's db block
    if config_path is not None:
        from appliance.config import ConfigError, load_config

        try:
            config = load_config(config_path)
            if not keys and config.audit.certificate:
                certificates = load_certificates(config.resolve(config.audit.certificate))[:1]
        except (ConfigError, CertificateFileError) as exc:
            fail(getattr(exc, "message", None) or str(exc), 2)
        db = db_url or (config.db.model_dump(), config.base_dir)
    elif db_url is not None:
        db = db_url
    if db is not None:
        from appliance.store import Store, StoreError

        try:
            store = Store(db) if isinstance(db, str) else Store.from_config(*db)
            try:
                known = store.audit_checkpoints.since(when)
            finally:
                store.close()
        except StoreError as exc:
            fail(f"cannot read the checkpoints from the database: {exc}", 2)
    if not certificates:
        fail("no audit key certificate: give --key CERT (e.g. certs/audit_*.crt) or --config ca.json", 2)
    report = verify_files(files, certificates, known)
    click.echo(summary(report), nl=False)
    if known is None:
        click.echo("(no database given: a file cut after its last checkpoint cannot be told from a stopped process)")
    raise SystemExit(0 if report.ok else 1)


@audit.command("init-key")
@click.option("--key-uri", default=None,
              help="The new key in the CA's KMS [default: pkcs11:object=audit-YYYYMMDDHHMMSS; the rest from kms.uri].")
@click.option("--key-type", "spec", type=click.Choice([s.value for s in KeySpec]), default="EC-P256",
              show_default=True, help="Type of the audit key created in the KMS.")
@click.option("--existing", is_flag=True, help="Use a key that already exists at --key-uri instead of creating it.")
@click.option("--lifetime", default="87600h", show_default=True, help="Validity of the audit key's certificate.")
@click.option("--rotate", is_flag=True, help="Replace the current audit key: the change is recorded in a "
                                              "checkpoint signed by both keys.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Path to ca.json [default: $HSMCA_PATH/config/ca.json].")
def init_key(key_uri: str | None, spec: str, existing: bool, lifetime: str, rotate: bool,
             config_path: Path | None) -> None:
    """Create the audit key in the CA's KMS (non-extractable) and have the active intermediate issue its
    certificate; set audit.key and audit.certificate in ca.json.

    For a CA made before audit keys existed (`hsmca init` makes one). Restart `hsmca serve` (or send it SIGHUP)
    afterwards so that every process seals with it.
    """
    from appliance.cli.audit_key import AuditKeyError, make_audit_key
    from appliance.config import ConfigError, default_config_path, load_config

    path = config_path or default_config_path()
    try:
        config = load_config(path)
    except ConfigError as exc:
        fail(getattr(exc, "message", None) or str(exc))
    if config.audit.key and not rotate:
        fail(f"ca.json already names an audit key ({config.audit.key}); use --rotate to replace it")
    if rotate and not config.audit.key:
        fail("ca.json names no audit key to rotate: run without --rotate")
    try:
        made = make_audit_key(config, path, key_uri=key_uri, spec=KeySpec(spec), existing=existing,
                              lifetime=lifetime, rotate=rotate)
    except AuditKeyError as exc:
        fail(str(exc))
    click.echo(f"Audit key:         {made.key_uri}")
    click.echo(f"Certificate:       {made.certificate_path} (sha256 {made.fingerprint})")
    if made.rotation_checkpoint:
        click.echo(f"Rotation recorded: {made.rotation_checkpoint} (signed by the old and the new key)")
    click.echo("ca.json updated; restart `hsmca serve` (or send it SIGHUP) so that every process seals with it.")


def record_event(config: CAConfig, event: AuditEvent, *, done: str) -> None:
    """Write one record as this command's own audit stream, sealed by a checkpoint at once.

    `done` says what already happened when the record cannot be written: the change is made, its record is not.
    """
    from appliance.config import ConfigError
    from appliance.ra.authority import audit_for
    from appliance.store import Store, StoreError
    from kms.errors import KMSError

    store = Store.from_config(config.db.model_dump(), config.base_dir)
    try:
        trail = audit_for(config, store)
        try:
            trail.record(event)
        finally:
            trail.close()
    except (ConfigError, StoreError, KMSError, OSError) as exc:
        fail(f"{done}, but its audit record could not be written: {getattr(exc, 'message', None) or exc}")
    finally:
        store.close()


_NOTE_EVENT = re.compile(r"[a-z][a-z0-9-]{0,31}(\.[a-z][a-z0-9-]{0,31}){0,3}")
_DETAIL = re.compile(r"([A-Za-z][A-Za-z0-9_-]{0,31})=(.{0,256})", re.DOTALL)


@audit.command()
@click.argument("event")
@click.option("--detail", "details", multiple=True, metavar="KEY=VALUE",
              help="A detail of the event (repeatable; at most 16, values up to 256 characters).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Path to ca.json [default: $HSMCA_PATH/config/ca.json].")
def note(event: str, details: tuple[str, ...], config_path: Path | None) -> None:
    """Record an operator event (action `operator.EVENT`) in the CA's audit trail, e.g. the appliance's
    break-glass console logins: `hsmca audit note break-glass.login --detail user=… --detail tty=ttyS0`.

    The record is chained and sealed like the CA's own; it cannot pose as one of them (its action always starts
    with `operator.`).
    """
    from appliance.audit import AuditEvent
    from appliance.config import ConfigError, default_config_path, load_config

    if not _NOTE_EVENT.fullmatch(event):
        fail(f"event {event!r}: lower-case words joined by dots, e.g. break-glass.login")
    if len(details) > 16:
        fail(f"{len(details)} details; at most 16")
    parsed: dict[str, str] = {}
    for item in details:
        match = _DETAIL.fullmatch(item)
        if match is None:
            fail(f"--detail {item[:40]!r}: KEY=VALUE, a key of letters, digits, _ or -, a value of at most 256 "
                 "characters")
        if match.group(1) in parsed:
            fail(f"--detail {match.group(1)} given twice")
        parsed[match.group(1)] = match.group(2)
    try:
        config = load_config(config_path or default_config_path())
    except ConfigError as exc:
        fail(getattr(exc, "message", None) or str(exc))
    record_event(config, AuditEvent(action=f"operator.{event}", decision="allowed", request_id="cli",
                                    details=parsed), done=f"operator.{event} happened")
    click.echo(f"recorded operator.{event}")
