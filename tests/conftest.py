"""Shared fixtures. SoftHSM: one private config per test session, fresh tokens on demand.

SoftHSM reads SOFTHSM2_CONF once per process, when the module is first initialised, so the
session's config is put in the environment before any test runs (autouse); tests never see
/var/lib/softhsm or a user's ~/.hsmca.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import pytest

import softhsm


@dataclass(frozen=True)
class SoftHSMToken:
    """A freshly initialised token: its label, PINs, the config it lives in, the module."""

    label: str
    pin: str
    so_pin: str
    conf: Path
    module: str
    pin_file: Path

    def key_uri(self, obj: str, *, pin: Literal["value", "source", "none"] = "value",
                key_id: bytes | None = None) -> str:
        """`pkcs11:token=…;object=…?module-path=…&pin-…` for a key on this token."""
        path = f"token={quote(self.label)};object={quote(obj)}"
        if key_id is not None:
            path += ";id=" + "".join(f"%{b:02X}" for b in key_id)
        query = f"module-path={self.module}"
        if pin == "value":
            query += f"&pin-value={quote(self.pin)}"
        elif pin == "source":
            query += f"&pin-source=file:{self.pin_file}"
        return f"pkcs11:{path}?{query}"


@pytest.fixture(scope="session", autouse=True)
def softhsm_conf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's softhsm2.conf (tokens under a temp dir), exported as SOFTHSM2_CONF."""
    conf = softhsm.write_config(tmp_path_factory.mktemp("softhsm"))
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    yield conf
    if previous is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture(scope="session")
def softhsm_token_factory(softhsm_conf: Path) -> Callable[[], SoftHSMToken]:
    """Make a new uniquely labelled token with random PINs (for module-scoped key sets)."""
    pins = softhsm_conf.parent / "pins"
    pins.mkdir(mode=0o700, exist_ok=True)

    def make() -> SoftHSMToken:
        label = f"test-{secrets.token_hex(6)}"
        pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
        softhsm.init_token(label, so_pin, pin, conf=softhsm_conf)
        pin_file = pins / label
        pin_file.write_text(pin + "\n")
        pin_file.chmod(0o600)
        return SoftHSMToken(label, pin, so_pin, softhsm_conf, softhsm.DEFAULT_MODULE, pin_file)

    return make


@pytest.fixture
def softhsm_token(softhsm_token_factory: Callable[[], SoftHSMToken]) -> SoftHSMToken:
    """A fresh token for one test. Tokens are left in the session's temp dir, not deleted:
    a process that loaded SoftHSM keeps its own view of the token directory."""
    return softhsm_token_factory()
