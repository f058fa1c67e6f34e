"""The audit key: made in the CA's KMS, certified by the active intermediate, named in ca.json (`hsmca init`,
`hsmca audit init-key`). A rotation is recorded in the audit trail by a checkpoint that both keys sign, so an
auditor who pinned the old key's certificate can follow the trail onto the new one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from appliance.config import CAConfig, save_config
from kms.keyspec import KeySpec


class AuditKeyError(Exception):
    """The audit key could not be made; the message says why."""


@dataclass(frozen=True)
class MadeKey:
    key_uri: str
    certificate_path: Path
    fingerprint: str
    rotation_checkpoint: str | None  # the statement of the checkpoint both keys signed


def make_audit_key(config: CAConfig, config_path: Path, *, key_uri: str | None = None,
                   spec: KeySpec = KeySpec.EC_P256, existing: bool = False, lifetime: str = "87600h",
                   rotate: bool = False) -> MadeKey:
    """Create (or open) the key, issue its certificate through the pipeline, write ca.json."""
    from appliance.audit import AuditEvent, JsonLinesAudit
    from appliance.audit.setup import audit_sealer
    from appliance.ca.intermediates import IntermediateError, stored_key_uri
    from appliance.certutil import fingerprint
    from appliance.config import ConfigError
    from appliance.errors import CAError
    from appliance.ra.authority import Authority
    from appliance.store import StoreError
    from kms import create_key, open_key
    from kms.errors import KMSError
    from policy import parse_duration

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    try:
        stored = stored_key_uri(key_uri or f"pkcs11:object=audit-{stamp}")
        valid = parse_duration(lifetime)
        config.apply_kms_environment()
        old = audit_sealer(config) if rotate else None
        authority = Authority.from_config(config)
        try:
            rec = authority.store.intermediates.active()
            if rec is None:
                raise AuditKeyError("no active intermediate to certify the audit key: install one first")
            full = config.key_uri(stored)
            key = open_key(full) if existing else create_key(full, spec)
            cert = authority.issue_audit_certificate(rec, key.public_key(), valid, stored).certificate
            out = config.resolve(f"certs/audit_{cert.serial_number:x}.crt")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(cert.public_bytes(Encoding.PEM))
            config.audit.key, config.audit.certificate = stored, str(out)
            new = audit_sealer(config)
            assert new is not None
            trail = authority.audit
            assert isinstance(trail, JsonLinesAudit)
            statement = None
            if old is not None:  # the old key vouches for the new one in a checkpoint both sign
                trail.record(AuditEvent(action="audit.key.rotate", decision="allowed", request_id="cli",
                                        details={"old": old.fingerprint, "new": new.fingerprint}))
                checkpoint = trail.checkpoint("key-rotation", also=(new,))
                statement = checkpoint.statement.text() if checkpoint else None
            else:  # the first key seals this command's own records (its certificate's issuance)
                trail.sealer = new
                trail.checkpoint("key-created")
        finally:
            authority.close()  # the rotation stream's checkpoint is stored in the database here
    except (ConfigError, StoreError, KMSError, CAError, IntermediateError, ValueError) as exc:
        raise AuditKeyError(getattr(exc, "message", None) or str(exc)) from None
    config.audit.key, config.audit.certificate = stored, str(out)
    save_config(config, config_path)
    return MadeKey(stored, out, fingerprint(cert), statement)
