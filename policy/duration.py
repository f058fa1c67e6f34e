"""Go-style duration strings ("5m", "24h", "1h30m", "720h"), as step-ca's ca.json and requests use.

Hand-written: no maintained Python library parses Go's `time.ParseDuration` syntax, and the grammar
is small. Arithmetic is exact (fractions), so "0.1h" is exactly 6 minutes. A value finer than a
microsecond is rejected rather than rounded: `timedelta` cannot hold it, and silently changing a
configured limit is worse than refusing it.
"""

from __future__ import annotations

import re
from datetime import timedelta
from fractions import Fraction

__all__ = ["format_duration", "parse_duration"]

_NS_PER_UNIT: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign, as Go accepts
    "\u03bcs": 1_000,  # Greek mu, as Go accepts
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_COMPONENT = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_WHOLE = re.compile(r"(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h))+")
# Go's time.Duration is an int64 of nanoseconds; accepting more would make configs that Go rejects.
_MAX_NS = 2**63 - 1
# Bounds the work done on hostile input; no sensible duration is anywhere near this long.
_MAX_LEN = 64


def parse_duration(text: str) -> timedelta:
    """Parse a Go duration ("1h30m", "-5m", "0"), raising ValueError that quotes the input."""
    if not isinstance(text, str):
        raise ValueError(f'duration must be a string like "24h", not {type(text).__name__}')  # noqa: TRY004
    if len(text) > _MAX_LEN:
        raise ValueError(f"duration is too long ({len(text)} characters)")
    body = text[1:] if text[:1] in ("+", "-") else text
    negative = text[:1] == "-"
    if body == "0":
        return timedelta(0)
    if not body or not _WHOLE.fullmatch(body):
        raise ValueError(
            f'invalid duration {text!r}: expected a number and unit, like "5m", "24h" or "1h30m" '
            "(units: ns, us, ms, s, m, h)"
        )
    total_ns = sum(
        (Fraction(number) * _NS_PER_UNIT[unit] for number, unit in _COMPONENT.findall(body)),
        Fraction(0),
    )
    if total_ns > _MAX_NS:
        raise ValueError(f"invalid duration {text!r}: out of range (at most about 292 years)")
    if total_ns.denominator != 1 or total_ns.numerator % 1000:
        raise ValueError(f"invalid duration {text!r}: finer than a microsecond")
    micros = total_ns.numerator // 1000
    return timedelta(microseconds=-micros if negative else micros)


def format_duration(value: timedelta) -> str:
    """Render like Go's Duration.String but without a trailing "0s" ("48h0m", "5m", "1m30s").

    Always parseable by `parse_duration`, so a value read back from a reason or a log round-trips.
    """
    micros = value // timedelta(microseconds=1)
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    if micros == 0:
        return "0s"
    if micros < 1_000_000:
        if micros < 1000:
            return f"{sign}{micros}us"
        return f"{sign}{_decimal(micros, 1000)}ms"
    hours, rest = divmod(micros, 3600 * 1_000_000)
    minutes, rest = divmod(rest, 60 * 1_000_000)
    seconds = f"{_decimal(rest, 1_000_000)}s" if rest else ""
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{sign}{minutes}m{seconds}"
    return f"{sign}{seconds}"


def _decimal(value: int, scale: int) -> str:
    """`value / scale` as a decimal string without trailing zeros (scale is a power of ten)."""
    whole, frac = divmod(value, scale)
    if not frac:
        return str(whole)
    width = len(str(scale)) - 1
    return f"{whole}.{str(frac).rjust(width, '0').rstrip('0')}"
