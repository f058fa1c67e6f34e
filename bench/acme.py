"""Full ACME orders per second: new order → authorization → http-01 → poll → finalize → download.

Creates a throwaway CA (own $HSMCA_PATH and SoftHSM token), adds an ACME provisioner that validates
http-01 on a loopback port and resolves names through a loopback DNS server (tests/integration/
acme_dns.py: every name under acme-bench.test is 127.0.0.1), and starts `hsmca serve`. This process
then answers the validator's http-01 requests statelessly: a name `o<i>-<account>.acme-bench.test`
tells it whose account thumbprint completes the token's key authorization, so clients need no IPC
during the run.

Each concurrency level runs C client processes (hsmca's own small client on certbot's `acme` library:
ClientV2 and ClientNetwork, ES256 account keys via josepy). Before the clock each registers its account,
builds its CSRs and completes one untimed order (warming the server's workers); then all start at once.
Clients poll authorizations and orders every 20 → 200 ms rather than the 1 s that real clients (and
the library's own poll helpers) sleep, so latency is the server's, not a client's nap.

Prints orders/s, p50/p99 latency per order, server CPU per order (all server processes, from /proc),
client CPU per order, and errors.

    .venv/bin/python bench/acme.py --count 50 --concurrency 1,4
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# This file is named like the PyPI package it uses: keep bench/ off the path until `acme` is imported.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import josepy as jose  # noqa: E402
import requests  # noqa: E402
from acme import challenges, client, crypto_util, messages  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

sys.path[:0] = [str(ROOT), str(HERE)]
from common import cpu_seconds, machine_busy, pct, process_tree, start_ca  # noqa: E402

SUFFIX = "acme-bench.test"
PROVISIONER = "bench"
ORDER_DEADLINE = 60.0  # seconds one order may take before it counts as an error


# -- the CA ---------------------------------------------------------------------------------------


def start_hsmca(base: Path, workers: int, http01_port: int, resolver: str) -> tuple[subprocess.Popen[bytes], str]:
    """`hsmca init` + an ACME provisioner for SUFFIX + `hsmca serve`; returns the process and HTTPS URL."""
    def edit(data: dict[str, Any]) -> None:
        data.setdefault("server", {})["housekeepingInterval"] = "24h"  # no CRL/OCSP work inside the timed runs
        data["authority"]["provisioners"].append({
            "type": "ACME", "name": PROVISIONER, "challenges": ["http-01"], "http01Port": http01_port,
            "resolvers": [resolver], "validationTimeout": 10,
            "policy": {"x509": {"allow": {"dns": [f"*.{SUFFIX}"]}}}})

    proc, url, _, _ = start_ca(base, workers, ["--kty", "EC"], edit)
    return proc, url


# -- the http-01 responder ------------------------------------------------------------------------


class Responder:
    """Serves token + "." + thumbprint for the account named in the Host's first label (`o<i>-<account>`)."""

    def __init__(self) -> None:
        self.thumbprints: dict[str, str] = {}
        thumbprints = self.thumbprints

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                host = (self.headers.get("Host") or "").split(":")[0]
                account = host.split(".", 1)[0].partition("-")[2]
                token = self.path.rsplit("/", 1)[-1]
                thumb = thumbprints.get(account)
                body = f"{token}.{thumb}".encode() if thumb and self.path.startswith(
                    "/.well-known/acme-challenge/") else b""
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, name="http-01", daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- the client -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cpu: float = 0.0  # the client process's own CPU seconds during the timed orders
    requests: int = 0  # HTTP requests the timed orders made (nonces, polls and downloads included)


class Client:
    """One ACME account and the few calls an order needs, with fast polling."""

    def __init__(self, directory_url: str, root: str) -> None:
        self.key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        net = client.ClientNetwork(self.key, alg=jose.ES256, verify_ssl=root,  # type: ignore[arg-type]
                                   user_agent="hsmca-bench")
        self.requests = 0
        net.session.hooks["response"].append(self._count)
        self.acme = client.ClientV2(client.ClientV2.get_directory(directory_url, net), net)
        self.acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))

    def _count(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.requests += 1

    @property
    def thumbprint(self) -> str:
        return jose.b64encode(self.key.thumbprint()).decode()

    def post_as_get(self, url: str) -> requests.Response:
        return self.acme.net.post(url, None, new_nonce_url=self.acme.directory["newNonce"])

    def order(self, csr_pem: bytes) -> str:
        """One full order; returns the PEM chain."""
        deadline = time.monotonic() + ORDER_DEADLINE
        orderr = self.acme.new_order(csr_pem)  # also fetches the authorizations
        for authzr in orderr.authorizations:
            chall = next(c for c in authzr.body.challenges if isinstance(c.chall, challenges.HTTP01))
            self.acme.answer_challenge(chall, chall.response(self.key))
        for authzr in orderr.authorizations:
            status = wait_while(lambda a=authzr: self.acme.poll(a)[0].body.status, messages.STATUS_PENDING, deadline)
            if status != messages.STATUS_VALID:
                raise RuntimeError(f"authorization {authzr.uri} is {status}")
        orderr = self.acme.begin_finalization(orderr)
        body = orderr.body
        if body.status != messages.STATUS_VALID:
            def order_status() -> messages.Status:
                nonlocal body
                body = messages.Order.from_json(self.post_as_get(orderr.uri or "").json())
                return body.status

            wait_while(order_status, messages.STATUS_PROCESSING, deadline)
        if body.status != messages.STATUS_VALID or body.certificate is None:
            raise RuntimeError(f"order {orderr.uri} is {body.status}: {body.error}")
        pem = self.post_as_get(body.certificate).text
        if pem.count("BEGIN CERTIFICATE") < 2:
            raise RuntimeError(f"certificate download returned no chain: {pem[:200]!r}")
        return pem


def wait_while(status: Any, busy: messages.Status, deadline: float) -> messages.Status:
    """Poll `status()` until it is no longer `busy`, sleeping 20 ms doubling to 200 ms."""
    pause = 0.02
    while True:
        now = status()
        if now != busy:
            return now
        if time.monotonic() > deadline:
            raise TimeoutError(f"still {busy} after {ORDER_DEADLINE}s")
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def csr_for(name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return crypto_util.make_csr(key, [name])


def client_process(account: str, indices: list[int], directory_url: str, root: str,
                   ready: Any, warm: Any, go: Any, results: Any) -> None:
    """Set up (account, CSRs, one warm-up order), report ready, wait for the start, run, report."""
    outcome = Outcome()
    try:
        c = Client(directory_url, root)
        csrs = [csr_for(f"o{i}-{account}.{SUFFIX}") for i in indices]
        ready.put((account, c.thumbprint))
        warm.wait()
        c.order(csr_for(f"warm-{account}.{SUFFIX}"))
    except Exception as e:  # noqa: BLE001 (the report says what went wrong)
        ready.put((account, None))
        results.put((account, Outcome(errors=[f"set-up: {type(e).__name__}: {e}"])))
        return
    ready.put((account, "warm"))
    go.wait()
    cpu0, requests0 = time.process_time(), c.requests
    for csr in csrs:
        t0 = time.monotonic()
        try:
            c.order(csr)
            outcome.latencies.append(time.monotonic() - t0)
        except Exception as e:  # noqa: BLE001 (counted and shown, not fatal)
            outcome.errors.append(f"{type(e).__name__}: {e}")
    outcome.cpu = time.process_time() - cpu0
    outcome.requests = c.requests - requests0
    results.put((account, outcome))


def run_level(level: int, concurrency: int, count: int, directory_url: str, root: str, responder: Responder,
              server_pid: int) -> tuple[float, Outcome, float, float]:
    """`count` orders over `concurrency` processes; returns (elapsed s, outcome, server CPU s, machine busy %)."""
    ctx = multiprocessing.get_context("spawn")  # this process runs server threads: no fork
    ready, results = ctx.Queue(), ctx.Queue()
    warm, go = ctx.Event(), ctx.Event()
    accounts = [f"l{level}c{k}" for k in range(concurrency)]
    procs = [ctx.Process(target=client_process, args=(a, list(range(k, count, concurrency)), directory_url, root,
                                                      ready, warm, go, results), daemon=True)
             for k, a in enumerate(accounts)]
    for p in procs:
        p.start()
    merged = Outcome()
    try:
        live = set(accounts)
        for _ in accounts:  # thumbprints first, so that the warm-up orders validate
            account, thumb = ready.get(timeout=120)
            if thumb is None:
                live.discard(account)
            else:
                responder.thumbprints[account] = thumb
        warm.set()
        for _ in list(live):  # warm-up orders done
            account, state = ready.get(timeout=120)
            if state is None:
                live.discard(account)
        pids = process_tree(server_pid)
        cpu0, busy0 = cpu_seconds(pids), machine_busy()
        t0 = time.monotonic()
        go.set()
        for _ in accounts:
            _account, outcome = results.get(timeout=ORDER_DEADLINE * count + 120)
            merged.latencies += outcome.latencies
            merged.errors += outcome.errors
            merged.cpu += outcome.cpu
            merged.requests += outcome.requests
        elapsed = time.monotonic() - t0
        server_cpu = cpu_seconds(process_tree(server_pid)) - cpu0
        busy1 = machine_busy()
        busy = 100.0 * (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return elapsed, merged, server_cpu, busy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=50, help="orders per concurrency level")
    ap.add_argument("--concurrency", default="1,4,8", help="comma-separated client process counts")
    ap.add_argument("--workers", type=int, default=2, help="HTTPS worker processes")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    from tests.integration.acme_dns import AcmeDNS  # the tests' loopback DNS server (dnslib)

    with tempfile.TemporaryDirectory(prefix="hsmca-bench-acme-") as tmp, AcmeDNS(suffixes=(SUFFIX,)) as dns:
        base = Path(tmp)
        responder = Responder()
        proc, url = start_hsmca(base, args.workers, responder.port, dns.address)
        root = str(base / "certs" / "root_ca.crt")
        directory_url = f"{url}/acme/{PROVISIONER}/directory"
        try:
            print(f"hsmca ACME benchmark: {args.workers} HTTPS workers, EC P-256 CA and leaf keys, one http-01 "
                  f"identifier per order, {os.cpu_count()} CPUs shared by clients and server")
            print(f"{'conc':>5} {'orders':>6} {'orders/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'req/order':>9} "
                  f"{'server CPU ms/order':>20} {'client CPU ms/order':>20} {'machine busy':>12} {'errors':>6}")
            all_errors: list[str] = []
            for level, c in enumerate(levels):
                elapsed, out, server_cpu, busy = run_level(level, c, args.count, directory_url, root, responder,
                                                           proc.pid)
                done = max(len(out.latencies), 1)
                lat = out.latencies or [0.0]
                print(f"{c:>5} {len(out.latencies):>6} {len(out.latencies) / elapsed:>9.2f} "
                      f"{pct(lat, 50) * 1000:>8.1f} {pct(lat, 99) * 1000:>8.1f} {out.requests / done:>9.1f} "
                      f"{server_cpu * 1000 / done:>20.1f} {out.cpu * 1000 / done:>20.1f} {busy:>11.0f}% "
                      f"{len(out.errors):>6}")
                all_errors += out.errors
            for e in sorted(set(all_errors))[:5]:
                print(f"error: {e}")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            responder.stop()


if __name__ == "__main__":
    main()
