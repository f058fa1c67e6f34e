"""Key URI parsing (RFC 7512 for pkcs11:, generic for the cloud schemes)."""

from __future__ import annotations

import pytest

from kms import InvalidKeyURI, KeyURI, parse_key_uri
from kms.uri import require_key


def test_pkcs11_attributes_are_pct_decoded() -> None:
    u = parse_key_uri("pkcs11:token=my%20token;object=CA%20key;id=%01%ff%3D;slot-id=7"
                      "?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/hsmca/pin")
    assert u.scheme == "pkcs11"
    assert u.path == {"token": "my token", "object": "CA key", "id": "\x01\xff=", "slot-id": "7"}
    assert u.key_id == b"\x01\xff=" and u.label == "CA key"
    assert u.query == {"module-path": "/usr/lib/softhsm/libsofthsm2.so", "pin-source": "file:/etc/hsmca/pin"}


def test_utf8_values() -> None:
    assert parse_key_uri("pkcs11:token=t;object=cl%C3%A9").label == "clé"


@pytest.mark.parametrize("s", [
    "pkcs11:token=hsmca;object=intermediate?pin-source=file:/run/secrets/pin",
    "pkcs11:token=a;object=b;id=%01%02%AB?module-path=/usr/lib/x.so&pin-value=1234",
    "pkcs11:token=a%3Bb;object=c%2Fd%3Fe",
    "pkcs11:",
    "awskms:key-id=1234abcd;region=eu-west-1",
    "gcpkms:projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1",
    "azurekv:https://vault1.vault.azure.net/keys/intermediate/0123abcd",
    "vault:transit/keys/intermediate?namespace=pki",
])
def test_canonical_uris_round_trip(s: str) -> None:
    u = parse_key_uri(s)
    assert str(u) == s
    assert parse_key_uri(str(u)) == u


def test_str_round_trips_whatever_the_input_spelling() -> None:
    u = parse_key_uri("PKCS11:object=x;token=t;id=A?pin-value=p%26q")
    assert str(u) == "pkcs11:object=x;token=t;id=%41?pin-value=p%26q"
    assert parse_key_uri(str(u)) == u and u.query["pin-value"] == "p&q"


def test_constructed_uri_is_encoded() -> None:
    u = KeyURI("pkcs11", {"token": "a;b", "object": "c/d e", "id": "\x00\x10"}, {"pin-source": "/p?x"})
    assert str(u) == "pkcs11:token=a%3Bb;object=c%2Fd%20e;id=%00%10?pin-source=/p?x"
    assert parse_key_uri(str(u)) == u


def test_step_ca_style_query_attributes_in_the_path_move_to_the_query() -> None:
    u = parse_key_uri("pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=smallstep;object=k?pin-value=password")
    assert u.path == {"token": "smallstep", "object": "k"}
    assert u.query == {"module-path": "/usr/lib/softhsm/libsofthsm2.so", "pin-value": "password"}


def test_redacted_and_repr_drop_the_pin_value() -> None:
    u = parse_key_uri("pkcs11:token=t;object=k?pin-value=s3cret&module-path=/lib/p.so")
    assert str(u.redacted()) == "pkcs11:token=t;object=k?module-path=/lib/p.so"
    assert "s3cret" not in repr(u) and "s3cret" not in repr({"uri": u})
    assert u.redacted().query == {"module-path": "/lib/p.so"}


def test_uri_is_hashable_and_immutable() -> None:
    path = {"token": "t", "object": "k"}
    u = KeyURI("pkcs11", path)
    path["object"] = "changed"
    assert u.label == "k"
    assert hash(u) == hash(parse_key_uri("pkcs11:object=k;token=t"))
    assert {u: 1}[parse_key_uri("pkcs11:token=t;object=k")] == 1


def test_generic_schemes() -> None:
    aws = parse_key_uri("awskms:key-id=arn%3Aaws%3Akms;region=us-east-1")
    assert aws.path == {"key-id": "arn:aws:kms", "region": "us-east-1"}
    gcp = parse_key_uri("gcpkms:projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/3")
    assert gcp.path == {"": "projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/3"}
    vault = parse_key_uri("vault:transit/keys/ca;mount=transit2")
    assert vault.path == {"": "transit/keys/ca", "mount": "transit2"}


@pytest.mark.parametrize("s, match", [
    ("", "empty"),
    ("   ", "empty"),
    ("token=a;object=b", "not a key URI"),
    ("1pkcs11:token=a", "not a key URI"),
    ("file:/etc/key.pem", "unknown key URI scheme 'file'; known: pkcs11, awskms"),
    ("pkcs11:token=a;object=b%zz", "two hex digits"),
    ("pkcs11:token=a;object=b%4", "two hex digits"),
    ("pkcs11:token=a;object=%ff", "not UTF-8"),
    ("pkcs11:token=a;token=b", "more than once"),
    ("pkcs11:token=a?module-path=/x.so;module-path=/y.so", "pct-encoded"),
    ("pkcs11:module-path=/x.so;token=a?module-path=/y.so", "more than once"),
    ("pkcs11:token=a?pin-source=/p&pin-value=1234", "not both"),
    ("pkcs11:token=a;type=secret", "type must be one of"),
    ("pkcs11:slot-id=0x1", "decimal"),
    ("pkcs11:token=a?module-path=lib/softhsm.so", "absolute"),
    ("pkcs11:token=a?object=b", "belongs in the path"),
    ("pkcs11:token", "malformed path attribute 'token'"),
    ("pkcs11:token=a;ob ject=b", "must be pct-encoded"),
    ("pkcs11:token=a;object=b#frag", "must be pct-encoded"),
    ("pkcs11:token=;object=b", "empty"),
    ("pkcs11:token=a;id=", "empty"),
    ("pkcs11:library-version=x", "library-version"),
    ("awskms:region=a;region=b", "more than once"),
])
def test_bad_uris(s: str, match: str) -> None:
    with pytest.raises(InvalidKeyURI, match=match):
        parse_key_uri(s)


@pytest.mark.parametrize("s", [
    "pkcs11:token=a;object=b?pin-value=hunter2&pin-source=/p",
    "pkcs11:token=a;object=%zz?pin-value=hunter2",
    "nope:token=a?pin-value=hunter2",
    "pkcs11:token=a;bad.name=hunter2",
    "pkcs11:token=a?pin-value=%ffhunter2",
    "pkcs11:token=a?pin-value=hunter2 x",
])
def test_errors_never_show_a_pin(s: str) -> None:
    with pytest.raises(InvalidKeyURI) as refused:
        parse_key_uri(s)
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize("s, match", [
    ("pkcs11:object=k", "names no token"),
    ("pkcs11:token=t", "names no key"),
    ("pkcs11:token=t;object=k;type=cert", "type=private"),
    ("awskms:", "names no key"),
])
def test_key_uris_must_name_a_key(s: str, match: str) -> None:
    parse_key_uri(s)  # fine as a URI (e.g. the shared `kms.uri` of ca.json) …
    with pytest.raises(InvalidKeyURI, match=match):  # … but not as a key
        parse_key_uri(s, key=True)


@pytest.mark.parametrize("s", [
    "pkcs11:token=t;object=k", "pkcs11:serial=0aafa543;id=%01", "pkcs11:slot-id=3;object=k;type=private",
])
def test_key_uris(s: str) -> None:
    require_key(parse_key_uri(s))


def test_bare_resource_is_written_first() -> None:
    u = KeyURI("vault", {"mount": "transit2", "": "transit/keys/ca"})
    assert str(u) == "vault:transit/keys/ca;mount=transit2"
    assert parse_key_uri(str(u)) == u
