"""`hsmca renew` and `hsmca rekey`: replace a certificate with its successor, once or as a daemon, with
the same key or a new one (step ca renew's and step ca rekey's habits)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from appliance.cli.common import fail

if TYPE_CHECKING:
    from appliance.client.renewal import Daemon, Hooks

ExistingFile = click.Path(exists=True, dir_okay=False, path_type=Path)
F = TypeVar("F", bound=Callable[..., Any])


def _certificate_and_ca(command: F) -> F:
    """CRT_FILE KEY_FILE [--ca-url] [--root]: what renew and rekey both start from."""
    for decorate in reversed((
            click.argument("crt_file", type=ExistingFile),
            click.argument("key_file", type=ExistingFile),
            click.option("--ca-url",
                         help="The CA's URL, e.g. https://ca.internal:9000 [default: from `hsmca bootstrap`]."),
            click.option("--root", type=ExistingFile,
                         help="The root certificate to trust [default: $HSMCA_PATH/certs/root_ca.crt]."))):
        command = decorate(command)
    return command


@click.command()
@_certificate_and_ca
@click.option("--force", "-f", is_flag=True, help="Renew now, even before 2/3 of the lifetime has passed.")
@click.option("--bearer", is_flag=True,
              help="Authenticate with an x5c bearer token signed by the key instead of mTLS "
                   "(for a CA behind a TLS-terminating load balancer).")
@click.option("--exec", "exec_command", help="Shell command to run after each renewal (e.g. a reload).")
@click.option("--pid-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Signal the process whose pid this file holds after each renewal.")
@click.option("--signal", "signal_name", default="HUP", show_default=True, help="Signal sent with --pid-file.")
@click.option("--daemon", is_flag=True,
              help="Keep running: renew at about 2/3 of each lifetime (with jitter), run the hooks after "
                   "each renewal, retry every 1-60 s while the CA is unreachable, every 1 min-1 h while it "
                   "refuses (e.g. revoked); exit with status 3 once the certificate has expired and the CA "
                   "refuses it.")
def renew(crt_file: Path, key_file: Path, ca_url: str | None, root: Path | None, force: bool, bearer: bool,
          exec_command: str | None, pid_file: Path | None, signal_name: str, daemon: bool) -> None:
    """Renew the certificate in CRT_FILE (same names, same key, new validity) and replace the file.

    The CA accepts the certificate itself as the credential: over mTLS with KEY_FILE, or with --bearer a
    token signed by KEY_FILE. Without --force, a certificate younger than 2/3 of its lifetime is left alone.
    A revoked or expired certificate cannot be renewed: get a new one with `hsmca certificate`.
    """
    from appliance.client.http import ClientError
    from appliance.client.renewal import (
        Daemon,
        RenewError,
        load_chain,
        renew_after,
        renew_once,
    )

    url, root_path = _ca(ca_url, root)
    hooks = _hooks(exec_command, pid_file, signal_name)
    if daemon:
        run_daemon(lambda stop: Daemon(url, root_path, crt_file, key_file, bearer, hooks, stop))
        return
    try:
        leaf = load_chain(crt_file)[0]
        due = renew_after(leaf)
        if not force and datetime.now(timezone.utc) < due:
            click.echo(f"{crt_file} does not need renewal until {due.isoformat(timespec='seconds')} "
                       "(2/3 of its lifetime); use --force to renew now.", err=True)
            return
        new = renew_once(url, root_path, crt_file, key_file, bearer=bearer)
        click.echo(f"Your certificate has been saved in {crt_file}.", err=True)
        click.echo(f"Serial {new[0].serial_number}, valid until {new[0].not_valid_after_utc.isoformat()}.", err=True)
        hooks.run()
    except (ClientError, RenewError) as exc:
        fail(str(exc))


@click.command()
@_certificate_and_ca
@click.option("--bearer", is_flag=True,
              help="Authenticate with an x5c bearer token signed by the old key instead of mTLS "
                   "(for a CA behind a TLS-terminating load balancer).")
@click.option("--kty", type=click.Choice(["EC", "RSA", "OKP"], case_sensitive=False),
              help="Key type of the new key [default: the current key's type, curve and size].")
@click.option("--crv", "--curve", "crv", help="Curve: P-256, P-384, P-521 for EC; Ed25519 for OKP.")
@click.option("--size", type=int, help="RSA key size in bits (2048 if --kty RSA changes the type).")
@click.option("--out-cert", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the new certificate here instead of replacing CRT_FILE.")
@click.option("--out-key", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the new key here instead of replacing KEY_FILE.")
@click.option("--force", "-f", is_flag=True, help="Overwrite existing --out-cert/--out-key files.")
@click.option("--exec", "exec_command", help="Shell command to run after the rekey (e.g. a reload).")
@click.option("--pid-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Signal the process whose pid this file holds after the rekey.")
@click.option("--signal", "signal_name", default="HUP", show_default=True, help="Signal sent with --pid-file.")
def rekey(crt_file: Path, key_file: Path, ca_url: str | None, root: Path | None, bearer: bool, kty: str | None,
          crv: str | None, size: int | None, out_cert: Path | None, out_key: Path | None, force: bool,
          exec_command: str | None, pid_file: Path | None, signal_name: str) -> None:
    """Replace the key of the certificate in CRT_FILE: a new key made here, a new certificate for the same names.

    The old certificate and KEY_FILE are the credential (mTLS, or --bearer); the new key never leaves this
    machine (the CA gets a CSR). By default the new key replaces KEY_FILE (mode 0600) and the new certificate
    CRT_FILE. The key is written first, to KEY_FILE.new, before the CA is asked; the certificate then goes to
    CRT_FILE.new; then the key is renamed into place, then the certificate, so a crash never leaves a new
    certificate beside the old key, and a run interrupted between the renames is finished by the next one.
    A revoked or expired certificate cannot be rekeyed: get a new one with `hsmca certificate`.
    """
    from appliance.client.http import ClientError
    from appliance.client.keys import KeyOptionError, generate_key
    from appliance.client.rekey import RekeyFiles, finish_interrupted_rekey, key_options_like, rekey_once
    from appliance.client.renewal import RenewError, load_key

    url, root_path = _ca(ca_url, root)
    hooks = _hooks(exec_command, pid_file, signal_name)
    files = RekeyFiles(crt_file, key_file, out_cert or crt_file, out_key or key_file)
    for given, current in ((out_cert, crt_file), (out_key, key_file)):
        if given is not None and given.exists() and not given.samefile(current) and not force:
            fail(f"{given} exists; use --force to overwrite it")
    if files.out_crt.absolute() == files.out_key.absolute():
        fail("the certificate and the key cannot go to the same file")
    try:
        finished = finish_interrupted_rekey(files)
        if finished is not None:
            click.echo(f"Finished an interrupted rekey: {files.out_crt} and {files.out_key} hold the new pair "
                       f"(serial {finished[0].serial_number}); run again for another key.", err=True)
            hooks.run()
            return
        new_key = generate_key(*key_options_like(load_key(key_file), kty, crv, size))
        new = rekey_once(url, root_path, files, new_key, bearer=bearer)
        click.echo(f"Your certificate has been saved in {files.out_crt}.", err=True)
        click.echo(f"Your private key has been saved in {files.out_key}.", err=True)
        click.echo(f"Serial {new[0].serial_number}, valid until {new[0].not_valid_after_utc.isoformat()}.", err=True)
        hooks.run()
    except (ClientError, RenewError, KeyOptionError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write {exc.filename}: {exc.strerror}")


def run_daemon(make: Callable[[threading.Event], Daemon]) -> None:
    """Run a renewal daemon until SIGTERM/SIGINT; exit EXIT_UNRENEWABLE when nothing can renew the certificate."""
    from appliance.client.renewal import EXIT_UNRENEWABLE, CannotRenew, RenewError
    from appliance.serving import logs

    logs.setup()
    stop = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        make(stop).run()
    except CannotRenew as exc:
        fail(str(exc), EXIT_UNRENEWABLE)
    except RenewError as exc:
        fail(str(exc))


def _hooks(exec_command: str | None, pid_file: Path | None, signal_name: str) -> Hooks:
    from appliance.client.renewal import Hooks

    if f"SIG{signal_name.upper().removeprefix('SIG')}" not in signal.Signals.__members__:
        fail(f"--signal {signal_name!r} is not a signal name (e.g. HUP, USR1)")
    return Hooks(exec_command, pid_file, signal_name)


def _ca(ca_url: str | None, root: Path | None) -> tuple[str, Path | None]:
    from appliance.client.defaults import DefaultsError, load_defaults

    try:
        d = load_defaults()
    except DefaultsError as exc:
        fail(str(exc))
    url = ca_url or d.ca_url
    if not url:
        fail("no CA URL: give --ca-url or run `hsmca bootstrap` first")
    return url, root or d.root
