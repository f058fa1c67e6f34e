"""`hsmca provisioner add|list|remove|template`: edit ca.json's provisioners (running servers reload on SIGHUP)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import click
from pydantic import ValidationError

from appliance.cli.common import fail
from appliance.config import (
    ACMEProvisionerConfig,
    CAConfig,
    ConfigError,
    K8sSAProvisionerConfig,
    OIDCProvisionerConfig,
    X5CProvisionerConfig,
    default_config_path,
    load_config,
    save_config,
)

CONFIG = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                      help="Path to ca.json [default: $HSMCA_PATH/config/ca.json].")


@click.group()
def provisioner() -> None:
    """Add, list and remove provisioners in ca.json."""


TYPES = {"acme": "ACME", "x5c": "X5C", "k8ssa": "K8sSA", "oidc": "OIDC"}


@provisioner.command("add")
@click.argument("name")
@click.option("--type", "kind", type=click.Choice(sorted(TYPES.values()), case_sensitive=False), default="ACME",
              show_default=True, help="Provisioner type (JWK provisioners are made by `hsmca init`).")
@click.option("--http01-port", type=int, help="ACME: port the http-01 validator connects to [default: 80].")
@click.option("--tlsalpn01-port", type=int, help="ACME: port the tls-alpn-01 validator connects to [default: 443].")
@click.option("--resolver", "resolvers", multiple=True, metavar="HOST:PORT",
              help="ACME: DNS resolver for validation (repeatable) [default: the system's].")
@click.option("--challenge", "challenges", multiple=True, type=click.Choice(["http-01", "dns-01", "tls-alpn-01"]),
              help="ACME: challenge type offered (repeatable) [default: all three].")
@click.option("--terms-of-service", help="ACME: URL of the terms of service, shown in the directory's meta.")
@click.option("--x5c-root", "--x5c-roots", "x5c_root", type=click.Path(dir_okay=False, path_type=Path),
              help="X5C: PEM file of the root certificate(s) a token's x5c chain must verify to.")
@click.option("--public-key", "public_key", type=click.Path(dir_okay=False, path_type=Path),
              help="K8sSA: PEM file of the cluster's service-account public key(s) (or certificates).")
@click.option("--issuer", "issuers", multiple=True,
              help="K8sSA: an `iss` bound service-account tokens may have (repeatable) [default: any].")
@click.option("--audience", "audiences", multiple=True,
              help="K8sSA: an `aud` bound tokens may have besides this CA's URLs (repeatable).")
@click.option("--client-id", help="OIDC: the client id registered at the OpenID provider (tokens' audience).")
@click.option("--client-secret", help="OIDC: its client secret (published to clients, as step-ca does; "
                                      "omit for a public client).")
@click.option("--configuration-endpoint", help="OIDC: the provider's discovery URL "
                                               "(https://…/.well-known/openid-configuration).")
@click.option("--admin", "admins", multiple=True, metavar="EMAIL",
              help="OIDC: an e-mail whose owner may ask for any name (repeatable).")
@click.option("--domain", "domains", multiple=True,
              help="OIDC: an e-mail domain allowed to get certificates (repeatable) [default: any].")
@click.option("--group", "groups", multiple=True,
              help="OIDC: a group (the ID token's `groups`) allowed to get certificates (repeatable) [default: any].")
@click.option("--listen-address", metavar="HOST:PORT",
              help="OIDC: the loopback address clients listen on for the provider's redirect [default: any port].")
@click.option("--tenant-id", help="OIDC (Azure): replaces {tenantid} in the provider's issuer.")
@click.option("--x509-template", "template_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A certificate template (Jinja2; see the README), checked now and stored in ca.json.")
@click.option("--x509-template-data", "template_data_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A JSON object the template sees as `data`.")
@CONFIG
def add(name: str, kind: str, http01_port: int | None, tlsalpn01_port: int | None, resolvers: tuple[str, ...],
        challenges: tuple[str, ...], terms_of_service: str | None, x5c_root: Path | None, public_key: Path | None,
        issuers: tuple[str, ...], audiences: tuple[str, ...], client_id: str | None, client_secret: str | None,
        configuration_endpoint: str | None, admins: tuple[str, ...], domains: tuple[str, ...],
        groups: tuple[str, ...], listen_address: str | None, tenant_id: str | None, template_file: Path | None,
        template_data_file: Path | None, config_path: Path | None) -> None:
    """Add provisioner NAME: ACME (served at /acme/NAME/directory), X5C (--x5c-root FILE: a certificate chaining
    to these roots vouches), K8sSA (--public-key FILE: Kubernetes service-account tokens) or OIDC (--client-id,
    --configuration-endpoint: single sign-on; the provider's discovery document is fetched now to check it)."""
    kind = TYPES[kind.lower()]
    path = config_path or default_config_path()
    config = _load(path)
    if any(p.name == name for p in config.authority.provisioners):
        fail(f"{path}: a provisioner named {name!r} exists already")
    given = {"--http01-port": http01_port, "--tlsalpn01-port": tlsalpn01_port, "--resolver": resolvers,
             "--challenge": challenges, "--terms-of-service": terms_of_service, "--x5c-root": x5c_root,
             "--public-key": public_key, "--issuer": issuers, "--audience": audiences, "--client-id": client_id,
             "--client-secret": client_secret, "--configuration-endpoint": configuration_endpoint,
             "--admin": admins, "--domain": domains, "--group": groups, "--listen-address": listen_address,
             "--tenant-id": tenant_id}
    allowed = {"ACME": {"--http01-port", "--tlsalpn01-port", "--resolver", "--challenge", "--terms-of-service"},
               "X5C": {"--x5c-root"}, "K8sSA": {"--public-key", "--issuer", "--audience"},
               "OIDC": {"--client-id", "--client-secret", "--configuration-endpoint", "--admin", "--domain",
                        "--group", "--listen-address", "--tenant-id"}}[kind]
    foreign = [flag for flag, value in given.items() if value not in (None, ()) and flag not in allowed]
    if foreign:
        fail(f"{', '.join(foreign)} do{'es' if len(foreign) == 1 else ''} not apply to a {kind} provisioner")
    fields: dict[str, object] = {"type": kind, "name": name}
    if kind == "ACME":
        for key, value in (("http01Port", http01_port), ("tlsalpn01Port", tlsalpn01_port),
                           ("termsOfService", terms_of_service)):
            if value is not None:
                fields[key] = value
        if resolvers:
            fields["resolvers"] = list(resolvers)
        if challenges:
            fields["challenges"] = list(dict.fromkeys(challenges))
    elif kind == "X5C":
        if x5c_root is None:
            fail("an X5C provisioner needs --x5c-root FILE (the roots its tokens' chains verify to)")
        fields["roots"] = _x5c_roots(x5c_root)
    elif kind == "OIDC":
        if not client_id or not configuration_endpoint:
            fail("an OIDC provisioner needs --client-id and --configuration-endpoint")
        if any(getattr(p, "clientID", None) == client_id for p in config.authority.provisioners):
            fail(f"{path}: an OIDC provisioner for client id {client_id!r} exists already (an ID token names its "
                 "provisioner by client id)")
        fields.update({"clientID": client_id, "clientSecret": client_secret or "",
                       "configurationEndpoint": configuration_endpoint})
        for key, values in (("admins", admins), ("domains", domains), ("groups", groups)):
            if values:
                fields[key] = list(dict.fromkeys(values))
        for key, value in (("listenAddress", listen_address), ("tenantID", tenant_id)):
            if value:
                fields[key] = value
    else:
        if public_key is None:
            fail("a K8sSA provisioner needs --public-key FILE (the cluster's service-account key(s))")
        if any(p.type == "K8sSA" for p in config.authority.provisioners):
            fail(f"{path}: there is a K8sSA provisioner already, and a service-account token cannot name one of "
                 "two (step-ca allows one too)")
        fields["publicKeys"] = _k8s_keys(public_key)
        if issuers:
            fields["issuers"] = list(dict.fromkeys(issuers))
        if audiences:
            fields["audiences"] = list(dict.fromkeys(audiences))
    options = _template_options(template_file, template_data_file)
    if options:
        fields["options"] = options
    models: dict[str, type[ACMEProvisionerConfig | X5CProvisionerConfig | K8sSAProvisionerConfig
                           | OIDCProvisionerConfig]] = {
        "ACME": ACMEProvisionerConfig, "X5C": X5CProvisionerConfig, "K8sSA": K8sSAProvisionerConfig,
        "OIDC": OIDCProvisionerConfig}
    try:
        new = models[kind].model_validate(fields)
    except ValidationError as exc:
        fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    if isinstance(new, OIDCProvisionerConfig):
        issuer = _check_provider(new)
    config.authority.provisioners.append(new)
    _check_templates(config)
    save_config(config, path)
    if kind == "ACME":
        from appliance.ca.urls import api_url

        click.echo(f"Added ACME provisioner {name!r}: directory at {api_url(config)}/acme/{name}/directory")
    elif kind == "OIDC":
        click.echo(f"Added OIDC provisioner {name!r} for issuer {issuer}: `hsmca certificate EMAIL CRT KEY "
                   f"--provisioner {name}` signs in through the provider")
    elif kind == "X5C":
        click.echo(f"Added X5C provisioner {name!r}: `hsmca certificate SUBJECT CRT KEY --provisioner {name} "
                   "--x5c-cert FILE --x5c-key FILE`")
    else:
        click.echo(f"Added K8sSA provisioner {name!r}: `hsmca certificate SUBJECT CRT KEY --provisioner {name} "
                   "--k8ssa-token-path FILE`")
    click.echo("Running servers pick it up on SIGHUP (or restart them).")


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
@click.option("--client-id", help="OIDC: the client id registered at the OpenID provider (tokens' audience).")
@click.option("--client-secret", help="OIDC: its client secret (published to clients, as step-ca does; "
                                      "omit for a public client).")
@click.option("--configuration-endpoint", help="OIDC: the provider's discovery URL "
                                               "(https://…/.well-known/openid-configuration).")
@click.option("--admin", "admins", multiple=True, metavar="EMAIL",
              help="OIDC: an e-mail whose owner may ask for any name (repeatable).")
@click.option("--domain", "domains", multiple=True,
              help="OIDC: an e-mail domain allowed to get certificates (repeatable) [default: any].")
@click.option("--group", "groups", multiple=True,
              help="OIDC: a group (the ID token's `groups`) allowed to get certificates (repeatable) [default: any].")
@click.option("--listen-address", metavar="HOST:PORT",
              help="OIDC: the loopback address clients listen on for the provider's redirect [default: any port].")
@click.option("--tenant-id", help="OIDC (Azure): replaces {tenantid} in the provider's issuer.")
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
