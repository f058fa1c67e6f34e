"""What every serving benchmark needs: a throwaway CA under `hsmca serve`, its process tree's CPU and memory
from /proc, and the in-repo issuance client.

One module, so that issue.py, ocsp.py, kms.py and acme.py measure the server the same way. The server is
reached only through `hsmca serve`'s flags (--address, --http-address, --workers) and its public HTTP API,
so the numbers mean the same thing whatever serves HTTPS inside it.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
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
# The repository ahead of bench/ on the path: bench/kms.py must not stand in for the `kms` package.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p != str(ROOT)]

from appliance.certutil import fingerprint, load_certificates  # noqa: E402
from appliance.client.http import CAClient  # noqa: E402
from appliance.client.keys import build_csr  # noqa: E402
from appliance.client.tokens import provisioner_key, sign_token  # noqa: E402

HSMCA = str(Path(sys.executable).parent / "hsmca")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PASSWORD = "bench-password"  # the throwaway CA's provisioner password (file `base/pw`)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


# -- the server's processes, from /proc (no psutil) -----------------------------------------------


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants, found by parent pid: children made by any thread count too."""
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
    """User + system CPU of these processes, plus what their reaped children left in cutime/cstime.

    The reaped part matters: a worker that the server recycles (or a helper it forks) takes its CPU
    with it when it exits, and it shows up only in its parent's counters.
    """
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def tree_cpu(pid: int) -> float:
    return cpu_seconds(process_tree(pid))


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat: the machine is shared, so say how full it was."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _status_kib(pids: list[int], field: str) -> int:
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field):
                    total += int(line.split()[1])
                    break
        except (OSError, IndexError, ValueError):
            pass
    return total


def peak_rss_mib(pids: list[int]) -> float:
    """Sum of each process's peak RSS (VmHWM); pages shared between forked workers count once per process."""
    return _status_kib(pids, "VmHWM:") / 1024


def rss_mib(pids: list[int]) -> float:
    """Sum of current RSS (VmRSS), shared pages counted in every process that maps them."""
    return _status_kib(pids, "VmRSS:") / 1024


def pss_mib(pids: list[int]) -> float:
    """Sum of proportional set sizes: shared pages split between their sharers, so the sum is what the
    server really holds (RSS sums overstate forked workers)."""
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except (OSError, IndexError, ValueError):
            pass
    return total / 1024


# -- a throwaway CA -------------------------------------------------------------------------------


def ca_env(base: Path) -> dict[str, str]:
    """The environment of `hsmca` commands for the CA in `base` (its own $HSMCA_PATH and SoftHSM config)."""
    env = {**os.environ, "HSMCA_PATH": str(base), "HSMCA_LOG_LEVEL": "WARNING"}
    env.pop("SOFTHSM2_CONF", None)
    return env


def serve(base: Path, env: dict[str, str], workers: int, wait: float = 60.0,
          ) -> tuple[subprocess.Popen[bytes], str, int, int]:
    """`hsmca serve` on free loopback ports; returns the supervisor process, the HTTPS URL, and the HTTPS and
    plain-HTTP ports once both answer /health."""
    port, http_port = free_port(), free_port()
    proc = subprocess.Popen([HSMCA, "serve", "--address", f"127.0.0.1:{port}", "--http-address",
                             f"127.0.0.1:{http_port}", "--workers", str(workers)], env=env, cwd=ROOT,
                            stdout=(base / "serve.out").open("wb"), stderr=(base / "serve.log").open("wb"))
    url = f"https://localhost:{port}"
    root = base / "certs" / "root_ca.crt"
    deadline = time.time() + wait
    while time.time() < deadline and proc.poll() is None:
        try:
            if requests.get(f"{url}/health", verify=str(root), timeout=2).ok and \
                    requests.get(f"http://127.0.0.1:{http_port}/health", timeout=2).ok:
                return proc, url, port, http_port
        except requests.RequestException:
            pass
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise SystemExit(f"the CA did not start:\n{(base / 'serve.log').read_text(errors='replace')[-3000:]}")


def start_ca(base: Path, workers: int, kty: list[str], edit: Callable[[dict[str, Any]], None] | None = None,
             ) -> tuple[subprocess.Popen[bytes], str, int, int]:
    """`hsmca init` in `base` (its own SoftHSM token, provisioner `admin` with password file `base/pw`), `edit`
    applied to ca.json, then `serve`."""
    env = ca_env(base)
    pw = base / "pw"
    pw.write_text(PASSWORD + "\n")
    init = subprocess.run([HSMCA, "init", "--password-file", str(pw), *kty], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    if init.returncode != 0:  # its warnings (e.g. the loopback public URL) are noise for a throwaway CA
        raise SystemExit(f"hsmca init failed:\n{init.stdout}{init.stderr}")
    if edit is not None:
        config = base / "config" / "ca.json"
        data = json.loads(config.read_text())
        edit(data)
        config.write_text(json.dumps(data, indent=2))
    return serve(base, env, workers)


# -- the in-repo issuance client (threads over requests sessions) ---------------------------------


def prepare(url: str, root: Path, count: int) -> list[dict[str, str]]:
    """COUNT /1.0/sign bodies (P-256 CSR + one-time token of provisioner `admin`), made before any clock."""
    client = CAClient(url, root)
    kid, key = provisioner_key(client, "admin", PASSWORD.encode(), None)
    fp = fingerprint(load_certificates(root)[0])
    bodies = []
    for i in range(count):
        name = f"svc-{i}-{os.urandom(3).hex()}.bench.internal"
        leaf = ec.generate_private_key(ec.SECP256R1())
        csr = build_csr(leaf, name, [name])
        ott = sign_token(key, kid, "admin", name, [name], f"{url}/1.0/sign", fp)
        bodies.append({"csr": csr.public_bytes(Encoding.PEM).decode(), "ott": ott})
    return bodies


def run_load(url: str, root: Path, bodies: list[dict[str, str]], concurrency: int) -> tuple[float, list[float], int]:
    """POST every body with C threads (one keep-alive session each); returns (elapsed s, latencies, errors)."""
    local = threading.local()
    errors = 0
    lock = threading.Lock()

    def one(body: dict[str, str]) -> float:
        nonlocal errors
        s = getattr(local, "s", None)
        if s is None:
            s = local.s = requests.Session()
        t0 = time.perf_counter()
        try:
            ok = s.post(f"{url}/1.0/sign", json=body, timeout=60, verify=str(root)).status_code == 201
        except requests.RequestException:
            ok = False
        dt = time.perf_counter() - t0
        if not ok:
            with lock:
                errors += 1
        return dt

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, bodies))
    return time.perf_counter() - t0, latencies, errors
