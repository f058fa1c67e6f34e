"""The audit trail: every security-relevant decision, written where an auditor can read it."""

from appliance.audit.trail import AuditEvent, AuditLog, JsonLinesAudit, read_events, scrub

__all__ = ["AuditEvent", "AuditLog", "JsonLinesAudit", "read_events", "scrub"]
