"""`hsmca renew`: replace a certificate with its successor, once or as a daemon (step ca renew's habits)."""

from __future__ import annotations

import signal
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from appliance.cli.common import fail

ExistingFile = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command()
@click.argument("crt_file", type=ExistingFile)
@click.argument("key_file", type=ExistingFile)
@click.option("--ca-url", help="The CA's URL, e.g. https://ca.internal:9000 [default: from `hsmca bootstrap`].")
@click.option("--root", type=ExistingFile,
              help="The root certificate to trust [default: $HSMCA_PATH/certs/root_ca.crt].")
@click.option("--force", "-f", is_flag=True, help="Renew now, even before 2/3 of the lifetime has passed.")
@click.option("--bearer", is_flag=True,
              help="Authenticate with an x5c bearer token signed by the key instead of mTLS "
                   "(for a CA behind a TLS-terminating load balancer).")
@click.option("--exec", "exec_command", help="Shell command to run after each renewal (e.g. a reload).")
@click.option("--pid-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Signal the process whose pid this file holds after each renewal.")
@click.option("--signal", "signal_name", default="HUP", show_default=True, help="Signal sent with --pid-file.")
@click.option("--daemon", is_flag=True,
              help="Keep running: renew at about 2/3 of each lifetime (with jitter), retry with backoff "
                   "while the CA is unreachable, run the hooks after each renewal.")
def renew(crt_file: Path, key_file: Path, ca_url: str | None, root: Path | None, force: bool, bearer: bool,
          exec_command: str | None, pid_file: Path | None, signal_name: str, daemon: bool) -> None:
    """Renew the certificate in CRT_FILE (same names, same key, new validity) and replace the file.

    The CA accepts the certificate itself as the credential: over mTLS with KEY_FILE, or with --bearer a
    token signed by KEY_FILE. Without --force, a certificate younger than 2/3 of its lifetime is left alone.
    """
    from appliance.client.http import ClientError
    from appliance.client.renewal import Daemon, Hooks, RenewError, load_chain, renew_after, renew_once
    from appliance.serving import logs

    url, root_path = _ca(ca_url, root)
    if f"SIG{signal_name.upper().removeprefix('SIG')}" not in signal.Signals.__members__:
        fail(f"--signal {signal_name!r} is not a signal name (e.g. HUP, USR1)")
    hooks = Hooks(exec_command, pid_file, signal_name)
    if daemon:
        logs.setup()
        stop = threading.Event()

        def _stop(signum: int, frame: Any) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        try:
            Daemon(url, root_path, crt_file, key_file, bearer, hooks, stop).run()
        except RenewError as exc:
            fail(str(exc))
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
