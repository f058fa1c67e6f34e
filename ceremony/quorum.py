"""M-of-N custody of token PINs: a random secret split into SLIP-39 word shares, one per custodian.

No single person ever knows a PIN: the ceremony generates a random secret, logs the token in with
its hex form, and hands each custodian one mnemonic. To use the token again, M custodians type their
words; `combine` checks every share (who gave it, whose it is, which split it belongs to) and
refuses with a message naming the custodians before anything touches the HSM, so a typo or a mix-up
costs nothing. The Shamir arithmetic, checksums and word list are the `shamir-mnemonic` library's.

CPython cannot wipe memory: secrets, PINs and mnemonics live in immutable `bytes`/`str` objects
that the interpreter frees (and may leave in memory) when it likes. The best a caller can do is to
keep them in as few objects as possible and drop every reference as soon as the HSM login is done.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import shamir_mnemonic
from shamir_mnemonic import MnemonicError, Share

PIN_SECRET_BYTES = 16
MAX_CUSTODIANS = 16  # SLIP-39 encodes the member index in 4 bits
# 0 keeps PBKDF2 at 10 000 iterations: the secret is random, so stretching adds nothing but delay.
ITERATION_EXPONENT = 0


class QuorumError(Exception):
    """A refusal whose message is shown to the custodians as is."""


@dataclass(frozen=True)
class ShareSet:
    """The result of one split: every share carries `identifier`, so shares of two splits never mix."""

    identifier: int
    threshold: int
    shares: dict[str, str]  # custodian name -> mnemonic (space-separated words)


@dataclass(frozen=True)
class ShareInfo:
    """What a share says about itself, readable without any other share."""

    identifier: int
    threshold: int  # member threshold: how many shares of this split are needed
    index: int  # member index: position of its custodian in the split's custodian list
    word_count: int


def new_secret() -> bytes:
    """A fresh random PIN secret (128 bits, the SLIP-39 minimum)."""
    return secrets.token_bytes(PIN_SECRET_BYTES)


def pin_from_secret(secret: bytes) -> str:
    """The token PIN for a secret: 32 lowercase hex characters, typable on any PIN pad or keyboard."""
    return secret.hex()


def normalise(mnemonic: str) -> str:
    """Words as the library expects them: lowercase, single spaces (people paste with newlines)."""
    return " ".join(mnemonic.lower().split())


def _validate_custodians(custodians: Sequence[str], threshold: int) -> None:
    names = list(custodians)
    if not 1 <= len(names) <= MAX_CUSTODIANS:
        raise QuorumError(f"a quorum needs 1 to {MAX_CUSTODIANS} custodians, not {len(names)}")
    if any(not name or not name.strip() for name in names):
        raise QuorumError("every custodian needs a non-empty name")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise QuorumError(f"custodian names must be unique; repeated: {', '.join(repeated)}")
    if not 1 <= threshold <= len(names):
        raise QuorumError(f"the threshold must be between 1 and {len(names)} (the number of custodians), "
                          f"not {threshold}")
    if threshold == 1 and len(names) > 1:
        # SLIP-39 refuses 1-of-N: every share would simply be the whole secret.
        raise QuorumError(f"a 1-of-{len(names)} quorum is not allowed (each share would be the whole PIN); "
                          "use a threshold of at least 2, or a single custodian")


def split_secret(secret: bytes, custodians: Sequence[str], threshold: int) -> ShareSet:
    """Split `secret` into one SLIP-39 share per custodian (one group, `threshold` of them needed)."""
    _validate_custodians(custodians, threshold)
    if len(secret) < PIN_SECRET_BYTES or len(secret) % 2:
        raise QuorumError(f"the secret must be an even number of bytes, at least {PIN_SECRET_BYTES}")
    try:
        groups = shamir_mnemonic.generate_mnemonics(
            1, [(threshold, len(custodians))], secret, b"", iteration_exponent=ITERATION_EXPONENT)
    except (ValueError, MnemonicError) as exc:
        raise QuorumError(f"cannot split the secret: {exc}") from exc
    mnemonics = groups[0]
    identifier = Share.from_mnemonic(mnemonics[0]).identifier
    return ShareSet(identifier=identifier, threshold=threshold, shares=dict(zip(custodians, mnemonics, strict=True)))


def _decode(mnemonic: str) -> Share:
    try:
        share = Share.from_mnemonic(normalise(mnemonic))
    except MnemonicError as exc:
        raise QuorumError(str(exc)) from exc
    if share.group_count != 1 or share.group_threshold != 1:
        raise QuorumError(f"it comes from a {share.group_threshold}-of-{share.group_count} group split, "
                          "not from a single-group quorum")
    return share


def share_info(mnemonic: str) -> ShareInfo:
    """Decode one share's metadata (QuorumError if its words or checksum are wrong)."""
    share = _decode(mnemonic)
    return ShareInfo(identifier=share.identifier, threshold=share.member_threshold, index=share.index,
                     word_count=len(normalise(mnemonic).split()))


def _quorum_text(custodians: Sequence[str], threshold: int) -> str:
    return f"{threshold} of {len(custodians)} ({', '.join(custodians)})"


def _refuse_if(problems: list[str]) -> None:
    if problems:
        raise QuorumError("; ".join(problems))


def combine(shares: Mapping[str, str], custodians: Sequence[str], threshold: int, *,
            expected_identifier: int | None = None) -> bytes:
    """Recover the secret from custodian name -> mnemonic, refusing any inconsistent set first.

    Checks run in stages (names, validity, split, threshold, duplicates, ownership, count); each
    stage reports every custodian it concerns, so one refusal tells the room everything about it.
    The returned bytes cannot be wiped (see the module docstring): drop them after use.
    """
    _validate_custodians(custodians, threshold)
    quorum = _quorum_text(custodians, threshold)

    _refuse_if([f"{name!r} is not a custodian of this quorum {quorum}" for name in shares if name not in custodians])

    decoded: dict[str, Share] = {}
    invalid: list[str] = []
    for name, mnemonic in shares.items():
        try:
            decoded[name] = _decode(mnemonic)
        except QuorumError as exc:
            invalid.append(f"the share given by {name} is not valid: {exc}")
    _refuse_if(invalid)

    if expected_identifier is not None:
        _refuse_if([f"the share given by {name} belongs to another split (identifier {share.identifier}, "
                    f"expected {expected_identifier})"
                    for name, share in decoded.items() if share.identifier != expected_identifier])
    elif len({share.identifier for share in decoded.values()}) > 1:
        listed = ", ".join(f"{name} (identifier {share.identifier})" for name, share in decoded.items())
        raise QuorumError(f"the shares come from different splits: {listed}")

    _refuse_if([f"the share given by {name} is from a {share.member_threshold}-of-N split; "
                f"this quorum needs {quorum}"
                for name, share in decoded.items() if share.member_threshold != threshold])

    by_index: dict[int, list[str]] = {}
    for name, share in decoded.items():
        by_index.setdefault(share.index, []).append(name)
    duplicates: list[str] = []
    for index, names in sorted(by_index.items()):
        if len(names) > 1:
            owner = custodians[index] if index < len(custodians) else f"custodian #{index + 1}"
            same = len({normalise(shares[name]) for name in names}) == 1
            what = "the same share" if same else "shares with the same member index"
            duplicates.append(f"{' and '.join(names)} gave {what} (issued to {owner}); "
                              "each custodian must give their own")
    _refuse_if(duplicates)

    misplaced: list[str] = []
    for name, share in decoded.items():
        if share.index != custodians.index(name):
            owner = (custodians[share.index] if share.index < len(custodians)
                     else f"custodian #{share.index + 1}, who is not in this quorum")
            misplaced.append(f"the share given by {name} was issued to {owner}")
    _refuse_if(misplaced)

    if len(decoded) < threshold:
        raise QuorumError(f"{len(decoded)} share{'s' if len(decoded) != 1 else ''} given; this quorum needs {quorum}")

    return _recover(shares, decoded, threshold)


def _recover(shares: Mapping[str, str], decoded: Mapping[str, Share], threshold: int) -> bytes:
    """Combine `threshold` shares, then check that every extra share agrees with them.

    The library combines exactly `threshold` shares; an extra share, silently ignored,
    could hide a share from another split, so each one is tried in place of a base share.
    """
    ordered = sorted(decoded, key=lambda name: decoded[name].index)
    base, extra = ordered[:threshold], ordered[threshold:]
    try:
        ems = shamir_mnemonic.recover_ems(shamir_mnemonic.decode_mnemonics([normalise(shares[n]) for n in base]))
    except MnemonicError as exc:
        raise QuorumError(f"the shares given by {', '.join(base)} do not combine: {exc}") from exc
    for name in extra:
        trial = [normalise(shares[n]) for n in base[:threshold - 1]] + [normalise(shares[name])]
        try:
            agrees = shamir_mnemonic.recover_ems(shamir_mnemonic.decode_mnemonics(trial)).ciphertext == ems.ciphertext
        except MnemonicError:
            agrees = False
        if not agrees:
            raise QuorumError(f"the share given by {name} does not agree with the shares of "
                              f"{', '.join(base)}: it is not from the same split")
    try:
        return bytes(ems.decrypt(b""))
    except (MnemonicError, ValueError) as exc:
        raise QuorumError(f"the shares do not combine: {exc}") from exc
