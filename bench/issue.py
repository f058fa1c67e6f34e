"""Issuance throughput through the real HTTPS API, beside the raw SoftHSM signing rate.

Creates a throwaway CA (own $HSMCA_PATH and SoftHSM token), starts `hsmca serve`, mints every
token and CSR before the clock starts, then posts them to /sign with C concurrent clients
(keep-alive sessions). Prints certs/s, p50/p99 latency, the server's CPU time per certificate
(all its processes, from /proc) and peak RSS, then — the baseline in the same run — the rate at
which the intermediate key signs digests in SoftHSM with nothing else around it.

    .venv/bin/python bench/issue.py --count 500 --concurrency 1,8 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.certutil import fingerprint, load_certificates  # noqa: E402
from appliance.client.http import CAClient  # noqa: E402
from appliance.client.keys import build_csr  # noqa: E402
from appliance.client.tokens import provisioner_key, sign_token  # noqa: E402

HSMCA = [str(Path(sys.executable).parent / "hsmca")]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc (no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError):
            pass
    return total / CLK_TCK


def peak_rss_mib(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def start_ca(base: Path, workers: int, kty: list[str], edit: Callable[[dict[str, Any]], None] | None = None,
             ) -> tuple[subprocess.Popen[bytes], str, int, int]:
    """`hsmca init` in `base` (its own SoftHSM token), `edit` applied to ca.json, then `hsmca serve` on free
    loopback ports; returns the process, the HTTPS URL, and the HTTPS and plain-HTTP ports once both answer."""
    env = {**os.environ, "HSMCA_PATH": str(base), "HSMCA_LOG_LEVEL": "WARNING"}
    env.pop("SOFTHSM2_CONF", None)
    pw = base / "pw"
    pw.write_text("bench-password\n")
    subprocess.run([*HSMCA, "init", "--password-file", str(pw), *kty], env=env, check=True,
                   cwd=ROOT, stdout=subprocess.DEVNULL)
    if edit is not None:
        config = base / "config" / "ca.json"
        data = json.loads(config.read_text())
        edit(data)
        config.write_text(json.dumps(data, indent=2))
    port, http_port = free_port(), free_port()
    proc = subprocess.Popen([*HSMCA, "serve", "--address", f"127.0.0.1:{port}", "--http-address",
                             f"127.0.0.1:{http_port}", "--workers", str(workers)], env=env, cwd=ROOT,
                            stdout=open(base / "serve.out", "wb"), stderr=open(base / "serve.log", "wb"))
    url = f"https://localhost:{port}"
    root = base / "certs" / "root_ca.crt"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        try:
            if requests.get(f"{url}/health", verify=str(root), timeout=2).ok and \
                    requests.get(f"http://127.0.0.1:{http_port}/health", timeout=2).ok:
                return proc, url, port, http_port
        except requests.RequestException:
            time.sleep(0.2)
    raise SystemExit(f"the CA did not start:\n{(base / 'serve.log').read_text(errors='replace')[-3000:]}")


def prepare(url: str, root: Path, count: int) -> list[dict[str, str]]:
    client = CAClient(url, root)
    kid, key = provisioner_key(client, "admin", b"bench-password", None)
    fp = fingerprint(load_certificates(root)[0])
    bodies = []
    for i in range(count):
        name = f"svc-{i}.bench.internal"
        leaf = ec.generate_private_key(ec.SECP256R1())
        csr = build_csr(leaf, name, [name])
        ott = sign_token(key, kid, "admin", name, [name], f"{url}/1.0/sign", fp)
        bodies.append({"csr": csr.public_bytes(Encoding.PEM).decode(), "ott": ott})
    return bodies


def run_load(url: str, root: Path, bodies: list[dict[str, str]], concurrency: int) -> tuple[float, list[float], int]:
    local = threading.local()
    errors = 0
    lock = threading.Lock()

    def one(body: dict[str, str]) -> float:
        nonlocal errors
        s = getattr(local, "s", None)
        if s is None:
            s = local.s = requests.Session()
        t0 = time.perf_counter()
        r = s.post(f"{url}/1.0/sign", json=body, timeout=60, verify=str(root))
        dt = time.perf_counter() - t0
        if r.status_code != 201:
            with lock:
                errors += 1
        return dt

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, bodies))
    return time.perf_counter() - t0, latencies, errors


def raw_hsm_rate(base: Path, seconds: float) -> tuple[float, str]:
    """Sign SHA-256 digests with the intermediate key in-process: the HSM's ceiling."""
    code = f"""
import os, time, json
os.environ['HSMCA_PATH'] = {str(base)!r}
from appliance.config import load_config
from kms import open_key
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
cfg = load_config(None); cfg.apply_kms_environment()
key = open_key(cfg.key_uri())
data = b'x' * 700
sign = (lambda: key.sign(data, ec.ECDSA(hashes.SHA256()))) if isinstance(key, ec.EllipticCurvePrivateKey) \
    else (lambda: key.sign(data, padding.PKCS1v15(), hashes.SHA256()))
sign(); n = 0; t0 = time.perf_counter()
while time.perf_counter() - t0 < {seconds}:
    sign(); n += 1
print(json.dumps({{'rate': n / (time.perf_counter() - t0), 'key': type(key).__name__}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "HSMCA_PATH": str(base)}, check=True)
    import json

    data = json.loads(out.stdout.strip().splitlines()[-1])
    return data["rate"], data["key"]


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=400, help="certificates per concurrency level")
    ap.add_argument("--concurrency", default="1,8", help="comma-separated client concurrency levels")
    ap.add_argument("--workers", type=int, default=2, help="HTTPS worker processes")
    ap.add_argument("--kty", default="EC", choices=["EC", "RSA"], help="CA key type (EC P-256 or RSA 2048)")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    kty = ["--kty", "RSA", "--size", "2048"] if args.kty == "RSA" else ["--kty", "EC"]

    with tempfile.TemporaryDirectory(prefix="hsmca-bench-") as tmp:
        base = Path(tmp)
        proc, url, _, _ = start_ca(base, args.workers, kty)
        root = base / "certs" / "root_ca.crt"
        try:
            print(f"hsmca issuance benchmark: {args.workers} HTTPS workers, CA key {args.kty}, "
                  f"EC P-256 leaf keys, {os.cpu_count()} CPUs (clients share them)")
            print(f"{'conc':>5} {'certs':>6} {'certs/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
                  f"{'server CPU ms/cert':>19} {'errors':>6}")
            run_load(url, root, prepare(url, root, 20), 2)  # warm the workers' sessions and keys
            for c in levels:
                bodies = prepare(url, root, args.count)
                pids = process_tree(proc.pid)
                cpu0 = cpu_seconds(pids)
                elapsed, lat, errors = run_load(url, root, bodies, c)
                cpu = cpu_seconds(process_tree(proc.pid)) - cpu0
                print(f"{c:>5} {len(bodies):>6} {len(bodies) / elapsed:>8.1f} {pct(lat, 50) * 1000:>8.1f} "
                      f"{pct(lat, 99) * 1000:>8.1f} {cpu * 1000 / len(bodies):>19.2f} {errors:>6}")
            print(f"server peak RSS (all processes): {peak_rss_mib(process_tree(proc.pid)):.0f} MiB")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        rate, kind = raw_hsm_rate(base, 3.0)
        print(f"baseline: raw SoftHSM signing with the intermediate key ({kind}), one process: "
              f"{rate:.0f} signatures/s ({1000 / rate:.3f} ms each)")


if __name__ == "__main__":
    main()
