"""Named fault-injection points, for the crash tests only.

Inert unless the environment variable HSMCA_FAILPOINTS is set (never in production):
`HSMCA_FAILPOINTS="issuer.after-sign=pause-while:/tmp/hold"` pauses a worker between the HSM's
signature and the database update, so a test can SIGKILL it at exactly that moment. Actions:
`sleep:SECONDS` and `pause-while:PATH` (waits, at most 120 s, while PATH exists).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_MAX_PAUSE = 120.0


def _parse(spec: str) -> dict[str, str]:
    points: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        name, _, action = item.partition("=")
        points[name.strip()] = action.strip()
    return points


def failpoint(name: str) -> None:
    spec = os.environ.get("HSMCA_FAILPOINTS")
    if not spec:
        return
    action = _parse(spec).get(name)
    if not action:
        return
    kind, _, arg = action.partition(":")
    if kind == "sleep":
        time.sleep(float(arg))
    elif kind == "pause-while":
        deadline = time.monotonic() + _MAX_PAUSE
        while Path(arg).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
