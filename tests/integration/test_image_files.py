"""The appliance image's fast checks (packer/): template, scripts, firewall and service unit, without building.

`packer fmt`/`validate`, `shellcheck`, `nft -c` of the ruleset in a network namespace and the firewall's actual
behaviour between two namespaces made here, `systemd-analyze verify` of the unit against a stub root and its
`security` exposure. The full build and boot are `make image`, `make image-check`, `make image-boot`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

REPO = Path(__file__).resolve().parents[2]
PACKER = REPO / "packer"
FILES = PACKER / "files"


def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, **kw)  # type: ignore[call-overload]


def test_packer_template_is_formatted_and_valid(tmp_path: Path) -> None:
    fmt = run("packer", "fmt", "-check", "-diff", str(PACKER))
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    key = tmp_path / "build_key"  # validate parses it: a throwaway key, as scripts/disk.sh makes
    key.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    (tmp_path / "base.qcow2.sha256").write_text("0" * 64 + "  base.qcow2\n")
    (tmp_path / "wheelhouse").mkdir()
    done = run("packer", "validate", "-var", f"ssh_private_key_file={key}",
               "-var", f"wheelhouse={tmp_path / 'wheelhouse'}", "-var", f"output_directory={tmp_path / 'out'}",
               "-var", f"base_disk_checksum=file:{tmp_path / 'base.qcow2.sha256'}", str(PACKER / "hsmca.pkr.hcl"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_scripts_pass_shellcheck() -> None:
    scripts = sorted(str(p) for p in (PACKER / "scripts").glob("*.sh")) + [str(FILES / "hsmca-break-glass-audit")]
    assert scripts
    done = run("shellcheck", "--severity=style", *scripts)
    assert done.returncode == 0, done.stdout


def test_ruleset_and_allowlist_load_in_a_namespace() -> None:
    allow = ("flush chain inet hsmca allow_out\n"
             "add rule inet hsmca allow_out ip daddr 10.9.0.53 udp dport 53 accept\n"
             "flush set inet hsmca ca_ports\nadd element inet hsmca ca_ports { 443, 9080 }\n")
    done = run("unshare", "-n", "sh", "-c",
               f"nft -c -f {FILES / 'nftables.conf'} && nft -f {FILES / 'nftables.conf'} && nft -f - && "
               "nft list ruleset", input=allow)
    assert done.returncode == 0, done.stderr
    assert "policy drop" in done.stdout and "10.9.0.53 udp dport 53 accept" in done.stdout
    assert "elements = { 443, 9080 }" in done.stdout


# -- the firewall as a client sees it: two namespaces joined by a veth pair ---------------------------------------

NS = "hsmca-fw-test"


@pytest.fixture
def appliance_ns() -> Iterator[str]:
    """A namespace `NS` (10.77.0.2, the ruleset loaded) and the test's own namespace peer (10.77.0.1)."""
    run("ip", "netns", "del", NS)
    steps = [
        ("ip", "netns", "add", NS),
        ("ip", "link", "add", "hsfw0", "type", "veth", "peer", "name", "hsfw1"),
        ("ip", "link", "set", "hsfw1", "netns", NS),
        ("ip", "addr", "add", "10.77.0.1/24", "dev", "hsfw0"),
        ("ip", "link", "set", "hsfw0", "up"),
        ("ip", "-n", NS, "addr", "add", "10.77.0.2/24", "dev", "hsfw1"),
        ("ip", "-n", NS, "link", "set", "hsfw1", "up"),
        ("ip", "-n", NS, "link", "set", "lo", "up"),
        ("ip", "netns", "exec", NS, "nft", "-f", str(FILES / "nftables.conf")),
    ]
    try:
        for step in steps:
            done = run(*step)
            assert done.returncode == 0, f"{' '.join(step)}: {done.stderr}"
        yield NS
    finally:
        run("ip", "link", "del", "hsfw0")
        run("ip", "netns", "del", NS)


def _listen_in_ns(port: int) -> subprocess.Popen[str]:
    code = ("import socket,sys\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('0.0.0.0', {port})); s.listen(); print('ready', flush=True)\n"
            "while True:\n c,_=s.accept(); c.sendall(b'hello'); c.close()\n")
    proc = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _reaches(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.8) as conn:
            return conn.recv(5) == b"hello"
    except OSError:
        return False


def test_only_the_ca_ports_are_open_inbound_and_outbound_is_closed(appliance_ns: str) -> None:
    servers = [_listen_in_ns(port) for port in (9000, 9080, 22, 8080)]
    try:
        assert _reaches("10.77.0.2", 9000) and _reaches("10.77.0.2", 9080)
        assert not _reaches("10.77.0.2", 22) and not _reaches("10.77.0.2", 8080)  # dropped, not refused
        # Outbound: default deny until the allowlist names a destination.
        peer = socket.socket()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        peer.bind(("10.77.0.1", 0))
        peer.listen()
        port = peer.getsockname()[1]
        probe = ["ip", "netns", "exec", NS, sys.executable, "-c",
                 f"import socket; socket.create_connection(('10.77.0.1', {port}), timeout=0.8)"]
        assert run(*probe).returncode != 0
        allow = ("flush chain inet hsmca allow_out\n"
                 f"add rule inet hsmca allow_out ip daddr 10.77.0.1 tcp dport {port} accept\n")
        assert run("ip", "netns", "exec", NS, "nft", "-f", "-", input=allow).returncode == 0
        assert run(*probe).returncode == 0
        peer.close()
    finally:
        for s in servers:
            s.kill()
            s.wait()


UNITS = ("hsmca.service", "hsmca-config.service", "hsmca-init.service", "hsmca-break-glass.service")


def test_units_verify_and_the_service_is_sandboxed(tmp_path: Path) -> None:
    root = tmp_path / "root"  # a stub root: systemd's own units from this machine, stubs for the commands
    shutil.copytree("/usr/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    unit_dir = root / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True)
    for unit in UNITS:
        text = (FILES / unit).read_text()
        (unit_dir / unit).write_text(text)
        for line in text.splitlines():
            if line.startswith(("ExecStart", "ExecReload")):
                stub = root / line.split("=", 1)[1].split()[0].lstrip("-+!@:").lstrip("/")
                stub.parent.mkdir(parents=True, exist_ok=True)
                stub.write_text("#!/bin/sh\n")
                stub.chmod(0o755)
    verify = run("systemd-analyze", "verify", f"--root={root}", *(f"/etc/systemd/system/{u}" for u in UNITS))
    problems = [line for line in (verify.stdout + verify.stderr).splitlines()
                if "hsmca" in line and "ConditionPathExists" not in line]
    assert verify.returncode == 0 and not problems, verify.stdout + verify.stderr
    started = time.monotonic()
    security = run("systemd-analyze", "security", "--offline=yes", "--threshold=20", str(FILES / "hsmca.service"))
    assert security.returncode == 0, security.stdout + security.stderr
    exposure = float(security.stdout.rsplit("Overall exposure level for hsmca.service:", 1)[1].split()[0])
    assert exposure <= 2.0, security.stdout
    assert time.monotonic() - started < 10


def test_the_pinned_inputs_cover_what_the_image_needs() -> None:
    """Every runtime dependency of hsmca is pinned with a hash, and every listed Debian package is recorded."""
    import re
    import tomllib

    lock = [line.split() for line in (PACKER / "wheels.lock").read_text().splitlines() if not line.startswith("#")]
    pinned = {}
    for fields in lock:
        name, _, version = fields[0].partition("==")
        assert version and re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", fields[1]), fields
        pinned[name] = version
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["postgresql"] + \
        project["optional-dependencies"]["mysql"]
    for requirement in wanted:
        name = re.split(r"[\[<>=!~ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pinned, f"{name} (pyproject.toml) is not in packer/wheels.lock: run wheelhouse.sh --update-lock"
    recorded = {line.split()[0] for line in (PACKER / "packages.lock").read_text().splitlines()}
    listed = {w for line in (PACKER / "packages.txt").read_text().splitlines() if not line.startswith("#")
              for w in line.split()}
    assert listed and listed <= recorded, f"not in packer/packages.lock: {listed - recorded}"


def test_first_boot_allowlist_loads_over_the_base_ruleset() -> None:
    from appliance.cli.appliance_config import ApplianceConfig, firewall_rules

    cfg = ApplianceConfig.model_validate({
        "mode": "dev", "dnsNames": ["ca.internal"], "ntp": ["10.0.0.123", "2001:db8::123"],
        "network": {"address": "10.0.0.10/24", "gateway": "10.0.0.1", "dns": ["10.0.0.53"]},
        "outbound": [{"to": "10.0.5.0/24", "port": 5432, "why": "PostgreSQL"},
                     {"to": "2001:db8::7", "port": 514, "proto": "udp", "why": "syslog (SIEM)"}]})
    done = run("unshare", "-n", "sh", "-c", f"nft -f {FILES / 'nftables.conf'} && nft -f - && nft list ruleset",
               input=firewall_rules(cfg))
    assert done.returncode == 0, done.stderr
    assert 'ip6 daddr 2001:db8::7 udp dport 514 accept comment "syslog (SIEM)"' in done.stdout
    assert "elements = { 9000, 9080 }" in done.stdout
