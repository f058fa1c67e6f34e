"""`hsmca appliance`: what the appliance image runs at boot, before `hsmca serve` (packer/files/hsmca-*.service).

`configure` (as root, every boot) reads `appliance.json` from the config disk and renders, under /run (the root
file system is read-only), the firewall allowlist, the network and the time servers; it hands the hsmca user
the dev password and gives it the data partition. `init` (as the hsmca user, once) makes the CA in dev mode.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import click

from appliance.atomic_file import write_atomically
from appliance.cli.common import fail

if TYPE_CHECKING:
    from appliance.cli.appliance_config import ApplianceConfig

DirType = click.Path(file_okay=False, path_type=Path)


@click.group()
def appliance() -> None:
    """The appliance image's boot steps (packer/README.md); not for general use."""


MAX_CONFIG_BYTES = 1 << 20  # appliance.json is a few KiB


def _load(config_dir: Path) -> ApplianceConfig:
    from pydantic import ValidationError

    from appliance.cli.appliance_config import ApplianceConfig

    path = config_dir / "appliance.json"
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            fail(f"{path} is larger than {MAX_CONFIG_BYTES} bytes: not an appliance configuration")
        return ApplianceConfig.model_validate(json.loads(data))
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc} (is the config disk, label HSMCA-CONFIG, attached?)")
    except (ValueError, RecursionError) as exc:  # JSON or validation (ValidationError is a ValueError)
        detail = exc.errors() if isinstance(exc, ValidationError) else f"{type(exc).__name__}: {exc}"
        fail(f"{path} is not a valid appliance configuration: {detail}")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text.encode(), mode)


@appliance.command()
@click.option("--config-dir", type=DirType, default=Path("/run/hsmca-config"), show_default=True,
              help="Where the config disk is mounted (read-only).")
@click.option("--run-dir", type=DirType, default=Path("/run"), show_default=True)
@click.option("--home", type=DirType, default=Path("/var/lib/hsmca"), show_default=True,
              help="The CA's home (the data partition).")
@click.option("--user", default="hsmca", show_default=True, help="The service user that owns the CA's home.")
def configure(config_dir: Path, run_dir: Path, home: Path, user: str) -> None:
    """Render the firewall allowlist, network and time configuration from the config disk (every boot)."""
    from appliance.cli.appliance_config import firewall_rules, networkd_conf, timesyncd_conf

    cfg = _load(config_dir)
    _write(run_dir / "hsmca" / "firewall.nft", firewall_rules(cfg))
    _write(run_dir / "systemd" / "network" / "50-wired.network", networkd_conf(cfg))
    _write(run_dir / "systemd" / "timesyncd.conf.d" / "hsmca.conf", timesyncd_conf(cfg))
    _write(run_dir / "hsmca" / "appliance.json", cfg.model_dump_json(indent=2))  # what `init` reads
    owner = shutil.chown if os.geteuid() == 0 else None
    if owner is not None:
        home.mkdir(parents=True, exist_ok=True)
        try:
            owner(home, user, user)
        except LookupError:
            fail(f"no user or group {user!r} to own {home}")
        home.chmod(0o700)
    password = config_dir / "password.txt"
    if cfg.mode == "dev" and password.exists():
        target = run_dir / "hsmca" / "password"
        _write(target, password.read_text(), 0o400)
        if owner is not None:
            owner(target, user, user)
    click.echo(f"appliance configured ({cfg.mode} mode): {len(cfg.outbound)} outbound rule(s), "
               f"ports {cfg.ports.https}/{cfg.ports.http}")


@appliance.command()
@click.option("--run-dir", type=DirType, default=Path("/run"), show_default=True)
@click.option("--home", type=DirType, default=Path("/var/lib/hsmca"), show_default=True)
def init(run_dir: Path, home: Path) -> None:
    """Make the CA the configuration asks for, once (dev mode: a SoftHSM CA on the data partition)."""
    from appliance.cli.devca import InitError, InitOptions, init_ca
    from kms.errors import KMSError

    if (home / "config" / "ca.json").exists():
        click.echo(f"the CA exists ({home / 'config' / 'ca.json'}): nothing to do")
        return
    cfg = _load(run_dir / "hsmca")
    if cfg.mode != "dev":
        fail("production mode (the ceremony's root and an HSM) is not supported by this image yet: use mode dev, "
             "or make the CA with `hsmca init --root` and `hsmca intermediate` on the data partition")
    try:
        password = (run_dir / "hsmca" / "password").read_bytes().rstrip(b"\r\n")
    except OSError:
        fail("dev mode needs password.txt on the config disk: the first provisioner's password")
    os.environ.pop("SOFTHSM2_CONF", None)  # the dev CA's own SoftHSM configuration, on the data partition
    try:
        result = init_ca(InitOptions(base=home, password=password, dns_names=cfg.dnsNames,
                                     address=f":{cfg.ports.https}", http_address=f":{cfg.ports.http}",
                                     public_url=cfg.publicURL))
    except (InitError, KMSError, OSError) as exc:  # as `hsmca init` reports them
        fail(str(exc))
    click.echo(f"dev CA made: root fingerprint {result.root_fingerprint}")
