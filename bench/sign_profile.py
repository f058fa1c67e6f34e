"""Where one certificate's CPU goes: POST /1.0/sign through the Falcon application in this process, timed per
pipeline step with the thread's CPU clock.

The HTTP server and TLS are not in these figures (`make bench` prints their cost as the floor); everything the
application does is: routing and JSON, the token, the CSR, template, policy, profile, building the TBS, lint,
the reservation (a database commit), the KMS signature, the issued mark (a commit), the audit record and the
response. A throwaway CA (`hsmca init`, SoftHSM, SQLite) is made for the run.

    .venv/bin/python bench/sign_profile.py --count 1000 [--cprofile 25]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from common import HSMCA, PASSWORD, ROOT, ca_env  # noqa: I001 (bench/common.py puts the repository on the path)
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.api import create_app  # noqa: E402
from appliance.ca.issuer import Issuer  # noqa: E402
from appliance.certutil import fingerprint, load_certificates  # noqa: E402
from appliance.client.keys import build_csr  # noqa: E402
from appliance.client.tokens import sign_token  # noqa: E402
from appliance.config import load_config  # noqa: E402
from appliance.provisioners import jose  # noqa: E402
from appliance.ra import pipeline  # noqa: E402
from appliance.ra.authority import Authority  # noqa: E402

AUDIENCE = "https://localhost:9000/1.0/sign"
ORDER = ["http+json", "authorize", "csr", "template", "policy", "profile", "build TBS", "lint", "record",
         "sign", "issued", "audit+metrics", "response"]


class StepClock:
    """Thread CPU time between step marks (the pipeline's `_Trace.enter`, plus the hooks below), summed by step."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.current = "http+json"
        self.mark = 0.0

    def enter(self, step: str) -> None:
        now = time.thread_time()
        self.totals[self.current] += now - self.mark
        self.current, self.mark = step, now

    def reset(self) -> None:
        self.current, self.mark = "http+json", time.thread_time()


def bodies(base: Path, count: int) -> list[bytes]:
    config = load_config(base / "config" / "ca.json")
    prov = next(p for p in config.authority.provisioners if p.type == "JWK")
    key = jose.decrypt_jwk(prov.encryptedKey, PASSWORD.encode())  # type: ignore[union-attr]
    kid = prov.key["kid"]  # type: ignore[union-attr]
    fp = fingerprint(load_certificates(base / "certs" / "root_ca.crt")[0])
    out = []
    for i in range(count):
        name = f"svc-{i}.profile.internal"
        csr = build_csr(ec.generate_private_key(ec.SECP256R1()), name, [name])
        ott = sign_token(key, kid, prov.name, name, [name], AUDIENCE, fp)
        out.append(json.dumps({"csr": csr.public_bytes(Encoding.PEM).decode(), "ott": ott}).encode())
    return out


def call(app: Any, body: bytes) -> int:
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/1.0/sign", "QUERY_STRING": "", "SERVER_NAME": "localhost",
               "SERVER_PORT": "9000", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
               "wsgi.version": (1, 0), "wsgi.url_scheme": "https", "wsgi.input": io.BytesIO(body),
               "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
               "wsgi.run_once": False, "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body))}
    status: list[str] = []
    b"".join(app(environ, lambda s, h, e=None: status.append(s)))
    return int(status[0][:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--cprofile", type=int, default=0, metavar="N", help="also print cProfile's top N functions")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hsmca-profile-") as tmp:
        base = Path(tmp)
        env = ca_env(base)
        (base / "pw").write_text(PASSWORD + "\n")
        subprocess.run([HSMCA, "init", "--password-file", str(base / "pw"), "--kty", "EC", "--dns", "localhost",
                        "--address", "localhost:9000"], env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        os.environ.update(env)
        config = load_config(base / "config" / "ca.json")
        config.apply_kms_environment()
        authority = Authority.from_config(config)
        app = create_app(authority)
        clock = StepClock()
        original_enter = pipeline._Trace.enter
        original_issue = pipeline.Pipeline.issue
        original_audit = pipeline.write_audit
        original_sign = Issuer.record_and_sign

        def enter(trace: Any, step: str) -> None:
            clock.enter(step)
            original_enter(trace, step)

        def issue(self: Any, *a: Any, **kw: Any) -> Any:
            try:
                return original_issue(self, *a, **kw)
            finally:
                clock.enter("response")

        def audit(*a: Any, **kw: Any) -> None:
            clock.enter("audit+metrics")
            original_audit(*a, **kw)

        def record_and_sign(self: Any, *a: Any, **kw: Any) -> Any:
            clock.enter("build TBS")
            return original_sign(self, *a, **kw)

        pipeline._Trace.enter = enter  # type: ignore[method-assign]
        pipeline.Pipeline.issue = issue  # type: ignore[method-assign]
        pipeline.write_audit = audit
        Issuer.record_and_sign = record_and_sign  # type: ignore[method-assign]
        for body in bodies(base, 50):  # warm: sessions, caches, the first SQLite pages
            assert call(app, body) == 201
        work = bodies(base, args.count)
        clock.totals.clear()
        profiler = cProfile.Profile() if args.cprofile else None
        wall0, cpu0, proc0 = time.perf_counter(), time.thread_time(), time.process_time()
        if profiler:
            profiler.enable()
        for body in work:
            clock.reset()
            status = call(app, body)
            clock.enter("done")
            assert status == 201, status
        if profiler:
            profiler.disable()
        wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
        others = max(0.0, time.process_time() - proc0 - cpu)  # the PKCS#11 thread, timers
        totals = dict(clock.totals)
        n = len(work)
        print(f"POST /1.0/sign in process, {n} certificates, CA key EC P-256 in SoftHSM, SQLite"
              f"{' (under cProfile: inflated)' if profiler else ''}")
        print(f"{'step':<14} {'CPU us/cert':>11} {'share':>6}")
        accounted = 0.0
        for step in ORDER + sorted(set(totals) - set(ORDER) - {"done"}):
            if step in totals:
                accounted += totals[step]
                print(f"{step:<14} {totals[step] / n * 1e6:>11.0f} {totals[step] / cpu:>6.1%}")
        print(f"{'request total':<14} {cpu / n * 1e6:>11.0f}   ({accounted / cpu:.0%} attributed to steps)")
        print(f"{'other threads':<14} {others / n * 1e6:>11.0f}   (PKCS#11 thread with SoftHSM's signature, timers)")
        print(f"{'process':<14} {(cpu + others) / n * 1e6:>11.0f}   (wall {wall / n * 1e3:.2f} ms/cert)")
        if profiler:
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(args.cprofile)
            stats.sort_stats("cumtime").print_stats(r"appliance|kms|policy", args.cprofile)
            print(out.getvalue())
        authority.close()


if __name__ == "__main__":
    main()
