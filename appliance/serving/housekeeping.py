"""Background work off the request path: resolve reservations left by killed workers, purge
expired token ids. (Server-certificate renewal, CRL and OCSP pre-signing join it later.)"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from appliance.config import load_config
from appliance.serving import logs
from appliance.store import Store, StoreError
from policy import parse_duration

log = logging.getLogger("hsmca.housekeeping")


def sweep(store: Store, reservation_timeout: str) -> list[int]:
    abandoned = store.resolve_stale_reservations(parse_duration(reservation_timeout))
    for serial in abandoned:
        log.warning("reservation %d was left by an interrupted issuance; marked abandoned", serial)
    purged = store.purge_expired_tokens(datetime.now(timezone.utc))
    if purged:
        log.info("purged %d expired token ids", purged)
    return abandoned


def main() -> None:
    parser = argparse.ArgumentParser(description="hsmca housekeeping (started by `hsmca serve`)")
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args()
    logs.setup()
    config = load_config(args.config)
    store = Store.from_config(config.db.model_dump(), config.base_dir)
    stop = threading.Event()
    interval = parse_duration(config.server.housekeepingInterval).total_seconds()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while not stop.is_set():
        try:
            sweep(store, config.server.reservationTimeout)
        except StoreError as exc:
            log.error("housekeeping sweep failed: %s", exc)
        stop.wait(interval)
    store.close()


if __name__ == "__main__":
    main()
