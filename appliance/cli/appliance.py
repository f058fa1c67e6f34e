"""`hsmca appliance`: what the appliance image runs at boot, before `hsmca serve` (packer/files/hsmca-*.service).

`configure` (as root, every boot) reads `appliance.json` from the config disk and renders, under /run (the root
file system is read-only), the firewall allowlist, the network and the time servers; it hands the hsmca user the
config disk's files (passwords, PIN, the ceremony's certificates) and gives it the data disk. `init` (as the hsmca
user, every boot until the CA is complete) makes the CA: in dev mode a SoftHSM CA at once; in production mode, step
by step as the HSM and the ceremony's certificates arrive, exiting 75 (EX_TEMPFAIL: systemd tries again) with what
it waits for.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from appliance.atomic_file import write_atomically
from appliance.cli.common import fail

if TYPE_CHECKING:
    from appliance.cli.appliance_config import ApplianceConfig
    from appliance.store.records import IntermediateRecord

DirType = click.Path(file_okay=False, path_type=Path)


@click.group()
def appliance() -> None:
    """The appliance image's boot steps (packer/README.md); not for general use."""


MAX_CONFIG_BYTES = 1 << 20  # appliance.json is a few KiB
WAITING = 75  # EX_TEMPFAIL: hsmca-init.service runs again (RestartSec) until the CA is complete
# The config disk's files handed to the hsmca user under /run/hsmca: name on the disk -> (name there, mode).
HANDED = {"password.txt": ("password", 0o400), "hsm-pin.txt": ("hsm-pin", 0o400),
          "root_ca.crt": ("root_ca.crt", 0o444), "intermediate_ca.crt": ("intermediate_ca.crt", 0o444)}
MAX_HANDED_BYTES = 64 << 10


def _load(config_dir: Path) -> ApplianceConfig:
    from pydantic import ValidationError

    from appliance.cli.appliance_config import ApplianceConfig

    path = config_dir / "appliance.json"
    try:
        data = _read_plain_file(path, MAX_CONFIG_BYTES)
        if data is None:
            raise FileNotFoundError(2, "no such file")
        return ApplianceConfig.model_validate(json.loads(data))
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc} (is the config disk, label HSMCA-CONFIG, attached?)")
    except (ValueError, RecursionError) as exc:  # JSON or validation (ValidationError is a ValueError)
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'appliance.json'}: {e['msg']}" for e in exc.errors()) \
            if isinstance(exc, ValidationError) else f"{type(exc).__name__}: {exc}"
        fail(f"{path} is not a valid appliance configuration: {detail}")


def _read_plain_file(path: Path, limit: int) -> bytes | None:
    """A regular file of at most `limit` bytes from the config disk, None when absent. Not through a symlink (one
    on the disk could name /etc/shadow, read as root and handed to the hsmca user), nor a FIFO or device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if path.is_symlink():
            fail(f"{path} is a symbolic link: the config disk must hold the file itself")
        fail(f"cannot read {path}: {exc.strerror or exc}")
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            fail(f"{path} is not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        fail(f"{path} is larger than {limit} bytes")
    return data


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
@click.option("--shadow", type=click.Path(dir_okay=False, path_type=Path), default=Path("/etc/shadow"),
              show_default=True, help="The image's shadow file (break-glass copies it with its password set).")
def configure(config_dir: Path, run_dir: Path, home: Path, user: str, shadow: Path) -> None:
    """Render the firewall allowlist, network and time configuration from the config disk (every boot); with
    `breakGlass`, a shadow file with the break-glass password that hsmca-break-glass.service binds over /etc/shadow.
    """
    from appliance.cli.appliance_config import firewall_rules, networkd_conf, shadow_with_break_glass, timesyncd_conf

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
    glass = run_dir / "hsmca" / "shadow"
    if cfg.breakGlass is None:
        glass.unlink(missing_ok=True)
    else:
        try:
            _write(glass, shadow_with_break_glass(shadow.read_text(), cfg.breakGlass.passwordHash), 0o640)
        except (OSError, ValueError) as exc:
            fail(f"breakGlass: cannot prepare the console login: {getattr(exc, 'strerror', None) or exc}")
        if owner is not None:
            owner(glass, "root", "shadow")
    for name, (there, mode) in HANDED.items():
        source, target = config_dir / name, run_dir / "hsmca" / there
        data = _read_plain_file(source, MAX_HANDED_BYTES)
        if data is None:
            target.unlink(missing_ok=True)
            continue
        _write(target, data.decode(errors="replace"), mode)
        if owner is not None:
            owner(target, user, user)
    click.echo(f"appliance configured ({cfg.mode} mode): {len(cfg.outbound)} outbound rule(s), "
               f"ports {cfg.ports.https}/{cfg.ports.http}"
               + (", BREAK-GLASS console login enabled" if cfg.breakGlass else ""))


@appliance.command()
@click.option("--run-dir", type=DirType, default=Path("/run"), show_default=True)
@click.option("--home", type=DirType, default=Path("/var/lib/hsmca"), show_default=True)
@click.pass_context
def init(ctx: click.Context, run_dir: Path, home: Path) -> None:
    """Make the CA the configuration asks for (every boot; nothing to do once it is complete).

    \b
    dev:        a SoftHSM CA on the data disk, at once (password.txt: the first provisioner's password).
    production: with the HSM's module present and the ceremony's root_ca.crt on the config disk, the CA's
                configuration, then an intermediate key in the HSM and its CSR (printed, and in
                outbox/intermediate.csr on the data disk) for the ceremony; with the signed
                intermediate_ca.crt on the config disk, it is installed and the audit key made.
                Until then it exits 75 saying what it waits for.
    """
    cfg = _load(run_dir / "hsmca")
    handed = run_dir / "hsmca"
    if cfg.mode == "production":
        _production(ctx, cfg, handed, home)
    elif (home / "config" / "ca.json").exists():
        click.echo(f"the CA exists ({home / 'config' / 'ca.json'})")
        _upgrade_schema(home / "config" / "ca.json", home)
    else:
        _make_ca(cfg, home, handed, existing_token=False)
    _apply_syslog(cfg, home / "config" / "ca.json")


def _upgrade_schema(config_path: Path, home: Path) -> None:
    """After an upgrade to an image with newer migrations: a backup first (the rollback's way back), then migrate.

    A database newer than this image knows is a rollback after an upgrade that migrated it: `hsmca serve` would
    refuse it, so say which backup brings the CA back to this image's schema.
    """
    from appliance.cli.backup_archive import BackupError
    from appliance.cli.backup_write import write_backup
    from appliance.config import ConfigError, load_config
    from appliance.store import Store, StoreError
    from appliance.store.migrate import head_revision, known_revisions

    try:
        store = Store.from_config(load_config(config_path).db.model_dump(), home)
        try:
            current = store.schema_revision()
            if current == head_revision():
                return
            if current is not None and current not in known_revisions():
                backups = sorted((home / "backups").glob("pre-upgrade-*.tar.gz"))
                fail(f"the database's schema ({current}) is newer than this image knows ({head_revision()}): "
                     "a rollback after an upgrade that migrated it. Boot the newer image again, or restore the "
                     "backup made before that upgrade (`hsmca restore --force`): "
                     + (", ".join(str(b) for b in backups) or "none found under backups/"))
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            (home / "backups").mkdir(mode=0o700, exist_ok=True)
            backup = write_backup(config_path, home / "backups" / f"pre-upgrade-{current}-{stamp}.tar.gz")
            store.migrate()
        finally:
            store.close()
    except (ConfigError, StoreError, BackupError, OSError) as exc:
        fail(f"cannot bring the database to this image's schema: {getattr(exc, 'message', None) or exc}")
    click.echo(f"database migrated from {current} to {head_revision()}; the backup before it: {backup.archive}")


def _apply_syslog(cfg: ApplianceConfig, config_path: Path) -> None:
    """appliance.json decides the audit trail's syslog copy on the appliance: set (or removed) at every boot."""
    from appliance.config import ConfigError, SyslogConfig, load_config, save_config

    try:
        config = load_config(config_path)
        wanted = None if cfg.syslog is None else SyslogConfig(address=cfg.syslog.address(),
                                                              facility=cfg.syslog.facility)
        if config.audit.syslog == wanted:
            return
        config.audit = config.audit.model_copy(update={"syslog": wanted})
        save_config(config, config_path)
    except (ConfigError, OSError) as exc:
        fail(f"cannot set the audit trail's syslog copy in {config_path}: {getattr(exc, 'message', None) or exc}")
    click.echo(f"audit copy to syslog: {wanted.address if wanted else 'off'}")


def _wait(what: str) -> NoReturn:
    click.echo(f"waiting for {what}", err=True)
    raise SystemExit(WAITING)


def _make_ca(cfg: ApplianceConfig, home: Path, handed: Path, *, existing_token: bool) -> None:
    from appliance.cli.devca import InitError, InitOptions, init_ca
    from kms.errors import KMSError

    try:
        password = (handed / "password").read_bytes().rstrip(b"\r\n")
    except OSError:
        fail("password.txt is missing from the config disk: the first provisioner's password")
    options = InitOptions(base=home, password=password, dns_names=cfg.dnsNames, address=f":{cfg.ports.https}",
                          http_address=f":{cfg.ports.http}", public_url=cfg.publicURL)
    if existing_token:
        assert cfg.hsm is not None
        try:
            pin = (handed / "hsm-pin").read_text().strip()
        except OSError:
            fail("hsm-pin.txt is missing from the config disk: the HSM token's user PIN")
        options.root_certificate = (handed / "root_ca.crt").read_bytes()
        options.module, options.token_label, options.pin = cfg.hsm.module, cfg.hsm.token, pin
        options.existing_token = True
    else:
        os.environ.pop("SOFTHSM2_CONF", None)  # the dev CA's own SoftHSM configuration, on the data disk
    try:
        result = init_ca(options)
    except (InitError, KMSError, OSError) as exc:  # as `hsmca init` reports them
        fail(str(exc))
    click.echo(f"{'CA configuration' if existing_token else 'dev CA'} made: root fingerprint "
               f"{result.root_fingerprint}")


def _production(ctx: click.Context, cfg: ApplianceConfig, handed: Path, home: Path) -> None:
    """One step further each run, in the order the ceremony's paperwork arrives."""
    from appliance.cli.audit import init_key
    from appliance.cli.intermediate import csr, install
    from appliance.config import load_config

    assert cfg.hsm is not None
    config_path = home / "config" / "ca.json"
    if not Path(cfg.hsm.module).is_file():
        _wait(f"the HSM's PKCS#11 module {cfg.hsm.module} (the vendor's client library in the image)")
    if not config_path.exists():
        if not (handed / "root_ca.crt").is_file():
            _wait("the ceremony's root certificate: root_ca.crt on the config disk")
        _make_ca(cfg, home, handed, existing_token=True)
    records = _intermediates(config_path)
    if not any(r.certificate for r in records):
        signed = handed / "intermediate_ca.crt"
        if records and signed.is_file():
            ctx.invoke(install, config_path=config_path, certificate=signed, activate_at="now", chain_file=None)
        else:
            request = home / "outbox" / "intermediate.csr"
            if not records:
                request.parent.mkdir(mode=0o700, exist_ok=True)
                key = f"pkcs11:object=intermediate-{datetime.now(timezone.utc):%Y%m%d%H%M%S}"
                ctx.invoke(csr, config_path=config_path, key_uri=key, subject=cfg.hsm.intermediateSubject,
                           name=None, kty=cfg.hsm.keyType, use_existing=False, out=request)
                click.echo(request.read_text(), nl=False)  # to the journal and the console: the ceremony's input
            _wait(f"the intermediate's certificate: have the ceremony sign {request}, then put it on the config "
                  "disk as intermediate_ca.crt")
    _upgrade_schema(config_path, home)
    if load_config(config_path).audit.key is None:
        ctx.invoke(init_key, key_uri="pkcs11:object=audit", spec="EC-P256", existing=False, lifetime="87600h",
                   rotate=False, config_path=config_path)
    click.echo("the production CA is complete: hsmca serve can start")


def _intermediates(config_path: Path) -> list[IntermediateRecord]:
    from appliance.cli.common import opened_store

    with opened_store(config_path) as (_config, store):
        return store.intermediates.list()
