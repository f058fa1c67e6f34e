"""`hsmca intermediate csr|install|list|activate|retire`: the online side of intermediate rotation."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from appliance.cli.common import opened_store, parse_when

if TYPE_CHECKING:
    from appliance.config import CAConfig
    from appliance.store import IntermediateRecord, Store

CONFIG = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                      help="Path to ca.json [default: $HSMCA_PATH/config/ca.json].")


def _opened(config_path: Path | None) -> AbstractContextManager[tuple[CAConfig, Store]]:
    from appliance.ca.intermediates import IntermediateError, bootstrap

    return opened_store(config_path, then=bootstrap, errors=(IntermediateError, ValueError, OSError))


@click.group()
def intermediate() -> None:
    """Intermediate CA certificates: several per CA, one active; rotate without touching the root.

    \b
    1. hsmca intermediate csr --key URI --subject DN > int.csr     (key made inside the KMS)
    2. offline: hsmca ceremony sign-intermediate --plan P --csr int.csr
    3. hsmca intermediate install int.crt --activate-at 2026-12-01T00:00:00Z
    4. hsmca intermediate list

    The active intermediate is the installed, unretired one with the latest activation time that
    has come. Every worker and replica reads it from the database: no restart is needed.
    """


@intermediate.command()
@CONFIG
@click.option("--key", "key_uri", required=True,
              help="Key URI for the new key, e.g. 'pkcs11:token=hsmca;object=intermediate-2026' (ca.json's "
                   "kms.uri supplies the module and PIN source).")
@click.option("--subject", required=True, help="Subject DN (RFC 4514), e.g. 'CN=Corp Issuing CA 2026,O=Corp'.")
@click.option("--name", help="Name to refer to it by [default: the key URI's object label].")
@click.option("--kty", type=click.Choice(["EC-P256", "EC-P384", "RSA-2048", "RSA-3072", "RSA-4096"]),
              default="EC-P256", show_default=True, help="Key type, generated inside the KMS.")
@click.option("--use-existing", is_flag=True, help="Use a key that already exists in the KMS instead of creating one.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the CSR here [default: stdout].")
def csr(config_path: Path | None, key_uri: str, subject: str, name: str | None, kty: str, use_existing: bool,
        out: Path | None) -> None:
    """Create an intermediate key inside the KMS and print a CSR for the offline ceremony."""
    from appliance.ca.intermediates import make_csr
    from kms import KeySpec

    with _opened(config_path) as (config, store):
        pem, rec = make_csr(config, store, key_uri, subject, name=name, spec=KeySpec.parse(kty),
                            use_existing=use_existing)
        _audit(config, "intermediate.csr", rec, key=rec.key_uri, keyType=kty, existingKey=use_existing)
    if out:
        out.write_bytes(pem)
    else:
        click.echo(pem.decode(), nl=False)
    click.echo(f"recorded intermediate {rec.name!r} (id {rec.id}), awaiting its certificate", err=True)


@intermediate.command()
@CONFIG
@click.argument("certificate", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--activate-at", help="'now' or an RFC 3339 time; without it the intermediate stays pending "
                                    "until `hsmca intermediate activate`.")
@click.option("--chain", "chain_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PEM certificates leading from it to this CA's root, served after it with every certificate "
                   "it signs: the cross-certificate when a new root signed it (root rollover).")
def install(config_path: Path | None, certificate: Path, activate_at: str | None, chain_file: Path | None) -> None:
    """Install the certificate the ceremony signed for a key made by `hsmca intermediate csr`.

    It must be a CA certificate issued by this CA's root, for a recorded key.
    """
    from appliance.ca.intermediates import install as do_install
    from appliance.ca.intermediates import own_name_problems
    from appliance.certutil import parse_certificates

    when = parse_when(activate_at, "--activate-at")
    with _opened(config_path) as (config, store):
        rec = do_install(config, store, certificate.read_bytes(), activate_at=when,
                         chain=chain_file.read_bytes() if chain_file else None)
        _audit(config, "intermediate.install", rec, activateAt=_iso(rec.activate_at), notAfter=_iso(rec.not_after),
               chain=bool(rec.chain))
    click.echo(f"installed {rec.name!r} (id {rec.id}): {rec.subject}, valid to {rec.not_after}")
    click.echo(f"activates at {rec.activate_at}" if rec.activate_at else
               "pending: activate it with `hsmca intermediate activate " + rec.name + "`")
    problems = own_name_problems(config, parse_certificates(certificate.read_bytes())[0])  # PEM or DER, as install
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)
    if problems:
        click.echo("warning: `hsmca serve` refuses to start while this intermediate is active: change dnsNames in "
                   "ca.json, or have the ceremony sign an intermediate whose constraints permit them", err=True)


@intermediate.command("list")
@CONFIG
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(config_path: Path | None, as_json: bool) -> None:
    """The intermediates with their state, activation time and number of certificates issued."""
    from appliance.ca.intermediates import listing

    with _opened(config_path) as (_config, store):
        items = listing(store)
    rows: list[dict[str, Any]] = [
        {"name": i.record.name, "id": i.record.id, "state": i.state.value, "subject": i.record.subject,
             "notAfter": _iso(i.record.not_after), "activateAt": _iso(i.record.activate_at),
             "retiredAt": _iso(i.record.retired_at), "issued": i.issued, "key": i.record.key_uri} for i in items]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['state']:<21} {r['name']:<24} {r['id'][:16]}  issued {r['issued']:<6} "
                   f"activate {r['activateAt'] or '-':<25} {r['subject']}")


@intermediate.command()
@CONFIG
@click.argument("name")
@click.option("--at", "at", default="now", show_default=True, help="'now' or an RFC 3339 time.")
def activate(config_path: Path | None, name: str, at: str) -> None:
    """Make an installed intermediate the active one (at once, or at --at) on every worker and replica."""
    from appliance.ca.intermediates import activate as do_activate

    when = parse_when(at, "--at")
    assert when is not None
    with _opened(config_path) as (config, store):
        rec = do_activate(store, name, when)
        _audit(config, "intermediate.activate", rec, activateAt=_iso(rec.activate_at))
    click.echo(f"{rec.name!r} activates at {rec.activate_at}")


@intermediate.command()
@CONFIG
@click.argument("name")
@click.option("--at", "at", default="now", show_default=True, help="'now' or an RFC 3339 time.")
@click.option("--force", is_flag=True, help="Retire even the active intermediate when no other would take over "
                                             "(issuance stops until one is activated). Retiring a pending one "
                                             "cancels its scheduled hand-over.")
def retire(config_path: Path | None, name: str, at: str, force: bool) -> None:
    """Stop issuing from an intermediate; its certificates stay recorded and verifiable."""
    from appliance.ca.intermediates import retire as do_retire

    when = parse_when(at, "--at")
    assert when is not None
    with _opened(config_path) as (config, store):
        rec = do_retire(store, name, when, force=force)
        _audit(config, "intermediate.retire", rec, retiredAt=_iso(rec.retired_at), forced=force or None)
    click.echo(f"{rec.name!r} retired at {rec.retired_at}")


def _audit(config: CAConfig, action: str, rec: IntermediateRecord, **details: Any) -> None:
    """Changes to the CA's intermediates belong in the audit trail beside the issuance they govern."""
    from appliance.audit import AuditEvent
    from appliance.cli.audit import record_event

    record_event(config, AuditEvent(
        action=action, decision="allowed", request_id="cli", subject=rec.subject,
        details={"intermediate": rec.name, "id": rec.id, **{k: v for k, v in details.items() if v is not None}}),
        done=f"{action} done")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
