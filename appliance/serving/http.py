"""The plain-HTTP listener under waitress: CA certificates (and later OCSP/CRL) for relying parties."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path
from typing import Any

import waitress

from appliance.api import create_http_app
from appliance.authority import Authority
from appliance.config import load_config, split_address
from appliance.serving import logs

log = logging.getLogger("hsmca.http")


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description="hsmca plain-HTTP listener (started by `hsmca serve`)")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--address", required=True)
    args = parser.parse_args()
    logs.setup()
    config = load_config(args.config)
    host, port = split_address(args.address)
    app = create_http_app(Authority.from_config(config))
    server = waitress.create_server(app, host=host or "0.0.0.0", port=port, threads=4,
                                    channel_timeout=30, max_request_body_size=64 * 1024,
                                    ident="hsmca", clear_untrusted_proxy_headers=True)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log.info("plain HTTP listening on %s:%s", host or "0.0.0.0", port)
    try:
        server.run()
    finally:
        server.close()


if __name__ == "__main__":
    main()
