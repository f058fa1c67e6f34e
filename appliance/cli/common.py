"""Helpers shared by the commands: reading secrets from files or prompts, failing clearly."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click


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
