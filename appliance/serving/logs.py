"""One log format for every process of `hsmca serve` (stderr; the supervisor's caller collects it)."""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


def setup(level: str | None = None) -> None:
    logging.basicConfig(level=(level or os.environ.get("HSMCA_LOG_LEVEL") or "INFO").upper(),
                        format=FORMAT)
