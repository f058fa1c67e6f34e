"""The auditor's check: the transcript proves the ceremony, the files prove they are its outputs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ceremony.context import CeremonyError
from ceremony.transcript import Report, summary, verify


def _load(path: Path, what: str) -> tuple[x509.Certificate, bytes]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CeremonyError(f"cannot read the {what} {path}: {exc.strerror}") from None
    try:
        cert = x509.load_pem_x509_certificate(raw) if b"-----BEGIN" in raw else x509.load_der_x509_certificate(raw)
    except ValueError as exc:
        raise CeremonyError(f"the {what} {path} is not a certificate: {exc}") from None
    return cert, raw


def verify_ceremony(transcript: Path, root_path: Path, intermediates: Sequence[Path]) -> tuple[Report, str]:
    """(report, the text for the auditor's file). The files are hashed exactly as they are on disk."""
    if not transcript.is_file():
        raise CeremonyError(f"no transcript at {transcript}")
    root, root_raw = _load(root_path, "root certificate")
    files = {"root": root_raw}
    loaded = []
    for i, path in enumerate(intermediates, 1):
        cert, raw = _load(path, "intermediate certificate")
        label = "intermediate" if len(intermediates) == 1 else f"intermediate #{i}"
        files[label] = raw
        loaded.append((label, path, cert))
    report = verify(transcript, root, files)
    for label, path, cert in loaded:
        try:
            cert.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature) as exc:
            report.problems.append(f"the {label} {path} is not signed by the root: {exc or 'bad signature'}")
    return report, summary(report)
