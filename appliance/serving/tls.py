"""The HTTPS listener's own certificate, issued by the CA's intermediate at start-up.

Its key is a software key (Python's ssl module cannot use an HSM key), generated fresh at every
start and written 0600 under $HSMCA_PATH/run/tls; it never leaves that directory.
"""

from __future__ import annotations

import os
import ssl
from datetime import timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.authority import Authority
from appliance.certutil import pem
from appliance.config import CIPHER_SUITES, TLSOptions


def issue_server_certificate(authority: Authority, directory: Path, lifetime: timedelta) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    result = authority.issue_server_certificate(authority.config.dnsNames, key.public_key(), lifetime)
    key_path, cert_path = directory / "server.key", directory / "server.crt"
    tmp_key = directory / ".server.key.tmp"
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.replace(tmp_key, key_path)
    tmp_cert = directory / ".server.crt.tmp"
    tmp_cert.write_text("".join(pem(c) for c in result.chain))
    os.replace(tmp_cert, cert_path)
    return cert_path, key_path


def configure_context(ctx: ssl.SSLContext, options: TLSOptions) -> ssl.SSLContext:
    """Apply ca.json's `tls` block (step-ca's names) to a server context."""
    versions = {1.2: ssl.TLSVersion.TLSv1_2, 1.3: ssl.TLSVersion.TLSv1_3}
    ctx.minimum_version = versions[options.minVersion]
    ctx.maximum_version = versions[options.maxVersion]
    ctx.set_ciphers(":".join(CIPHER_SUITES[s] for s in options.cipherSuites))
    ctx.options |= ssl.OP_NO_RENEGOTIATION if not options.renegotiation else 0
    return ctx
