"""SSH certificates in the store, on SQLite, PostgreSQL and MariaDB (fixtures from test_store.py): reserved with the
body before signing and the token burnt in the same transaction, issued only over that body, revoked on the row,
and a reservation left by a crash abandoned and still revocable (it may have been signed)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from appliance.store import CertificateNotFound, OneTimeToken, Store, StoreError, TokenReplayed
from appliance.store.ssh_certificates import SSHReservation
from tests.integration import test_store as base
from tests.integration.test_store import Server

server = base.server
T = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(server: Server) -> Iterator[Store]:
    with Store(server.new_url()) as s:
        s.migrate()
        yield s


def reservation(serial: int, *, ca_key: str = "ab" * 32, cert_type: str = "user") -> SSHReservation:
    return SSHReservation(serial=serial, cert_type=cert_type, key_id="alice", principals=("alice", "a@x.org"),  # type: ignore[arg-type]
                          valid_after=T, valid_before=T + timedelta(hours=8), provisioner="admin", ca_key=ca_key,
                          tbs=b"body-" + str(serial).encode(), request_id="r1")


def signed(serial: int) -> bytes:
    return b"body-" + str(serial).encode() + struct.pack(">I", 3) + b"sig"


def test_reserve_issue_revoke_and_the_krl_query(store: Store) -> None:
    token = OneTimeToken("jti-1", "admin", T + timedelta(minutes=5))
    store.ssh.reserve(reservation(2**64 - 1), token)
    with pytest.raises(TokenReplayed):
        store.ssh.reserve(reservation(7), token)
    assert store.ssh.get(7) is None
    with pytest.raises(StoreError, match="not signed over the reserved body"):
        store.ssh.mark_issued(2**64 - 1, b"other" + struct.pack(">I", 3) + b"sig")
    store.ssh.mark_issued(2**64 - 1, signed(2**64 - 1))
    store.ssh.mark_issued(2**64 - 1, signed(2**64 - 1))  # a retry is harmless
    record = store.ssh.get(2**64 - 1)
    assert record is not None and record.status == "issued" and record.principals == ("alice", "a@x.org")
    assert store.ssh.revoke(2**64 - 1, "key lost") is True
    assert store.ssh.revoke(2**64 - 1, "again") is False  # the first revocation stands
    assert store.ssh.revoked() == {"ab" * 32: [2**64 - 1]}
    with pytest.raises(CertificateNotFound):
        store.ssh.revoke(12345, "")


def test_a_crashed_reservation_is_abandoned_and_stays_revocable(store: Store) -> None:
    store.ssh.reserve(reservation(42, cert_type="host"))
    with pytest.raises(CertificateNotFound):
        store.ssh.revoke(42, "")  # still reserved: an issuance in flight
    assert store.ssh.resolve_stale(timedelta(minutes=5), now=datetime.now(UTC) + timedelta(minutes=6)) == [42]
    record = store.ssh.get(42)
    assert record is not None and record.status == "abandoned"
    assert store.ssh.revoke(42, "may have been signed before the crash") is True
    assert store.ssh.revoked() == {"ab" * 32: [42]}


@pytest.mark.parametrize("serial", [0, -1, 2**64, True])
def test_serials_outside_uint64_are_refused_before_sql(store: Store, serial: int) -> None:
    with pytest.raises((ValueError, TypeError)):
        store.ssh.reserve(reservation(serial))


def test_check_host_finds_exactly_the_principal_of_a_current_host_certificate(store: Store) -> None:
    rec = reservation(99, cert_type="host")
    store.ssh.reserve(SSHReservation(**{**{f: getattr(rec, f) for f in rec.__slots__},
                                        "principals": ("web_1%x.internal", 'odd"name\\\\')}))
    during = T + timedelta(hours=1)
    assert not store.ssh.host_has_principal("web_1%x.internal", now=during)  # reserved, not issued
    store.ssh.mark_issued(99, signed(99))
    assert store.ssh.host_has_principal("web_1%x.internal", now=during)
    assert store.ssh.host_has_principal('odd"name\\\\', now=during)
    for near in ("web_1", "webX1%x.internal", "web_1%x", "%", "_"):  # LIKE wildcards are matched literally
        assert not store.ssh.host_has_principal(near, now=during), near
    assert not store.ssh.host_has_principal("web_1%x.internal", now=T + timedelta(hours=9))  # expired
    store.ssh.revoke(99, "")
    assert not store.ssh.host_has_principal("web_1%x.internal", now=during)
