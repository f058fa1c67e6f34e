"""CRL generation at scale: hsmca (entries streamed from the database, signed through kms/ with a SoftHSM
P-256 key) beside `openssl ca -gencrl` over an index.txt of the same revocations (software P-256 key).

Each measurement runs in a process of its own, so its peak resident memory (ru_maxrss) is that run's
alone; rows are bulk-inserted with SQLAlchemy Core beforehand, in another process. Measured, not asserted
(the goal for 1M entries: under 15 s and under 1 GiB).

    .venv/bin/python bench/crl.py                       # 100k and 1M entries, SQLite
    .venv/bin/python bench/crl.py --sizes 10000 --db postgresql+psycopg://postgres@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PIN = "bench-user-pin"
KEY_URI = f"pkcs11:token=crlbench;object=crl-issuer?pin-value={PIN}"
CHUNK = 20_000
# A mix of reasons (unspecified entries carry no CRLReason extension); openssl's index.txt knows no
# privilegeWithdrawn, so the mix sticks to reasons both understand.
REASONS = [0, 1, 3, 4, 5]
OPENSSL_REASONS = {0: "unspecified", 1: "keyCompromise", 3: "affiliationChanged", 4: "superseded",
                   5: "cessationOfOperation"}


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- workers (each in its own process) --------------------------------------------------------------

def worker_populate(db: str, issuer: str, size: int, index: Path) -> dict[str, Any]:
    """Insert `size` revocations for `issuer` (replacing earlier bench rows) and the same in index.txt."""
    import sqlalchemy as sa

    from appliance.store import Store
    from appliance.store.schema import crls, revocations

    with Store(db) as store:
        store.migrate()
    engine = sa.create_engine(db)
    now = datetime.now(UTC).replace(microsecond=0)
    not_after = now + timedelta(days=30)
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(revocations.delete().where(revocations.c.issuer == issuer))
        conn.execute(crls.delete().where(crls.c.issuer == issuer))
    expiry = not_after.strftime("%y%m%d%H%M%SZ")
    with index.open("w") as out:
        for start in range(0, size, CHUNK):
            rows = []
            lines = []
            for i in range(start, min(size, start + CHUNK)):
                serial = secrets.randbits(127) | (1 << 126)
                revoked = now - timedelta(seconds=i % 86_400)
                code = REASONS[i % len(REASONS)]
                rows.append({"serial": str(serial), "issuer": issuer, "revoked_at": revoked, "reason_code": code,
                             "reason": None, "source": "bench", "not_after": not_after})
                when = revoked.strftime("%y%m%d%H%M%SZ")
                lines.append(f"R\t{expiry}\t{when},{OPENSSL_REASONS[code]}\t{serial:040X}\tunknown\t/CN=bench{i}\n")
            with engine.begin() as conn:
                conn.execute(revocations.insert(), rows)
            out.writelines(lines)
    engine.dispose()
    return {"seconds": time.perf_counter() - started}


def worker_hsmca(db: str, cert_pem: Path) -> dict[str, Any]:
    """Stream, build and sign through kms/ (sign_crl, as the housekeeping process does), then store it."""
    from cryptography import x509

    from appliance.ca.issuer import Issuer
    from appliance.status.crl import sign_crl
    from appliance.store import Store
    from kms import open_key

    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    with Store(db, timeout=600) as store:
        key = open_key(KEY_URI)
        issuer = Issuer(key, cert)
        base = peak_mib()
        started = time.perf_counter()
        rec = sign_crl(issuer, store, number=store.crls.next_number(issuer.id), revision=0,
                       validity=timedelta(hours=24))
        signed = time.perf_counter() - started
        store.crls.add(rec)
        stored = time.perf_counter() - started - signed
    return {"seconds": signed, "store_seconds": stored, "peak_mib": peak_mib(), "baseline_mib": base,
            "entries": rec.info.entries, "bytes": len(rec.der)}


def worker_openssl(config: Path, out: Path) -> dict[str, Any]:
    """`openssl ca -gencrl`: the child's own peak (RUSAGE_CHILDREN of a process with this one child)."""
    started = time.perf_counter()
    done = subprocess.run(["openssl", "ca", "-gencrl", "-config", str(config), "-out", str(out), "-batch"],
                          capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # before any other child runs
    if done.returncode != 0:
        raise SystemExit(f"openssl ca -gencrl failed: {done.stderr}")
    from cryptography import x509

    listed = len(x509.load_pem_x509_crl(out.read_bytes()))
    return {"seconds": seconds, "peak_mib": peak, "entries": listed, "bytes": out.stat().st_size}


# --- the driver -----------------------------------------------------------------------------------

def run_worker(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--worker", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=7200)
    if done.returncode != 0:
        raise SystemExit(f"worker {args[0]} failed:\n{done.stdout}\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def setup_keys(tmp: Path) -> tuple[dict[str, str], Path, str]:
    """A SoftHSM token with the P-256 issuer key (and its certificate), plus openssl's software key."""
    import softhsm

    conf = softhsm.write_config(tmp / "hsm")
    softhsm.init_token("crlbench", "bench-so-pin", PIN, conf=conf)
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    script = (
        "import sys, datetime; from pathlib import Path\n"
        "from cryptography import x509; from cryptography.hazmat.primitives.serialization import Encoding\n"
        "import kms\n"
        "key = kms.create_key(sys.argv[1], kms.KeySpec.EC_P256)\n"
        "now = datetime.datetime.now(datetime.UTC); day = datetime.timedelta(days=1)\n"
        "name = x509.Name.from_rfc4514_string('CN=hsmca CRL bench issuer')\n"
        "cert = kms.root_certificate(key, name, now - day, now + 365 * day)\n"
        "Path(sys.argv[2]).write_bytes(cert.public_bytes(Encoding.PEM))\n"
        "print(x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest.hex())\n")
    cert = tmp / "hsm-issuer.crt"
    done = subprocess.run([sys.executable, "-c", script, KEY_URI, str(cert)], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=True, timeout=120)
    issuer = done.stdout.strip().splitlines()[-1]
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(tmp / "ossl.key"), "-out", str(tmp / "ossl.crt"), "-subj",
                    "/CN=openssl CRL bench issuer", "-days", "365"], check=True, capture_output=True, timeout=60)
    return env, cert, issuer


def openssl_config(tmp: Path, index: Path) -> Path:
    (tmp / "crlnumber").write_text("01\n")
    Path(f"{index}.attr").write_text("unique_subject = no\n")
    config = tmp / "openssl.cnf"
    config.write_text(f"""[ ca ]
default_ca = bench

[ bench ]
dir = {tmp}
database = {index}
crlnumber = {tmp}/crlnumber
certificate = {tmp}/ossl.crt
private_key = {tmp}/ossl.key
default_md = sha256
default_crl_days = 1
crl_extensions = crl_ext

[ crl_ext ]
authorityKeyIdentifier = keyid:always
""")
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated entry counts")
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file per size)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "populate":
            result = worker_populate(rest[0], rest[1], int(rest[2]), Path(rest[3]))
        elif kind == "hsmca":
            result = worker_hsmca(rest[0], Path(rest[1]))
        else:
            result = worker_openssl(Path(rest[0]), Path(rest[1]))
        print(json.dumps(result))
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="hsmca-crl-bench-") as tmp_name:
        tmp = Path(tmp_name)
        env, cert, issuer = setup_keys(tmp)
        backend = (args.db or "sqlite").split(":", 1)[0]
        print(f"CRL generation, P-256 issuer key; hsmca: SoftHSM through kms/, database {backend}; "
              f"openssl {subprocess.run(['openssl', 'version'], capture_output=True, text=True).stdout.split()[1]}"
              f" ca -gencrl: software key. cpus: {os.cpu_count()}")
        print(f"{'entries':>9}  {'who':<18} {'seconds':>8} {'peak MiB':>9} {'CRL MiB':>8}  notes")
        for size in sizes:
            db = args.db or f"sqlite:///{tmp}/bench-{size}.db"
            index = tmp / f"index-{size}.txt"
            filled = run_worker(env, "populate", db, issuer, str(size), str(index))
            h = run_worker(env, "hsmca", db, str(cert))
            o = run_worker(env, "openssl", str(openssl_config(tmp, index)), str(tmp / f"crl-{size}.pem"))
            assert h["entries"] == size and o["entries"] == size, (h, o)
            print(f"{size:>9}  {'hsmca (kms/)':<18} {h['seconds']:>8.2f} {h['peak_mib']:>9.0f} "
                  f"{h['bytes'] / 2**20:>8.1f}  stored in {h['store_seconds']:.2f} s more; "
                  f"{h['baseline_mib']:.0f} MiB before; rows inserted in {filled['seconds']:.1f} s")
            print(f"{size:>9}  {'openssl ca -gencrl':<18} {o['seconds']:>8.2f} {o['peak_mib']:>9.0f} "
                  f"{o['bytes'] / 2**20:>8.1f}  PEM output")
            if args.db is None:
                Path(f"{tmp}/bench-{size}.db").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
