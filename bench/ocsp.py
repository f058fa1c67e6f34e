"""OCSP responses per second: hsmca's responder (plain-HTTP listener) beside OpenSSL's (`openssl ocsp -index`).

Creates a throwaway CA (own $HSMCA_PATH and SoftHSM token, EC P-256 intermediate), starts `hsmca serve`, issues
COUNT certificates through the API, and builds one SHA-1 CertID request per certificate before the clock starts.
Then, with C client processes (one keep-alive connection each, the same client code for both responders):

- hsmca, cache hit: every response signed and stored (by the miss round), so serving signs nothing;
- hsmca, cache miss: the cached rows deleted first, so every request signs through SoftHSM and stores its row
  (one pass over the certificates: a miss happens once per certificate and validity period);
- OpenSSL: `openssl ocsp -index index.txt -port N -rsigner -rkey -CA` with a software P-256 issuer of the same
  subject and an index.txt holding the same serials; it signs every response (it has no cache).

Both with POST and with GET (RFC 5019 URL form). Housekeeping's interval is set to a day, so no background
pre-signing runs during the measurements. The ratio printed is hsmca from cache over OpenSSL; measured, not
asserted (the goal is 10x).

    .venv/bin/python bench/ocsp.py --count 500 --seconds 5 --concurrency 8

`--housekeeping` measures instead what OCSP signing costs per issued certificate with `ocsp.presign` on and off
(see housekeeping_cost):

    .venv/bin/python bench/ocsp.py --housekeeping --count 400
"""

from __future__ import annotations

import argparse
import base64
import datetime
import http.client
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import cpu_seconds, free_port, pct, prepare, process_tree, run_load, start_ca  # noqa: E402

from appliance.certutil import load_certificates  # noqa: E402
from appliance.status.stamp import bump, stamp_path  # noqa: E402
from appliance.store import Store  # noqa: E402
from appliance.store.schema import ocsp_responses  # noqa: E402

Request = tuple[str, str, bytes]  # method, path, body


# -- the client: C processes, one persistent connection each ---------------------------------------
# Raw sockets with each request pre-encoded: http.client costs ~100 us of CPU per request, which on two
# shared cores would measure the client instead of the responders. The same client runs against both.


def _encode(method: str, path: str, body: bytes) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if body:
        head += f"Content-Type: application/ocsp-request\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def _exchange(sock: socket.socket, request: bytes) -> tuple[int, bytes, bool]:
    """Send one request, read one response: (status, body, server closes). Byte searches only: the client's
    cost per request is part of what both responders are measured through."""
    sock.sendall(request)
    buf = sock.recv(65536)
    while (end := buf.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response headers")
        buf += chunk
    head = buf[:end]
    at = head.find(b"Content-Length: ")
    if at < 0:
        at = head.lower().find(b"content-length: ")
    length = int(head[at + 16:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None]) if at >= 0 else -1
    body = buf[end + 4:]
    while length < 0 or len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            if length < 0:
                break
            raise ConnectionError("closed in the middle of the body")
        body += chunk
    # OpenSSL's responder answers HTTP/1.0 and closes after every response.
    closes = head.startswith(b"HTTP/1.0") and b"eep-alive" not in head or b"onnection: close" in head or length < 0
    return int(head[9:12]), body, closes


def _successful(der: bytes, full: bool) -> bool:
    """responseStatus successful(0): the ENUMERATED right after the outer SEQUENCE header (a full parse for
    a sample: it costs more than the request)."""
    if full:
        return ocsp.load_der_ocsp_response(der).response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    return b"\x0a\x01\x00" in der[:8]


def _client(host: str, port: int, requests_: list[Request], seconds: float, out: multiprocessing.Queue,  # type: ignore[type-arg,unused-ignore]
            check: bool) -> None:
    encoded = [_encode(*r) for r in requests_]
    cpu0 = time.process_time()
    sock: socket.socket | None = None
    latencies: list[float] = []
    errors = 0
    i = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        request = encoded[i % len(encoded)]
        i += 1
        t0 = time.perf_counter()
        try:
            if sock is None:
                sock = socket.create_connection((host, port), timeout=30)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            status, data, closes = _exchange(sock, request)
            if closes or status != 200:  # OpenSSL's responder closes after every response: reconnect
                sock.close()
                sock = None
            ok = status == 200 and (not check or _successful(data, full=i % 997 == 1))
        except (OSError, ValueError):
            if sock is not None:
                sock.close()
            sock = None
            ok = False
        latencies.append(time.perf_counter() - t0)
        errors += not ok
    out.put((latencies, errors, time.process_time() - cpu0))


def load(host: str, port: int, requests_: list[Request], seconds: float, concurrency: int, *,
         check: bool = True) -> tuple[float, list[float], int, float]:
    """Run C client processes for `seconds`; returns (responses/s, latencies, errors, clients' CPU seconds)."""
    out: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg,unused-ignore]
    share = [requests_[i::concurrency] or requests_ for i in range(concurrency)]
    procs = [multiprocessing.Process(target=_client, args=(host, port, share[i], seconds, out, check))
             for i in range(concurrency)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    latencies = [x for lat, _, _ in results for x in lat]
    return len(latencies) / elapsed, latencies, sum(e for _, e, _ in results), sum(c for _, _, c in results)


def one_pass(host: str, port: int, requests_: list[Request], concurrency: int, expect: str | None = "miss",
             ) -> tuple[float, list[float], int]:
    """Every request exactly once (the cache-miss round); returns (responses/s, latencies, errors: not 200, or
    an X-OCSP-Cache other than `expect`)."""
    from concurrent.futures import ThreadPoolExecutor

    session = requests.Session()
    latencies: list[float] = []
    errors = 0

    def go(r: Request) -> None:
        nonlocal errors
        method, path, body = r
        t0 = time.perf_counter()
        resp = session.request(method, f"http://{host}:{port}{path}", data=body or None, timeout=30,
                               headers={"Content-Type": "application/ocsp-request"})
        latencies.append(time.perf_counter() - t0)
        if resp.status_code != 200 or expect is not None and resp.headers.get("X-OCSP-Cache") != expect:
            errors += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(go, requests_))
    return len(requests_) / (time.perf_counter() - t0), latencies, errors


def forms(ders: list[bytes], prefix: str = "/ocsp") -> dict[str, list[Request]]:
    return {"POST": [("POST", prefix, d) for d in ders],
            "GET": [("GET", f"{prefix}/{quote(base64.b64encode(d).decode(), safe='')}", b"") for d in ders]}


def requests_for(certs: list[x509.Certificate], issuer: x509.Certificate) -> list[bytes]:
    return [ocsp.OCSPRequestBuilder().add_certificate(c, issuer, hashes.SHA1()).build()
            .public_bytes(serialization.Encoding.DER) for c in certs]


# -- hsmca ----------------------------------------------------------------------------------------


def start_hsmca(base: Path, workers: int, http_workers: int = 2) -> tuple[subprocess.Popen[bytes], str, int]:
    def edit(data: dict[str, Any]) -> None:  # no pre-signing rounds inside the timed runs
        data.setdefault("server", {}).update(housekeepingInterval="24h", httpWorkers=http_workers)

    proc, url, _, http_port = start_ca(base, workers, ["--kty", "EC"], edit)
    return proc, url, http_port


def issued_certificates(base: Path, count: int) -> list[x509.Certificate]:
    with Store(f"sqlite:///{base / 'db' / 'hsmca.sqlite'}") as store:
        recs = store.certificates.list("issued", limit=count + 10)
    certs = [x509.load_der_x509_certificate(r.der) for r in recs if r.der]
    return [c for c in certs if c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False][:count]


def drop_cache(base: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{base / 'db' / 'hsmca.sqlite'}")
    with engine.begin() as conn:
        conn.execute(ocsp_responses.delete())
    engine.dispose()


# -- OpenSSL's responder --------------------------------------------------------------------------


def openssl_responder(base: Path, intermediate: x509.Certificate, certs: list[x509.Certificate],
                      port: int) -> tuple[subprocess.Popen[bytes], x509.Certificate]:
    """A software P-256 issuer with the intermediate's subject, and an index.txt of the same serials."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(intermediate.subject).issuer_name(intermediate.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    d = base / "openssl"
    d.mkdir()
    (d / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "ca.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    lines = []
    for c in certs:
        expiry = c.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
        cn = c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        subject = f"/CN={cn[0].value!s}" if cn else "/"
        lines.append(f"V\t{expiry}\t\t{c.serial_number:X}\tunknown\t{subject}\n")
    (d / "index.txt").write_text("".join(lines))
    (d / "index.txt.attr").write_text("unique_subject = no\n")
    proc = subprocess.Popen(["openssl", "ocsp", "-index", str(d / "index.txt"), "-port", str(port),
                             "-rsigner", str(d / "ca.crt"), "-rkey", str(d / "ca.key"), "-CA", str(d / "ca.crt"),
                             "-ndays", "1", "-ignore_err"],
                            stdout=subprocess.DEVNULL, stderr=open(d / "ocsp.log", "wb"))
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            probe = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            probe.request("GET", "/")  # a request, not a bare connection: it serves one connection at a time
            probe.getresponse().read()
            probe.close()
            return proc, cert
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"openssl ocsp did not start; see {d / 'ocsp.log'}")


# -- what pre-signing costs housekeeping ---------------------------------------------------------


def stored_responses(base: Path) -> int:
    engine = sa.create_engine(f"sqlite:///{base / 'db' / 'hsmca.sqlite'}")
    with engine.connect() as conn:
        n = int(conn.execute(sa.select(sa.func.count()).select_from(ocsp_responses)).scalar_one())
    engine.dispose()
    return n


def child_pid(proc: subprocess.Popen[bytes], module: str) -> int:
    for pid in process_tree(proc.pid):
        try:
            if module in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode():
                return pid
        except OSError:
            continue
    raise SystemExit(f"no {module} process under hsmca serve")


def housekeeping_cost(args: argparse.Namespace) -> None:
    """Issue COUNT certificates through the API of a throwaway `hsmca serve` per `ocsp.presign` setting, let
    housekeeping rounds run, and print the CPU the housekeeping process (and the whole server) spent per
    certificate, less what the same processes spend idle over as long (CRL polls, sweeps); then the CPU the
    plain-HTTP listeners spend on each certificate's first OCSP request (the cost that lazy signing moves there,
    paid only for certificates someone asks about)."""
    interval = args.interval
    choices: dict[str, list[bool | None]] = {"both": [True, False], "on": [True], "off": [False], "unset": [None]}
    variants = choices[args.presign]
    print(f"housekeeping cost: {args.count} certificates through POST /1.0/sign (8 clients), housekeeping every "
          f"{interval:g} s, {args.workers} HTTPS workers, {os.cpu_count()} CPUs shared; CPU from /proc, "
          "idle subtracted")
    print(f"{'ocsp.presign':<12} {'certs/s':>8} {'server CPU ms/cert':>19} {'housekeeping ms/cert':>21} "
          f"{'responses stored':>17} {'1st OCSP GET ms CPU':>20} {'2nd GET':>8}")
    for presign in variants:
        def edit(data: dict[str, Any], presign: bool | None = presign) -> None:
            data.setdefault("server", {}).update(housekeepingInterval=f"{interval:g}s", httpWorkers=2)
            if presign is not None:
                data.setdefault("ocsp", {})["presign"] = presign

        with tempfile.TemporaryDirectory(prefix="hsmca-bench-ocsp-hk-") as tmp:
            base = Path(tmp)
            proc, url, _, http_port = start_ca(base, args.workers, ["--kty", "EC"], edit)
            root = base / "certs" / "root_ca.crt"
            try:
                run_load(url, root, prepare(url, root, 20), 4)  # warm the workers and housekeeping's key
                time.sleep(3 * interval)
                pids, hk = process_tree(proc.pid), child_pid(proc, "appliance.serving.housekeeping")
                a0, h0, t0 = cpu_seconds(pids), cpu_seconds([hk]), time.monotonic()
                time.sleep(args.idle)
                idle_s = time.monotonic() - t0
                idle_all, idle_hk = (cpu_seconds(pids) - a0) / idle_s, (cpu_seconds([hk]) - h0) / idle_s
                bodies = prepare(url, root, args.count)
                stored0 = stored_responses(base)
                a0, h0, t0 = cpu_seconds(pids), cpu_seconds([hk]), time.monotonic()
                elapsed, _, errors = run_load(url, root, bodies, 8)
                # Until housekeeping has had three rounds and the stored responses stop changing.
                last, quiet_since = stored_responses(base), time.monotonic()
                rounds_done = time.monotonic() + 3 * interval
                while time.monotonic() < rounds_done or time.monotonic() - quiet_since < 2 * interval:
                    time.sleep(0.25)
                    now = stored_responses(base)
                    if now != last:
                        last, quiet_since = now, time.monotonic()
                span = time.monotonic() - t0
                all_ms = (cpu_seconds(pids) - a0 - idle_all * span) * 1000 / args.count
                hk_ms = (cpu_seconds([hk]) - h0 - idle_hk * span) * 1000 / args.count
                certs = issued_certificates(base, args.count)
                intermediate = load_certificates(base / "certs" / "intermediate_ca.crt")[0]
                gets = forms(requests_for(certs, intermediate))["GET"]
                listeners = [p for p in pids if "appliance.serving.http " in
                             Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode() + " "]
                firsts = []
                for _ in range(2):  # the first request per certificate, then the same again
                    c0 = cpu_seconds(listeners)
                    one_pass("127.0.0.1", http_port, gets, 8, expect=None)
                    firsts.append((cpu_seconds(listeners) - c0) * 1000 / len(gets))
                label = "unset" if presign is None else str(presign).lower()
                print(f"{label:<12} {args.count / elapsed:>8.1f} {all_ms:>19.2f} {hk_ms:>21.2f} "
                      f"{last - stored0:>17} {firsts[0]:>20.2f} {firsts[1]:>8.2f}"
                      + (f"  ({errors} issuance errors)" if errors else ""))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=500, help="certificates (one request each)")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each timed run")
    ap.add_argument("--concurrency", type=int, default=8, help="client processes")
    ap.add_argument("--workers", type=int, default=2, help="HTTPS worker processes (OCSP here is plain HTTP)")
    ap.add_argument("--http-workers", type=int, default=2, help="plain-HTTP listener processes (server.httpWorkers)")
    ap.add_argument("--housekeeping", action="store_true",
                    help="instead: housekeeping's CPU per issued certificate, per ocsp.presign setting")
    ap.add_argument("--presign", default="both", choices=["both", "on", "off", "unset"],
                    help="with --housekeeping: which ocsp.presign settings (unset: leave ca.json's default)")
    ap.add_argument("--interval", type=float, default=2.0, help="with --housekeeping: server.housekeepingInterval (s)")
    ap.add_argument("--idle", type=float, default=6.0, help="with --housekeeping: seconds of idle CPU measured first")
    args = ap.parse_args()
    if args.housekeeping:
        housekeeping_cost(args)
        return
    c = args.concurrency

    with tempfile.TemporaryDirectory(prefix="hsmca-bench-ocsp-") as tmp:
        base = Path(tmp)
        proc, url, http_port = start_hsmca(base, args.workers, args.http_workers)
        root = base / "certs" / "root_ca.crt"
        intermediate = load_certificates(base / "certs" / "intermediate_ca.crt")[0]
        rows = []
        try:
            run_load(url, root, prepare(url, root, args.count), 8)
            certs = issued_certificates(base, args.count)
            ders = requests_for(certs, intermediate)
            print(f"OCSP benchmark: {len(certs)} certificates, {c} client processes (keep-alive), "
                  f"{args.http_workers} plain-HTTP listener processes, {os.cpu_count()} CPUs shared by clients "
                  f"and servers; EC P-256 issuer on both sides")
            print(f"{'responder':<34} {'form':<5} {'resp/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
                  f"{'server CPU ms/resp':>18} {'client CPU ms/resp':>18} {'errors':>6}")

            def row(name: str, form: str, rate: float, lat: list[float], errors: int, cpu: float, n: int,
                    client_cpu: float | None = None) -> None:
                rows.append((name, form, rate))
                client = f"{client_cpu * 1000 / max(n, 1):.3f}" if client_cpu is not None else "-"
                print(f"{name:<34} {form:<5} {rate:>8.0f} {pct(lat, 50) * 1000:>7.2f} {pct(lat, 99) * 1000:>7.2f} "
                      f"{cpu * 1000 / max(n, 1):>18.3f} {client:>18} {errors:>6}")

            for form, reqs in forms(ders).items():
                drop_cache(base)
                bump(stamp_path(base))  # and the listener's memory, as a revocation would
                pids = process_tree(proc.pid)
                cpu0 = cpu_seconds(pids)
                rate, lat, errors = one_pass("127.0.0.1", http_port, reqs, c)
                row("hsmca, cache miss (signs+stores)", form, rate, lat, errors, cpu_seconds(pids) - cpu0, len(reqs))
            # The serving layer's floor: a static file from the same listener (no database, no OCSP).
            floor = [("GET", "/roots.pem", b"")]
            pids = process_tree(proc.pid)
            cpu0 = cpu_seconds(pids)
            rate, lat, errors, ccpu = load("127.0.0.1", http_port, floor, args.seconds, c, check=False)
            row("hsmca floor: GET /roots.pem", "GET", rate, lat, errors, cpu_seconds(pids) - cpu0, len(lat), ccpu)
            for form, reqs in forms(ders).items():
                for _ in range(3):  # every request through every listener process (new connections each round)
                    load("127.0.0.1", http_port, reqs, 1.0, 2 * c)
                pids = process_tree(proc.pid)
                cpu0 = cpu_seconds(pids)
                rate, lat, errors, ccpu = load("127.0.0.1", http_port, reqs, args.seconds, c)
                row("hsmca, cache hit (memory)", form, rate, lat, errors, cpu_seconds(pids) - cpu0, len(lat), ccpu)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)

        port = free_port()
        oproc, ocert = openssl_responder(base, intermediate, certs, port)
        try:
            for form, reqs in forms(requests_for(certs, ocert), prefix="").items():
                reqs = [(m, p or "/", b) for m, p, b in reqs]
                cpu0 = cpu_seconds([oproc.pid])
                rate, lat, errors, ccpu = load("127.0.0.1", port, reqs, args.seconds, c)
                row("openssl ocsp -index (1 process)", form, rate, lat, errors,
                    cpu_seconds([oproc.pid]) - cpu0, len(lat), ccpu)
        finally:
            oproc.terminate()
            oproc.wait(timeout=10)

        rates = {(n, f): r for n, f, r in rows}
        for form in ("POST", "GET"):
            hit = rates.get(("hsmca, cache hit (memory)", form))
            miss = rates.get(("hsmca, cache miss (signs+stores)", form))
            ossl = rates.get(("openssl ocsp -index (1 process)", form))
            if hit and ossl:
                print(f"{form}: hsmca from cache / OpenSSL = {hit / ossl:.1f}x"
                      f" (cache miss / OpenSSL = {(miss or 0) / ossl:.2f}x; goal >= 10x from cache)")


if __name__ == "__main__":
    main()
