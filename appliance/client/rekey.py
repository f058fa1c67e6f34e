"""`hsmca rekey`: a new key made here, certified by the CA for the same names, installed beside its certificate.

The request is renewal's (`post_as`: mTLS with the old key or an x5c token signed by it); what is
new is that two files change, and no rename makes two files change together. `rekey_once` says
the order that keeps a usable pair on disk whenever the process dies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from appliance.atomic_file import rename_durably, write_atomically
from appliance.client.http import ClientError
from appliance.client.keys import CURVES, LeafKey
from appliance.client.renewal import RenewError, chain_pem, check_pair, load_chain, load_key, post_as


@dataclass(frozen=True)
class RekeyFiles:
    """The pair that authenticates (`crt`, `key`) and where the new pair goes (the same files by default).

    Each new file is first written beside its target as `<target>.new`; see `rekey_once`.
    """

    crt: Path
    key: Path
    out_crt: Path
    out_key: Path

    @property
    def staged_crt(self) -> Path:
        return self.out_crt.with_name(f"{self.out_crt.name}.new")

    @property
    def staged_key(self) -> Path:
        return self.out_key.with_name(f"{self.out_key.name}.new")


def key_options_like(current: LeafKey, kty: str | None, crv: str | None,
                     size: int | None) -> tuple[str, str | None, int | None]:
    """--kty/--crv/--size for the new key: by default the same kind of key as the current one.

    A rekey usually answers "this key may have leaked", not "I want another algorithm", and the CA's
    policy already accepted the current kind; an explicit --kty starts from that type's defaults.
    """
    if isinstance(current, ec.EllipticCurvePrivateKey):
        same: tuple[str, str | None, int | None] = (
            "EC", next((n for n, c in CURVES.items() if c.name == current.curve.name), None), None)
    elif isinstance(current, rsa.RSAPrivateKey):
        same = ("RSA", None, current.key_size)
    else:
        same = ("OKP", "Ed25519", None)
    if kty is None or kty.upper() == same[0]:
        return same[0], crv or (None if size else same[1]), size or (None if crv else same[2])
    return kty.upper(), crv, size


def rekey_csr(leaf: x509.Certificate, key: LeafKey) -> x509.CertificateSigningRequest:
    """A CSR for the new key naming exactly what the certificate names (the CA refuses anything else)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(leaf.subject)
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        builder = builder.add_extension(san.value, critical=san.critical)
    except x509.ExtensionNotFound:
        pass
    return builder.sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())


def _names(cert: x509.Certificate) -> set[x509.GeneralName]:
    try:
        return set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return set()


def finish_interrupted_rekey(files: RekeyFiles) -> list[x509.Certificate] | None:
    """Complete a rekey that died between its renames; return the installed chain, or None if none was pending.

    A staged certificate is installed only with the key it certifies: the staged key (died before
    both renames) or the key already in place (died between them). Anything else is stale and is
    overwritten by the next rekey.
    """
    if not files.staged_crt.exists():
        return None
    try:
        chain = x509.load_pem_x509_certificates(files.staged_crt.read_bytes())
        for candidate in (files.staged_key, files.out_key):
            if candidate.exists() and load_key(candidate).public_key() == chain[0].public_key():
                if candidate == files.staged_key:
                    rename_durably(files.staged_key, files.out_key)
                rename_durably(files.staged_crt, files.out_crt)
                return chain
    except (OSError, ValueError, RenewError):
        pass
    return None


def rekey_once(ca_url: str, root: Path | None, files: RekeyFiles, new_key: LeafKey, *,
               bearer: bool) -> list[x509.Certificate]:
    """Get a certificate for `new_key` with the names of `files.crt`; install the new pair; return its chain.

    Order, so that a crash at any point leaves a usable pair and never a new certificate beside an
    old key (services and reloaders react to the certificate file changing):
      1. the new key is written to `<out-key>.new` (0600, fsync) before the CA is asked, so no
         certificate is ever issued for a key that existed only in memory; the old pair still works;
      2. the CA's answer is checked and written to `<out-cert>.new`: a complete new pair is on disk;
      3. the key is renamed over `out_key`, then 4. the certificate over `out_crt`.
    Dying before 3 leaves the old pair in place (the `.new` files are overwritten by the next run);
    dying between 3 and 4 leaves the new key with `<out-cert>.new` beside it, which the next
    `hsmca rekey` installs (`finish_interrupted_rekey`). Any failure before 3 removes the staged files.
    """
    chain = load_chain(files.crt)
    leaf = chain[0]
    check_pair(files.crt, leaf, files.key)
    csr = rekey_csr(leaf, new_key)
    key_pem = new_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    crt_mode = files.out_crt.stat().st_mode & 0o777 if files.out_crt.exists() else 0o644
    try:
        write_atomically(files.staged_key, key_pem, mode=0o600)
        new = post_as(ca_url, root, files.crt, files.key, "rekey",
                      {"csr": csr.public_bytes(serialization.Encoding.PEM).decode()}, bearer=bearer)
        if new[0].public_key() != new_key.public_key():
            raise ClientError("the CA answered with a certificate for another key; nothing written")
        if new[0].subject != leaf.subject or _names(new[0]) != _names(leaf):
            raise ClientError("the CA answered with a certificate for other names; nothing written")
        write_atomically(files.staged_crt, chain_pem(new), mode=crt_mode)
    except BaseException:
        files.staged_key.unlink(missing_ok=True)
        files.staged_crt.unlink(missing_ok=True)
        raise
    rename_durably(files.staged_key, files.out_key)
    rename_durably(files.staged_crt, files.out_crt)
    return new
