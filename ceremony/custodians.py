"""Shares between the machine and the custodians: shown one custodian at a time, or typed back.

On the day, shares are displayed to each custodian alone and typed back at a hidden prompt.
Files (`--share-output`, `--shares-from`) exist for rehearsals and tests; the transcript records
which way the shares went, never the shares themselves.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from ceremony.quorum import QuorumError, ShareSet

SO_PIN, USER_PIN = "so-pin", "user-pin"


class Prompter(Protocol):
    """The terminal, as the ceremony needs it (the CLI gives a click-based one)."""

    def say(self, text: str) -> None: ...

    def ask_hidden(self, prompt: str) -> str: ...

    def pause(self, prompt: str) -> None: ...

    def clear(self) -> None: ...

    @property
    def interactive(self) -> bool: ...


def share_file(directory: Path, custodian: str, kind: str) -> Path:
    return directory / f"{custodian}.{kind}.txt"


def check_share_files_absent(directory: Path, custodians: Sequence[str], kinds: Sequence[str]) -> None:
    """Before anything is made: an existing share file would be overwritten, and one set lost."""
    existing = [str(share_file(directory, c, k)) for c in custodians for k in kinds
                if share_file(directory, c, k).exists()]
    if existing:
        raise QuorumError(f"share files already exist ({', '.join(existing)}); move them away first")


def write_share_files(directory: Path, sets: Mapping[str, ShareSet]) -> list[Path]:
    """One file per custodian and PIN, mode 0600, never overwriting (O_EXCL)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = []
    for kind, share_set in sets.items():
        for custodian, words in share_set.shares.items():
            path = share_file(directory, custodian, kind)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(words + "\n")
            written.append(path)
    return written


def display_shares(sets: Mapping[str, ShareSet], custodians: Sequence[str], io: Prompter) -> None:
    """Each custodian alone at the screen: show their words, wait, clear."""
    if not io.interactive:
        raise QuorumError("shares are shown on a terminal, one custodian at a time: run on a terminal, "
                          "or pass --share-output DIR for a rehearsal")
    for custodian in custodians:
        io.clear()
        io.pause(f"Custodian {custodian}: come to the screen alone, then press Enter to see your shares")
        for kind, share_set in sets.items():
            words = share_set.shares[custodian].split()
            io.say(f"\n{custodian}'s {kind.replace('-', ' ').upper()} share (set {share_set.identifier}, "
                   f"{share_set.threshold} of {len(share_set.shares)} needed), {len(words)} words:")
            for i in range(0, len(words), 5):
                io.say("   " + "  ".join(f"{i + j + 1:2d}. {w}" for j, w in enumerate(words[i:i + 5])))
        io.pause("\nWrite the words down, check them, then press Enter to clear the screen")
    io.clear()


def read_share_files(directory: Path, custodians: Sequence[str], kind: str) -> dict[str, str]:
    """The shares of the custodians present, from their files."""
    shares = {}
    for custodian in custodians:
        path = share_file(directory, custodian, kind)
        try:
            shares[custodian] = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise QuorumError(f"no {kind} share for custodian {custodian}: {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise QuorumError(f"cannot read {custodian}'s share from {path}: {exc}") from None
    return shares


def prompt_shares(custodians: Sequence[str], threshold: int, kind: str, io: Prompter) -> dict[str, str]:
    """Ask the custodians present, in plan order, until `threshold` shares are in (Enter = absent)."""
    shares: dict[str, str] = {}
    for custodian in custodians:
        if len(shares) == threshold:
            break
        words = io.ask_hidden(f"{custodian}: type your {kind.replace('-', ' ')} share (Enter if absent)").strip()
        if words:
            shares[custodian] = words
    return shares
