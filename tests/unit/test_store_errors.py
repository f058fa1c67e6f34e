"""as_ca_error: the one mapping of storage errors to what a client sees (no database needed)."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.exc import IntegrityError

from appliance.errors import CAError, Conflict, ServiceUnavailable
from appliance.store import (
    CertificateNotFound,
    InvalidTransition,
    StoreError,
    StoreUnavailable,
    TokenReplayed,
    as_ca_error,
)


def test_an_unavailable_database_is_a_503_naming_the_reason() -> None:
    err = as_ca_error(StoreUnavailable("database busy: no write slot within 5 s"))
    assert type(err) is ServiceUnavailable and err.status == 503
    assert err.message == "database busy: no write slot within 5 s"


def test_an_invalid_transition_is_a_409() -> None:
    err = as_ca_error(InvalidTransition("certificate 7 is reserved, not issued; nothing to revoke"))
    assert type(err) is Conflict and err.status == 409
    assert err.message == "certificate 7 is reserved, not issued; nothing to revoke"


@pytest.mark.parametrize("exc", [StoreError("serial 7 is not valid DER"), CertificateNotFound("no serial 7"),
                                 TokenReplayed("token abcdefgh… was already used")])
def test_anything_else_is_a_generic_500_whose_cause_is_logged(exc: StoreError, caplog: pytest.LogCaptureFixture
                                                              ) -> None:
    with caplog.at_level(logging.ERROR, logger="appliance.store.errors"):
        err = as_ca_error(exc)
    assert type(err) is CAError and err.status == 500
    assert str(exc) not in err.message  # the client learns nothing of the cause
    [record] = caplog.records
    assert record.levelno == logging.ERROR and str(exc) in record.getMessage() and record.exc_info is None


def test_the_log_names_an_underlying_error_by_its_type_only(caplog: pytest.LogCaptureFixture) -> None:
    cause = IntegrityError("INSERT INTO used_tokens VALUES (?)", ("secret-jti",), Exception("UNIQUE"))
    exc = StoreError("recording a one-time token failed")
    exc.__cause__ = cause
    with caplog.at_level(logging.ERROR, logger="appliance.store.errors"):
        as_ca_error(exc)
    logged = caplog.records[0].getMessage()
    assert "IntegrityError" in logged and "secret-jti" not in logged and "INSERT" not in logged
