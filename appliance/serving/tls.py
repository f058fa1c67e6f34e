"""The HTTPS listener's own certificate, issued by the CA's intermediate at start-up and renewed.

Its key is a software key (Python's ssl module cannot use an HSM key), generated fresh at every
start and at every renewal, written 0600 under $HSMCA_PATH/run/tls; it never leaves that directory.

Renewal without dropping connections: the housekeeping process re-issues the certificate at 2/3 of
its lifetime and replaces both files atomically (temp file, fsync, rename). Each HTTPS worker
serves TLS from one `ServerContext`, which notices the replaced files (a stat per handshake) and
builds a new `SSLContext` for the connections that follow; connections already open keep theirs,
so nothing is dropped or restarted. One context per worker (not one per connection) also makes TLS
session resumption work within a worker.
"""

from __future__ import annotations

import logging
import ssl
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.atomic_file import write_atomically
from appliance.certutil import pem
from appliance.config import CIPHER_SUITES, CAConfig, TLSOptions
from appliance.ra.authority import Authority

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME, which Python's ssl.VerifyFlags does not name.
X509_V_FLAG_NO_CHECK_TIME = 0x200000


RENEW_AT = 2 / 3  # of the lifetime, as clients renew theirs
log = logging.getLogger("hsmca.tls")


def tls_directory(config: CAConfig) -> Path:
    """Where the listener's certificate and key live ($HSMCA_PATH/run/tls)."""
    return config.base_dir / "run" / "tls"


def issue_server_certificate(authority: Authority, directory: Path, lifetime: timedelta) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    result = authority.issue_server_certificate(authority.config.dnsNames, key.public_key(), lifetime)
    key_path, cert_path = directory / "server.key", directory / "server.crt"
    # The key first: a handshake that reads the new key with the old certificate fails to load and
    # keeps the previous context (see ServerContext), never serves a mismatched pair.
    write_atomically(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), 0o600)
    write_atomically(cert_path, "".join(pem(c) for c in result.chain).encode(), 0o644)
    return cert_path, key_path


def renewal_due(cert_path: Path) -> datetime:
    """When the certificate in `cert_path` should be replaced (2/3 of its lifetime); now if unreadable."""
    try:
        cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    except (OSError, ValueError, IndexError):
        return datetime.now(timezone.utc)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * RENEW_AT


class ServerContext:
    """The worker's SSLContext, rebuilt when the certificate or key file is replaced.

    mTLS is optional: clients are asked for a certificate chaining to one of the CA's roots, and
    one that sends none is served as before. Validity dates are left to the endpoints that use the
    certificate (appliance/api/peer.py), so that an expired one gets a JSON answer, not a TLS alert.
    """

    def __init__(self, cert: Path, key: Path, client_ca: Path, options: TLSOptions):
        self.cert, self.key, self.client_ca, self.options = cert, key, client_ca, options
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] | None = None
        self._context: ssl.SSLContext | None = None

    def _files_stamp(self) -> tuple[int, ...]:
        a, b = self.cert.stat(), self.key.stat()
        return a.st_ino, a.st_mtime_ns, a.st_size, b.st_ino, b.st_mtime_ns, b.st_size

    def build(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        ctx.load_verify_locations(cafile=str(self.client_ca))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
        return configure_context(ctx, self.options)

    def get(self) -> ssl.SSLContext:
        """The current context; a half-replaced pair keeps the previous one until both are new."""
        try:
            stamp = self._files_stamp()
        except OSError:
            stamp = None
        if self._context is not None and stamp == self._stamp:
            return self._context
        with self._lock:
            if self._context is not None and stamp == self._stamp:
                return self._context
            try:
                self._context = self.build()
                self._stamp = stamp
                log.info("TLS certificate loaded from %s", self.cert)
            except (OSError, ssl.SSLError) as exc:
                if self._context is None:
                    raise
                log.warning("keeping the current TLS certificate; the new one does not load yet: %s", exc)
            return self._context


def configure_context(ctx: ssl.SSLContext, options: TLSOptions) -> ssl.SSLContext:
    """Apply ca.json's `tls` block (step-ca's names) to a server context."""
    versions = {1.2: ssl.TLSVersion.TLSv1_2, 1.3: ssl.TLSVersion.TLSv1_3}
    ctx.minimum_version = versions[options.minVersion]
    ctx.maximum_version = versions[options.maxVersion]
    ctx.set_ciphers(":".join(CIPHER_SUITES[s] for s in options.cipherSuites))
    ctx.options |= ssl.OP_NO_RENEGOTIATION if not options.renegotiation else 0
    return ctx
