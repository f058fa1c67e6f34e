"""Go-style durations: the syntax ca.json and `notAfter: "1h"` request fields use."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from policy import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5m", timedelta(minutes=5)),
        ("24h", timedelta(hours=24)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("720h", timedelta(days=30)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        ("0.1h", timedelta(minutes=6)),
        (".5s", timedelta(milliseconds=500)),
        ("5.s", timedelta(seconds=5)),
        ("1500ms", timedelta(seconds=1.5)),
        ("1us", timedelta(microseconds=1)),
        ("1\u00b5s", timedelta(microseconds=1)),
        ("1\u03bcs", timedelta(microseconds=1)),
        ("1000ns", timedelta(microseconds=1)),
        ("+5m", timedelta(minutes=5)),
        ("-5m", timedelta(minutes=-5)),
        ("-1h30m", -timedelta(hours=1, minutes=30)),
        ("0", timedelta(0)),
        ("-0", timedelta(0)),
        ("0s", timedelta(0)),
        ("2562047h", timedelta(hours=2562047)),
    ],
)
def test_parse_accepts_go_syntax(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected a number and unit"),
        ("5", "expected a number and unit"),
        ("h", "expected a number and unit"),
        ("1H", "expected a number and unit"),
        ("1d", "expected a number and unit"),
        ("1h 30m", "expected a number and unit"),
        (" 1h", "expected a number and unit"),
        ("1e3s", "expected a number and unit"),
        ("--5m", "expected a number and unit"),
        ("\u0663s", "expected a number and unit"),  # an Arabic-Indic digit is not a digit here
        ("1ns", "finer than a microsecond"),
        ("2562048h", "out of range"),
        ("1" * 65 + "s", "too long"),
    ],
)
def test_parse_rejects_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        parse_duration(300)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(hours=48), "48h0m"),
        (timedelta(hours=24), "24h0m"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(hours=1, seconds=30), "1h0m30s"),
        (timedelta(minutes=5), "5m"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(seconds=30), "30s"),
        (timedelta(seconds=1.5), "1.5s"),
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(microseconds=1500), "1.5ms"),
        (timedelta(microseconds=7), "7us"),
        (timedelta(0), "0s"),
        (-timedelta(hours=1, minutes=30), "-1h30m"),
    ],
)
def test_format(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


def test_format_round_trips_through_parse() -> None:
    rng = random.Random(5280)  # fixed seed: deterministic
    samples = [timedelta(microseconds=rng.randrange(-(10**14), 10**14)) for _ in range(2000)]
    samples += [timedelta(microseconds=10**k) for k in range(15)]
    for value in samples:
        assert parse_duration(format_duration(value)) == value, value
