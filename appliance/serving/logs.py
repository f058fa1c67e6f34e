"""One log format for every process of `hsmca serve` (stderr; the supervisor's caller collects it)."""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
# SDKs that log every HTTP request and response at INFO (headers included): one line per signature is noise,
# and hsmca reports their failures itself. HSMCA_LOG_LEVEL=DEBUG shows them again.
CHATTY_SDKS = ("azure", "botocore", "google", "urllib3", "hvac")


def setup(level: str | None = None) -> None:
    chosen = (level or os.environ.get("HSMCA_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(level=chosen, format=FORMAT)
    if chosen != "DEBUG":
        for name in CHATTY_SDKS:
            logging.getLogger(name).setLevel(logging.WARNING)
