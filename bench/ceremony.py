"""How long each ceremony step takes, as custodians will wait for it, beside the bare HSM key generation.

Runs the real commands (`hsmca ceremony root`, `sign-intermediate`, `verify`) on a throwaway
SoftHSM directory, `--allow-network` (a benchmark need not be offline), for each root key type,
N times, and prints the median and worst wall time of each; then, as the baseline in the same run,
the time SoftHSM alone takes to generate the same key pair in one process.

    .venv/bin/python bench/ceremony.py --runs 3 --types EC-P384,RSA-4096
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import softhsm  # noqa: E402

HSMCA = str(Path(sys.executable).parent / "hsmca")
CUSTODIANS = ["alice", "bob", "carol", "dave", "erin"]


def plan(kind: str, token: str, key_type: str) -> str:
    common = (f"name: bench {kind}\nhsm: {{module: {softhsm.DEFAULT_MODULE}, token: {token}}}\n"
              f"custodians: [{', '.join(CUSTODIANS)}]\nquorum: {{threshold: 3, shares: 5}}\n")
    if kind == "root":
        return (f"ceremony: root\n{common}key: {{label: root, type: {key_type}}}\n"
                "certificate: {subject: 'CN=Bench Root', lifetime_days: 3650}\n"
                "outputs: {directory: out, transcript: transcript.jsonl}\n")
    return (f"ceremony: intermediate\n{common}root: {{key_label: root, certificate: out/root_ca.crt}}\n"
            "certificate: {subject: 'CN=Bench Issuing', lifetime_days: 365}\n"
            "outputs: {directory: out, transcript: transcript.jsonl}\n")


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr}")
    return elapsed


def one_run(key_type: str, tmp: Path) -> dict[str, float]:
    env = {**os.environ, "SOFTHSM2_CONF": str(softhsm.write_config(tmp / "hsm"))}
    (tmp / "root.yaml").write_text(plan("root", "bench", key_type))
    (tmp / "int.yaml").write_text(plan("intermediate", "bench", key_type))
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding

    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name.from_rfc4514_string("CN=Bench Issuing")).sign(key, hashes.SHA256())
    (tmp / "int.csr").write_bytes(csr.public_bytes(Encoding.PEM))
    c = [HSMCA, "ceremony"]
    return {
        "ceremony root": timed([*c, "root", "--plan", "root.yaml", "--share-output", "shares", "--allow-network"],
                               tmp, env),
        "sign-intermediate": timed([*c, "sign-intermediate", "--plan", "int.yaml", "--csr", "int.csr",
                                    "--shares-from", "shares", "--custodian", "alice", "--custodian", "carol",
                                    "--custodian", "erin", "--allow-network"], tmp, env),
        "verify": timed([*c, "verify", "out/transcript.jsonl", "--root", "out/root_ca.crt", "--intermediate",
                         "out/intermediate_ca.crt"], tmp, env),
        "hsmca --help (start-up)": timed([HSMCA, "--help"], tmp, env),
    }


def keygen_baseline(key_type: str, tmp: Path) -> float:
    """SoftHSM generating the same key pair, in one process, no CLI around it."""
    conf = softhsm.write_config(tmp / "base")
    softhsm.init_token("base", "so-pin-1234", "user-pin-1234", conf=conf)
    code = (
        "import json, time\n"
        "from kms import create_key\n"
        f"uri = 'pkcs11:token=base;object=k?module-path={softhsm.DEFAULT_MODULE}&pin-value=user-pin-1234'\n"
        "t0 = time.perf_counter()\n"
        f"create_key(uri, {key_type!r})\n"
        "print(json.dumps(time.perf_counter() - t0))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                          env={**os.environ, "SOFTHSM2_CONF": str(conf)}, timeout=600)
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="ceremonies per key type")
    ap.add_argument("--types", default="EC-P384,RSA-4096", help="comma-separated root key types")
    args = ap.parse_args()
    print(f"hsmca ceremony timings: {args.runs} runs per root key type, 3-of-5 quorum, SoftHSM, {os.cpu_count()} CPUs")
    print(f"{'root key':>9} {'step':<24} {'median s':>9} {'max s':>7}")
    for key_type in args.types.split(","):
        runs, bases = [], []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="hsmca-bench-ceremony-") as tmp:
                runs.append(one_run(key_type, Path(tmp)))
                bases.append(keygen_baseline(key_type, Path(tmp)))
        for step in runs[0]:
            values = [r[step] for r in runs]
            print(f"{key_type:>9} {step:<24} {statistics.median(values):>9.2f} {max(values):>7.2f}")
        print(f"{key_type:>9} {'baseline: key generation':<24} {statistics.median(bases):>9.2f} {max(bases):>7.2f}")


if __name__ == "__main__":
    main()
