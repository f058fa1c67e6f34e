"""Helpers shared by the commands: reading secrets from files or prompts, failing clearly."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

if TYPE_CHECKING:
    from appliance.config import CAConfig
    from appliance.store import Store

PathType = click.Path(dir_okay=False, path_type=Path)  # a file argument or option


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def read_secret_file(path: Path, what: str) -> bytes:
    try:
        value = path.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        fail(f"cannot read the {what} from {path}: {exc.strerror}")
    if not value:
        fail(f"{path} is empty: the {what} cannot be empty")
    return value


def password_from(path: Path | None, what: str, *, confirm: bool = False) -> bytes:
    """From the file if given, else a hidden prompt (never from a command-line argument)."""
    if path is not None:
        return read_secret_file(path, what)
    if not sys.stdin.isatty():
        fail(f"no terminal to ask for the {what}: give it with --password-file")
    value = click.prompt(f"Please enter the {what}", hide_input=True, confirmation_prompt=confirm)
    if not value:
        fail(f"the {what} cannot be empty")
    return str(value).encode()


@contextmanager
def opened_store(config_path: Path | None, *, then: Callable[[CAConfig, Store], object] | None = None,
                 errors: tuple[type[Exception], ...] = ()) -> Iterator[tuple[CAConfig, Store]]:
    """ca.json and its database, migrated (and `then` run), for a command that works on the store directly;
    a configuration or database error (or one of `errors`) ends the command with its message."""
    from appliance.config import ConfigError, load_config
    from appliance.store import Store, StoreError

    try:
        config = load_config(config_path)
        store = Store.from_config(config.db.model_dump(), config.base_dir)
    except (ConfigError, StoreError) as exc:
        fail(str(exc))
    caught: tuple[type[Exception], ...] = (StoreError, *errors)
    try:
        store.migrate()
        if then is not None:
            then(config, store)
        yield config, store
    except caught as exc:
        fail(str(exc))
    finally:
        store.close()


def parse_when(value: str | None, option: str, code: int = 1) -> datetime | None:
    """`now` or an RFC 3339 time with a zone (a time without one is ambiguous, so refused)."""
    if value is None:
        return None
    if value.strip().lower() == "now":
        return datetime.now(timezone.utc)
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        fail(f"{option} {value!r}: give 'now' or an RFC 3339 time such as 2026-12-01T00:00:00Z", code)
    if when.tzinfo is None:
        fail(f"{option} {value!r} has no time zone; add Z for UTC", code)
    return when.astimezone(timezone.utc)
