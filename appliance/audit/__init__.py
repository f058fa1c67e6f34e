"""The audit trail: every security-relevant decision, hash-chained per writing process and sealed by checkpoints
that the audit key signs, so that an auditor can verify it (`hsmca audit verify`)."""

from appliance.audit.trail import AuditEvent, AuditLog, JsonLinesAudit, read_events, scrub

__all__ = ["AuditEvent", "AuditLog", "JsonLinesAudit", "read_events", "scrub"]
