"""The flags `hsmca provisioner add` and `update` share (step's names), and the ca.json fields they set.

One table says which flag sets which field of which provisioner type, so `add` and `update` cannot disagree, a
flag given to the wrong type is refused by name, and the provisioner's own model validates the result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from appliance.cli.common import PathType, fail


@dataclass(frozen=True)
class Flag:
    option: str
    param: str
    field: str
    types: frozenset[str]
    help: str
    many: bool = False  # a list field: `add`/`update` append, `update --remove-…` removes
    is_path: bool = False
    is_int: bool = False
    aliases: tuple[str, ...] = ()


def _flag(option: str, field: str, types: Iterable[str], help: str, **kw: Any) -> Flag:
    param = option.lstrip("-").replace("-", "_")
    return Flag(option, param, field, frozenset(types), help, **kw)


FLAGS: tuple[Flag, ...] = (
    _flag("--http01-port", "http01Port", ["ACME"], "ACME: port the http-01 validator connects to [default: 80].",
          is_int=True),
    _flag("--tlsalpn01-port", "tlsalpn01Port", ["ACME"],
          "ACME: port the tls-alpn-01 validator connects to [default: 443].", is_int=True),
    _flag("--resolver", "resolvers", ["ACME"], "ACME: DNS resolver HOST:PORT for validation (repeatable) "
          "[default: the system's].", many=True),
    _flag("--challenge", "challenges", ["ACME"], "ACME: challenge type offered: http-01, dns-01, tls-alpn-01 "
          "(repeatable) [default: all three].", many=True),
    _flag("--terms-of-service", "termsOfService", ["ACME"], "ACME: URL of the terms of service (directory meta)."),
    _flag("--x5c-root", "roots", ["X5C"], "X5C: PEM file of the root certificate(s) a token's x5c chain must "
          "verify to (replaces them on update).", is_path=True, aliases=("--x5c-roots",)),
    _flag("--public-key", "publicKeys", ["K8sSA", "JWK"], "K8sSA: PEM file of the cluster's service-account "
          "public key(s); JWK: the provisioner's public key (a JWK or PEM file; clients then need the private key "
          "file, as no encrypted copy is kept).", is_path=True),
    _flag("--issuer", "issuers", ["K8sSA"], "K8sSA: an `iss` bound service-account tokens may have (repeatable) "
          "[default: any].", many=True),
    _flag("--audience", "audiences", ["K8sSA"], "K8sSA: an `aud` bound tokens may have besides this CA's URLs "
          "(repeatable).", many=True),
    _flag("--client-id", "clientID", ["OIDC"], "OIDC: the client id registered at the OpenID provider."),
    _flag("--client-secret", "clientSecret", ["OIDC"], "OIDC: its client secret (published to clients, as step-ca "
          "does; omit for a public client)."),
    _flag("--configuration-endpoint", "configurationEndpoint", ["OIDC"], "OIDC: the provider's discovery URL "
          "(https://…/.well-known/openid-configuration)."),
    _flag("--admin", "admins", ["OIDC"], "OIDC: an e-mail whose owner may ask for any name (repeatable).",
          many=True),
    _flag("--domain", "domains", ["OIDC"], "OIDC: an e-mail domain allowed certificates (repeatable) "
          "[default: any].", many=True),
    _flag("--group", "groups", ["OIDC"], "OIDC: a group (the ID token's `groups`) allowed certificates "
          "(repeatable) [default: any].", many=True),
    _flag("--listen-address", "listenAddress", ["OIDC"], "OIDC: HOST:PORT clients listen on for the provider's "
          "redirect [default: a free loopback port]."),
    _flag("--tenant-id", "tenantID", ["OIDC"], "OIDC (Azure): replaces {tenantid} in the provider's issuer."),
)
CLAIM_DURATIONS = (("--x509-min-dur", "minTLSCertDuration"), ("--x509-max-dur", "maxTLSCertDuration"),
                   ("--x509-default-dur", "defaultTLSCertDuration"))
CLAIM_SWITCHES = (("--disable-renewal/--allow-renewal", "disable_renewal", "disableRenewal",
                   "Refuse (or allow) renewing this provisioner's certificates [default: the authority's]."),
                  ("--allow-renewal-after-expiry/--disallow-renewal-after-expiry", "allow_renewal_after_expiry",
                   "allowRenewalAfterExpiry", "Let an expired certificate of this provisioner renew at any time "
                   "(or not) [default: the authority's]."))


def type_options(*, updating: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Every type's flags and the claims flags; with `updating`, `--remove-…` for each list."""
    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        opts: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = []
        for flag in FLAGS:
            kind: Any = PathType if flag.is_path else int if flag.is_int else None
            opts.append(click.option(flag.option, *flag.aliases, flag.param, type=kind, multiple=flag.many,
                                     help=flag.help))
            if updating and flag.many:
                opts.append(click.option(f"--remove-{flag.option[2:]}", f"remove_{flag.param}", multiple=True,
                                         help=f"Remove this {flag.option[2:]} (repeatable)."))
        opts.append(click.option("--require-eab/--no-require-eab", "require_eab", default=None,
                                 help="ACME: new accounts must be bound to an external account key."))
        opts.append(click.option("--create", is_flag=True, help="JWK: make a new key pair; the CA keeps the "
                                 "private key encrypted with the password (--password-file, or asked)."))
        opts.append(click.option("--password-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                                 help="JWK: file with the password that encrypts the new key (--create)."))
        for option, field in CLAIM_DURATIONS:
            opts.append(click.option(option, option.lstrip("-").replace("-", "_"),
                                     help=f"Claims: {field} (a duration such as 5m, 24h)."))
        for option, param, _, text in CLAIM_SWITCHES:
            opts.append(click.option(option, param, default=None, help=text))
        for opt in reversed(opts):
            f = opt(f)
        return f
    return decorate


def given_flags(kind: str, values: dict[str, Any]) -> list[str]:
    """The flags given a value; fails naming those that do not apply to `kind`."""
    given: list[str] = []
    foreign: list[str] = []
    for flag in FLAGS:
        present = values.get(flag.param) not in (None, ()) or bool(values.get(f"remove_{flag.param}"))
        if present:
            (given if kind in flag.types else foreign).append(flag.option)
    for option, param, types in (("--require-eab", "require_eab", {"ACME"}), ("--create", "create", {"JWK"}),
                                 ("--password-file", "password_file", {"JWK"})):
        if values.get(param) not in (None, False):
            (given if kind in types else foreign).append(option)
    if foreign:
        fail(f"{', '.join(foreign)} do{'es' if len(foreign) == 1 else ''} not apply to a {kind} provisioner")
    return given


def apply_flags(kind: str, data: dict[str, Any], values: dict[str, Any],
                read_file: Callable[[str, Path], Any]) -> dict[str, Any]:
    """`data` (a provisioner's ca.json object) with the given flags applied; `read_file(field, path)` turns a
    file flag into the field's value. Validation is the provisioner model's, afterwards."""
    out = dict(data)
    for flag in FLAGS:
        if kind not in flag.types or flag.field == "publicKeys" and kind == "JWK":
            continue
        value = values.get(flag.param)
        if flag.many:
            current = list(out.get(flag.field) or [])
            removed = list(values.get(f"remove_{flag.param}") or ())
            missing = [r for r in removed if r not in current]
            if missing:
                fail(f"{flag.option[2:]} {', '.join(map(repr, missing))} is not in {flag.field} {current}")
            if value or removed:
                out[flag.field] = [v for v in dict.fromkeys([*current, *(value or ())]) if v not in removed]
        elif value is not None:
            out[flag.field] = read_file(flag.field, value) if flag.is_path else value
    if kind == "ACME" and values.get("require_eab") is not None:
        out["requireEAB"] = values["require_eab"]
    claims = dict(out.get("claims") or {})
    for option, field in CLAIM_DURATIONS:
        value = values.get(option.lstrip("-").replace("-", "_"))
        if value is not None:
            claims[field] = value
    for _, param, field, _ in CLAIM_SWITCHES:
        if values.get(param) is not None:
            claims[field] = values[param]
    if claims:
        out["claims"] = claims
    return out
