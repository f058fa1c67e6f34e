"""Token administration for the ceremony: describe tokens, initialise one with its SO and user PINs.

python-pkcs11 has no C_InitToken, so initialisation runs OpenSC's `pkcs11-tool`. The PINs reach
it through its environment (`--so-pin env:NAME`), never through its arguments, so no other
process can read them from /proc/*/cmdline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

from pkcs11 import TokenFlag
from pkcs11 import exceptions as p11e

from kms import pkcs11_module as pm
from kms.errors import BackendUnavailable, KeyExists, KMSError

TOOL_TIMEOUT = 120.0  # an RSA-4096-capable HSM answers in seconds; a hang means a broken module
_SO_ENV, _USER_ENV = "HSMCA_CEREMONY_SO_PIN", "HSMCA_CEREMONY_USER_PIN"


@dataclass(frozen=True)
class TokenInfo:
    """What the transcript records about the token a ceremony used."""

    slot_id: int
    label: str
    manufacturer: str
    model: str
    serial: str
    firmware: str
    initialized: bool
    user_pin_initialized: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_tokens(module: str) -> list[TokenInfo]:
    """Every present token of `module`, re-scanned (tokens made by another process show up)."""
    def scan() -> list[TokenInfo]:
        m = pm.rescan(module)
        infos = []
        for slot in m.lib.get_slots(token_present=True):
            try:
                token = slot.get_token()
            except (p11e.TokenNotPresent, p11e.TokenNotRecognised, p11e.GeneralError):
                continue
            infos.append(_info(slot, token))
        return infos

    return pm.run(scan, timeout=pm.DEFAULT_TIMEOUT, what=f"PKCS#11 module {module}")


def find_token(module: str, label: str) -> TokenInfo | None:
    """The initialised token labelled `label`, or None; two of them are an error (ambiguous)."""
    found = [t for t in list_tokens(module) if t.initialized and t.label == label]
    if len(found) > 1:
        raise KMSError(f"{len(found)} tokens are labelled {label!r} in {module}; relabel or remove one")
    return found[0] if found else None


def init_token(module: str, label: str, so_pin: str, user_pin: str, *, slot_id: int | None = None) -> TokenInfo:
    """Initialise a token on a free slot (or `slot_id`), set its user PIN, return its description.

    Refuses when a token with `label` exists: re-initialising would destroy its keys.
    """
    if not label or len(label.encode()) > 32:
        raise KMSError("a token label must have 1 to 32 bytes (PKCS#11 CK_TOKEN_INFO.label)")
    if find_token(module, label) is not None:
        raise KeyExists(f"a token labelled {label!r} already exists in {module}; "
                        "a ceremony never re-initialises a token")
    tokens = list_tokens(module)
    if slot_id is None:
        free = [t for t in tokens if not t.initialized]
        if not free:
            raise BackendUnavailable(f"{module} has no uninitialised token to set up")
        slot_id = free[0].slot_id
    elif not any(t.slot_id == slot_id and not t.initialized for t in tokens):
        raise KMSError(f"slot {slot_id} of {module} holds no uninitialised token")
    env = {**os.environ, _SO_ENV: so_pin, _USER_ENV: user_pin}
    _tool("token initialisation", module,
          ["--slot", str(slot_id), "--init-token", "--label", label, "--so-pin", f"env:{_SO_ENV}"], env)
    _tool("user PIN initialisation", module,
          ["--token-label", label, "--login", "--login-type", "so", "--so-pin", f"env:{_SO_ENV}",
           "--init-pin", "--pin", f"env:{_USER_ENV}"], env)
    info = find_token(module, label)
    if info is None or not info.user_pin_initialized:
        raise KMSError(f"pkcs11-tool reported success but token {label!r} is not ready in {module}")
    return info


def _tool(what: str, module: str, args: list[str], env: dict[str, str]) -> None:
    tool = shutil.which("pkcs11-tool")
    if tool is None:
        raise BackendUnavailable("pkcs11-tool is not installed (apt-get install opensc)")
    try:
        done = subprocess.run([tool, "--module", module, *args], env=env, capture_output=True, text=True,
                              timeout=TOOL_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise BackendUnavailable(f"pkcs11-tool did not finish within {TOOL_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise KMSError(f"{what} with pkcs11-tool failed: "
                       f"{detail[-1] if detail else 'exit ' + str(done.returncode)}")


def _info(slot: Any, token: Any) -> TokenInfo:
    flags = token.flags
    fw = token.firmware_version
    return TokenInfo(
        slot_id=int(slot.slot_id), label=str(token.label or "").strip(),
        manufacturer=str(token.manufacturer_id or "").strip(), model=str(token.model or "").strip(),
        serial=_text(token.serial), firmware=f"{fw[0]}.{fw[1]}" if isinstance(fw, tuple) else str(fw),
        initialized=bool(flags & TokenFlag.TOKEN_INITIALIZED),
        user_pin_initialized=bool(flags & TokenFlag.USER_PIN_INITIALIZED))


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip()
    return str(value).strip()


def key_protection(key: Any) -> dict[str, bool]:
    """CKA_SENSITIVE, CKA_EXTRACTABLE, ... of a PKCS#11-backed CA key, read back from the token."""
    protection = getattr(key, "protection", None)
    if protection is None:
        raise KMSError(f"{key!r} is not a PKCS#11 key")
    result: dict[str, bool] = protection()
    return result
