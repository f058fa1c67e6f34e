"""`hsmca backup` and `hsmca restore`: the CA's database, audit trail and configuration in one archive, and back.

The work is in backup_write.py, backup_restore.py and backup_archive.py (an appliance upgrade calls `write_backup`
and `archive_revision` directly); this module only prints.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from appliance.cli.common import fail

SECRETS_WARNING = ("the archive holds secrets (the token's PIN file, the provisioner's encrypted key, ACME EAB "
                   "keys): keep it as you keep the HSM's own backup (encrypted, offline, few readers).")
HSM_NOTE = ("A real HSM's keys are never in an hsmca backup: back them up with the vendor's tools.")


@click.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Path to ca.json [default: $HSMCA_PATH/config/ca.json].")
def backup(out: Path, config_path: Path | None) -> None:
    """Write the CA's database, audit trail and configuration to OUT (a gzip'd tar, mode 0600), while it serves.

    \b
    In it: MANIFEST.json (sizes and SHA-256 of every member, the schema revision),
    database/<table>.jsonl (one consistent snapshot, portable between SQLite,
    PostgreSQL and MariaDB), audit/ (current and rotated files), config/, certs/,
    secrets/ (ca.json, certificates, PIN and password files), and softhsm/ when
    the keys are in a SoftHSM dev token under the CA's home.

    The archive holds secrets such as the token's PIN file: keep it like the HSM's own backup. A real HSM's keys are
    never in it: back them up with the vendor's tools. Restore with `hsmca restore`.
    """
    from appliance.cli.backup_archive import BackupError, human_size
    from appliance.cli.backup_write import write_backup

    try:
        summary = write_backup(config_path, out)
    except BackupError as exc:
        fail(str(exc))
    click.echo(f"Backup written:  {summary.archive} ({human_size(summary.size)}, mode 0600)")
    click.echo(f"Database:        {summary.backend}, schema revision {summary.revision}, "
               f"{sum(summary.tables.values())} rows")
    for table, rows in summary.tables.items():
        click.echo(f"  {table:<22} {rows:>9}")
    click.echo(f"Files:           {summary.files} (configuration {len(summary.config_files)}, "
               f"audit {len(summary.audit_files)}, SoftHSM {len(summary.softhsm_files)})")
    if summary.softhsm_files:
        click.echo("SoftHSM:         the dev token directory (softhsm/) is included, with the CA's keys in it. "
                   + HSM_NOTE)
    elif summary.softhsm_outside:
        click.echo(f"SoftHSM:         the token directory {summary.softhsm_outside} is outside the CA's home and NOT "
                   "included: copy it yourself if its keys matter.")
    else:
        click.echo("Keys:            not included: they stay in the HSM or KMS. " + HSM_NOTE)
    for path in summary.outside:
        click.echo(f"warning: {path} (named in ca.json) is outside the CA's home and not in the archive", err=True)
    click.echo(f"Secrets:         {SECRETS_WARNING}")


@click.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--path", "home", type=click.Path(file_okay=False, path_type=Path),
              help="The CA's home to restore into [default: $HSMCA_PATH, else ~/.hsmca].")
@click.option("--force", is_flag=True, help="Replace an existing CA there: its files are moved to replaced-<time>/ "
                                            "under the home, its database tables dropped.")
@click.option("--db", "db_url", metavar="URL",
              help="Load the database into this one instead of the one the archive's ca.json names, and write it into "
                   "the restored ca.json, e.g. postgresql://hsmca@db.internal/hsmca to move a SQLite CA.")
@click.option("--max-size", default="64G", show_default=True, metavar="SIZE",
              help="Refuse an archive that unpacks to more than this (K, M, G suffixes), whatever it claims.")
def restore(archive: Path, home: Path | None, force: bool, db_url: str | None, max_size: str) -> None:
    """Restore a CA from ARCHIVE (written by `hsmca backup`), at its home or another one.

    Every member is checked against MANIFEST.json before anything is written (a changed, missing or extra member,
    a link, a device, an absolute or `..` path refuses the archive). Paths under the old home in ca.json and
    softhsm2.conf are rewritten to the new one. The database is loaded where the restored ca.json says (SQLite under
    the home, or its PostgreSQL/MariaDB URL), at the archive's schema revision, then upgraded to this release's.
    Stop `hsmca serve` of a CA you replace with --force first. A real HSM's keys are not in the archive: the restored
    CA uses the HSM that ca.json names.
    """
    from appliance.cli.backup_archive import BackupError
    from appliance.cli.backup_restore import restore_backup
    from appliance.config import hsmca_path

    limit = _parse_size(max_size)
    try:
        summary = restore_backup(archive, home or hsmca_path(), force=force, max_bytes=limit, db_url=db_url)
    except BackupError as exc:
        fail(str(exc))
    m = summary.manifest
    click.echo(f"Verified:        {len(m.members) + 1} members against MANIFEST.json (backup of {m.home} taken "
               f"{m.created} by hsmca {m.hsmca})")
    for moved in summary.replaced:
        click.echo(f"Replaced:        {moved}")
    click.echo(f"Restored:        {summary.files} files under {summary.home}")
    if summary.relocated:
        click.echo(f"Paths:           {m.home} rewritten to {summary.home} in {', '.join(summary.relocated)}")
    click.echo(f"Database:        {summary.database}: {sum(summary.tables.values())} rows "
               f"(from {m.backend} at schema revision {m.revision})")
    for table, rows in summary.tables.items():
        click.echo(f"  {table:<22} {rows:>9}")
    if m.softhsm:
        click.echo("SoftHSM:         the dev token directory was restored with its keys. " + HSM_NOTE)
    else:
        click.echo("Keys:            not in the archive: the CA signs with the HSM or KMS its ca.json names.")
    click.echo(f"Start it:        HSMCA_PATH={summary.home} hsmca serve   (or --config {summary.config_path})")


def _parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", text, re.I)
    if not match:
        fail(f"--max-size {text!r}: give a number of bytes with an optional K, M, G or T suffix, e.g. 64G")
    return int(match.group(1)) * 1024 ** "_KMGT".index(match.group(2).upper() or "_")
