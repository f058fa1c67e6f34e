"""`hsmca acme eab add|list|remove`: external account binding keys for ACME provisioners (RFC 8555 §7.3.4).

The HMAC key is printed once, for the operator to hand to the client (certbot `--eab-kid/--eab-hmac-key`,
lego `--eab --kid/--hmac`); it lives in the database, which replicas share.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from appliance.cli.common import fail, opened_store

if TYPE_CHECKING:
    from appliance.config import CAConfig
    from appliance.store import Store

CONFIG = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                      help="Path to ca.json [default: $HSMCA_PATH/config/ca.json].")


def _opened(config_path: Path | None) -> AbstractContextManager[tuple[CAConfig, Store]]:
    return opened_store(config_path)


@click.group()
def acme() -> None:
    """ACME provisioners' external account binding keys."""


@acme.group()
def eab() -> None:
    """External account binding keys: one key lets one client create one account."""


@eab.command("add")
@click.argument("provisioner")
@click.option("--reference", help="A note kept with the key (who it is for).")
@CONFIG
def add(provisioner: str, reference: str | None, config_path: Path | None) -> None:
    """Make a key for ACME provisioner PROVISIONER and print its id and HMAC key."""
    with _opened(config_path) as (config, store):
        if not any(p.type == "ACME" and p.name == provisioner for p in config.authority.provisioners):
            fail(f"no ACME provisioner named {provisioner!r} in ca.json")
        key = store.acme.add_eab_key(provisioner, reference, datetime.now(UTC))
    click.echo(f"Key ID:   {key.key_id}")
    click.echo(f"HMAC key: {key.hmac_key}")


@eab.command("list")
@click.argument("provisioner", required=False)
@CONFIG
def list_(provisioner: str | None, config_path: Path | None) -> None:
    """The keys (never their HMAC), whether each is bound, and to which account."""
    with _opened(config_path) as (_, store):
        for key in store.acme.eab_keys(provisioner):
            bound = f"bound to account {key.account_id}" if key.account_id else "unused"
            click.echo(f"{key.key_id}  {key.provisioner}  {bound}  {key.reference or ''}".rstrip())


@eab.command("remove")
@click.argument("key_id")
@CONFIG
def remove(key_id: str, config_path: Path | None) -> None:
    """Withdraw a key (an account it bound stays)."""
    with _opened(config_path) as (_, store):
        if not store.acme.remove_eab_key(key_id):
            fail(f"no external account key {key_id!r}")
    click.echo(f"Removed external account key {key_id}")
