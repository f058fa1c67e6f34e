"""step-ca's SSH API: `POST /ssh/sign` around `Authority.sign_ssh`, and the CA keys (`/ssh/roots`,
`/ssh/federation`). A certificate is answered as the base64 of its SSH wire blob (`crt`), as step-ca does."""

from __future__ import annotations

import base64
from typing import Any

import falcon

from appliance.api.middleware import read_json_object, remote_addr
from appliance.api.sign import MAX_OTT_LENGTH
from appliance.ca.ssh import MAX_PRINCIPALS, blob_of, load_public_key
from appliance.errors import BadRequest, CAError, NotFound
from appliance.ra.authority import Authority, RequestContext, SSHSignRequest
from appliance.ra.ssh_revoke import parse_ssh_serial

MAX_PUBLIC_KEY_LENGTH = 16 * 1024


def _text(body: dict[str, Any], name: str, limit: int = 1024) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"field {name!r} must be a string")
    if len(value) > limit:
        raise BadRequest(f"field {name!r} is longer than {limit} characters")
    return value


def parse_sign(body: dict[str, Any]) -> SSHSignRequest:
    ott = _text(body, "ott", MAX_OTT_LENGTH)
    if not ott:
        raise BadRequest("missing ott")
    key_text = _text(body, "publicKey", MAX_PUBLIC_KEY_LENGTH)
    if not key_text:
        raise BadRequest("missing publicKey")
    principals = body.get("principals") or []
    if not isinstance(principals, list) or not all(isinstance(p, str) and p for p in principals):
        raise BadRequest("field 'principals' must be a list of non-empty strings")
    if len(principals) > MAX_PRINCIPALS:
        raise BadRequest(f"at most {MAX_PRINCIPALS} principals")
    cert_type = _text(body, "certType")
    if cert_type not in ("", "user", "host"):
        raise BadRequest(f"certType must be 'user' or 'host', not {cert_type!r}")
    return SSHSignRequest(ott=ott, public_key=load_public_key(key_text), cert_type=cert_type,
                          key_id=_text(body, "keyID"), principals=tuple(dict.fromkeys(principals)),
                          valid_after=_text(body, "validAfter") or None,
                          valid_before=_text(body, "validBefore") or None)


class SSHSign:
    def __init__(self, authority: Authority):
        self.authority = authority

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = RequestContext(request_id=req.context.request_id, remote_addr=remote_addr(req))
        try:
            request = parse_sign(read_json_object(req))
        except CAError as exc:
            self.authority.reject("ssh.sign", ctx, exc)
            raise
        cert = self.authority.sign_ssh(request, ctx)
        resp.status = 201
        resp.media = {"crt": cert.public_bytes().split()[1].decode()}


class SSHKeys:
    """`/ssh/roots` and `/ssh/federation`: the user and host CA keys (base64 SSH blobs), the signing key first."""

    def __init__(self, authority: Authority):
        self.authority = authority

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        ssh = self.authority.ssh
        out = {"userKey": [base64.b64encode(blob_of(line)).decode() for line in ssh.public_lines("user")],
               "hostKey": [base64.b64encode(blob_of(line)).decode() for line in ssh.public_lines("host")]}
        if not out["userKey"] and not out["hostKey"]:
            raise NotFound("this CA has no SSH CA keys (no ssh block in ca.json; `hsmca ssh init-ca` makes them)")
        resp.media = {k: v for k, v in out.items() if v}


class SSHRevoke:
    """`POST /ssh/revoke` (step's body: `serial`, `reasonCode`, `reason`, `passive`, `ott`)."""

    def __init__(self, authority: Authority):
        self.authority = authority

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = RequestContext(request_id=req.context.request_id, remote_addr=remote_addr(req))
        try:
            body = read_json_object(req)
            serial = parse_ssh_serial(_text(body, "serial", 32))
            ott = _text(body, "ott", MAX_OTT_LENGTH)
            if not ott:
                raise BadRequest("missing ott (an SSH certificate is revoked with a one-time token whose sub is its "
                                 "serial)")
            reason = _text(body, "reason", 1000)
            if body.get("passive", True) is not True:
                raise BadRequest("only passive revocation is supported (as in step-ca)")
        except CAError as exc:
            self.authority.reject("ssh.revoke", ctx, exc)
            raise
        self.authority.ssh_revocations.with_token(serial, reason, ott, ctx)
        resp.media = {"status": "ok"}


class SSHKRL:
    """`GET /ssh/krl`: the Key Revocation List of every revoked SSH certificate (sshd's `RevokedKeys`)."""

    def __init__(self, authority: Authority):
        self.authority = authority

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = self.authority.ssh_revocations.krl()
        resp.content_type = "application/octet-stream"
        resp.set_header("Cache-Control", "max-age=60")


class SSHRenew:
    """`POST /ssh/renew` (`{"ott"}`) and `/ssh/rekey` (`{"ott", "publicKey"}`) with an SSHPOP token."""

    def __init__(self, authority: Authority, *, rekey: bool = False):
        self.authority, self.rekey = authority, rekey

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = RequestContext(request_id=req.context.request_id, remote_addr=remote_addr(req))
        action = "ssh.rekey" if self.rekey else "ssh.renew"
        try:
            body = read_json_object(req)
            ott = _text(body, "ott", MAX_OTT_LENGTH)
            if not ott:
                raise BadRequest("missing ott (an SSHPOP token signed by the current host certificate's key)")
            key = None
            if self.rekey:
                text = _text(body, "publicKey", MAX_PUBLIC_KEY_LENGTH)
                if not text:
                    raise BadRequest("missing publicKey")
                key = load_public_key(text)
        except CAError as exc:
            self.authority.reject(action, ctx, exc)
            raise
        cert = self.authority.renew_ssh(ott, ctx, key)
        resp.status = 201
        resp.media = {"crt": cert.public_bytes().split()[1].decode()}


class SSHCheckHost:
    """`POST /ssh/check-host` (`{"principal", "token"}` → `{"exists"}`): does a current host certificate name this
    principal? Unauthenticated, as in step-ca (its answer is what `ssh` learns by connecting anyway)."""

    def __init__(self, authority: Authority):
        self.authority = authority

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req)
        principal = _text(body, "principal", 255)
        if not principal:
            raise BadRequest("missing principal")
        resp.media = {"exists": self.authority.ssh_host_exists(principal)}


class SSHHosts:
    """`GET /ssh/hosts` (`{"hosts": [{"hostname"}…]}`): the principals of current host certificates, for a client
    holding an X.509 certificate from this CA (mTLS), as in step-ca."""

    def __init__(self, authority: Authority):
        self.authority = authority

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        from appliance.api.peer import client_certificate
        from appliance.errors import Unauthorized

        cert = client_certificate(req)
        if cert is None:
            raise Unauthorized("GET /ssh/hosts needs a client certificate from this CA (mTLS)")
        resp.media = {"hosts": [{"hostname": n} for n in self.authority.ssh_hosts(cert)]}


class SSHConfig:
    """`POST /ssh/config` (`{"type": "user"|"host"}`): the snippets a client or a host needs, step-ca's shape
    (`userTemplates`/`hostTemplates`: name, type, comment, path, content as base64)."""

    def __init__(self, authority: Authority):
        self.authority = authority

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req)
        kind = _text(body, "type") or "user"
        if kind not in ("user", "host"):
            raise BadRequest(f"type must be 'user' or 'host', not {kind!r}")
        ssh = self.authority.ssh
        trusted = ssh.public_lines("host" if kind == "user" else "user")
        if not trusted:
            raise NotFound(f"this CA has no SSH {'host' if kind == 'user' else 'user'} CA key")
        if kind == "user":
            files = [("known_hosts", "file", "hosts whose certificate this CA's host key signed",
                      "~/.ssh/known_hosts", "".join(f"@cert-authority * {line}\n" for line in trusted))]
        else:
            files = [("ca.pub", "file", "the user CA keys sshd trusts", "/etc/ssh/hsmca_user_ca.pub",
                      "".join(f"{line}\n" for line in trusted)),
                     ("sshd_config", "snippet", "add to sshd_config", "/etc/ssh/sshd_config",
                      "TrustedUserCAKeys /etc/ssh/hsmca_user_ca.pub\n"
                      "HostCertificate /etc/ssh/ssh_host_ed25519_key-cert.pub\n"
                      "RevokedKeys /etc/ssh/hsmca.krl\n")]
        key = "userTemplates" if kind == "user" else "hostTemplates"
        resp.media = {key: [{"name": n, "type": t, "comment": c, "path": p,
                             "content": base64.b64encode(content.encode()).decode()} for n, t, c, p, content in files]}
