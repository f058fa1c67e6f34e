"""Requested validity times as step-ca accepts them: RFC 3339, or a duration from now."""

from __future__ import annotations

from datetime import datetime, timezone

from appliance.errors import BadRequest
from policy import parse_duration


def parse_time_or_duration(value: str | None, now: datetime, field: str) -> datetime | None:
    """`""`/None → None; `2026-12-01T00:00:00Z` → that time; `1h`, `-5m` → now ± duration."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string (RFC 3339 time or a duration like '24h')")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        pass
    else:
        if when.tzinfo is None:
            raise BadRequest(f"{field} {value!r} needs a time zone (e.g. 'Z')")
        return when.astimezone(timezone.utc)
    sign, body = (-1, value[1:]) if value.startswith("-") else (1, value.lstrip("+"))
    try:
        delta = parse_duration(body)
    except ValueError as exc:
        raise BadRequest(f"{field} {value!r} is neither an RFC 3339 time nor a duration: {exc}") from None
    return now + sign * delta
