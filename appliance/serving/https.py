"""The HTTPS API under gunicorn: each worker builds its own Authority after the fork.

Without `preload_app`, gunicorn calls `load()` in every worker after forking, so PKCS#11 is
initialised in the worker, never inherited across fork (SoftHSM does not survive that).
Metrics: the supervisor put PROMETHEUS_MULTIPROC_DIR in this process's environment, so each
worker writes its samples there; `child_exit` drops an exited worker's live gauges.
TLS: optional client certificates (the credential of renew, rekey and revoke over mTLS) and a
per-worker context that picks up the renewed server certificate (serving/tls.py).
"""

from __future__ import annotations

import argparse
import logging
import ssl
from pathlib import Path
from typing import Any

import falcon
from gunicorn.app.base import BaseApplication

from appliance import metrics
from appliance.api import create_app
from appliance.config import CAConfig, load_config, split_address
from appliance.errors import CAError
from appliance.ra.authority import Authority
from appliance.serving import logs
from appliance.serving.tls import ServerContext
from appliance.store import StoreError

log = logging.getLogger("hsmca.https")


def bind_address(address: str) -> str:
    host, port = split_address(address)
    if not host:
        host = "0.0.0.0"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HTTPSApplication(BaseApplication):
    def __init__(self, config_path: Path, options: dict[str, Any]):
        self.config_path = config_path
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:  # settings differ between gunicorn releases
                self.cfg.set(key, value)

    def load(self) -> falcon.App:
        config = load_config(self.config_path)
        authority = Authority.from_config(config)
        try:
            _ = authority.issuer  # open the KMS key now, in the worker: the first request is not slower
        except (CAError, StoreError) as exc:
            log.error("worker started without its signing key: %s", getattr(exc, "message", exc))
        return create_app(authority)


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn's hook, in the master, after a worker exited: its `hsmca_kms_backend_up` no longer counts."""
    metrics.mark_process_dead(worker.pid)


def gunicorn_options(config: CAConfig, *, address: str, workers: int, cert: Path, key: Path) -> dict[str, Any]:
    server = config.server
    tls = config.tls

    # One context per worker process, reloaded when housekeeping replaces the files (serving/tls.py).
    server_context = ServerContext(cert, key, config.resolve(config.root), tls)

    def ssl_context(conf: Any, default_factory: Any) -> ssl.SSLContext:
        return server_context.get()

    return {
        "bind": [bind_address(address)],
        "workers": workers,
        "worker_class": "gthread",
        "threads": server.threads,
        "timeout": server.requestTimeout,
        "graceful_timeout": server.gracefulTimeout,
        "keepalive": server.keepAlive,
        "certfile": str(cert),
        "keyfile": str(key),
        "ssl_context": ssl_context,
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": 16384,
        "accesslog": "-",
        "access_log_format": '%(h)s "%(r)s" %(s)s %(B)s %(M)sms rid=%({x-request-id}o)s',
        "errorlog": "-",
        "proc_name": "hsmca-https",
        "preload_app": False,
        "control_socket_disable": True,  # gunicorn >= 25 opens ~/.gunicorn/gunicorn.ctl otherwise
        "child_exit": child_exit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="hsmca HTTPS listener (started by `hsmca serve`)")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    args = parser.parse_args()
    logs.setup()
    config = load_config(args.config)
    config.apply_kms_environment()
    HTTPSApplication(args.config, gunicorn_options(
        config, address=args.address, workers=args.workers, cert=args.cert, key=args.key)).run()


if __name__ == "__main__":
    main()
