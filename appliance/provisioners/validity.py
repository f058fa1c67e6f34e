"""Requested times as step-ca accepts them (RFC 3339, or a duration from now), within a range that leaves
room for the arithmetic done on them (a default lifetime added, a backdate or leeway taken off): a time
near year 9999 or year 1 would overflow Python's datetime deep in the pipeline instead of being refused."""

from __future__ import annotations

from datetime import datetime, timezone

from appliance.errors import BadRequest
from policy import parse_duration

EARLIEST = datetime(1950, 1, 1, tzinfo=timezone.utc)  # where X.509's UTCTime starts
LATEST = datetime(9000, 1, 1, tzinfo=timezone.utc)  # far beyond any lifetime; far enough from 9999


def in_range(when: datetime, field: str) -> datetime:
    """`when` (aware) if it lies between EARLIEST and LATEST; BadRequest naming the field otherwise."""
    if not EARLIEST <= when <= LATEST:
        raise BadRequest(f"{field} {when.isoformat()} is out of range ({EARLIEST.year} to {LATEST.year})")
    return when


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
        try:
            return in_range(when.astimezone(timezone.utc), field)
        except OverflowError:  # 0001-01-01T00:00:00+01:00 has no UTC time
            raise BadRequest(f"{field} {value!r} is out of range ({EARLIEST.year} to {LATEST.year})") from None
    sign, body = (-1, value[1:]) if value.startswith("-") else (1, value.lstrip("+"))
    try:
        delta = parse_duration(body)
    except ValueError as exc:
        raise BadRequest(f"{field} {value!r} is neither an RFC 3339 time nor a duration: {exc}") from None
    try:
        return in_range(now + sign * delta, field)
    except OverflowError:
        raise BadRequest(f"{field} {value!r} is out of range ({EARLIEST.year} to {LATEST.year})") from None
