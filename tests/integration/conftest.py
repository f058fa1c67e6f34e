"""A real dev CA (SoftHSM token, SQLite) per test module, and a running `hsmca serve` on demand."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from appliance.certutil import fingerprint, load_certificates
from appliance.cli.devca import InitOptions, init_ca
from appliance.config import CAConfig, ProvisionerConfig, load_config
from appliance.provisioners import jose
from kms import KeySpec
from kms.uri import parse_key_uri

REPO = Path(__file__).resolve().parents[2]
# The console script, as users run it (`python -m` would put the working directory on sys.path).
HSMCA = str(Path(sys.executable).parent / "hsmca")
PASSWORD = b"integration-test-password"


@dataclass
class DevCA:
    base: Path
    config_path: Path
    password_file: Path
    token_label: str

    @property
    def config(self) -> CAConfig:
        return load_config(self.config_path)

    @property
    def root(self) -> Path:
        return self.base / "certs" / "root_ca.crt"

    @property
    def intermediate(self) -> Path:
        return self.base / "certs" / "intermediate_ca.crt"

    @property
    def root_fingerprint(self) -> str:
        return fingerprint(load_certificates(self.root)[0])

    @property
    def audit_path(self) -> Path:
        return self.base / "audit" / "audit.jsonl"

    def audit_events(self) -> list[dict[str, Any]]:
        from appliance.audit import read_events

        return read_events(self.audit_path)

    def provisioner_key(self) -> jose.PublicKey:
        prov = self.config.authority.provisioners[0]
        assert isinstance(prov, ProvisionerConfig) and prov.encryptedKey, "the first provisioner is hsmca init's JWK"
        return jose.decrypt_jwk(prov.encryptedKey, PASSWORD)

    def edit_config(self, change: Callable[[dict[str, Any]], None]) -> None:
        data = json.loads(self.config_path.read_text())
        change(data)
        self.config_path.write_text(json.dumps(data, indent=2))

    def env(self) -> dict[str, str]:
        return {**os.environ, "HSMCA_PATH": str(self.base)}


def make_ca(base: Path, spec: KeySpec = KeySpec.EC_P256, **kw: Any) -> DevCA:
    base.mkdir(parents=True, exist_ok=True)
    pw = base / "password.txt"
    pw.write_bytes(PASSWORD + b"\n")
    label = f"ca-{secrets.token_hex(4)}"
    result = init_ca(InitOptions(base=base, password=PASSWORD, key_spec=spec, token_label=label, **kw))
    return DevCA(base, result.config_path, pw, label)


@pytest.fixture(scope="module")
def dev_ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    """A dev CA with an EC P-256 root and intermediate in its own SoftHSM token."""
    return make_ca(tmp_path_factory.mktemp("ca"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@dataclass
class Server:
    ca: DevCA
    proc: subprocess.Popen[bytes]
    url: str
    http_url: str
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list[int]:
        """The HTTPS worker processes (children of the supervisor)."""
        return [p for p in children_of(self.proc.pid) if "appliance.serving.https" in cmdline(p)]

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(f"{self.url}{path}", verify=str(self.ca.root), **{"timeout": 10, **kw})

    def post(self, path: str, **kw: Any) -> requests.Response:
        return requests.post(f"{self.url}{path}", verify=str(self.ca.root), timeout=30, **kw)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def start_server(ca: DevCA, *, workers: int = 2, env: dict[str, str] | None = None,
                 timeout: float = 60, port: int | None = None, http_port: int | None = None) -> Server:
    """`hsmca serve` on free ports, or on the given ones (to restart a CA where its clients expect it)."""
    port, http_port = port or free_port(), http_port or free_port()
    log_path = ca.base / f"serve-{port}.log"
    proc = subprocess.Popen(
        [HSMCA, "serve", "--address", f"127.0.0.1:{port}",
         "--http-address", f"127.0.0.1:{http_port}", "--workers", str(workers)],
        env={**ca.env(), **(env or {})}, cwd=REPO, stdout=log_path.open("ab"), stderr=subprocess.STDOUT)
    server = Server(ca, proc, f"https://localhost:{port}", f"http://127.0.0.1:{http_port}", log_path,
                    env or {})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hsmca serve exited with {proc.returncode}:\n{server.log()}")
        try:
            if server.get("/health").ok and requests.get(f"{server.http_url}/health", timeout=2).ok:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.2)
    server.stop()
    raise AssertionError(f"hsmca serve did not become healthy:\n{server.log()}")


@pytest.fixture(scope="module")
def server(dev_ca: DevCA) -> Iterator[Server]:
    s = start_server(dev_ca)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def short_lived_ca(dev_ca: DevCA) -> DevCA:
    """The module's CA, allowing certificates down to one second (renewal tests need them to age quickly)."""
    dev_ca.edit_config(lambda cfg: cfg["authority"].update(claims={"minTLSCertDuration": "1s"}))
    return dev_ca


@pytest.fixture(scope="module")
def short_lived_server(short_lived_ca: DevCA) -> Iterator[Server]:
    s = start_server(short_lived_ca)
    yield s
    s.stop()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def hsmca(ca: DevCA, *args: str, check: bool = True, input: str | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the `hsmca` command the way a user does (a new process, HSMCA_PATH set)."""
    result = subprocess.run([HSMCA, *args], cwd=ca.base,
                            env={**ca.env(), **(env or {})}, capture_output=True, text=True,
                            input=input, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"hsmca {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def openssl_verify_chain(root: Path, chain: Path) -> str:
    """`openssl verify` of a chain file (leaf first) against `root` only; returns what openssl printed."""
    done = subprocess.run(["openssl", "verify", "-CAfile", str(root), "-untrusted", str(chain), str(chain)],
                          capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def init_with_intermediate_key(base: Path, uri: str, env: dict[str, str] | None = None) -> DevCA:
    """`hsmca init --intermediate-key URI` as a user runs it, on a SoftHSM token of its own."""
    base.mkdir(parents=True, exist_ok=True)
    password = base / "password.txt"
    password.write_bytes(PASSWORD + b"\n")
    label = f"ca-{secrets.token_hex(4)}"  # the session's SoftHSM directory is shared
    done = subprocess.run([HSMCA, "init", "--password-file", str(password), "--intermediate-key", uri,
                           "--token-label", label],
                          env={**os.environ, "HSMCA_PATH": str(base / "ca"), **(env or {})},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"Intermediate key:         {parse_key_uri(uri).redacted()}" in done.stdout, done.stdout
    return DevCA(base / "ca", base / "ca" / "config" / "ca.json", password, label)


def issue_through(server: Server, name: str, env: dict[str, str] | None = None) -> Path:
    """A certificate from the running CA through `hsmca certificate`; its chain must pass openssl."""
    ca = server.ca
    hsmca(ca, "certificate", name, f"{name}.crt", f"{name}.key", "--ca-url", server.url, "--root", str(ca.root),
          "--provisioner", "admin", "--password-file", str(ca.password_file), "--force", env=env)
    leaf = ca.base / f"{name}.crt"
    verified = openssl_verify_chain(ca.root, leaf)
    assert ": OK" in verified, verified
    return leaf


@pytest.fixture(scope="module")
def http01() -> Iterator[Any]:
    """A loopback http-01 responder (tests/integration/acme_client.py), one per module."""
    from tests.integration.acme_client import ChallengeServer

    server = ChallengeServer()
    yield server
    server.stop()
