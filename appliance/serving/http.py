"""The plain-HTTP listener: CA certificates, CRLs, OCSP and metrics for relying parties.

OCSP answers come from this process's memory when it has them (ocsp_memo.py, answered on the event loop by
http_server.py); everything else, and every memory miss, goes to the Falcon application in a thread pool.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path

import uvloop

from appliance.api import create_http_app
from appliance.api.ocsp import FastPath
from appliance.config import load_config, split_address
from appliance.ra.authority import Authority
from appliance.serving import logs
from appliance.serving.http_server import HTTPServer
from appliance.serving.https import limits
from appliance.status.ocsp_memo import OCSPMemo
from appliance.status.stamp import EpochPoller, StampReader, stamp_path

log = logging.getLogger("hsmca.http")

THREADS = 4
MAX_BODY = 64 * 1024
METRICS_FLUSH_SECONDS = 1.0


def _every(loop: asyncio.AbstractEventLoop, seconds: float, call: Callable[[], None]) -> None:
    """Run `call` on the loop every `seconds` (the fast path's counters live on the loop's thread)."""
    def tick() -> None:
        call()
        loop.call_later(seconds, tick)

    loop.call_later(seconds, tick)


def main() -> None:
    parser = argparse.ArgumentParser(description="hsmca plain-HTTP listener (started by `hsmca serve`)")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--address", required=True)
    args = parser.parse_args()
    logs.setup()
    config = load_config(args.config)
    host, port = split_address(args.address)
    authority = Authority.from_config(config)
    memo = poller = None
    if config.ocsp.memorySize > 0:
        stamp = stamp_path(config.base_dir)
        memo = OCSPMemo(authority.ocsp, StampReader(stamp), size=config.ocsp.memorySize,
                        max_bytes=config.ocsp.memoryBytes)
        poller = EpochPoller(authority.store, stamp)
        poller.start()
    app = create_http_app(authority, memo)
    fast = FastPath(memo) if memo is not None else None
    server = HTTPServer(app, host=host or "0.0.0.0", port=port, fast=fast, threads=THREADS,
                        limits=limits(config, MAX_BODY), reuse_port=True, name="http")

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the supervisor's reload is for the HTTPS workers
        await server.start()
        if fast is not None:
            _every(loop, METRICS_FLUSH_SECONDS, fast.flush_metrics)
        log.info("plain HTTP listening on %s:%s (OCSP memory: %s entries)", host or "0.0.0.0", port,
                 config.ocsp.memorySize)
        await stop.wait()
        await server.shutdown(max(1.0, config.server.gracefulTimeout - 2.0))  # before the supervisor kills

    try:
        uvloop.run(run())
    finally:
        if poller is not None:
            poller.stop()
        authority.close()


if __name__ == "__main__":
    main()
