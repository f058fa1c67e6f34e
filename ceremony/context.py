"""What every ceremony shares: its options, the offline check, the rehearsal token, the facts recorded.

A dry run swaps the plan's HSM for a throwaway SoftHSM token in a temporary directory before
the PKCS#11 module is loaded, so a rehearsal can never touch the real token.
"""

from __future__ import annotations

import os
import platform
import socket
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend

import softhsm
from ceremony.network import require_offline
from ceremony.plan import Plan, resolve
from ceremony.transcript import sha256_hex
from kms.signer import spki_der
from kms.uri import KeyURI


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Options:
    plan_path: Path
    dry_run: bool = False
    allow_network: bool = False
    share_output: Path | None = None  # root ceremony: write shares to files (rehearsals, tests)
    shares_from: Path | None = None  # intermediate ceremony: read shares from files
    custodians_present: Sequence[str] = ()  # who gives shares; default: every custodian, in plan order
    clock: Callable[[], datetime] = field(default=utcnow)


class CeremonyError(Exception):
    """The ceremony stops; the message tells the operator why and what to do."""


@dataclass
class Setting:
    """Where this run's HSM and files are: the plan's, or a rehearsal's throwaway ones."""

    module: str
    token: str
    outputs: Path
    transcript: Path
    network_up: list[str]
    rehearsal_dir: Path | None = None

    def key_uri(self, label: str, pin: str) -> str:
        """In memory only: the URI carries the PIN to kms/, and kms/ logs only its redacted form."""
        return str(KeyURI("pkcs11", {"token": self.token, "object": label},
                          {"module-path": self.module, "pin-value": pin}))


def prepare(plan: Plan, opts: Options) -> Setting:
    network = require_offline(opts.allow_network)
    if not opts.dry_run:
        outputs = resolve(opts.plan_path, plan.outputs.directory)
        return Setting(plan.hsm.module, plan.hsm.token, outputs, outputs / plan.outputs.transcript, network)
    rehearsal = Path(tempfile.mkdtemp(prefix="hsmca-rehearsal-"))
    os.environ["SOFTHSM2_CONF"] = str(softhsm.write_config(rehearsal / "softhsm"))
    outputs = rehearsal / "outputs"
    return Setting(softhsm.DEFAULT_MODULE, plan.hsm.token, outputs, outputs / Path(plan.outputs.transcript).name,
                   network, rehearsal)


def environment(plan: Plan, opts: Options, setting: Setting) -> dict[str, Any]:
    """Facts an auditor wants next to the steps: machine, software, network, rehearsal or not."""
    return {
        "plan": plan.name, "kind": plan.ceremony, "custodians": list(plan.custodians),
        "quorum": f"{plan.quorum.threshold} of {plan.quorum.shares}",
        "dryRun": opts.dry_run, "allowNetwork": opts.allow_network, "networkInterfacesUp": setting.network_up,
        "hostname": socket.gethostname(), "platform": platform.platform(),
        "software": {name: _version(name) for name in ("hsmca", "cryptography", "shamir-mnemonic", "python-pkcs11")}
        | {"openssl": openssl_backend.openssl_version_text(), "python": platform.python_version()},
        "hsm": {"module": setting.module, "token": setting.token},
    }


def spki_sha256(public_key: Any) -> str:
    return sha256_hex(spki_der(public_key))


def check_new_file(path: Path) -> None:
    if path.exists():
        raise CeremonyError(f"{path} already exists; a ceremony never overwrites an output (move it away)")


def write_new_file(path: Path, data: bytes) -> None:
    """Outputs are written once (O_EXCL) and fsynced: what the transcript hashes is what stays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"
