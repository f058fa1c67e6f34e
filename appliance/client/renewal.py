"""Renewing a certificate from the client side: once (`hsmca renew`) or for ever (`--daemon`).

The credential is the certificate itself: its key over mTLS by default, or an x5c bearer token
signed by that key (`--bearer`, for a CA behind a TLS-terminating load balancer). The renewed
certificate replaces the file atomically (temp file in the same directory, fsync, rename), so a
service reading it at any moment sees the old file or the new one, never half of either.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.jwk import ECKey, OKPKey, RSAKey

from appliance import jose
from appliance.atomic_file import write_atomically
from appliance.client.http import CAClient, ClientError

log = logging.getLogger("hsmca.renew")

RENEW_AT = 2 / 3  # of the lifetime, as step does
JITTER = 1 / 20  # ± this fraction of the lifetime, so a fleet does not renew in one burst
TOKEN_LIFETIME = 300
MAX_BACKOFF = 60.0
HOOK_TIMEOUT = 120


class RenewError(Exception):
    """The files cannot be read or written, or the hook failed; the message says which."""


@dataclass(frozen=True)
class Hooks:
    """What to tell the service after a renewal: run a command, and/or signal a process."""

    exec_command: str | None = None
    pid_file: Path | None = None
    signal_name: str = "HUP"

    def run(self) -> None:
        if self.exec_command:
            done = subprocess.run(self.exec_command, shell=True, timeout=HOOK_TIMEOUT, check=False)
            if done.returncode != 0:
                raise RenewError(f"--exec {self.exec_command!r} exited with status {done.returncode}")
        if self.pid_file:
            try:
                pid = int(self.pid_file.read_text().strip())
                os.kill(pid, signal.Signals[f"SIG{self.signal_name.upper().removeprefix('SIG')}"])
            except (OSError, ValueError, KeyError) as exc:
                raise RenewError(f"cannot signal the process in {self.pid_file}: {exc}") from None


def load_chain(crt: Path) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(crt.read_bytes())
    except OSError as exc:
        raise RenewError(f"cannot read {crt}: {exc.strerror}") from None
    except ValueError as exc:
        raise RenewError(f"{crt} holds no PEM certificate: {exc}") from None
    return chain


def renew_after(cert: x509.Certificate, jitter: float = 0.0) -> datetime:
    """2/3 into the certificate's lifetime, moved by `jitter` (a fraction of the lifetime)."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * (RENEW_AT + jitter)


def renew_token(chain: list[x509.Certificate], key_file: Path, ca_url: str) -> str:
    """An x5c bearer token for `/1.0/renew`, signed by the certificate's key."""
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except OSError as exc:
        raise RenewError(f"cannot read {key_file}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise RenewError(f"{key_file} is not an unencrypted PEM private key: {exc}") from None
    jwk: jose.PublicKey
    if isinstance(key, ec.EllipticCurvePrivateKey):
        jwk = ECKey.import_key(key)
    elif isinstance(key, rsa.RSAPrivateKey):
        jwk = RSAKey.import_key(key)
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        jwk = OKPKey.import_key(key)
    else:
        raise RenewError(f"{key_file}: unsupported key type for a renew token")
    leaf = chain[0]
    cns = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    now = int(time.time())
    claims = {"sub": str(cns[0].value) if cns else "", "aud": [f"{ca_url.rstrip('/')}/1.0/renew"],
              "iat": now, "nbf": now, "exp": now + TOKEN_LIFETIME, "jti": secrets.token_hex(32)}
    x5c = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in chain]
    return jose.sign_token(jwk, claims, header={"x5cInsecure": x5c})


def renew_once(ca_url: str, root: Path | None, crt: Path, key: Path, *, bearer: bool) -> list[x509.Certificate]:
    """Ask the CA for the successor of the certificate in `crt`; write it; return the new chain."""
    chain = load_chain(crt)
    if bearer:
        client = CAClient(ca_url, root)
        resp = client.post_json("/renew", {}, headers={
            "Authorization": f"Bearer {renew_token(chain, key, client.ca_url)}"})
    else:
        resp = CAClient(ca_url, root, client_cert=(crt, key)).post_json("/renew", {})
    pems = resp.get("certChain") or [resp.get("crt"), resp.get("ca")]
    try:
        new = [x509.load_pem_x509_certificate(str(p).encode()) for p in pems if p]
    except ValueError as exc:
        raise ClientError(f"the CA answered with a malformed certificate: {exc}") from None
    if not new or new[0].public_key() != chain[0].public_key():
        raise ClientError("the CA answered with a certificate for another key; not written")
    write_atomically(crt, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in new))
    return new


@dataclass
class Daemon:
    """Renew at about 2/3 of each certificate's lifetime, for ever; back off while the CA is away."""

    ca_url: str
    root: Path | None
    crt: Path
    key: Path
    bearer: bool
    hooks: Hooks
    stop: threading.Event

    def next_attempt(self) -> datetime:
        leaf = load_chain(self.crt)[0]
        return renew_after(leaf, random.uniform(-JITTER, JITTER))

    def run(self) -> None:
        due = self.next_attempt()
        log.info("watching %s; next renewal at %s", self.crt, due.isoformat(timespec="seconds"))
        backoff = 1.0
        while not self.stop.is_set():
            wait = (due - datetime.now(timezone.utc)).total_seconds()
            if wait > 0:
                self.stop.wait(wait)
                continue
            leaf = load_chain(self.crt)[0]
            log.info("renewing %s (serial %d, expires %s)", self.crt, leaf.serial_number,
                     leaf.not_valid_after_utc.isoformat(timespec="seconds"))
            try:
                new = renew_once(self.ca_url, self.root, self.crt, self.key, bearer=self.bearer)
            except (ClientError, RenewError, OSError) as exc:
                left = (leaf.not_valid_after_utc - datetime.now(timezone.utc)).total_seconds()
                # Never sleep through the remaining validity: at most a quarter of what is left.
                delay = min(backoff, MAX_BACKOFF, max(1.0, left / 4))
                log.warning("renewal failed (retrying in %.0f s): %s", delay, exc)
                due = datetime.now(timezone.utc) + timedelta(seconds=delay)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = 1.0
            due = self.next_attempt()
            log.info("renewed %s: serial %d valid until %s; next renewal at %s", self.crt, new[0].serial_number,
                     new[0].not_valid_after_utc.isoformat(timespec="seconds"), due.isoformat(timespec="seconds"))
            try:
                self.hooks.run()
            except (RenewError, subprocess.TimeoutExpired) as exc:
                log.error("the renewal hook failed: %s", exc)
