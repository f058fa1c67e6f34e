"""Issuance through the real HTTPS API (`make bench`), beside what the serving layer and the HSM cost alone.

Creates a throwaway CA (own $HSMCA_PATH and SoftHSM token, intermediate key in SoftHSM, SQLite) and starts
`hsmca serve` with housekeeping parked (interval 24h), so no CRL/OCSP work lands inside a timed run. Then, in
one run:

1. issuance: the shared client `../shared/bench/loadsign.py` (the one step-ca was measured with: tokens and
   P-256 CSRs made before the clock, C worker processes, one keep-alive HTTPS connection each, server CPU
   summed over the supervisor's process tree) at each concurrency, with its JSON lines kept in the output and
   the ratio of the top level's certs/s to the first's. Without loadsign, the in-repo client (threads over
   requests sessions) runs instead, and the output says so;
2. the floor: keep-alive `GET /version` from C client processes over HTTPS for a few seconds: requests/s
   and server CPU per request — what any request costs before issuance does anything;
3. the server's peak RSS (sum of VmHWM over its processes);
4. the baseline: raw SoftHSM signatures/s with the intermediate key, one process, server stopped.

`--sustained SECONDS` then runs a second throwaway CA with housekeeping at its default interval (OCSP
pre-signing, CRLs and sweeps all run inside `hsmca serve`) under back-to-back c=8 load, printing per interval
certs/s, server CPU per certificate (whole process tree, housekeeping and idle gaps included) and memory,
and the ratio of the sustained CPU per certificate to the short run's.

    .venv/bin/python bench/issue.py --count 200               # while developing
    make bench                                                # full run
    make bench BENCH_ARGS='--sustained 600'                   # plus ten minutes of sustained load
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import resource
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    CLK_TCK,
    ROOT,
    cpu_seconds,
    machine_busy,
    pct,
    peak_rss_mib,
    prepare,
    process_tree,
    pss_mib,
    rss_mib,
    run_load,
    start_ca,
    tree_cpu,
)

DEFAULT_LOADSIGN = ROOT.parent / "shared" / "bench" / "loadsign.py"
PARKED = "24h"  # housekeeping interval for the short runs


@dataclass
class Target:
    """One running throwaway CA and how to load it."""

    base: Path
    proc: subprocess.Popen[bytes]
    url: str
    loadsign: Path | None  # None: the in-repo client

    @property
    def root(self) -> Path:
        return self.base / "certs" / "root_ca.crt"


# -- issuance -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """CPU counters at one instant: the server's process tree, this bench with its reaped children (the
    client), and the whole machine, which is shared with other people's work."""

    server: float
    client: float
    busy: int
    total: int

    @classmethod
    def take(cls, pid: int | None) -> Snapshot:
        own = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                     resource.getrusage(resource.RUSAGE_CHILDREN)))
        return cls(tree_cpu(pid) if pid is not None else 0.0, own, *machine_busy())

    def others(self, later: Snapshot) -> float:
        """Share of all CPUs used since self by neither the server nor this bench and its clients."""
        busy, total = (later.busy - self.busy) / CLK_TCK, (later.total - self.total) / CLK_TCK
        ours = later.server - self.server + later.client - self.client
        return max(0.0, busy - ours) / total if total > 0 else 0.0


def issue(t: Target, n: int, c: int, label: str) -> dict[str, Any]:
    """One loadsign run (or the in-repo client's) of n certificates at concurrency c.

    Returns loadsign's fields (certs_per_s, p50_ms, p99_ms, errors, server_cpu_ms_per_cert), `wall` (seconds
    under load), `others` (share of all CPUs used by neither the server nor the client: the machine is shared)
    and `line` (loadsign's JSON line as printed, for notes; None for the in-repo client).
    """
    if t.loadsign is None:
        bodies = prepare(t.url, t.root, n)
        s0 = Snapshot.take(t.proc.pid)
        wall, lat, errors = run_load(t.url, t.root, bodies, c)
        s1 = Snapshot.take(t.proc.pid)
        return {"label": label, "n": n, "c": c, "errors": errors, "certs_per_s": (n - errors) / wall,
                "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000,
                "server_cpu_ms_per_cert": (s1.server - s0.server) * 1000 / max(n - errors, 1), "wall": wall,
                "line": None, "others": s0.others(s1)}
    s0 = Snapshot.take(t.proc.pid)
    out = subprocess.run([sys.executable, str(t.loadsign), "--ca-url", t.url, "--root", str(t.root),
                          "--provisioner", "admin", "--password-file", str(t.base / "pw"), "-n", str(n),
                          "-c", str(c), "--server-pid", str(t.proc.pid), "--label", label],
                         capture_output=True, text=True, timeout=3600)
    s1 = Snapshot.take(t.proc.pid)
    if out.returncode != 0:
        raise SystemExit(f"loadsign failed ({out.returncode}):\n{out.stderr[-3000:]}")
    line = out.stdout.strip().splitlines()[-1]
    r: dict[str, Any] = json.loads(line)
    ok = max(r["n"] - r["errors"], 1)
    r["wall"] = ok / r["certs_per_s"] if r["certs_per_s"] else float("inf")
    r["line"] = line
    r["others"] = s0.others(s1)
    # Cross-check loadsign's CPU figure against this bench's /proc sum over the same subprocess (its clock
    # starts before its worker pool, so the two windows nearly match): loadsign finds children through
    # /proc/PID/task/PID/children, which misses processes that a server's thread (not its main one) made.
    window = s1.server - s0.server
    mine, theirs = window * 1000 / ok, r.get("server_cpu_ms_per_cert")
    if theirs is not None and window > 0.5 and abs(theirs - mine) > 0.2 * mine:
        print(f"  note: loadsign counts {theirs:.2f} ms server CPU/cert, this bench's /proc sum over the "
              f"server's whole process tree {mine:.2f}: one of them misses processes")
    return r


def issuance_table(t: Target, count: int, levels: list[int]) -> list[dict[str, Any]]:
    print(f"{'conc':>5} {'certs':>6} {'certs/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'server CPU ms/cert':>19} "
          f"{'errors':>6} {'others':>6}")
    rows = []
    for c in levels:
        r = issue(t, count, c, f"hsmca c={c}")
        rows.append(r)
        print(f"{c:>5} {r['n']:>6} {r['certs_per_s']:>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
              f"{r.get('server_cpu_ms_per_cert') or float('nan'):>19.2f} {r['errors']:>6} {r['others']:>6.0%}")
    print("(others: share of all CPUs used by neither this server nor this client during the run)")
    if len(rows) > 1 and rows[0]["certs_per_s"]:
        print(f"c={levels[-1]} / c={levels[0]} certs/s: {rows[-1]['certs_per_s'] / rows[0]['certs_per_s']:.2f}x")
    lines = [r["line"] for r in rows if r["line"]]
    if lines:
        print("loadsign JSON lines:")
        for line in lines:
            print(line)
    return rows


# -- the floor: a trivial request over the same HTTPS listener ------------------------------------


def floor_client(host: str, port: int, cafile: str, path: str, start: float, end: float) -> tuple[list[float], int]:
    """One client process: connect and warm up before `start`, then GET path over one keep-alive connection
    until `end`; returns the latencies of the requests begun in [start, end) and the errors."""
    ctx = ssl.create_default_context(cafile=cafile)
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=30)
    lat: list[float] = []
    errors = 0

    def get() -> bool:
        nonlocal conn
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            return r.status == 200
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=30)
            return False

    get()  # the TLS handshake happens outside the window
    while time.time() < start:
        time.sleep(0.001)
    while True:
        t0 = time.perf_counter()
        if time.time() >= end:
            break
        ok = get()
        lat.append(time.perf_counter() - t0)
        errors += not ok
    conn.close()
    return lat, errors


def floor(t: Target, clients: int, seconds: float, path: str = "/version") -> dict[str, float]:
    """C processes (not threads: the client's GIL must not be the limit) for `seconds`; server CPU from /proc
    over exactly that window."""
    port = int(t.url.rsplit(":", 1)[1])
    start = time.time() + 2.0  # every process forked, connected and warm by then
    end = start + seconds
    # fork: no thread is alive here, and spawn would re-import this bench in every process on shared cores.
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(clients) as pool:
        pending = pool.starmap_async(floor_client, [("localhost", port, str(t.root), path, start, end)] * clients)
        time.sleep(max(0.0, start - time.time()))
        cpu0 = tree_cpu(t.proc.pid)
        time.sleep(max(0.0, end - time.time()))
        cpu = tree_cpu(t.proc.pid) - cpu0
        results = pending.get(timeout=seconds + 120)
    lat = sorted(x for ls, _ in results for x in ls)
    errors = sum(e for _, e in results)
    n = max(len(lat), 1)
    return {"req_per_s": (len(lat) - errors) / seconds, "p50_ms": pct(lat or [0.0], 50) * 1000,
            "p99_ms": pct(lat or [0.0], 99) * 1000, "cpu_ms_per_req": cpu * 1000 / n, "errors": errors,
            "requests": len(lat)}


# -- the HSM alone --------------------------------------------------------------------------------


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
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return data["rate"], data["key"]


# -- sustained load with housekeeping -------------------------------------------------------------


def housekeeping_cpu(pid: int) -> float | None:
    """CPU of the server's housekeeping process (found by its command line), None if there is none."""
    pids = [p for p in process_tree(pid) if b"housekeeping" in _cmdline(p)]
    return cpu_seconds(pids) if pids else None


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def sustained(t: Target, seconds: float, interval: float, batch: int, short_cpu: float | None,
              short_rate: float | None) -> None:
    """Back-to-back c=8 runs for `seconds`, one row per `interval` (closed at the first run end past it).

    certs/s is over the time under load; CPU per certificate is all the server's CPU in the interval (the
    gaps while the client makes its next tokens and CSRs included: housekeeping works then too) over the
    certificates it issued, and the housekeeping process's share of it is shown on its own.
    """
    print(f"{'t s':>6} {'certs':>7} {'certs/s':>8} {'p99 ms':>8} {'server CPU ms/cert':>19} {'of it hk':>8} "
          f"{'RSS MiB':>8} {'PSS MiB':>8} {'procs':>5} {'errors':>6} {'others':>6}")
    t_start = time.monotonic()
    total_cpu = total_certs = total_wall = 0.0
    lines: list[str] = []
    while time.monotonic() - t_start < seconds:
        i_start, s0, hk0 = time.monotonic(), Snapshot.take(t.proc.pid), housekeeping_cpu(t.proc.pid)
        certs = wall = 0.0
        errors = 0
        p99s: list[float] = []
        while time.monotonic() - i_start < interval and time.monotonic() - t_start < seconds:
            r = issue(t, batch, 8, f"hsmca sustained t={time.monotonic() - t_start:.0f}s")
            certs += r["n"] - r["errors"]
            errors += r["errors"]
            wall += r["wall"]
            p99s.append(r["p99_ms"])
            if r["line"]:
                lines.append(r["line"])
        s1, hk1 = Snapshot.take(t.proc.pid), housekeeping_cpu(t.proc.pid)
        cpu = s1.server - s0.server
        hk = f"{(hk1 - hk0) * 1000 / max(certs, 1):>8.2f}" if hk0 is not None and hk1 is not None else f"{'-':>8}"
        pids = process_tree(t.proc.pid)
        total_cpu, total_certs, total_wall = total_cpu + cpu, total_certs + certs, total_wall + wall
        print(f"{time.monotonic() - t_start:>6.0f} {certs:>7.0f} {certs / wall if wall else 0:>8.1f} "
              f"{max(p99s):>8.1f} {cpu * 1000 / max(certs, 1):>19.2f} {hk} {rss_mib(pids):>8.0f} "
              f"{pss_mib(pids):>8.0f} {len(pids):>5} {errors:>6} {s0.others(s1):>6.0%}", flush=True)
    cpu_per_cert = total_cpu * 1000 / max(total_certs, 1)
    rate = total_certs / total_wall if total_wall else 0.0
    print(f"sustained: {total_certs:.0f} certificates, {rate:.1f} certs/s under load, "
          f"{cpu_per_cert:.2f} ms server CPU/cert; peak RSS {peak_rss_mib(process_tree(t.proc.pid)):.0f} MiB")
    if short_cpu and short_rate:
        print(f"sustained / short run (c=8): server CPU per cert {cpu_per_cert / short_cpu:.2f}x, "
              f"certs/s {rate / short_rate:.2f}x")
    if lines:
        print("loadsign JSON lines (sustained):")
        for line in lines:
            print(line)


# -- main -----------------------------------------------------------------------------------------


def locate_loadsign(arg: str | None) -> Path | None:
    path = Path(arg or os.environ.get("LOADSIGN") or DEFAULT_LOADSIGN)
    if path.is_file():
        return path
    print(f"loadsign not found at {path} (--loadsign PATH or $LOADSIGN): using the in-repo client "
          f"(threads over requests sessions; its own GIL may cap c>1)")
    return None


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2000, help="certificates per concurrency level")
    ap.add_argument("--concurrency", default="1,8", help="comma-separated client concurrency levels")
    ap.add_argument("--workers", type=int, default=2, help="HTTPS worker processes (hsmca serve --workers)")
    ap.add_argument("--kty", default="EC", choices=["EC", "RSA"], help="CA key type (EC P-256 or RSA 2048)")
    ap.add_argument("--loadsign", help=f"path of loadsign.py (default $LOADSIGN or {DEFAULT_LOADSIGN})")
    ap.add_argument("--floor-seconds", type=float, default=4.0, help="length of the floor run (0: skip it)")
    ap.add_argument("--floor-clients", type=int, default=8, help="client processes of the floor run")
    ap.add_argument("--hsm-seconds", type=float, default=3.0, help="length of the raw SoftHSM signing run")
    ap.add_argument("--sustained", type=float, default=0.0, metavar="SECONDS",
                    help="then this long of back-to-back c=8 load with housekeeping running (e.g. 600)")
    ap.add_argument("--interval", type=float, default=60.0, help="seconds per row of the sustained run")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    kty = ["--kty", "RSA", "--size", "2048"] if args.kty == "RSA" else ["--kty", "EC"]
    loadsign = locate_loadsign(args.loadsign)

    def parked(data: dict[str, Any]) -> None:
        data.setdefault("server", {})["housekeepingInterval"] = PARKED

    print(f"hsmca serving benchmark: {args.workers} HTTPS workers, CA key {args.kty} in SoftHSM, SQLite, EC P-256 "
          f"leaf keys, {os.cpu_count()} CPUs shared by clients and server")
    print(f"client: {loadsign or 'in-repo (bench/common.py run_load)'}")
    with tempfile.TemporaryDirectory(prefix="hsmca-bench-") as tmp:
        base = Path(tmp) / "short"
        base.mkdir()
        proc, url, _, _ = start_ca(base, args.workers, kty, parked)
        t = Target(base, proc, url, loadsign)
        try:
            print(f"\nissuance, POST /1.0/sign, {args.count} certificates per level "
                  f"(housekeeping parked at {PARKED})")
            issue(t, 16 * args.workers, max(levels), "warm-up")  # every worker's HSM session and key handle
            rows = issuance_table(t, args.count, levels)
            if args.floor_seconds > 0:
                f = floor(t, args.floor_clients, args.floor_seconds)
                print(f"\nfloor, GET /version over HTTPS keep-alive, {args.floor_clients} client processes, "
                      f"{args.floor_seconds:.0f} s: {f['req_per_s']:.0f} requests/s, p50 {f['p50_ms']:.2f} ms, "
                      f"p99 {f['p99_ms']:.2f} ms, server CPU {f['cpu_ms_per_req']:.3f} ms/request, "
                      f"errors {f['errors']}")
                top = rows[-1].get("server_cpu_ms_per_cert")
                if top:
                    print(f"floor / issuance at c={levels[-1]}: {f['cpu_ms_per_req'] / top:.0%} of the server CPU "
                          f"per certificate")
            pids = process_tree(proc.pid)
            print(f"\nserver peak RSS: {peak_rss_mib(pids):.0f} MiB summed over its {len(pids)} processes "
                  f"(now: RSS {rss_mib(pids):.0f} MiB, PSS {pss_mib(pids):.0f} MiB)")
        finally:
            stop(proc)
        s0 = Snapshot.take(None)  # the server has stopped: the signing process (our child) and others
        rate, kind = raw_hsm_rate(base, args.hsm_seconds)
        print(f"baseline: raw SoftHSM signing with the intermediate key ({kind}), one process: "
              f"{rate:.0f} signatures/s ({1000 / rate:.3f} ms each); others took "
              f"{s0.others(Snapshot.take(None)):.0%} of the CPUs meanwhile")

        if args.sustained > 0:
            base = Path(tmp) / "sustained"
            base.mkdir()
            proc, url, _, _ = start_ca(base, args.workers, kty)  # housekeeping at its default interval
            t = Target(base, proc, url, loadsign)
            c8 = next((r for r in rows if r["c"] == 8), None)
            batch = max(200, int(10 * c8["certs_per_s"])) if c8 else args.count  # ~10 s under load per run
            try:
                print(f"\nsustained: {args.sustained:.0f} s of c=8 runs of {batch} certificates, fresh CA, "
                      f"housekeeping at its default interval, one row per ~{args.interval:.0f} s")
                issue(t, 16 * args.workers, 8, "warm-up")
                sustained(t, args.sustained, args.interval, batch,
                          c8.get("server_cpu_ms_per_cert") if c8 else None, c8["certs_per_s"] if c8 else None)
            finally:
                stop(proc)


if __name__ == "__main__":
    main()
