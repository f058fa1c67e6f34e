"""`hsmca ssh`: the SSH CA keys (`init-ca`), SSH certificates from the CA (`certificate`), its keys (`roots`)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
from cryptography.exceptions import UnsupportedAlgorithm

from appliance.cli.client import _client_errors, _mint, _resolve, ca_options
from appliance.cli.common import PathType, fail

CONFIG = click.option("--config", "config_path", type=PathType,
                      help="Path to ca.json [default: $HSMCA_PATH/config/ca.json].")
SPECS = ["EC-P256", "EC-P384", "RSA-3072", "RSA-4096", "Ed25519"]


@click.group()
def ssh() -> None:
    """SSH certificates: the SSH CA keys, user and host certificates, the CA keys to trust."""


@ssh.command("init-ca")
@click.option("--kty", "spec", type=click.Choice(SPECS, case_sensitive=False), default="EC-P256",
              show_default=True, help="Key type of the new SSH CA keys (RSA signs with rsa-sha2-512; Ed25519 where "
                                      "the backend has it).")
@click.option("--user-key", help="Key URI for the user CA key [default: pkcs11:object=ssh-user-ca-<time>].")
@click.option("--host-key", help="Key URI for the host CA key [default: pkcs11:object=ssh-host-ca-<time>].")
@click.option("--rotate", is_flag=True, help="Make new keys even though ca.json has some: the old public keys stay "
                                             "published (ssh.federated…Keys) until you remove them.")
@CONFIG
def init_ca(spec: str, user_key: str | None, host_key: str | None, rotate: bool, config_path: Path | None) -> None:
    """Make the SSH user and host CA keys in the CA's KMS (non-extractable), name them in ca.json's `ssh` block and
    switch SSH signing on (`authority.claims.enableSSHCA`). `hsmca init` makes them already unless --no-ssh.
    Prints the lines sshd and known_hosts need."""
    from appliance.config import ConfigError, default_config_path, load_config, save_config

    path = config_path or default_config_path()
    try:
        config = load_config(path)
    except ConfigError as exc:
        fail(str(exc))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    try:
        made = make_ssh_ca(config, spec, user_key or f"pkcs11:object=ssh-user-ca-{stamp}",
                           host_key or f"pkcs11:object=ssh-host-ca-{stamp}", rotate=rotate)
    except SSHCAError as exc:
        fail(str(exc))
    save_config(config, path)
    click.echo(f"SSH user CA key: {made['user'][0]}\n  {made['user'][1]}")
    click.echo(f"SSH host CA key: {made['host'][0]}\n  {made['host'][1]}")
    click.echo("sshd trusts users with:  TrustedUserCAKeys <file holding the user CA line>")
    click.echo("clients trust hosts with: @cert-authority *.example.com <the host CA line>   (in known_hosts)")
    click.echo("Running servers pick it up on SIGHUP (or restart them).")


class SSHCAError(Exception):
    """The SSH CA keys could not be made; the message says why."""


def make_ssh_ca(config: Any, spec: str, user_key: str, host_key: str, *, rotate: bool = False
                ) -> dict[str, tuple[str, str]]:
    """Make both SSH CA keys in the KMS, set ca.json's `ssh` block (the caller saves it) and enableSSHCA, and audit
    it; {"user"|"host": (stored key URI, public key line)}. With `rotate`, the old public keys stay published."""
    from appliance.audit import AuditEvent
    from appliance.ca.intermediates import IntermediateError, stored_key_uri
    from appliance.ca.ssh import SSHCA, public_line
    from appliance.config import SSHConfig
    from appliance.ra.authority import Authority
    from kms import KeySpec, KMSError, create_key
    from policy import Claims

    current = config.ssh or SSHConfig()
    if (current.userKey or current.hostKey) and not rotate:
        raise SSHCAError("ca.json has SSH CA keys already (ssh.userKey/hostKey); --rotate makes new ones")
    config.apply_kms_environment()
    made: dict[str, tuple[str, str]] = {}
    try:
        for kind, given in (("user", user_key), ("host", host_key)):
            stored = stored_key_uri(given)
            key = create_key(config.key_uri(stored), KeySpec.parse(spec))
            made[kind] = (stored, public_line(key.public_key()))
    except (KMSError, IntermediateError, ValueError) as exc:
        raise SSHCAError(f"cannot make the SSH CA keys: {exc}") from None
    federated_user, federated_host = list(current.federatedUserKeys), list(current.federatedHostKeys)
    if rotate:
        old = SSHCA(config)
        federated_user += [line for line in old.public_lines("user") if line not in federated_user]
        federated_host += [line for line in old.public_lines("host") if line not in federated_host]
    config.ssh = current.model_copy(update={"userKey": made["user"][0], "hostKey": made["host"][0],
                                            "federatedUserKeys": federated_user, "federatedHostKeys": federated_host})
    claims = config.authority.claims.model_dump(exclude_none=True) if config.authority.claims else {}
    if claims.get("enableSSHCA") is None:
        config.authority.claims = Claims.model_validate({**claims, "enableSSHCA": True})
    authority = Authority.from_config(config)
    try:
        authority.record(AuditEvent(action="ssh.ca.create", decision="allowed", request_id="cli",
                                    details={"userKey": made["user"][1], "hostKey": made["host"][1],
                                             "rotate": rotate}))
    finally:
        authority.close()
    return made


def _ssh_public_line(key: Any) -> str:
    from appliance.ca.ssh import public_line

    return public_line(key)


def _ssh_line(blob: str) -> str:
    from appliance.ca.ssh import ssh_line

    try:
        return ssh_line(blob)
    except ValueError as exc:
        fail(f"the CA answered without an SSH key or certificate: {exc}")


@ssh.command("certificate")
@click.argument("key_id")
@click.argument("key_file", type=PathType)
@click.option("--host", is_flag=True, help="A host certificate (default: a user certificate).")
@click.option("--sign", "sign_only", is_flag=True, help="KEY_FILE is an existing public key (.pub): certify it, "
                                                        "make no key.")
@click.option("--principal", "principals", multiple=True,
              help="A principal (user name, or host name/IP) (repeatable) [default: KEY_ID].")
@click.option("--not-before", help="validAfter: RFC 3339 time or a duration from now.")
@click.option("--not-after", help="validBefore: RFC 3339 time or a duration from now (e.g. 8h).")
@click.option("--kty", type=click.Choice(["Ed25519", "EC", "RSA"], case_sensitive=False), default="Ed25519",
              show_default=True, help="Key type of the new key.")
@click.option("--no-agent", is_flag=True, help="Do not add a user certificate to the running ssh-agent.")
@click.option("--force", "-f", is_flag=True, help="Overwrite existing files.")
@ca_options
def certificate(key_id: str, key_file: Path, host: bool, sign_only: bool, principals: tuple[str, ...],
                not_before: str | None, not_after: str | None, kty: str, no_agent: bool, force: bool,
                ca_url: str | None, root: Path | None, provisioner: str, password_file: Path | None,
                provisioner_key: Path | None) -> None:
    """Get an SSH certificate for KEY_ID from the CA: a new key pair in KEY_FILE and KEY_FILE.pub (or, with --sign,
    the public key KEY_FILE), and the certificate in KEY_FILE-cert.pub. The one-time token is minted from a JWK
    provisioner's key, as for `hsmca certificate`. A user certificate goes into the running ssh-agent."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        load_ssh_public_key,
    )

    from appliance.atomic_file import write_atomically
    from appliance.client.http import CAClient

    cert_type = "host" if host else "user"
    base = key_file.with_suffix("") if sign_only and key_file.suffix == ".pub" else key_file
    cert_path = base.with_name(base.name + "-cert.pub")
    private_key: Any = None
    if sign_only:
        try:
            public_key = load_ssh_public_key(key_file.read_bytes())
        except (OSError, ValueError, UnsupportedAlgorithm) as exc:
            fail(f"{key_file}: not an SSH public key this CA certifies: {exc}")
    else:
        for path in (key_file, key_file.with_name(key_file.name + ".pub")):
            if path.exists() and not force:
                fail(f"{path} exists; use --force to overwrite it")
        kind = kty.lower()
        private_key = ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else \
            ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 3072)
        public_key = private_key.public_key()
    if cert_path.exists() and not force:
        fail(f"{cert_path} exists; use --force to overwrite it")
    names = list(dict.fromkeys(principals or (key_id,)))
    o = _resolve(ca_url, root, provisioner, password_file, provisioner_key)
    step = {"certType": cert_type, "keyID": key_id, "principals": names,
            "validAfter": not_before or "", "validBefore": not_after or ""}
    blob = _ssh_public_line(public_key).split()[1]
    try:
        ott = _mint(o, key_id, names, "ssh/sign", extra={"step": {"ssh": step}})
        resp = CAClient(o.ca_url, o.root).post_json("/ssh/sign", {
            "publicKey": blob, "ott": ott, "certType": cert_type, "keyID": key_id, "principals": names,
            "validAfter": not_before or "", "validBefore": not_after or ""})
    except _client_errors() as exc:
        fail(str(exc))
    line = _ssh_line(str(resp.get("crt", "")))
    if private_key is not None:
        write_atomically(key_file, private_key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()),
                         0o600)
        key_file.with_name(key_file.name + ".pub").write_text(_ssh_public_line(public_key) + "\n")
    cert_path.write_text(line + "\n")
    click.echo(f"Your certificate has been saved in {cert_path}.", err=True)
    if private_key is not None and not host and not no_agent and os.environ.get("SSH_AUTH_SOCK") \
            and shutil.which("ssh-add"):
        done = subprocess.run(["ssh-add", str(key_file)], capture_output=True, text=True, timeout=30)
        click.echo("The key and certificate were added to the ssh-agent." if done.returncode == 0 else
                   f"ssh-add failed: {done.stderr.strip()}", err=True)


@ssh.command("roots")
@click.option("--host", is_flag=True, help="The host CA keys (default: the user CA keys).")
@ca_options
def roots(host: bool, ca_url: str | None, root: Path | None, provisioner: str, password_file: Path | None,
          provisioner_key: Path | None) -> None:
    """Print the CA's SSH user (or --host) CA public keys, one `ssh-… AAAA…` line each: what sshd's
    TrustedUserCAKeys (or known_hosts' @cert-authority) should hold."""
    from appliance.client.http import CAClient

    o = _resolve(ca_url, root, provisioner, password_file, provisioner_key)
    try:
        data = CAClient(o.ca_url, o.root).get_json("/ssh/roots")
    except _client_errors() as exc:
        fail(str(exc))
    for blob in data.get("hostKey" if host else "userKey") or []:
        click.echo(_ssh_line(str(blob)))


@ssh.command("revoke")
@click.argument("serial")
@click.option("--reason", default="", help="Why (kept with the revocation, and in the audit trail).")
@click.option("--sshpop-cert", type=PathType, help="Revoke with the certificate itself (SSHPOP): its file …")
@click.option("--sshpop-key", type=PathType, help="… and its private key.")
@ca_options
def revoke(serial: str, reason: str, sshpop_cert: Path | None, sshpop_key: Path | None, ca_url: str | None,
           root: Path | None, provisioner: str, password_file: Path | None, provisioner_key: Path | None) -> None:
    """Revoke the SSH certificate with this SERIAL (decimal, as `ssh-keygen -L` shows it), with a one-time token
    from a JWK provisioner, or signed by the certificate's own key (--sshpop-cert/--sshpop-key). sshd stops
    accepting it once its `RevokedKeys` holds the CA's KRL (`GET /ssh/krl`)."""
    from appliance.client.http import CAClient
    from appliance.client.renewal import RenewError

    if not serial.isdigit():
        fail(f"SERIAL must be the decimal serial `ssh-keygen -L` shows, not {serial!r}")
    if (sshpop_cert is None) != (sshpop_key is None):
        fail("give both --sshpop-cert and --sshpop-key, or neither")
    o = _resolve(ca_url, root, provisioner, password_file, provisioner_key)
    try:
        if sshpop_cert is not None and sshpop_key is not None:
            _, ott = _sshpop(o, sshpop_cert, sshpop_key, "revoke", serial)
        else:
            ott = _mint(o, serial, [], "ssh/revoke")
        CAClient(o.ca_url, o.root).post_json("/ssh/revoke", {"serial": serial, "ott": ott, "reason": reason,
                                                             "passive": True})
    except _client_errors() as exc:
        fail(str(exc))
    except RenewError as exc:
        fail(str(exc))
    click.echo(f"SSH certificate {serial} is revoked; sshd refuses it once its RevokedKeys holds {o.ca_url}/ssh/krl")


def _sshpop(o: Any, cert: Path, key: Path, action: str, subject: str | None = None) -> tuple[Any, str]:
    """A client for the CA and an SSHPOP token for `/1.0/ssh/<action>`, signed with the host's current key."""
    from appliance.client.http import CAClient
    from appliance.client.tokens import find_provisioner, sshpop_token

    client = CAClient(o.ca_url, o.root)
    name = o.provisioner if o.provisioner != "admin" else str(find_provisioner(client, "", kind="SSHPOP")["name"])
    if subject is None:
        subject = str(_held(cert).serial)
    return client, sshpop_token(cert, key, name, subject, f"{client.ca_url}/1.0/ssh/{action}")


@ssh.command("renew")
@click.argument("cert_file", type=PathType)
@click.argument("key_file", type=PathType)
@click.option("--out", type=PathType, help="Write the new certificate here [default: replace CERT_FILE].")
@click.option("--rekey", "new_key", type=PathType, help="Rekey: make a new key pair in this file (and .pub) and "
                                                        "certify it instead of the current key.")
@click.option("--exec", "exec_command", help="Shell command to run after each renewal (e.g. reload sshd).")
@click.option("--pid-file", type=PathType, help="Signal the process whose pid this file holds after each renewal "
                                                "(sshd reads its host certificate again on SIGHUP).")
@click.option("--signal", "signal_name", default="HUP", show_default=True, help="Signal sent with --pid-file.")
@click.option("--daemon", is_flag=True, help="Keep running: renew at about 2/3 of each lifetime, run the hooks, back "
                                             "off while the CA is away or refuses (as `hsmca renew --daemon`).")
@ca_options
def renew(cert_file: Path, key_file: Path, out: Path | None, new_key: Path | None, exec_command: str | None,
          pid_file: Path | None, signal_name: str, daemon: bool, ca_url: str | None, root: Path | None,
          provisioner: str, password_file: Path | None, provisioner_key: Path | None) -> None:
    """Renew (or --rekey) a host certificate with the SSHPOP provisioner: the host signs the request with the key of
    its current certificate, which this CA issued and has not revoked. Same principals and lifetime, from now."""
    from appliance.cli.renew import _hooks, run_daemon
    from appliance.client.renewal import Daemon, RenewError

    o = _resolve(ca_url, root, provisioner, password_file, provisioner_key)
    hooks = _hooks(exec_command, pid_file, signal_name)
    if daemon:
        if new_key is not None or out is not None:
            fail("--daemon renews CERT_FILE in place: no --rekey, no --out")
        run_daemon(lambda stop: Daemon(o.ca_url, o.root, cert_file, key_file, False, hooks, stop,
                                       load=lambda: _held(cert_file),
                                       renew=lambda: _renew_once(o, cert_file, key_file, None, None)))
        return
    try:
        _renew_once(o, cert_file, key_file, out, new_key)
        hooks.run()
    except RenewError as exc:
        fail(str(exc))
    except _client_errors() as exc:
        fail(str(exc))


def _held(cert_file: Path) -> Any:
    """The SSH certificate in the file, as the renewal daemon sees it."""
    from cryptography.hazmat.primitives.serialization import load_ssh_public_identity
    from cryptography.hazmat.primitives.serialization.ssh import SSHCertificate

    from appliance.client.renewal import Held, RenewError

    try:
        cert = load_ssh_public_identity(cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise RenewError(f"cannot read the SSH certificate {cert_file}: {exc}") from None
    if not isinstance(cert, SSHCertificate):
        raise RenewError(f"{cert_file} holds a public key, not an SSH certificate")
    return Held(cert.serial, datetime.fromtimestamp(cert.valid_after, timezone.utc),
                datetime.fromtimestamp(min(cert.valid_before, 2**62), timezone.utc))


def _renew_once(o: Any, cert_file: Path, key_file: Path, out: Path | None, new_key: Path | None) -> Any:
    """One renewal (or rekey) by SSHPOP; the certificate written atomically; what was written, as `Held`."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    from appliance.atomic_file import write_atomically

    action = "rekey" if new_key is not None else "renew"
    made = ed25519.Ed25519PrivateKey.generate() if new_key is not None else None
    client, ott = _sshpop(o, cert_file, key_file, action)
    body: dict[str, Any] = {"ott": ott}
    if made is not None:
        body["publicKey"] = _ssh_public_line(made.public_key()).split()[1]
    resp = client.post_json(f"/ssh/{action}", body)
    crt = str(resp.get("crt", ""))
    kind = cert_file.read_text().split()[0]
    if made is not None and new_key is not None:
        write_atomically(new_key, made.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()), 0o600)
        new_key.with_name(new_key.name + ".pub").write_text(_ssh_public_line(made.public_key()) + "\n")
        kind = "ssh-ed25519-cert-v01@openssh.com"
    target = out or (new_key.with_name(new_key.name + "-cert.pub") if new_key is not None else cert_file)
    write_atomically(target, f"{kind} {crt}\n".encode(), 0o644)
    click.echo(f"Your {'rekeyed' if made else 'renewed'} certificate has been saved in {target}.", err=True)
    return _held(target)


@ssh.command("config")
@click.option("--host", is_flag=True, help="What a host needs (sshd_config lines, the user CA keys) instead of what a "
                                           "user needs (the known_hosts line for the host CA).")
@ca_options
def config(host: bool, ca_url: str | None, root: Path | None, provisioner: str, password_file: Path | None,
           provisioner_key: Path | None) -> None:
    """Print the configuration snippets for SSH with this CA (`POST /ssh/config`), each with the file it belongs
    in: for users the known_hosts line that trusts the host CA; for hosts (--host) the user CA keys and the
    sshd_config lines (TrustedUserCAKeys, HostCertificate, RevokedKeys)."""
    from appliance.client.http import CAClient

    o = _resolve(ca_url, root, provisioner, password_file, provisioner_key)
    try:
        data = CAClient(o.ca_url, o.root).post_json("/ssh/config", {"type": "host" if host else "user"})
    except _client_errors() as exc:
        fail(str(exc))
    for item in data.get("hostTemplates" if host else "userTemplates") or []:
        click.echo(f"# {item.get('path')} ({item.get('comment')})")
        click.echo(base64.b64decode(str(item.get("content", ""))).decode(), nl=False)


@ssh.command("inspect")
@click.argument("cert_file", type=PathType)
def inspect(cert_file: Path) -> None:
    """Show what an SSH certificate holds (as `ssh-keygen -L` does, from hsmca's side): type, key id, serial,
    principals, validity, critical options and extensions, and the CA key's fingerprint."""
    import hashlib

    from cryptography.hazmat.primitives.serialization import load_ssh_public_identity
    from cryptography.hazmat.primitives.serialization.ssh import SSHCertificate

    try:
        cert = load_ssh_public_identity(cert_file.read_bytes())
    except (OSError, ValueError, UnsupportedAlgorithm) as exc:
        fail(f"{cert_file}: not an SSH certificate: {exc}")
    if not isinstance(cert, SSHCertificate):
        fail(f"{cert_file} holds a public key, not a certificate")
    ca = base64.b64encode(hashlib.sha256(base64.b64decode(
        _ssh_public_line(cert.signature_key()).split()[1])).digest()).decode().rstrip("=")
    when = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat()  # noqa: E731
    click.echo(f"Type:        {'user' if cert.type.value == 1 else 'host'} certificate")
    click.echo(f"Key ID:      {cert.key_id.decode(errors='replace')}")
    click.echo(f"Serial:      {cert.serial}")
    click.echo(f"Signing CA:  SHA256:{ca}")
    click.echo(f"Valid:       from {when(cert.valid_after)} to {when(cert.valid_before)}")
    click.echo(f"Principals:  {', '.join(p.decode(errors='replace') for p in cert.valid_principals) or '(none)'}")
    for title, items in (("Critical:", cert.critical_options), ("Extensions:", cert.extensions)):
        click.echo(f"{title:12} {', '.join(k.decode(errors='replace') for k in items) or '(none)'}")


@ssh.command("rekey")
@click.argument("cert_file", type=PathType)
@click.argument("key_file", type=PathType)
@click.argument("new_key", type=PathType)
@click.option("--force", "-f", is_flag=True, help="Overwrite NEW_KEY (and its .pub and -cert.pub) if they exist.")
@ca_options
def rekey(cert_file: Path, key_file: Path, new_key: Path, force: bool, ca_url: str | None, root: Path | None,
          provisioner: str, password_file: Path | None, provisioner_key: Path | None) -> None:
    """Rekey a host certificate with SSHPOP: a new Ed25519 key pair in NEW_KEY (and NEW_KEY.pub), certified with the
    principals and lifetime of CERT_FILE (proved with KEY_FILE), in NEW_KEY-cert.pub."""
    from appliance.client.renewal import RenewError

    targets = (new_key, new_key.with_name(new_key.name + ".pub"), new_key.with_name(new_key.name + "-cert.pub"))
    for path in targets:
        if path.exists() and not force:
            fail(f"{path} exists; use --force to overwrite it")
    o = _resolve(ca_url, root, provisioner, password_file, provisioner_key)
    try:
        _renew_once(o, cert_file, key_file, None, new_key)
    except RenewError as exc:
        fail(str(exc))
    except _client_errors() as exc:
        fail(str(exc))


@ssh.command("retire-ca")
@click.argument("key")
@CONFIG
def retire_ca(key: str, config_path: Path | None) -> None:
    """Stop publishing a rotated-out SSH CA key: KEY is its `ssh-… AAAA…` line or its SHA256:… fingerprint (as
    `ssh-keygen -l` shows it). It leaves /ssh/roots, /ssh/federation and the KRL; relying parties should have
    moved to the new key first. The key that signs now cannot be retired (rotate first)."""
    import hashlib

    from appliance.audit import AuditEvent
    from appliance.config import ConfigError, default_config_path, load_config, save_config
    from appliance.ra.authority import Authority

    path = config_path or default_config_path()
    try:
        config = load_config(path)
    except ConfigError as exc:
        fail(str(exc))
    if config.ssh is None:
        fail(f"{path} has no ssh block")

    def fp(line: str) -> str:
        digest = hashlib.sha256(base64.b64decode(line.split()[1])).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def matches(line: str) -> bool:
        return line.split()[:2] == key.split()[:2] or fp(line) == key.strip()

    users = [line for line in config.ssh.federatedUserKeys if not matches(line)]
    hosts = [line for line in config.ssh.federatedHostKeys if not matches(line)]
    retired = len(config.ssh.federatedUserKeys) - len(users) + len(config.ssh.federatedHostKeys) - len(hosts)
    if not retired:
        fail(f"no federated (rotated-out) SSH CA key matches {key[:80]!r}; `hsmca ssh roots` lists the published ones")
    config.ssh = config.ssh.model_copy(update={"federatedUserKeys": users, "federatedHostKeys": hosts})
    authority = Authority.from_config(config)
    try:
        authority.record(AuditEvent(action="ssh.ca.retire", decision="allowed", request_id="cli",
                                    details={"key": key[:200]}))
    finally:
        authority.close()
    save_config(config, path)
    click.echo(f"Retired {retired} SSH CA key(s); running servers stop publishing them on SIGHUP.")
