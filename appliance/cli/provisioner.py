"""`hsmca provisioner add|list|remove|template`: edit ca.json's provisioners (running servers reload on SIGHUP)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from appliance.cli.common import fail
from appliance.cli.provisioner_fields import apply_flags, given_flags, type_options
from appliance.config import (
    ACMEProvisionerConfig,
    AnyProvisionerConfig,
    CAConfig,
    ConfigError,
    K8sSAProvisionerConfig,
    OIDCProvisionerConfig,
    ProvisionerConfig,
    SSHPOPProvisionerConfig,
    X5CProvisionerConfig,
    default_config_path,
    load_config,
    save_config,
)

CONFIG = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                      help="Path to ca.json [default: $HSMCA_PATH/config/ca.json].")


@click.group()
def provisioner() -> None:
    """Add, update, list and remove provisioners in ca.json."""


TYPES = {"acme": "ACME", "x5c": "X5C", "k8ssa": "K8sSA", "oidc": "OIDC", "jwk": "JWK", "sshpop": "SSHPOP"}
ModelType = type[ProvisionerConfig | ACMEProvisionerConfig | X5CProvisionerConfig | K8sSAProvisionerConfig
                 | OIDCProvisionerConfig | SSHPOPProvisionerConfig]
MODELS: dict[str, ModelType] = {"JWK": ProvisionerConfig, "ACME": ACMEProvisionerConfig, "X5C": X5CProvisionerConfig,
                                "K8sSA": K8sSAProvisionerConfig, "OIDC": OIDCProvisionerConfig,
                                "SSHPOP": SSHPOPProvisionerConfig}
REQUIRED = {"X5C": ("--x5c-root FILE (the roots its tokens' chains verify to)", "roots"),
            "K8sSA": ("--public-key FILE (the cluster's service-account key(s))", "publicKeys"),
            "OIDC": ("--client-id and --configuration-endpoint", "clientID", "configurationEndpoint")}


@provisioner.command("add")
@click.argument("name")
@click.option("--type", "kind", type=click.Choice(sorted(TYPES.values()), case_sensitive=False), default="ACME",
              show_default=True, help="Provisioner type.")
@type_options(updating=False)
@click.option("--x509-template", "template_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A certificate template (Jinja2; see the README), checked now and stored in ca.json.")
@click.option("--x509-template-data", "template_data_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A JSON object the template sees as `data`.")
@CONFIG
def add(name: str, kind: str, template_file: Path | None, template_data_file: Path | None,
        config_path: Path | None, **values: Any) -> None:
    """Add provisioner NAME: ACME (served at /acme/NAME/directory), X5C (--x5c-root FILE: a certificate chaining
    to these roots vouches), K8sSA (--public-key FILE: Kubernetes service-account tokens), OIDC (--client-id,
    --configuration-endpoint: single sign-on; the provider's discovery document is fetched now to check it) or
    JWK (one-time tokens signed by the provisioner's key: --create a key pair, the default, or --public-key FILE),
    or SSHPOP (a host's SSH certificate renews, rekeys or revokes itself).
    Claims flags (--x509-max-dur, --disable-renewal, …) set the provisioner's own claims."""
    kind = TYPES[kind.lower()]
    path = config_path or default_config_path()
    config = _load(path)
    if any(p.name == name for p in config.authority.provisioners):
        fail(f"{path}: a provisioner named {name!r} exists already")
    given_flags(kind, values)
    fields = apply_flags(kind, {"type": kind, "name": name}, values, _read_file)
    for needed, *keys in [REQUIRED[kind]] if kind in REQUIRED else []:
        if any(not fields.get(k) for k in keys):
            fail(f"a{'n' if kind[0] in 'AOX' else ''} {kind} provisioner needs {needed}")
    if kind == "JWK":
        fields.update(_jwk_key(values["create"], values["public_key"], values["password_file"], required=True))
    if kind == "K8sSA" and any(p.type == "K8sSA" for p in config.authority.provisioners):
        fail(f"{path}: there is a K8sSA provisioner already, and a service-account token cannot name one of two "
             "(step-ca allows one too)")
    options = _template_options(template_file, template_data_file)
    if options:
        fields["options"] = options
    new = _validated(kind, fields)
    _unique_client_id(config, new, path)
    _check_claims(config, new)
    issuer = _check_provider(new) if isinstance(new, OIDCProvisionerConfig) else ""
    config.authority.provisioners.append(new)
    _check_templates(config)
    save_config(config, path)
    if kind == "ACME":
        from appliance.ca.urls import api_url

        click.echo(f"Added ACME provisioner {name!r}: directory at {api_url(config)}/acme/{name}/directory")
    else:
        if kind == "SSHPOP":
            click.echo(f"Added SSHPOP provisioner {name!r}: `hsmca ssh renew HOST-cert.pub HOST-KEY` renews a host "
                       "certificate")
            click.echo("Running servers pick it up on SIGHUP (or restart them).")
            return
        how = {"OIDC": f"signs in at {issuer}", "X5C": "--x5c-cert FILE --x5c-key FILE",
               "K8sSA": "--k8ssa-token-path FILE",
               "JWK": "--provisioner-key FILE" if values["public_key"] else "--password-file FILE"}[kind]
        click.echo(f"Added {kind} provisioner {name!r}: `hsmca certificate SUBJECT CRT KEY --provisioner {name}` "
                   f"({how})")
    click.echo("Running servers pick it up on SIGHUP (or restart them).")


@provisioner.command("update")
@click.argument("name")
@type_options(updating=True)
@CONFIG
def update(name: str, config_path: Path | None, **values: Any) -> None:
    """Change provisioner NAME in ca.json with the flags `add` takes for its type: a value replaces, a list flag
    (--domain, --admin, --issuer, …) adds and --remove-… removes, a file flag reads the file again; --create
    (JWK) makes a new key pair. Templates: `hsmca provisioner template`. Running servers pick it up on SIGHUP."""
    path = config_path or default_config_path()
    config = _load(path)
    index = next((i for i, p in enumerate(config.authority.provisioners) if p.name == name), None)
    if index is None:
        fail(f"{path}: no provisioner named {name!r}")
    old = config.authority.provisioners[index]
    given = given_flags(old.type, values)
    if not given and not any(values.get(k) is not None for k in (
            "x509_min_dur", "x509_max_dur", "x509_default_dur", "disable_renewal", "allow_renewal_after_expiry")):
        fail("nothing to change: give the flags to change (see --help)")
    fields = apply_flags(old.type, old.model_dump(mode="json", exclude_none=True), values, _read_file)
    if old.type == "JWK":
        fields.update(_jwk_key(values["create"], values["public_key"], values["password_file"], required=False))
        if values["public_key"]:
            fields.pop("encryptedKey", None)  # the old encrypted key belongs to the old key
    new = _validated(old.type, fields)
    config.authority.provisioners[index] = new
    _unique_client_id(config, new, path)
    _check_claims(config, new)
    if isinstance(new, OIDCProvisionerConfig) and any(
            f in given for f in ("--client-id", "--configuration-endpoint", "--tenant-id")):
        _check_provider(new)
    _check_templates(config)
    save_config(config, path)
    click.echo(f"Updated {old.type} provisioner {name!r} ({', '.join(given) or 'claims'})")
    click.echo("Running servers pick it up on SIGHUP (or restart them).")


def _validated(kind: str, fields: dict[str, Any]) -> AnyProvisionerConfig:
    try:
        return MODELS[kind].model_validate(fields)
    except ValidationError as exc:
        fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                       + (f" (got {e['input']!r})" if isinstance(e.get("input"), str | int) else "")
                       for e in exc.errors()))


def _check_claims(config: CAConfig, new: AnyProvisionerConfig) -> None:
    """The provisioner's claims merged over the authority's, as the server will merge them (a maximum below the
    default lifetime, say, would make the server refuse the whole ca.json)."""
    from policy import Policy, PolicyConfigError

    auth = config.authority
    try:
        Policy.from_config(auth.policy, auth.claims, new.name, new.policy, new.claims)
    except PolicyConfigError as exc:
        fail(f"{exc} (set --x509-default-dur too, or change the authority's claims)")


def _unique_client_id(config: CAConfig, new: AnyProvisionerConfig, path: Path) -> None:
    """An ID token names its provisioner by client id: two OIDC provisioners cannot share one."""
    if isinstance(new, OIDCProvisionerConfig) and sum(
            getattr(p, "clientID", None) == new.clientID for p in config.authority.provisioners if p is not new) > 0:
        fail(f"{path}: an OIDC provisioner for client id {new.clientID!r} exists already (an ID token names its "
             "provisioner by client id)")


def _read_file(field: str, path: Path) -> str:
    return _x5c_roots(path) if field == "roots" else _k8s_keys(path)


def _jwk_key(create: bool, public_key: Path | None, password_file: Path | None, *,
             required: bool) -> dict[str, object]:
    """`key` (and `encryptedKey` for a key made here) of a JWK provisioner, as step-ca stores them."""
    from appliance.cli.common import password_from
    from appliance.provisioners import jose

    if create and public_key is not None:
        fail("give --create or --public-key, not both")
    if public_key is not None:
        key = _public_key_file(public_key)
        return {"key": jose.public_jwk(key)}
    if not (create or required):
        return {}
    made = jose.generate_provisioner_key()
    password = password_from(password_file, "password to encrypt the provisioner key", confirm=True)
    return {"key": jose.public_jwk(made), "encryptedKey": jose.encrypt_jwk(made, password)}


def _public_key_file(path: Path) -> Any:
    """A public JWK (JSON) or PEM public key from a file; a private key is refused (ca.json holds public keys)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from appliance.provisioners import jose

    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {exc}")
    try:
        if text.lstrip().startswith("{"):
            key = jose.import_jwk(json.loads(text))
            if key.is_private:
                fail(f"{path} holds a private key: give the public key (ca.json holds public keys only)")
            return key
        return jose.import_public_key(load_pem_public_key(text.encode()))
    except (ValueError, UnsupportedAlgorithm, jose.JOSEError) as exc:
        fail(f"{path}: not a public JWK or PEM public key: {exc}")


def _check_provider(config: OIDCProvisionerConfig) -> str:
    """Fetch the provider's discovery document and key set, as the CA will; the issuer, or fail saying why."""
    from appliance.provisioners.oidc_keys import (
        ProviderError,
        discovery_url,
        fetch_json,
        parse_discovery,
        parse_key_set,
    )

    url = discovery_url(config.configurationEndpoint)
    try:
        discovery = parse_discovery(fetch_json(url, "the discovery document")[0], url, config.tenantID)
        parse_key_set(fetch_json(discovery.jwks_uri, "the key set")[0], discovery.jwks_uri)
    except ProviderError as exc:
        fail(f"{exc} (the provisioner was not added)")
    return discovery.issuer


def _x5c_roots(path: Path) -> str:
    """The roots as ca.json holds them (base64 of their PEM); each must be a CA that may sign certificates."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        roots = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        fail(f"{path}: not a PEM file of certificates: {exc}")
    for cert in roots:
        try:
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            continue
        except ValueError as exc:
            fail(f"{path}: {cert.subject.rfc4514_string()}: {exc}")
        if not usage.key_cert_sign:
            fail(f"{path}: {cert.subject.rfc4514_string()} cannot be an X5C root: its key usage lacks "
                 "keyCertSign (Certificate Sign)")
    return base64.b64encode(b"".join(c.public_bytes(Encoding.PEM) for c in roots)).decode()


def _k8s_keys(path: Path) -> str:
    """The keys as ca.json holds them (base64 of their PEM), read now so a bad file stops here."""
    from appliance.config import k8s_public_keys

    try:
        encoded = base64.b64encode(path.read_bytes()).decode()
        k8s_public_keys(encoded)
    except (OSError, ValueError) as exc:
        fail(f"{path}: {exc}")
    return encoded


@provisioner.command("list")
@CONFIG
def list_(config_path: Path | None) -> None:
    """The provisioners in ca.json, one a line: type and name."""
    for p in _load(config_path or default_config_path()).authority.provisioners:
        click.echo(f"{p.type:5} {p.name}")


@provisioner.command("remove")
@click.argument("name")
@CONFIG
def remove(name: str, config_path: Path | None) -> None:
    """Remove provisioner NAME from ca.json."""
    path = config_path or default_config_path()
    config = _load(path)
    kept = [p for p in config.authority.provisioners if p.name != name]
    if len(kept) == len(config.authority.provisioners):
        fail(f"{path}: no provisioner named {name!r}")
    config.authority.provisioners = kept
    save_config(config, path)
    click.echo(f"Removed provisioner {name!r}")


@provisioner.command("template")
@click.argument("name")
@click.option("--x509-template", "template_file", type=click.Path(dir_okay=False, path_type=Path),
              help="The certificate template (Jinja2; see the README), checked now and stored in ca.json.")
@click.option("--x509-template-data", "template_data_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A JSON object the template sees as `data`.")
@click.option("--remove", "remove_template", is_flag=True, help="Drop the provisioner's template (default leaves).")
@CONFIG
def set_template(name: str, template_file: Path | None, template_data_file: Path | None, remove_template: bool,
                 config_path: Path | None) -> None:
    """Give provisioner NAME a certificate template (or --remove it); running servers pick it up on SIGHUP."""
    from appliance.config import ProvisionerOptions

    if remove_template == (template_file is not None):
        fail("give --x509-template FILE, or --remove")
    path = config_path or default_config_path()
    config = _load(path)
    found = next((p for p in config.authority.provisioners if p.name == name), None)
    if found is None:
        fail(f"{path}: no provisioner named {name!r}")
    options = found.options or ProvisionerOptions()
    try:
        options.x509 = None if remove_template else ProvisionerOptions.model_validate(
            _template_options(template_file, template_data_file)).x509
    except ValidationError as exc:
        fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    found.options = options
    _check_templates(config)
    save_config(config, path)
    click.echo(f"{'Removed the template of' if remove_template else 'Set the template of'} provisioner {name!r}")
    click.echo("Running servers pick it up on SIGHUP (or restart them).")


def _template_options(template_file: Path | None, data_file: Path | None) -> dict[str, object]:
    """ca.json's `options` for a template given as files (stored inline: ca.json stays the one source)."""
    if template_file is None:
        if data_file is not None:
            fail("--x509-template-data goes with --x509-template")
        return {}
    try:
        x509: dict[str, object] = {"template": template_file.read_text()}
        if data_file is not None:
            data = json.loads(data_file.read_text())
            if not isinstance(data, dict):
                fail(f"{data_file}: template data must be a JSON object")
            x509["templateData"] = data
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        fail(f"cannot read the template or its data: {exc}")
    return {"x509": x509}


def _check_templates(config: CAConfig) -> None:
    """Compile every template as the server will, so a broken one never reaches ca.json."""
    from appliance.ra.templates import load_templates

    try:
        load_templates(config)
    except ConfigError as exc:
        fail(str(exc))


def _load(path: Path) -> CAConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        fail(str(exc))
