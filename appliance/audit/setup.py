"""The audit trail as ca.json describes it: file, audit key, checkpoint interval, rotation, syslog copy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from appliance.audit.seal import AuditSealer, Checkpoint
from appliance.audit.trail import JsonLinesAudit, Shipper
from appliance.certutil import CertificateFileError, load_certificates
from appliance.config import CAConfig, ConfigError
from policy import parse_duration


def audit_sealer(config: CAConfig) -> AuditSealer | None:
    """The audit key and its certificate (None when ca.json names none: records are chained, not sealed)."""
    audit = config.audit
    if audit.key is None or audit.certificate is None:
        return None
    from kms import open_key

    path = config.resolve(audit.certificate)
    try:
        certificate = load_certificates(path)[0]
    except CertificateFileError as exc:
        raise ConfigError(f"audit.certificate: {exc} (`hsmca audit init-key --rotate` makes a new audit key and "
                          "certificate)") from None
    uri = config.key_uri(audit.key)

    def key() -> Any:
        config.apply_kms_environment()
        return open_key(uri)

    return AuditSealer(key, certificate)


def open_audit(config: CAConfig, on_checkpoint: Callable[[Checkpoint], None] | None = None) -> JsonLinesAudit:
    audit = config.audit
    shipper: Shipper | None = None
    if audit.syslog is not None:
        from appliance.audit.syslog import SyslogShipper

        shipper = SyslogShipper(audit.syslog.address, facility=audit.syslog.facility, app_name=audit.syslog.appName)
    return JsonLinesAudit(config.resolve(audit.path), sealer=audit_sealer(config),
                          interval=parse_duration(audit.checkpointInterval).total_seconds(),
                          max_bytes=audit.maxBytes, replica=audit.replica, on_checkpoint=on_checkpoint,
                          shipper=shipper)
