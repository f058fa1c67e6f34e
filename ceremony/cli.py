"""`hsmca ceremony ...`: the offline commands. Imports kms/ and ceremony/ only, never the online service.

The ceremony modules load inside each command, so that `hsmca` on the appliance starts no slower.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

if TYPE_CHECKING:
    from ceremony.plan import Plan

PLAN = click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
                    help="The reviewed ceremony plan (YAML).")
DRY_RUN = click.option("--dry-run", is_flag=True,
                       help="Rehearse on a throwaway SoftHSM token in a temporary directory; the real HSM and "
                            "the plan's output directory are not touched.")
ALLOW_NETWORK = click.option("--allow-network", is_flag=True,
                             help="Run although a network interface other than loopback is up (recorded in the "
                                  "transcript). Without it the ceremony refuses to start on a connected machine.")


class TerminalPrompter:
    """The custodians' terminal; shares are typed at a hidden prompt, or read line by line from stdin."""

    @property
    def interactive(self) -> bool:
        return sys.stdin.isatty() and sys.stdout.isatty()

    def say(self, text: str) -> None:
        click.echo(text)

    def ask_hidden(self, prompt: str) -> str:
        if not sys.stdin.isatty():
            click.echo(f"{prompt}: ", nl=False, err=True)
            return sys.stdin.readline().strip()
        return str(click.prompt(prompt, hide_input=True, default="", show_default=False))

    def pause(self, prompt: str) -> None:
        click.prompt(prompt, default="", show_default=False, prompt_suffix=" ")

    def clear(self) -> None:
        click.clear()


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _plan(path: Path, kind: str) -> tuple[Plan, bytes]:
    from ceremony.plan import PlanError, load_plan

    try:
        plan, raw = load_plan(path)
    except PlanError as exc:
        _fail(str(exc))
    if plan.ceremony != kind:
        _fail(f"{path} is a plan for a {plan.ceremony} ceremony, not for this command")
    return plan, raw


@click.group()
def ceremony() -> None:
    """The offline root-key ceremony, on an air-gapped machine with the custodians present.

    \b
    hsmca ceremony plan --check PLAN         validate a plan, touching no HSM
    hsmca ceremony root --plan PLAN          token set-up, split PINs, root key, root certificate
    hsmca ceremony sign-intermediate --plan PLAN --csr FILE
                                             the root signs the appliance's intermediate CSR
    hsmca ceremony cross-sign --plan PLAN --new-root NEW    root rollover: the root signs the new root
    hsmca ceremony verify TRANSCRIPT --root ROOT [--intermediate CRT]
                                             an auditor checks the signed transcript

    Every step goes into a hash-chained transcript sealed with the root key. The plan format is
    in the README's operator guide.
    """


@ceremony.command("plan")
@click.option("--check", "plan_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The plan file to validate.")
def plan_cmd(plan_path: Path) -> None:
    """Validate a plan and print what the ceremony will do (no HSM is touched)."""
    from ceremony.plan import PlanError, describe, load_plan

    try:
        plan, _ = load_plan(plan_path)
    except PlanError as exc:
        _fail(str(exc))
    for line in describe(plan):
        click.echo(line)
    click.echo("plan OK")


@ceremony.command()
@PLAN
@DRY_RUN
@ALLOW_NETWORK
@click.option("--share-output", type=click.Path(file_okay=False, path_type=Path),
              help="Write each custodian's shares to DIR/<custodian>.so-pin.txt and .user-pin.txt (mode 0600) "
                   "instead of showing them on the screen. For rehearsals and tests only (a --dry-run always "
                   "writes its throwaway shares into its rehearsal directory).")
def root(plan_path: Path, dry_run: bool, allow_network: bool, share_output: Path | None) -> None:
    """Set up the token with split PINs, generate the root key in it, self-sign the root certificate.

    The SO PIN and the user PIN are random; each is split into one share per custodian (SLIP-39
    words), M of them needed later. Each custodian sees their words alone at the screen.
    """
    from ceremony.context import CeremonyError, Options
    from ceremony.network import NetworkUp
    from ceremony.plan import describe
    from ceremony.quorum import QuorumError
    from ceremony.root import run_root
    from ceremony.transcript import TranscriptError

    plan, raw = _plan(plan_path, "root")
    opts = Options(plan_path=plan_path, dry_run=dry_run, allow_network=allow_network, share_output=share_output)
    if dry_run:
        click.echo("DRY RUN: a throwaway SoftHSM token; nothing made here is for use.")
        for line in describe(plan):
            click.echo(f"  {line}")
    try:
        result = run_root(plan, raw, opts, TerminalPrompter())
    except (CeremonyError, QuorumError, NetworkUp, TranscriptError, OSError) as exc:
        _fail(str(exc))
    click.echo(f"Root certificate:   {result.certificate}")
    click.echo(f"SHA-256 fingerprint: {result.fingerprint}")
    click.echo(f"Token:              {result.token.label} (serial {result.token.serial})")
    click.echo(f"Share sets:         SO PIN {result.so_share_set}, user PIN {result.user_share_set}")
    click.echo(f"Transcript:         {result.transcript} (sealed)")
    if result.rehearsal_dir:
        click.echo(f"Rehearsal files:    {result.rehearsal_dir} (delete when done)")


CUSTODIANS = click.option("--custodian", "custodians", multiple=True,
                          help="A custodian of the signing root present to give a share (repeatable) "
                               "[default: every custodian, in plan order].")
SHARES_FROM = click.option("--shares-from", type=click.Path(file_okay=False, path_type=Path),
                           help="Read user-PIN shares from DIR/<custodian>.user-pin.txt instead of prompting. "
                                "For rehearsals and tests only.")


def _certify(kind: str, plan_path: Path, input_path: Path, what: str, dry_run: bool, allow_network: bool,
             custodians: tuple[str, ...], shares_from: Path | None) -> None:
    """What sign-intermediate and cross-sign share: read, rehearse or run, report."""
    from ceremony.context import CeremonyError, Options
    from ceremony.intermediate import run_cross_sign, run_intermediate
    from ceremony.network import NetworkUp
    from ceremony.plan import describe
    from ceremony.quorum import QuorumError
    from ceremony.transcript import TranscriptError

    plan, raw = _plan(plan_path, kind)
    try:
        data = input_path.read_bytes()
    except OSError as exc:
        _fail(f"cannot read the {what} {input_path}: {exc.strerror}")
    opts = Options(plan_path=plan_path, dry_run=dry_run, allow_network=allow_network, shares_from=shares_from,
                   custodians_present=custodians)
    if dry_run:
        click.echo("DRY RUN: a stand-in root on a throwaway SoftHSM token; shares are still checked.")
        for line in describe(plan):
            click.echo(f"  {line}")
    run = run_intermediate if kind == "intermediate" else run_cross_sign
    try:
        result = run(plan, raw, data, str(input_path), opts, TerminalPrompter())
    except QuorumError as exc:
        _fail(f"quorum refused: {str(exc).rstrip('.')}. Nothing was done on the HSM.")
    except (CeremonyError, NetworkUp, TranscriptError, OSError) as exc:
        _fail(str(exc))
    label = "Intermediate certificate:" if kind == "intermediate" else "Cross-certificate:"
    click.echo(f"{label:<26}{result.certificate}")
    click.echo(f"{'SHA-256 fingerprint:':<26}{result.fingerprint}")
    click.echo(f"{'Shares given by:':<26}{', '.join(result.custodians)}")
    click.echo(f"{'Transcript:':<26}{result.transcript} (sealed)")
    if result.rehearsal_dir:
        click.echo(f"{'Rehearsal files:':<26}{result.rehearsal_dir} (delete when done)")


@ceremony.command("sign-intermediate")
@PLAN
@click.option("--csr", "csr_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The CSR made by `hsmca intermediate csr` on the appliance (PEM or DER).")
@DRY_RUN
@ALLOW_NETWORK
@CUSTODIANS
@SHARES_FROM
def sign_intermediate(plan_path: Path, csr_path: Path, dry_run: bool, allow_network: bool,
                      custodians: tuple[str, ...], shares_from: Path | None) -> None:
    """Sign the appliance's intermediate CSR with the root key, after M custodians give their shares.

    Shares are typed at a hidden prompt (or read line by line from stdin when it is not a terminal).
    Too few shares, a mistyped or foreign share, or one given twice is refused before the HSM is opened.
    """
    _certify("intermediate", plan_path, csr_path, "CSR", dry_run, allow_network, custodians, shares_from)


@ceremony.command("cross-sign")
@PLAN
@click.option("--new-root", "new_root_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The new root certificate (from its own `ceremony root`) to cross-sign with this plan's root.")
@DRY_RUN
@ALLOW_NETWORK
@CUSTODIANS
@SHARES_FROM
def cross_sign(plan_path: Path, new_root_path: Path, dry_run: bool, allow_network: bool,
               custodians: tuple[str, ...], shares_from: Path | None) -> None:
    """Root rollover: the current root signs a certificate for the new root's key and subject.

    Appliance intermediates signed by the new root, installed with this cross-certificate as their
    chain (`hsmca intermediate install INT --chain CROSS`), validate for clients that trust either root.
    """
    _certify("cross-sign", plan_path, new_root_path, "new root", dry_run, allow_network, custodians, shares_from)


@ceremony.command()
@click.argument("transcript", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--root", "root_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The root certificate the auditor trusts (it must be an output of the transcript).")
@click.option("--intermediate", "intermediates", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="An intermediate certificate to check against the transcript and the root (repeatable).")
def verify(transcript: Path, root_path: Path, intermediates: tuple[Path, ...]) -> None:
    """Check a transcript: hash chain, the root key's seals, and the certificates it produced.

    Prints a summary for the auditor's file; exits 1 on any problem.
    """
    from ceremony.audit import verify_ceremony
    from ceremony.context import CeremonyError

    try:
        report, text = verify_ceremony(transcript, root_path, intermediates)
    except (CeremonyError, OSError) as exc:
        _fail(str(exc))
    click.echo(text)
    if not report.ok:
        sys.exit(1)
