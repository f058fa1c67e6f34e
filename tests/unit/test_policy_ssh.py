"""`policy.ssh` (step-ca's user and host principal rules) and the SSH validity claims, judged by the engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.store.ssh_certificates import signed_over
from policy import Policy, SSHRequest, key_info

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
KEY = key_info(ed25519.Ed25519PrivateKey.generate().public_key())


def judge(policy: dict[str, Any] | None, cert_type: str, principals: list[str], *, claims: dict[str, Any] | None = None,
          provisioner: dict[str, Any] | None = None, hours: float | None = None) -> tuple[str, ...]:
    p = Policy.from_config(policy, claims, "p", provisioner, None)
    before = NOW + timedelta(hours=hours) if hours is not None else None
    return p.evaluate_ssh(SSHRequest(cert_type=cert_type, principals=tuple(principals), key=KEY,  # type: ignore[arg-type]
                                     valid_before=before, now=NOW)).reasons


USERS = {"ssh": {"user": {"allow": {"email": ["@example.com"], "principal": ["alice", "bob"]},
                          "deny": {"principal": ["root"], "email": ["mallory@example.com"]}}}}
HOSTS = {"ssh": {"host": {"allow": {"dns": ["*.internal"], "ip": ["10.0.0.0/8"], "principal": ["web01"]},
                          "deny": {"dns": ["db.internal"]}}}}


@pytest.mark.parametrize(("policy", "cert_type", "principals", "reasons"), [
    (None, "user", ["root", "anyone"], ()),  # no ssh rules: any principal
    (USERS, "user", ["alice", "alice@example.com"], ()),
    (USERS, "user", ["root"], ('authority policy ssh.user.deny.principal "root" denies user principal "root"',
                               'authority policy: user principal "root" matches no ssh.user.allow.principal rule')),
    (USERS, "user", ["Mallory@example.com"],
     ('authority policy ssh.user.deny.email "mallory@example.com" denies user principal "Mallory@example.com"',)),
    (USERS, "user", ["carol"], ('authority policy: user principal "carol" matches no ssh.user.allow.principal rule',)),
    (USERS, "user", ["a@other.org"], ('authority policy: user principal "a@other.org" matches no ssh.user.allow.email '
                                      'rule',)),
    (USERS, "host", ["anything"], ()),  # user rules do not judge host certificates
    (HOSTS, "host", ["web.internal", "10.1.2.3", "web01"], ()),
    (HOSTS, "host", ["db.internal"], ('authority policy ssh.host.deny.dns "db.internal" denies host principal '
                                      '"db.internal"',)),
    (HOSTS, "host", ["192.168.1.1"], ('authority policy: host principal "192.168.1.1" matches no ssh.host.allow.ip '
                                      'rule',)),
    (HOSTS, "host", ["web.example.com"], ('authority policy: host principal "web.example.com" matches no '
                                          'ssh.host.allow.dns rule',)),
    (USERS, "user", ["x@"], ('SSH principal "x@" is not a valid e-mail address: the part after @ is empty',)),
])
def test_principal_rules(policy: dict[str, Any] | None, cert_type: str, principals: list[str],
                         reasons: tuple[str, ...]) -> None:
    got = judge(policy, cert_type, principals)
    if reasons and reasons[-1].startswith("SSH principal"):
        assert got and got[0].startswith('SSH principal "x@" is not a valid e-mail address'), got
    else:
        assert got == reasons


def test_the_provisioner_level_restricts_further() -> None:
    got = judge(None, "user", ["alice"], provisioner={"ssh": {"user": {"allow": {"principal": ["bob"]}}}})
    assert got == ('provisioner "p" policy: user principal "alice" matches no ssh.user.allow.principal rule',)
    assert judge(None, "user", ["anyone"], provisioner={"ssh": {"user": {"allow": {"principal": ["*"]}}}}) == ()


def test_validity_claims_per_certificate_type() -> None:
    assert judge(None, "user", ["a"], hours=24) == ()
    assert judge(None, "user", ["a"], hours=25) == (
        "requested validity 25h0m exceeds the maximum 24h0m (built-in default maxUserSSHCertDuration)",)
    assert judge(None, "host", ["h"], hours=24 * 60) == ()  # hosts: up to 1680h by default
    assert judge(None, "user", ["a"], hours=2, claims={"maxUserSSHCertDuration": "1h",
                                                        "defaultUserSSHCertDuration": "30m"}) == (
        "requested validity 2h0m exceeds the maximum 1h0m (authority claims.maxUserSSHCertDuration)",)
    p = Policy.from_config(None, None)
    decision = p.evaluate_ssh(SSHRequest(cert_type="host", principals=("h",), key=KEY, now=NOW))
    assert decision.not_after - NOW == timedelta(hours=720) and NOW - decision.not_before == timedelta(minutes=1)


def test_a_certificate_is_recorded_as_signed_over_its_body_only() -> None:
    body = b"\x00\x00\x00\x1cssh-ed25519-cert-v01@openssh.com" + b"rest of the body"
    signature = b"\x00\x00\x00\x05" + b"sig!!"
    assert signed_over(body + signature, body)
    assert not signed_over(body + signature + b"x", body)
    assert not signed_over(b"other" + signature, body)
    assert not signed_over(body + b"\x00\x00", body)


def _profile(**changes: Any) -> Any:
    from appliance.ca.ssh import SSHProfile

    fields: dict[str, Any] = dict(cert_type="user", key_id="alice", principals=("alice",),
                                  public_key=ed25519.Ed25519PrivateKey.generate().public_key(),
                                  valid_after=NOW, valid_before=NOW + timedelta(hours=1),
                                  extensions={"permit-pty": ""})
    fields.update(changes)
    return SSHProfile(**fields)


@pytest.mark.parametrize(("changes", "reason"), [
    ({"principals": ()}, "at least one principal (none would mean any)"),
    ({"principals": ("a,b",)}, "without spaces or commas"),
    ({"principals": ("a b",)}, "without spaces or commas"),
    ({"principals": ("x" * 300,)}, "at most 255 characters"),
    ({"key_id": ""}, "needs a key id"),
    ({"valid_before": NOW}, "validBefore must be after validAfter"),
    ({"cert_type": "host"}, "a host certificate carries no extensions"),
    ({"critical_options": {"no-such-option": "x"}}, "unknown critical options ['no-such-option']"),
    ({"critical_options": {"source-address": "10.0.0.0/8,example.com"}}, "'example.com' is not an address"),
    ({"critical_options": {"force-command": " "}}, "force-command needs a command"),
    ({"extensions": {"permit-everything": ""}}, "unknown extensions ['permit-everything']"),
])
def test_lint_refuses_what_no_ssh_certificate_may_be(changes: dict[str, Any], reason: str) -> None:
    from appliance.ca.ssh import lint
    from appliance.errors import BadRequest

    with pytest.raises(BadRequest, match=reason.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        lint(_profile(**changes))
    lint(_profile())


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                                       max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(st.sampled_from(["publicKey", "ott", "certType", "keyID", "principals", "validAfter",
                                             "validBefore", "other"]), JSON, max_size=8))
def test_any_ssh_sign_body_is_parsed_or_refused_with_a_reason(body: dict[str, Any]) -> None:
    from appliance.api.ssh import parse_sign
    from appliance.errors import BadRequest

    try:
        parse_sign(body)
    except BadRequest as exc:
        assert exc.message


def test_an_ssh_template_shapes_the_request_but_cannot_change_its_type() -> None:
    from appliance.errors import BadRequest
    from appliance.names import RequestedNames
    from appliance.provisioners.request import IssuanceRequest, SSHOptions
    from appliance.ra.templates import Template, apply_ssh, ssh_variables

    request = IssuanceRequest(provisioner="p", common_name="alice", names=RequestedNames(),
                              public_key=ed25519.Ed25519PrivateKey.generate().public_key(),
                              template_data={"token": {"sub": "alice", "groups": ["ops"]}},
                              ssh=SSHOptions(cert_type="user", key_id="alice", principals=("alice",)))
    shaped = apply_ssh(request, Template.load(
        '{"principals": {{ (principals + token.groups) | tojson }}, "criticalOptions": {"force-command": "id"}}',
        None, "t").render_ssh(ssh_variables(request, "p", "JWK")))
    assert shaped.ssh is not None and shaped.ssh.principals == ("alice", "ops")
    assert shaped.ssh.critical_options == {"force-command": "id"} and shaped.audit.sans == ("principal:alice",
                                                                                          "principal:ops")
    with pytest.raises(BadRequest, match="changed the certificate type from user to host"):
        apply_ssh(request, Template.load('{"type": "host"}', None, "t").render_ssh(ssh_variables(request, "p", "J")))
    with pytest.raises(BadRequest, match="SSH template rendered"):
        Template.load('{"principals": "alice"}', None, "t").render_ssh(ssh_variables(request, "p", "JWK"))
