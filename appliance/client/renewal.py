"""Renewing a certificate from the client side: once (`hsmca renew`) or for ever (`--daemon`).

The credential is the certificate itself: its key over mTLS by default, or an x5c bearer token
signed by that key (`--bearer`, for a CA behind a TLS-terminating load balancer); `post_as` is the
one place that does either, for renew and for rekey (appliance/client/rekey.py). The renewed
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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.jwk import ECKey, OKPKey, RSAKey

from appliance.atomic_file import write_atomically
from appliance.client.http import CAClient, ClientError
from appliance.client.keys import LeafKey
from appliance.provisioners import jose

log = logging.getLogger("hsmca.renew")

RENEW_AT = 2 / 3  # of the lifetime, as step does
JITTER = 1 / 20  # ± this fraction of the lifetime, so a fleet does not renew in one burst
TOKEN_LIFETIME = 300
MAX_BACKOFF = 60.0  # cap while the CA cannot answer: it may be back any second
REFUSED_BACKOFF = (60.0, 3600.0)  # first and longest wait after the CA said no: asking again rarely helps
RETRYABLE_STATUSES = frozenset({408, 425, 429})  # 4xx that mean "later", not "no"
FILE_POLL = 30.0  # how often a waiting daemon looks whether someone replaced the certificate file
EXIT_UNRENEWABLE = 3  # `renew --daemon` exit status: the certificate expired and the CA refuses it
HOOK_TIMEOUT = 120


class RenewError(Exception):
    """The files cannot be read or written, or the hook failed; the message says which."""


class CannotRenew(RenewError):
    """The certificate has expired and the CA refuses it: no retry can help, a new certificate must be issued."""


@dataclass(frozen=True)
class Hooks:
    """What to tell the service after a renewal: run a command, and/or signal a process."""

    exec_command: str | None = None
    pid_file: Path | None = None
    signal_name: str = "HUP"

    def run(self) -> None:
        if self.exec_command:
            try:
                done = subprocess.run(self.exec_command, shell=True, timeout=HOOK_TIMEOUT, check=False)
            except subprocess.TimeoutExpired:
                raise RenewError(f"--exec {self.exec_command!r} did not finish within {HOOK_TIMEOUT} s") from None
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


@dataclass(frozen=True)
class Held:
    """What the daemon needs to know of the certificate it keeps renewed, X.509 or SSH."""

    serial: int
    not_before: datetime
    not_after: datetime


def held(cert: x509.Certificate | Held) -> Held:
    if isinstance(cert, Held):
        return cert
    return Held(cert.serial_number, cert.not_valid_before_utc, cert.not_valid_after_utc)


def renew_after(cert: x509.Certificate | Held, jitter: float = 0.0) -> datetime:
    """2/3 into the certificate's lifetime, moved by `jitter` (a fraction of the lifetime)."""
    start, end = held(cert).not_before, held(cert).not_after
    return start + (end - start) * (RENEW_AT + jitter)


def load_key(key_file: Path) -> LeafKey:
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except OSError as exc:
        raise RenewError(f"cannot read {key_file}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise RenewError(f"{key_file} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise RenewError(f"{key_file}: unsupported key type (EC, RSA or Ed25519)")
    return key


def check_pair(crt: Path, leaf: x509.Certificate, key_file: Path) -> LeafKey:
    """The key of `leaf`, or a clear error now rather than an opaque TLS failure later."""
    key = load_key(key_file)
    if key.public_key() != leaf.public_key():
        raise RenewError(f"{key_file} does not hold the key of the certificate in {crt}")
    return key


def renew_token(chain: list[x509.Certificate], key_file: Path, ca_url: str, endpoint: str = "renew") -> str:
    """An x5c bearer token for `/1.0/<endpoint>` (renew or rekey), signed by the certificate's key."""
    key = load_key(key_file)
    jwk: jose.PublicKey
    if isinstance(key, ec.EllipticCurvePrivateKey):
        jwk = ECKey.import_key(key)
    elif isinstance(key, rsa.RSAPrivateKey):
        jwk = RSAKey.import_key(key)
    else:
        jwk = OKPKey.import_key(key)
    leaf = chain[0]
    cns = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    now = int(time.time())
    claims = {"sub": str(cns[0].value) if cns else "", "aud": [f"{ca_url.rstrip('/')}/1.0/{endpoint}"],
              "iat": now, "nbf": now, "exp": now + TOKEN_LIFETIME, "jti": secrets.token_hex(32)}
    x5c = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in chain]
    return jose.sign_token(jwk, claims, header={"x5cInsecure": x5c})


def post_as(ca_url: str, root: Path | None, crt: Path, key: Path, endpoint: str, body: dict[str, Any], *,
            bearer: bool) -> list[x509.Certificate]:
    """POST `/<endpoint>` with the certificate in `crt` as the credential; return the chain the CA sent.

    The one HTTP path of renew and rekey: mTLS with `crt` and `key`, or (`bearer`) an x5c token signed
    by `key`. Errors are `ClientError`s carrying the CA's own message and status.
    """
    chain = load_chain(crt)
    if bearer:
        client = CAClient(ca_url, root)
        resp = client.post_json(f"/{endpoint}", body, headers={
            "Authorization": f"Bearer {renew_token(chain, key, client.ca_url, endpoint)}"})
    else:
        resp = CAClient(ca_url, root, client_cert=(crt, key)).post_json(f"/{endpoint}", body)
    pems = resp.get("certChain") or [resp.get("crt"), resp.get("ca")]
    try:
        new = [x509.load_pem_x509_certificate(str(p).encode()) for p in pems if p]
    except ValueError as exc:
        raise ClientError(f"the CA answered with a malformed certificate: {exc}") from None
    if not new:
        raise ClientError("the CA answered without a certificate")
    return new


def chain_pem(chain: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)


def renew_once(ca_url: str, root: Path | None, crt: Path, key: Path, *, bearer: bool) -> list[x509.Certificate]:
    """Ask the CA for the successor of the certificate in `crt`; write it; return the new chain."""
    old = load_chain(crt)[0]
    new = post_as(ca_url, root, crt, key, "renew", {}, bearer=bearer)
    if new[0].public_key() != old.public_key():
        raise ClientError("the CA answered with a certificate for another key; not written")
    write_atomically(crt, chain_pem(new))
    return new


# --- the daemon ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Backoff:
    """The next wait after a failure of each kind; both reset after a successful renewal."""

    transient: float = 1.0
    refused: float = REFUSED_BACKOFF[0]


@dataclass(frozen=True)
class Retry:
    """What to do after a failed attempt: wait `delay` seconds, then try again with `backoff`."""

    delay: float
    backoff: Backoff
    refused: bool
    message: str


def refused(exc: BaseException) -> bool:
    """The CA answered and said no (a 4xx other than "later"), as opposed to not answering or failing."""
    status = exc.status if isinstance(exc, ClientError) else None
    return status is not None and 400 <= status < 500 and status not in RETRYABLE_STATUSES


def after_failure(exc: BaseException, crt: Path, cert: x509.Certificate | Held, now: datetime,
                  backoff: Backoff) -> Retry:
    """Decide what the daemon does after a failed renewal; raise `CannotRenew` when nothing can help.

    - The CA could not answer (connection refused, timeout, TLS, 5xx, 408/425/429) or a local file
      could not be read: retry soon, 1 s doubling to 60 s, never longer than a quarter of the remaining
      validity, since the next attempt may well succeed. Past expiry too: the CA may grant a grace period.
    - The CA refused (401, 403, other 4xx) a certificate that has expired: exit (`CannotRenew`), since
      renewal needs a valid certificate and no retry makes an expired one valid again. The exit status
      is EXIT_UNRENEWABLE so a service manager can be told not to restart (RestartPreventExitStatus=).
    - The CA refused a certificate still valid (revoked, renewal disabled, policy, unknown issuer):
      retrying cannot change the answer unless someone acts, so wait 1 min doubling to 1 h (a quarter of
      the remaining validity if less, at least 1 min) and log an error that says what to do. The daemon
      keeps watching the file: a new certificate put there is picked up at once.
    """
    leaf = held(cert)
    left = (leaf.not_after - now).total_seconds()
    if not refused(exc):
        delay = min(backoff.transient, MAX_BACKOFF)
        if left > 0:  # never sleep through the remaining validity
            delay = min(delay, max(1.0, left / 4))
        return Retry(delay, Backoff(min(backoff.transient * 2, MAX_BACKOFF), backoff.refused), False,
                     f"renewal failed (retrying in {delay:.0f} s): {exc}")
    if left <= 0:
        raise CannotRenew(
            f"{crt} (serial {leaf.serial}) expired at {leaf.not_after.isoformat()} and the CA "
            f"refuses to renew it: {exc}. Nothing can renew an expired certificate: get a new one "
            f"(`hsmca certificate ... {crt} KEY --force`), then start the renewal daemon again.")
    first, cap = REFUSED_BACKOFF
    delay = max(first, min(backoff.refused, cap, left / 4))
    return Retry(delay, Backoff(backoff.transient, min(backoff.refused * 2, cap)), True,
                 f"the CA refuses to renew {crt} (serial {leaf.serial}): {exc}. Retrying will not help "
                 f"until that changes: if the certificate was revoked, put a new one in {crt} (`hsmca certificate "
                 f"... --force`; this daemon picks it up); otherwise see the CA's reason. Asking again in "
                 f"{delay:.0f} s (backing off up to {cap / 3600:.0f} h).")


@dataclass
class Daemon:
    """Renew at about 2/3 of each certificate's lifetime, for ever; back off while the CA is away or refuses.

    See `after_failure` for what each kind of failure leads to. While waiting it re-reads the
    certificate file every FILE_POLL seconds, so a certificate replaced by hand (after a revocation,
    say) is scheduled on its own lifetime without restarting the daemon. `load` and `renew` say how to read
    and renew the certificate (an SSH host certificate, `hsmca ssh renew --daemon`); X.509 by default.
    """

    ca_url: str
    root: Path | None
    crt: Path
    key: Path
    bearer: bool
    hooks: Hooks
    stop: threading.Event
    load: Callable[[], Held] | None = None
    renew: Callable[[], Held] | None = None

    def _load(self) -> Held:
        return self.load() if self.load is not None else held(load_chain(self.crt)[0])

    def _renew(self) -> Held:
        if self.renew is not None:
            return self.renew()
        return held(renew_once(self.ca_url, self.root, self.crt, self.key, bearer=self.bearer)[0])

    def schedule(self, leaf: Held) -> datetime:
        return renew_after(leaf, random.uniform(-JITTER, JITTER))

    def current(self, known: Held) -> Held:
        """The certificate now in the file; the known one if the file cannot be read right now."""
        try:
            return self._load()
        except RenewError as exc:
            log.warning("%s", exc)
            return known

    def run(self) -> None:
        leaf = self._load()
        due = self.schedule(leaf)
        log.info("watching %s; next renewal at %s", self.crt, due.isoformat(timespec="seconds"))
        backoff = Backoff()
        while not self.stop.is_set():
            now_leaf = self.current(leaf)
            if now_leaf.serial != leaf.serial:
                leaf, due, backoff = now_leaf, self.schedule(now_leaf), Backoff()
                log.info("%s was replaced (serial %d); next renewal at %s", self.crt, leaf.serial,
                         due.isoformat(timespec="seconds"))
            wait = (due - datetime.now(timezone.utc)).total_seconds()
            if wait > 0:
                self.stop.wait(min(wait, FILE_POLL))
                continue
            log.info("renewing %s (serial %d, expires %s)", self.crt, leaf.serial,
                     leaf.not_after.isoformat(timespec="seconds"))
            try:
                leaf = self._renew()
            except (ClientError, RenewError, OSError) as exc:
                retry = after_failure(exc, self.crt, leaf, datetime.now(timezone.utc), backoff)
                (log.error if retry.refused else log.warning)("%s", retry.message)
                due = datetime.now(timezone.utc) + timedelta(seconds=retry.delay)
                backoff = retry.backoff
                continue
            backoff = Backoff()
            due = self.schedule(leaf)
            log.info("renewed %s: serial %d valid until %s; next renewal at %s", self.crt, leaf.serial,
                     leaf.not_after.isoformat(timespec="seconds"), due.isoformat(timespec="seconds"))
            try:
                self.hooks.run()
            except RenewError as exc:
                log.error("the renewal hook failed: %s", exc)
