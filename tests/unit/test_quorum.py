"""M-of-N PIN shares: real SLIP-39 shares from shamir-mnemonic, and every refusal's message."""

from __future__ import annotations

import itertools
import re

import pytest
import shamir_mnemonic
from shamir_mnemonic import EncryptedMasterSecret, Share

from ceremony.quorum import (
    PIN_SECRET_BYTES,
    QuorumError,
    ShareSet,
    combine,
    new_secret,
    pin_from_secret,
    share_info,
    split_secret,
)

CUSTODIANS = ("alice", "bob", "carol", "dave", "erin")
SECRET = bytes(range(16))


@pytest.fixture(scope="module")
def split() -> ShareSet:
    return split_secret(SECRET, CUSTODIANS, 3)


def other_split(split: ShareSet, threshold: int = 3) -> ShareSet:
    """A second split of another secret whose identifier differs from `split`'s (they are random)."""
    while (other := split_secret(b"\x42" * 16, CUSTODIANS, threshold)).identifier == split.identifier:
        pass
    return other


def forged_with_same_identifier(split: ShareSet) -> dict[str, str]:
    """Valid shares (checksums fine) carrying `split`'s identifier but another secret."""
    first = Share.from_mnemonic(split.shares["alice"])
    ems = EncryptedMasterSecret.from_master_secret(b"\x99" * 16, b"", first.identifier, first.extendable,
                                                   first.iteration_exponent)
    groups = shamir_mnemonic.split_ems(1, [(3, 5)], ems)
    return {name: share.mnemonic() for name, share in zip(CUSTODIANS, groups[0], strict=True)}


def test_new_secret_and_pin() -> None:
    secret = new_secret()
    assert len(secret) == PIN_SECRET_BYTES == 16
    assert new_secret() != secret
    pin = pin_from_secret(secret)
    assert re.fullmatch(r"[0-9a-f]{32}", pin)
    assert bytes.fromhex(pin) == secret


def test_split_gives_one_share_per_custodian(split: ShareSet) -> None:
    assert split.threshold == 3
    assert list(split.shares) == list(CUSTODIANS)
    assert len(set(split.shares.values())) == 5
    for index, name in enumerate(CUSTODIANS):
        info = share_info(split.shares[name])
        assert (info.identifier, info.threshold, info.index, info.word_count) == (split.identifier, 3, index, 20)


@pytest.mark.parametrize("present", list(itertools.combinations(CUSTODIANS, 3)))
def test_any_three_of_five_recover_the_secret(split: ShareSet, present: tuple[str, ...]) -> None:
    shares = {name: split.shares[name] for name in present}
    assert combine(shares, CUSTODIANS, 3, expected_identifier=split.identifier) == SECRET


def test_four_and_all_five_recover_the_secret(split: ShareSet) -> None:
    assert combine({n: split.shares[n] for n in CUSTODIANS[1:]}, CUSTODIANS, 3) == SECRET
    assert combine(split.shares, CUSTODIANS, 3) == SECRET


def test_words_are_normalised(split: ShareSet) -> None:
    messy = {"alice": "  " + split.shares["alice"].upper().replace(" ", "\n"),
             "bob": split.shares["bob"].replace(" ", "   "), "carol": split.shares["carol"].title()}
    assert combine(messy, CUSTODIANS, 3) == SECRET


def test_one_of_one_is_allowed_but_not_one_of_many() -> None:
    single = split_secret(SECRET, ["alice"], 1)
    assert combine(single.shares, ["alice"], 1) == SECRET
    with pytest.raises(QuorumError, match=r"a 1-of-3 quorum is not allowed"):
        split_secret(SECRET, ["a", "b", "c"], 1)


@pytest.mark.parametrize(("custodians", "threshold", "message"), [
    (("a", "b", "c"), 0, "the threshold must be between 1 and 3 (the number of custodians), not 0"),
    (("a", "b", "c"), 4, "the threshold must be between 1 and 3 (the number of custodians), not 4"),
    ((), 1, "a quorum needs 1 to 16 custodians, not 0"),
    (tuple(f"c{i}" for i in range(17)), 3, "a quorum needs 1 to 16 custodians, not 17"),
    (("a", "b", "a"), 2, "custodian names must be unique; repeated: a"),
    (("a", " ", "c"), 2, "every custodian needs a non-empty name"),
])
def test_split_refuses_bad_quorums(custodians: tuple[str, ...], threshold: int, message: str) -> None:
    with pytest.raises(QuorumError) as caught:
        split_secret(SECRET, custodians, threshold)
    assert str(caught.value) == message


def test_sixteen_custodians_is_the_maximum() -> None:
    names = [f"c{i}" for i in range(16)]
    shares = split_secret(SECRET, names, 2)
    assert share_info(shares.shares["c15"]).index == 15
    assert combine({"c0": shares.shares["c0"], "c15": shares.shares["c15"]}, names, 2) == SECRET


def test_share_info_refuses_invalid_words() -> None:
    with pytest.raises(QuorumError, match=r"Invalid mnemonic word 'notaword'"):
        share_info("academic notaword acid")


def three(split: ShareSet, **overrides: str) -> dict[str, str]:
    shares = {name: split.shares[name] for name in ("alice", "bob", "carol")}
    shares.update(overrides)
    return shares


def refusal(shares: dict[str, str], **kwargs: int) -> str:
    with pytest.raises(QuorumError) as caught:
        combine(shares, CUSTODIANS, 3, **kwargs)
    return str(caught.value)


def test_unknown_word(split: ShareSet) -> None:
    words = split.shares["bob"].split()
    words[5] = "xyzzy"
    assert refusal(three(split, bob=" ".join(words))) == \
        "the share given by bob is not valid: Invalid mnemonic word 'xyzzy'."


def test_bad_checksum(split: ShareSet) -> None:
    words = split.shares["bob"].split()
    words[6], words[7] = words[7], words[6]
    assert words != split.shares["bob"].split()
    assert refusal(three(split, bob=" ".join(words))).startswith(
        "the share given by bob is not valid: Invalid mnemonic checksum")


def test_wrong_length(split: ShareSet) -> None:
    short = " ".join(split.shares["carol"].split()[:12])
    assert refusal(three(split, carol=short)).startswith(
        "the share given by carol is not valid: Invalid mnemonic length")


def test_unknown_custodian(split: ShareSet) -> None:
    message = refusal({"alice": split.shares["alice"], "mallory": split.shares["bob"], "carol": split.shares["carol"]})
    assert message == "'mallory' is not a custodian of this quorum 3 of 5 (alice, bob, carol, dave, erin)"


def test_share_of_another_custodian(split: ShareSet) -> None:
    message = refusal({"alice": split.shares["alice"], "bob": split.shares["carol"], "dave": split.shares["dave"]})
    assert message == "the share given by bob was issued to carol"


def test_same_share_twice(split: ShareSet) -> None:
    message = refusal(three(split, bob=split.shares["alice"]))
    assert message == "alice and bob gave the same share (issued to alice); each custodian must give their own"


def test_shares_of_different_splits(split: ShareSet) -> None:
    other = other_split(split)
    message = refusal(three(split, carol=other.shares["carol"]))
    assert message.startswith("the shares come from different splits: ")
    assert f"alice (identifier {split.identifier})" in message
    assert f"carol (identifier {other.identifier})" in message


def test_unexpected_split(split: ShareSet) -> None:
    other = other_split(split)
    message = refusal({name: other.shares[name] for name in ("alice", "bob", "carol")},
                      expected_identifier=split.identifier)
    assert message.startswith(f"the share given by alice belongs to another split (identifier {other.identifier}, "
                              f"expected {split.identifier})")
    assert "the share given by carol belongs to another split" in message


def test_share_of_another_threshold(split: ShareSet) -> None:
    two_of_five = split_secret(SECRET, CUSTODIANS, 2)
    message = refusal({name: two_of_five.shares[name] for name in ("alice", "bob", "carol")})
    assert message.startswith("the share given by alice is from a 2-of-N split; this quorum needs 3 of 5 (alice, ")


def test_too_few_shares(split: ShareSet) -> None:
    message = refusal({"alice": split.shares["alice"], "erin": split.shares["erin"]})
    assert message == "2 shares given; this quorum needs 3 of 5 (alice, bob, carol, dave, erin)"
    assert refusal({}) == "0 shares given; this quorum needs 3 of 5 (alice, bob, carol, dave, erin)"


def test_library_refusal_while_combining(split: ShareSet) -> None:
    forged = forged_with_same_identifier(split)
    message = refusal(three(split, carol=forged["carol"]))
    assert message == "the shares given by alice, bob, carol do not combine: Invalid digest of the shared secret."


def test_extra_share_that_disagrees(split: ShareSet) -> None:
    forged = forged_with_same_identifier(split)
    message = refusal(three(split, dave=forged["dave"]))
    assert message == ("the share given by dave does not agree with the shares of alice, bob, carol: "
                       "it is not from the same split")
