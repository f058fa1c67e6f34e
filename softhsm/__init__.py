"""SoftHSM2 set-up for `hsmca init`, `make run` and the tests: a private config and its tokens.

Everything goes through `softhsm2-util` with `SOFTHSM2_CONF` set in the child's environment only,
so the system's /var/lib/softhsm and the caller's own environment are never touched. This package
does not import pkcs11: the token is made before any process loads the module (SoftHSM sees only
the tokens that exist when the module is initialised).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

_MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


def find_module() -> str | None:
    """The first libsofthsm2.so that exists here, or None."""
    return next((p for p in _MODULE_CANDIDATES if os.path.isfile(p)), None)


DEFAULT_MODULE: str = find_module() or _MODULE_CANDIDATES[0]

TIMEOUT_SECONDS = 60.0  # token set-up takes well under a second; a hang means a broken install


class SoftHSMError(Exception):
    """softhsm2-util failed or is missing; the message says what to do."""


class SoftHSMUnavailable(SoftHSMError):
    """softhsm2-util is not installed."""


class TokenExists(SoftHSMError):
    """A token with this label already exists in this config."""


def write_config(directory: Path) -> Path:
    """Create `directory/softhsm2.conf` and `directory/tokens/` (mode 0700); idempotent."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tokendir = directory / "tokens"
    tokendir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    os.chmod(tokendir, 0o700)
    template = resources.files("softhsm").joinpath("softhsm2.conf.in").read_text(encoding="utf-8")
    conf = directory / "softhsm2.conf"
    text = template.format(tokendir=tokendir.resolve())
    if not conf.exists() or conf.read_text(encoding="utf-8") != text:
        conf.write_text(text, encoding="utf-8")
    os.chmod(conf, 0o600)
    return conf


def token_dir(conf: Path) -> Path | None:
    """The token directory a softhsm2.conf names (what `write_config` wrote, or an operator's), None if unreadable."""
    try:
        text = conf.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r"^\s*directories\.tokendir\s*=\s*(.+?)\s*$", text, re.M)
    return Path(match.group(1)) if match else None


def token_labels(conf: Path) -> list[str]:
    """Labels of the initialised tokens in `conf`."""
    out = _run(["--show-slots"], conf, what="listing tokens")
    labels: list[str] = []
    initialized: bool | None = None
    for line in out.splitlines():
        stripped = line.strip()
        if stripped.startswith("Initialized:"):
            initialized = stripped.endswith("yes")
        m = re.match(r"Label:(.*)$", stripped)
        if m and initialized is not False and m.group(1).strip():
            labels.append(m.group(1).strip())
    return labels


def token_exists(label: str, conf: Path) -> bool:
    return label in token_labels(conf)


def init_token(label: str, so_pin: str, user_pin: str, *, conf: Path) -> None:
    """Initialise a free slot as token `label` with these PINs (TokenExists if taken).

    softhsm2-util takes PINs only as arguments or from a terminal; they are never logged, and
    error messages show the command without them.
    """
    _check_label(label)
    for name, pin in (("SO PIN", so_pin), ("user PIN", user_pin)):
        if not 4 <= len(pin) <= 255:
            raise SoftHSMError(f"the {name} must be 4 to 255 characters long")
    if token_exists(label, conf):
        raise TokenExists(f"a SoftHSM token labelled {label!r} already exists in {conf}")
    _run(["--init-token", "--free", "--label", label, "--so-pin", so_pin, "--pin", user_pin],
         conf, what=f"initialising token {label!r}")


def delete_token(label: str, conf: Path) -> None:
    """Delete token `label` and everything on it (SoftHSMError if there is none)."""
    _check_label(label)
    _run(["--delete-token", "--token", label], conf, what=f"deleting token {label!r}")


def _check_label(label: str) -> None:
    if not label or len(label.encode("utf-8")) > 32:
        raise SoftHSMError("a token label must be 1 to 32 bytes long (PKCS#11 CK_TOKEN_INFO)")


def _run(args: list[str], conf: Path, *, what: str) -> str:
    tool = shutil.which("softhsm2-util")
    if tool is None:
        raise SoftHSMUnavailable("softhsm2-util not found: install the softhsm2 package "
                                 "(apt-get install softhsm2)")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    try:
        proc = subprocess.run([tool, *args], env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise SoftHSMError(f"{what}: softhsm2-util did not finish in {TIMEOUT_SECONDS:.0f}s") from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise SoftHSMError(f"{what} failed (SOFTHSM2_CONF={conf}): "
                           f"{detail[-1] if detail else f'exit status {proc.returncode}'}")
    return proc.stdout
