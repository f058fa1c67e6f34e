"""Client commands: `certificate`, `token`, `bootstrap`, `inspect` (step CLI's habits)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.certutil import CertificateFileError, fingerprint, load_certificates
from appliance.cli.common import PathType, fail, password_from

if TYPE_CHECKING:
    from appliance.client.http import CAClient

@dataclass(frozen=True)
class CAOptions:
    ca_url: str
    root: Path
    provisioner: str
    password_file: Path | None
    provisioner_key: Path | None


def ca_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command that talks to the CA shares."""
    opts = [
        click.option("--ca-url",
                     help="The CA's URL, e.g. https://ca.internal:9000 [default: from `hsmca bootstrap`]."),
        click.option("--root", type=PathType,
                     help="The root certificate to trust [default: $HSMCA_PATH/certs/root_ca.crt]."),
        click.option("--provisioner", "-p", default="admin", show_default=True, help="Provisioner name."),
        click.option("--password-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="File with the provisioner password (prompted for when absent)."),
        click.option("--provisioner-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="The provisioner's private JWK (plain or encrypted), for CAs that do not publish it."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _resolve(ca_url: str | None, root: Path | None, provisioner: str, password_file: Path | None,
             provisioner_key: Path | None) -> CAOptions:
    from appliance.client.defaults import DefaultsError, load_defaults

    try:
        d = load_defaults()
    except DefaultsError as exc:
        fail(str(exc))
    url = ca_url or d.ca_url
    root_path = root or d.root
    if not url:
        fail("no CA URL: give --ca-url or run `hsmca bootstrap` first")
    if not root_path:
        fail("no root certificate: give --root or run `hsmca bootstrap` first")
    return CAOptions(url, root_path, provisioner, password_file, provisioner_key)


def _mint(o: CAOptions, subject: str, sans: list[str], endpoint: str = "sign",
          extra: dict[str, Any] | None = None) -> str:
    """A one-time token for `/1.0/<endpoint>` (sign, revoke), signed with the provisioner key."""
    from appliance.client.http import CAClient
    from appliance.client.tokens import WrongProvisionerType, find_provisioner, provisioner_key, sign_token

    try:
        root_fp = fingerprint(load_certificates(o.root)[0])
    except CertificateFileError as exc:
        fail(str(exc))
    client = CAClient(o.ca_url, o.root)
    found = find_provisioner(client, o.provisioner)
    if found.get("type") != "JWK":  # before asking for a password
        raise WrongProvisionerType(o.provisioner, found.get("type"), "JWK")
    encrypted = o.provisioner_key is None or not o.provisioner_key.read_text().lstrip().startswith("{")
    password = password_from(o.password_file, "provisioner password") if encrypted else None
    kid, key = provisioner_key(client, o.provisioner, password, o.provisioner_key, found)
    return sign_token(key, kid, o.provisioner, subject, sans, f"{client.ca_url}/1.0/{endpoint}", root_fp, extra)


@dataclass(frozen=True)
class Identity:
    """How this client proves who it is, when not by the provisioner's own key (JWK): an X5C certificate and its
    key, or a Kubernetes service-account token."""

    x5c_cert: Path | None = None
    x5c_key: Path | None = None
    k8s_token: Path | None = None

    @property
    def given(self) -> bool:
        return bool(self.x5c_cert or self.x5c_key or self.k8s_token)


def identity_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """step's flags for the X5C and K8sSA provisioners."""
    opts = [
        click.option("--x5c-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="X5C: the certificate (PEM chain, leaf first) that vouches, put in the x5c header."),
        click.option("--x5c-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="X5C: the private key of --x5c-cert, which signs the token (encrypted: --password-file)."),
        click.option("--k8ssa-token-path", "k8s_token", type=click.Path(dir_okay=False, path_type=Path),
                     help="K8sSA: the service-account token file "
                          "[default for a K8sSA provisioner: /var/run/secrets/kubernetes.io/serviceaccount/token]."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _credential(o: CAOptions, identity: Identity, subject: str, sans: list[str]) -> str:
    """The token for `/1.0/sign`: minted from the provisioner key (JWK), signed by an X5C certificate's key, or the
    pod's service-account token, as the step CLI does."""
    from appliance.client.http import CAClient, ClientError
    from appliance.client.tokens import K8S_TOKEN_PATH, WrongProvisionerType, k8s_token, x5c_token

    if not identity.given:
        try:
            return _mint(o, subject, sans)
        except WrongProvisionerType as exc:
            if exc.kind == "K8sSA":  # as step: the token where a pod finds it
                return k8s_token(K8S_TOKEN_PATH)
            if exc.kind == "X5C":
                raise ClientError(f"provisioner {o.provisioner!r} is an X5C provisioner: give --x5c-cert and "
                                  "--x5c-key") from None
            if exc.kind == "OIDC":  # as step: sign in at the provider; its ID token is the token
                return _oidc_token(o)
            raise

    if identity.k8s_token is not None:
        if identity.x5c_cert or identity.x5c_key:
            raise ClientError("give --x5c-cert/--x5c-key or --k8ssa-token-path, not both")
        return k8s_token(identity.k8s_token)
    if identity.x5c_cert is None or identity.x5c_key is None:
        raise ClientError("an X5C token needs both --x5c-cert and --x5c-key")
    try:
        root_fp = fingerprint(load_certificates(o.root)[0])
    except CertificateFileError as exc:
        raise ClientError(str(exc)) from None
    client = CAClient(o.ca_url, o.root)
    _expect_type(client, o.provisioner, "X5C")
    password = None
    if o.password_file is not None:
        password = password_from(o.password_file, "x5c key password")
    return x5c_token(identity.x5c_cert, identity.x5c_key, password, o.provisioner, subject, sans,
                     f"{client.ca_url}/1.0/sign", root_fp)


def _oidc_token(o: CAOptions) -> str:
    from appliance.client.http import CAClient
    from appliance.client.oidc_login import sign_in
    from appliance.client.tokens import find_provisioner

    found = find_provisioner(CAClient(o.ca_url, o.root), o.provisioner)
    return sign_in(found, echo=lambda text: click.echo(text, err=True))


def _expect_type(client: CAClient, name: str, kind: str) -> None:
    from appliance.client.http import ClientError
    from appliance.client.tokens import find_provisioner

    found = find_provisioner(client, name).get("type")
    if found != kind:
        raise ClientError(f"provisioner {name!r} is of type {found}, not {kind} (choose one with --provisioner)")


def _given_token(value: str | None) -> str | None:
    """--token: the token itself, or a file that holds it (a service-account token, say)."""
    if value is None or value.count(".") == 2:
        return value
    path = Path(value)
    if not path.is_file():
        fail("--token must be a token (a JWT) or a file that holds one")
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read the token from {path}: {exc}")


def _client_errors() -> tuple[type[Exception], ...]:
    from appliance.client.http import ClientError
    from appliance.client.keys import KeyOptionError
    from appliance.provisioners.jose import JOSEError

    return ClientError, KeyOptionError, JOSEError


@click.command()
@click.argument("subject")
@click.argument("crt_file", type=PathType)
@click.argument("key_file", type=PathType)
@click.option("--san", "sans", multiple=True, help="Subject alternative name: DNS name, IP, email or URI (repeatable).")
@ca_options
@identity_options
@click.option("--token", help="Use this token (or the token in this file) instead of minting one.")
@click.option("--kty", type=click.Choice(["EC", "RSA", "OKP"], case_sensitive=False), default="EC",
              show_default=True, help="Key type of the new key.")
@click.option("--crv", help="Curve: P-256 (default for EC), P-384, P-521, or Ed25519 for OKP.")
@click.option("--size", type=int, help="RSA key size in bits [default: 2048].")
@click.option("--not-before", help="Validity start: RFC 3339 time or a duration from now (e.g. 5m).")
@click.option("--not-after", help="Validity end: RFC 3339 time or a duration from now (e.g. 1h).")
@click.option("--force", "-f", is_flag=True, help="Overwrite CRT_FILE and KEY_FILE if they exist.")
def certificate(subject: str, crt_file: Path, key_file: Path, sans: tuple[str, ...], ca_url: str | None,
                root: Path | None, provisioner: str, password_file: Path | None,
                provisioner_key: Path | None, x5c_cert: Path | None, x5c_key: Path | None,
                k8s_token: Path | None, token: str | None, kty: str, crv: str | None,
                size: int | None, not_before: str | None, not_after: str | None, force: bool) -> None:
    """Get a certificate for SUBJECT from the CA; write it (leaf + intermediate) and its new key.

    The subject is the common name and also a SAN; --san adds more. The key is generated here
    and never leaves this machine. The one-time token is minted from the provisioner key
    (the CA's encrypted copy, opened with the provisioner password); for an X5C provisioner it is
    signed by --x5c-key with --x5c-cert's chain in it; for a K8sSA provisioner it is the pod's
    service-account token (--k8ssa-token-path, or --token FILE); for an OIDC provisioner it is the ID token
    from signing in at the identity provider (the URL to open is printed; SUBJECT is then your e-mail).
    """
    from appliance.client.http import CAClient
    from appliance.client.keys import build_csr, generate_key, write_private_key

    for path in (crt_file, key_file):
        if path.exists() and not force:
            fail(f"{path} exists; use --force to overwrite it")
        if not path.absolute().parent.is_dir():
            fail(f"{path.parent} is not a directory")
    o = _resolve(ca_url, root, provisioner, password_file, provisioner_key)
    names = list(dict.fromkeys([subject, *sans]))
    identity = Identity(x5c_cert, x5c_key, k8s_token)
    token = _given_token(token)
    try:
        key = generate_key(kty, crv, size)
        ott = token or _credential(o, identity, subject, names)
        csr = build_csr(key, subject, names)
        resp = CAClient(o.ca_url, o.root).post_json("/sign", {
            "csr": csr.public_bytes(Encoding.PEM).decode(), "ott": ott,
            "notBefore": not_before or "", "notAfter": not_after or ""})
    except _client_errors() as exc:
        fail(str(exc))
    chain = resp.get("certChain") or [resp["crt"], resp["ca"]]
    try:
        write_private_key(key_file, key)
        crt_file.write_text("".join(c if c.endswith("\n") else c + "\n" for c in chain))
    except OSError as exc:
        fail(f"cannot write {exc.filename}: {exc.strerror} (the certificate was issued, serial "
             f"{x509.load_pem_x509_certificate(chain[0].encode()).serial_number})")
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    click.echo(f"Your certificate has been saved in {crt_file}.", err=True)
    click.echo(f"Your private key has been saved in {key_file}.", err=True)
    click.echo(f"Serial {leaf.serial_number}, valid until {leaf.not_valid_after_utc.isoformat()}.", err=True)


@click.command()
@click.argument("subject")
@click.option("--san", "sans", multiple=True, help="Subject alternative name the token allows (repeatable).")
@ca_options
@identity_options
@click.option("--output-file", type=PathType, help="Write the token here instead of standard output.")
def token(subject: str, sans: tuple[str, ...], ca_url: str | None, root: Path | None, provisioner: str,
          password_file: Path | None, provisioner_key: Path | None, x5c_cert: Path | None, x5c_key: Path | None,
          k8s_token: Path | None, output_file: Path | None) -> None:
    """Mint a one-time sign token for SUBJECT (valid 5 minutes, usable once): from the provisioner key, or
    signed by --x5c-key with --x5c-cert's chain (X5C); --k8ssa-token-path prints the service-account token; for an
    OIDC provisioner, the ID token from signing in at the identity provider."""
    o = _resolve(ca_url, root, provisioner, password_file, provisioner_key)
    try:
        ott = _credential(o, Identity(x5c_cert, x5c_key, k8s_token), subject, list(dict.fromkeys([subject, *sans])))
    except _client_errors() as exc:
        fail(str(exc))
    if output_file:
        try:
            output_file.write_text(ott + "\n")
        except OSError as exc:
            fail(f"cannot write {output_file}: {exc.strerror}")
    else:
        click.echo(ott)


@click.command()
@click.option("--ca-url", required=True, help="The CA's URL, e.g. https://ca.internal:9000.")
@click.option("--fingerprint", "fp", required=True, help="SHA-256 fingerprint (hex) of the CA's root certificate.")
@click.option("--force", "-f", is_flag=True, help="Replace a different root already pinned.")
def bootstrap(ca_url: str, fp: str, force: bool) -> None:
    """Fetch the CA's root by its fingerprint and pin it for the other commands.

    The first request cannot verify TLS (the root is not known yet); what makes it safe is
    that the root received must hash to --fingerprint, and the CA's TLS certificate must then
    chain to it.
    """
    from appliance.client.defaults import ClientDefaults, save_defaults
    from appliance.client.http import CAClient, ClientError
    from appliance.config import hsmca_path

    want = fp.replace(":", "").replace("-", "").lower()
    try:
        data = CAClient(ca_url, None, verify=False).get_json(f"/root/{want}")
        root = x509.load_pem_x509_certificate(str(data.get("ca", "")).encode())
    except ClientError as exc:
        fail(str(exc))
    except ValueError:
        fail("the CA answered with something that is not a PEM certificate")
    if fingerprint(root) != want:
        fail(f"the root the CA sent has fingerprint {fingerprint(root)}, not {want}: not pinned")
    path = hsmca_path() / "certs" / "root_ca.crt"
    pem_bytes = root.public_bytes(Encoding.PEM)
    if path.exists() and path.read_bytes() != pem_bytes and not force:
        fail(f"{path} holds a different root; use --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pem_bytes)
    try:
        CAClient(ca_url, path).get_json("/health")
    except ClientError as exc:
        fail(f"the CA's TLS certificate does not chain to that root: {exc}")
    saved = save_defaults(ClientDefaults(ca_url=ca_url.rstrip("/"), root=path, fingerprint=want))
    click.echo(f"The root certificate has been saved in {path}.")
    click.echo(f"The CA's URL and fingerprint have been saved in {saved}.")


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def inspect(file: Path, fmt: str) -> None:
    """Show what a certificate (or a chain) or a certificate request holds. PEM or DER."""
    from appliance.client.inspect import InspectError, load_any, render_text

    try:
        items = load_any(file)
    except InspectError as exc:
        fail(str(exc))
    click.echo(json.dumps(items, indent=2) if fmt == "json" else render_text(items))
