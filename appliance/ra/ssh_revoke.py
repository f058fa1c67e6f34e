"""Revoking SSH certificates, and the Key Revocation List sshd reads (`RevokedKeys`), served at `/ssh/krl`.

A revocation is a mark on the certificate's row (store/ssh_certificates.py): the caller proves its right with a
one-time JWK token for `…/1.0/ssh/revoke` whose `sub` is the serial, as for X.509. The KRL is built from the
revoked serials per CA key (status/krl.py) when asked for, at most once per `KRL_TTL` per process, so a flood of
downloads costs one query a second; its version is the number of revocations, which only grows.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

from appliance.audit import AuditEvent, AuditLog
from appliance.ca.ssh import SSHCA, blob_of, fingerprint
from appliance.errors import BadRequest, CAError, Forbidden, NotFound
from appliance.provisioners import Provisioners
from appliance.ra.pipeline import RequestContext, spend, write_audit
from appliance.ra.revoke import verified_token
from appliance.status.krl import build_krl
from appliance.store import CertificateNotFound, Store, StoreError, as_ca_error

ACTION = "ssh.revoke"
KRL_TTL = 1.0


def parse_ssh_serial(text: str) -> int:
    try:
        serial = int(text.strip(), 10)
    except ValueError:
        raise BadRequest(f"SSH serial {text[:64]!r} is not a decimal number") from None
    if not 0 < serial < 2**64:
        raise BadRequest("an SSH serial is a positive 64-bit number")
    return serial


class SSHRevocations:
    def __init__(self, store: Store, audit: AuditLog, provisioners: Provisioners, ssh: SSHCA,
                 audiences: frozenset[str]) -> None:
        self.store, self.audit, self.provisioners, self.ssh, self.audiences = store, audit, provisioners, ssh, audiences
        self._krl: tuple[float, bytes] | None = None
        self._lock = threading.Lock()

    def with_token(self, serial: int, reason: str, ott: str, ctx: RequestContext) -> bool:
        """Revoke `serial` on the word of a one-time token whose subject is that serial; True if newly revoked."""
        provisioner: str | None = None
        try:
            grant = verified_token(self.provisioners, ott, self.audiences)
            provisioner = grant.provisioner
            spend(self.store, grant.token)
            if grant.subject.strip() != str(serial):
                raise Forbidden(f"the token grants revoking SSH serial {grant.subject[:64]!r}, not {serial}")
            try:
                created = self.store.ssh.revoke(serial, reason)
            except CertificateNotFound:
                raise NotFound(f"no SSH certificate with serial {serial} was issued by this CA") from None
        except (CAError, StoreError) as exc:
            error = exc if isinstance(exc, CAError) else as_ca_error(exc)
            write_audit(self.audit, AuditEvent(action=ACTION, decision="denied" if error.status < 500 else "error",
                                               request_id=ctx.request_id, remote_addr=ctx.remote_addr,
                                               provisioner=provisioner, serial=str(serial), reasons=error.reasons,
                                               status=error.status))
            raise
        with self._lock:
            self._krl = None
        write_audit(self.audit, AuditEvent(action=ACTION, decision="allowed", request_id=ctx.request_id,
                                           remote_addr=ctx.remote_addr, provisioner=provisioner, serial=str(serial),
                                           status=200, details={"reason": reason, "first": created}))
        return created

    def krl(self) -> bytes:
        """The KRL of every SSH certificate revoked, for each CA key this CA publishes."""
        with self._lock:
            if self._krl is not None and time.monotonic() - self._krl[0] < KRL_TTL:
                return self._krl[1]
        revoked = self.store.ssh.revoked()
        blobs = {fingerprint(line): blob_of(line) for kind in ("user", "host")
                 for line in self.ssh.public_lines(kind)}
        data = build_krl({blobs[fp]: serials for fp, serials in revoked.items() if fp in blobs},
                         version=sum(len(s) for s in revoked.values()), generated_at=datetime.now(timezone.utc),
                         comment="hsmca")
        with self._lock:
            self._krl = (time.monotonic(), data)
        return data
