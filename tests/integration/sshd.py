"""A real OpenSSH server (sshd) and client (ssh) on loopback, for integration tests of SSH certificates.

The server runs from its own config in a temporary directory on a free port of 127.0.0.1, never touching
/etc/ssh or a system sshd on port 22. `AuthorizedKeysFile none` means only certificates signed by a key in
`TrustedUserCAKeys` log in, and with no `AuthorizedPrincipalsFile` the certificate must list the user's name as
a principal. sshd needs root (to switch to the login user) and its privilege-separation directory /run/sshd.

sshd reads `RevokedKeys` on every authentication, either an OpenSSH KRL (`ssh-keygen -k`) or a plain list of
public keys one a line (a plain key revokes its certificates too; a CA key revokes every certificate it
signed). An unreadable or missing file fails closed: every key is refused.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself, so it must be started by absolute path
SSH = "/usr/bin/ssh"
PRIVSEP_DIR = Path("/run/sshd")
HOST = "127.0.0.1"
START_TIMEOUT = 15.0
# OpenSSH >= 9.8 penalises sources that fail to authenticate; tests make refused logins on purpose, all from
# 127.0.0.1, so turn it off where the option exists (older sshd rejects it as a bad option, and we drop it).
OPTIONAL_OPTIONS = ("PerSourcePenalties no",)


def available() -> str | None:
    """Why a real sshd cannot run here (a pytest skip reason), or None."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is missing: openssh-server is not installed (run `make deps` as root)"
    if not os.path.exists(SSH):
        return f"{SSH} is missing: openssh-client is not installed (run `make deps` as root)"
    if os.geteuid() != 0:
        return "a real sshd needs root (to create test users and switch to them)"
    return None


def _shadow_password(name: str) -> str | None:
    """The password field of `name` in /etc/shadow, or None if it has no entry."""
    for line in Path("/etc/shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name and len(fields) > 1:
            return fields[1]
    return None


def ensure_user(name: str) -> None:
    """Create the local login user `name` (home, /bin/sh) if missing, with password `*`: no password, not locked.

    With `UsePAM no`, sshd refuses a user whose password field is `!` (useradd's default) as locked.
    """
    if not name.startswith("hsmca-"):
        raise ValueError(f"test users are named hsmca-*, so they never clash with real ones: {name!r}")
    try:
        pwd.getpwnam(name)
    except KeyError:
        done = subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], capture_output=True, text=True)
        if done.returncode not in (0, 9):  # 9: created meanwhile by someone else
            raise RuntimeError(f"useradd {name} failed ({done.returncode}): {done.stderr.strip()}") from None
    if _shadow_password(name) != "*":
        subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True, text=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Sshd:
    """A running sshd: its port, its directory (config, pid file, log) and process."""

    port: int
    dir: Path
    proc: subprocess.Popen[bytes]

    @property
    def config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def log_path(self) -> Path:
        return self.dir / "sshd.log"

    def log(self) -> str:
        """Everything sshd has logged so far (it runs with -e, so its log is its stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Stop the listener (its process group); sessions in progress end with their connections."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def __enter__(self) -> Sshd:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _config(
    workdir: Path,
    port: int,
    host_key: Path,
    host_certificate: Path | None,
    trusted_user_ca_keys: Path | None,
    revoked_keys: Path | None,
    optional: tuple[str, ...],
) -> str:
    lines = [
        f"ListenAddress {HOST}:{port}",
        f"HostKey {host_key.resolve()}",
        *([f"HostCertificate {host_certificate.resolve()}"] if host_certificate else []),
        f"TrustedUserCAKeys {trusted_user_ca_keys.resolve() if trusted_user_ca_keys else 'none'}",
        *([f"RevokedKeys {revoked_keys.resolve()}"] if revoked_keys else []),
        "AuthorizedKeysFile none",
        "AuthorizedPrincipalsFile none",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "HostbasedAuthentication no",
        "UsePAM no",
        "PermitRootLogin no",
        "StrictModes no",
        "UseDNS no",
        "X11Forwarding no",
        "PrintMotd no",
        "PrintLastLog no",
        "Subsystem sftp internal-sftp",
        f"PidFile {workdir.resolve() / 'sshd.pid'}",
        "LogLevel DEBUG1",
        *optional,
    ]
    return "\n".join(lines) + "\n"


def _validate(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True, timeout=30)


def start_sshd(
    workdir: Path,
    *,
    host_key: Path,
    host_certificate: Path | None,
    trusted_user_ca_keys: Path | None,
    revoked_keys: Path | None = None,
) -> Sshd:
    """Start sshd on a free loopback port with a config in `workdir`; return once it sends its SSH banner.

    The host key is made mode 0600 (sshd refuses a readable one). Raises RuntimeError with sshd's output if the
    config does not validate (`sshd -t`) or the server does not answer within 15 s.
    """
    reason = available()
    if reason:
        raise RuntimeError(reason)
    workdir.mkdir(parents=True, exist_ok=True)
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    host_key.chmod(0o600)
    config = workdir / "sshd_config"
    optional: tuple[str, ...] = OPTIONAL_OPTIONS
    last_error = ""
    for _attempt in range(3):  # another process may take the free port before sshd binds it
        port = _free_port()
        config.write_text(
            _config(workdir, port, host_key, host_certificate, trusted_user_ca_keys, revoked_keys, optional)
        )
        checked = _validate(config)
        if checked.returncode != 0 and optional and "bad configuration option" in checked.stderr.lower():
            optional = tuple(o for o in optional if o.split()[0].lower() not in checked.stderr.lower())
            config.write_text(
                _config(workdir, port, host_key, host_certificate, trusted_user_ca_keys, revoked_keys, optional)
            )
            checked = _validate(config)
        if checked.returncode != 0:
            raise RuntimeError(
                f"sshd -t rejected {config} ({checked.returncode}):\n{checked.stdout}{checked.stderr}\n"
                f"config:\n{config.read_text()}"
            )
        log_path = workdir / "sshd.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [SSHD, "-f", str(config), "-D", "-e"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        server = Sshd(port=port, dir=workdir, proc=proc)
        if _wait_for_banner(server):
            return server
        server.stop()
        last_error = server.log()
        if "Address already in use" not in last_error:
            break
    raise RuntimeError(f"sshd did not answer on {HOST} within {START_TIMEOUT:.0f} s; its log:\n{last_error}")


def _wait_for_banner(server: Sshd) -> bool:
    """True once the server accepts a connection and sends `SSH-2.0-`; False if it exits or times out."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            return False
        try:
            with socket.create_connection((HOST, server.port), timeout=2) as s:
                if s.recv(64).startswith(b"SSH-2.0-"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def known_hosts_line(port: int, host_ca_public_key_line: str) -> str:
    """The known_hosts line trusting host certificates from this CA for 127.0.0.1 on `port`."""
    host = HOST if port == 22 else f"[{HOST}]:{port}"
    return f"@cert-authority {host} {host_ca_public_key_line.strip()}"


def ssh(
    port: int,
    user: str,
    key: Path,
    certificate: Path | None,
    known_hosts: Path,
    command: str = "echo ok",
    *,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """Run `command` as `user` on 127.0.0.1:`port` with the real ssh client: only this key (and certificate),
    only publickey authentication, strict host key checking against `known_hosts` alone, no agent, no user or
    system config. Not checked: a refusal is a non-zero return code (255) with ssh's reason in stderr.

    The key is made mode 0600 (ssh ignores a readable one). Like any `-i`, ssh also offers `<key>-cert.pub` if
    that file exists, even with `certificate` None. stderr is at debug1: it shows the host certificate check.
    """
    key.chmod(0o600)
    args = [
        SSH,
        "-F", "/dev/null",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts.resolve()}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none",
        "-o", "PreferredAuthentications=publickey",
        "-o", "ConnectTimeout=10",
        "-o", "LogLevel=DEBUG1",  # refusals and the host certificate check are logged at debug1
        "-i", str(key.resolve()),
    ]  # fmt: skip
    if certificate is not None:
        args += ["-o", f"CertificateFile={certificate.resolve()}"]
    args += ["-p", str(port), f"{user}@{HOST}", command]
    return subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
