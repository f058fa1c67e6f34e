"""One HTTPS worker process: the step API (Falcon) on serving/http_server.py with TLS.

`hsmca serve` opens the listening socket once and starts `server.workers` of these processes, each handed the
socket's descriptor: they accept from one queue, so replacing or restarting a worker never drops a connection
waiting to be accepted. Each is a fresh interpreter (fork + exec), so PKCS#11 is initialised in the worker and
never inherited across fork (SoftHSM does not survive that).

SIGHUP reloads ca.json in this process: the new configuration is built beside the running one (KMS sessions,
templates, provisioners) and swapped in only if it loads; requests already running finish with the old one,
whose sessions close `server.requestTimeout` seconds later. Keep-alive connections stay open. SIGTERM stops
accepting, answers the requests in the pool, then exits.
Metrics: the supervisor put PROMETHEUS_MULTIPROC_DIR in this process's environment.
TLS: optional client certificates (the credential of renew, rekey and revoke over mTLS) and a context that
picks up the renewed server certificate (serving/tls.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
from pathlib import Path

import falcon
import uvloop

from appliance.api import create_app
from appliance.config import CAConfig, load_config
from appliance.errors import CAError
from appliance.ra.authority import Authority
from appliance.serving import logs
from appliance.serving.http_server import HTTPServer, Limits
from appliance.serving.tls import ServerContext
from appliance.store import StoreError

log = logging.getLogger("hsmca.https")


def limits(config: CAConfig, max_body: int) -> Limits:
    """ca.json's `server` limits, for either listener."""
    s = config.server
    return Limits(handshake_timeout=s.handshakeTimeout, header_timeout=s.headerTimeout, body_timeout=s.bodyTimeout,
                  idle_timeout=s.keepAlive, write_timeout=s.writeTimeout, max_connections=s.maxConnections,
                  max_per_address=s.maxConnectionsPerAddress, max_body=max_body)


def build(config_path: Path) -> tuple[CAConfig, Authority, falcon.App]:
    config = load_config(config_path)
    config.apply_kms_environment()
    authority = Authority.from_config(config)
    try:
        _ = authority.issuer  # open the KMS key now, in the worker: the first request is not slower
    except (CAError, StoreError) as exc:
        log.error("worker started without its signing key: %s", getattr(exc, "message", exc))
    return config, authority, create_app(authority)


class Worker:
    """The server and the configuration it serves; `reload` swaps the latter."""

    def __init__(self, config_path: Path, sock: socket.socket, cert: Path, key: Path):
        self.config_path = config_path
        self.config, self.authority, app = build(config_path)
        context = ServerContext(cert, key, self.config.resolve(self.config.root), self.config.tls)
        self.server = HTTPServer(app, sock=sock, threads=self.config.server.threads, tls=context.get,
                                 limits=limits(self.config, self.config.server.maxRequestBytes), name="https",
                                 log_access=True)
        self.reloading = False
        self.retired: list[Authority] = []  # replaced by a reload, closed once their requests are done

    def close(self) -> None:
        """Close every authority (each seals its audit stream with a checkpoint), the retired ones first."""
        for authority in [*self.retired, self.authority]:
            authority.close()
        self.retired.clear()

    def _retire(self, old: Authority) -> None:
        if old in self.retired:
            self.retired.remove(old)
            old.close()

    async def reload(self) -> None:
        if self.reloading:
            return
        self.reloading = True
        loop = asyncio.get_running_loop()
        try:
            config, authority, app = await loop.run_in_executor(None, build, self.config_path)
        except Exception as exc:  # noqa: BLE001 (any failure keeps the running configuration)
            log.error("SIGHUP: ca.json not reloaded, the running configuration stays: %s", exc)
            return
        finally:
            self.reloading = False
        old = self.authority
        self.config, self.authority, self.server.app = config, authority, app
        self.retired.append(old)
        log.info("SIGHUP: ca.json reloaded")
        loop.call_later(config.server.requestTimeout, lambda: loop.run_in_executor(None, self._retire, old))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        await self.server.start()
        log.info("HTTPS worker serving")
        await stop.wait()
        await self.server.shutdown(max(1.0, self.config.server.gracefulTimeout - 2.0))  # before the supervisor kills


def main() -> None:
    parser = argparse.ArgumentParser(description="hsmca HTTPS worker (started by `hsmca serve`)")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--fd", type=int, required=True, help="the listening socket, opened by the supervisor")
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    args = parser.parse_args()
    logs.setup()
    sock = socket.socket(fileno=args.fd)
    sock.setblocking(False)
    worker = Worker(args.config, sock, args.cert, args.key)
    try:
        uvloop.run(worker.run())
    finally:
        worker.close()


if __name__ == "__main__":
    main()
