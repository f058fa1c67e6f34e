"""`hsmca kms create-key|public-key|check`: keys in any signing backend, named by URI."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import click

from appliance.cli.common import fail
from appliance.config import ConfigError, default_config_path, load_config

KEY_TYPES = ["EC-P256", "EC-P384", "RSA-2048", "RSA-3072", "RSA-4096", "Ed25519"]
CONFIG = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                      help="ca.json whose kms.uri completes the key URI (module, PIN source) "
                           "[default: $HSMCA_PATH/config/ca.json when it exists].")


def _full_uri(uri: str, config_path: Path | None) -> str:
    """Completed by ca.json's kms block when there is one, as the CA itself would open the key."""
    path = config_path or default_config_path()
    if config_path is None and not path.exists():
        return uri
    try:
        config = load_config(path)
        config.apply_kms_environment()
        return config.key_uri(uri)
    except ConfigError as exc:
        fail(str(exc))


def _open(uri: str, config_path: Path | None, *, create: str | None = None) -> Any:
    from kms import create_key, open_key
    from kms.errors import KMSError

    full = _full_uri(uri, config_path)
    try:
        return create_key(full, create) if create else open_key(full)
    except KMSError as exc:
        fail(f"{type(exc).__name__}: {exc}")


def _describe(key: Any) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from kms.signer import spki_der

    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki_der(key.public_key()))
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    return f"{pem}# {key.spec.value}, SubjectPublicKeyInfo SHA-256 {digest.finalize().hex()}"


@click.group()
def kms() -> None:
    """Keys in the signing backends: PKCS#11 (pkcs11:…), Vault/OpenBao transit (vault:…), AWS KMS (awskms:…),
    Google Cloud KMS (gcpkms:…), Azure Key Vault (azurekv:…).

    Keys are generated inside the backend and never leave it; these commands show and test them.
    """


@kms.command("create-key")
@CONFIG
@click.argument("uri")
@click.option("--type", "key_type", type=click.Choice(KEY_TYPES), default="EC-P256", show_default=True,
              help="Key type (what the backend offers; e.g. no Ed25519 in AWS or Azure).")
def create_key_cmd(config_path: Path | None, uri: str, key_type: str) -> None:
    """Generate a key inside the backend (refused if the name is taken); print its public key."""
    click.echo(_describe(_open(uri, config_path, create=key_type)))


@kms.command("public-key")
@CONFIG
@click.argument("uri")
def public_key_cmd(config_path: Path | None, uri: str) -> None:
    """Print the key's public key (PEM) and its SubjectPublicKeyInfo SHA-256."""
    click.echo(_describe(_open(uri, config_path)))


@kms.command()
@CONFIG
@click.argument("uri")
@click.option("--count", type=click.IntRange(1, 10_000), default=10, show_default=True, help="Probes to sign.")
def check(config_path: Path | None, uri: str, count: int) -> None:
    """Sign COUNT probes through the backend, verify each locally, print the latency."""
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    from kms import default_hash
    from kms.errors import KMSError

    key = _open(uri, config_path)
    h = default_hash(key)

    times = []
    for i in range(count):
        probe = f"hsmca kms check {i} {time.time_ns()}".encode()
        start = time.perf_counter()
        try:  # every adapter verifies its signature before returning it
            if isinstance(key, ec.EllipticCurvePrivateKey):
                key.sign(probe, ec.ECDSA(h))  # type: ignore[arg-type]
            elif isinstance(key, rsa.RSAPrivateKey):
                key.sign(probe, padding.PKCS1v15(), h)  # type: ignore[arg-type]
            else:
                key.sign(probe)
        except KMSError as exc:
            fail(f"probe {i + 1} failed: {type(exc).__name__}: {exc}")
        times.append(time.perf_counter() - start)
    ms = sorted(t * 1000 for t in times)
    click.echo(f"{key.uri}: {count} signatures verified; latency p50 {statistics.median(ms):.2f} ms, "
               f"max {ms[-1]:.2f} ms ({key.spec.value})")


@kms.command()
@CONFIG
@click.argument("uri")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Where the detached signature goes [default: FILE.sig].")
@click.option("--public-key", "public_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the key's public key (PEM) here, for `openssl dgst -verify`.")
def sign(config_path: Path | None, uri: str, file: Path, out_path: Path | None, public_out: Path | None) -> None:
    """Sign FILE (e.g. an image's SHA256SUMS) with the key at URI: a detached DER signature.

    ECDSA and RSA keys sign a SHA-256/384 digest that `openssl dgst -sha256 -verify PUB -signature SIG FILE`
    checks; an Ed25519 signature is checked with `openssl pkeyutl -verify -rawin`. FILE is read whole, so it is
    bounded (64 MiB): sign a checksum list, not the image itself.
    """
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from appliance.atomic_file import write_atomically
    from kms.chained_log import SealError, signer_for
    from kms.errors import KMSError

    if file.stat().st_size > 64 << 20:
        fail(f"{file}: {file.stat().st_size} bytes; sign a checksum list of at most 64 MiB, not the data itself")
    key = _open(uri, config_path)
    try:
        algorithm, sign_with = signer_for(key)
        signature = sign_with(file.read_bytes())
    except (KMSError, SealError) as exc:
        fail(f"cannot sign {file}: {type(exc).__name__}: {exc}")
    out = out_path or file.with_name(file.name + ".sig")
    write_atomically(out, signature, mode=0o644)
    if public_out is not None:
        pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        write_atomically(public_out, pem, mode=0o644)
    click.echo(f"{out}: {algorithm} signature of {file} by {key.uri}")
