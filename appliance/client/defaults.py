"""The client's pinned CA (`hsmca bootstrap` writes it; other commands default to it)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from appliance.config import hsmca_path


class DefaultsError(Exception):
    """The pinned CA file is damaged."""


@dataclass(frozen=True)
class ClientDefaults:
    ca_url: str | None = None
    root: Path | None = None
    fingerprint: str | None = None


def defaults_path() -> Path:
    return hsmca_path() / "config" / "defaults.json"


def load_defaults() -> ClientDefaults:
    path = defaults_path()
    root = hsmca_path() / "certs" / "root_ca.crt"
    if not path.exists():
        return ClientDefaults(root=root if root.exists() else None)
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise DefaultsError(f"{path} is unreadable ({exc}); run `hsmca bootstrap` again") from None
    return ClientDefaults(ca_url=data.get("ca-url"), root=Path(data["root"]) if data.get("root") else None,
                          fingerprint=data.get("fingerprint"))


def save_defaults(d: ClientDefaults) -> Path:
    path = defaults_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"ca-url": d.ca_url, "fingerprint": d.fingerprint,
                                "root": str(d.root) if d.root else None}, indent=2) + "\n")
    return path
