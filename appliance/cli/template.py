"""`hsmca template render`: what a provisioner's certificate template makes of a request, without issuing."""

from __future__ import annotations

import json
from pathlib import Path

import click

from appliance.cli.common import fail


@click.group()
def template() -> None:
    """Try certificate templates (options.x509 in ca.json; the README's "Certificate templates")."""


@template.command("render")
@click.option("--provisioner", "name", required=True, help="The provisioner whose template renders.")
@click.option("--csr", "csr_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A PEM certificate request, as a client would send it.")
@click.option("--token", help="A one-time token whose claims the template sees (NOT verified here: this only "
                              "shows what the template would do with them).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Path to ca.json [default: $HSMCA_PATH/config/ca.json].")
def render(name: str, csr_file: Path, token: str | None, config_path: Path | None) -> None:
    """Render NAME's template for the CSR (and token), print the document, and what policy will judge.

    Nothing is signed or recorded. The names come from the token (sub, sans) when one is given, else from the
    CSR, as the JWK provisioner would take them.
    """
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm

    from appliance.certutil import read_extensions
    from appliance.config import ConfigError, default_config_path, load_config
    from appliance.errors import CAError
    from appliance.names import RequestedNames, split_sans
    from appliance.provisioners import jose
    from appliance.provisioners.request import IssuanceRequest
    from appliance.ra.templates import apply, load_templates, variables

    try:
        config = load_config(config_path or default_config_path())
        templates = load_templates(config)
    except ConfigError as exc:
        fail(str(exc))
    found = next((p for p in config.authority.provisioners if p.name == name), None)
    if found is None:
        fail(f"no provisioner named {name!r} in ca.json")
    tpl = templates.get(name)
    if tpl is None:
        fail(f"provisioner {name!r} has no certificate template (options.x509.template or templateFile)")
    try:
        csr = x509.load_pem_x509_csr(csr_file.read_bytes())
        public_key = csr.public_key()
    except (OSError, ValueError, UnsupportedAlgorithm) as exc:
        fail(f"{csr_file}: not a PEM certificate request with a key hsmca can read: {exc}")
    claims: dict[str, object] = {}
    if token:
        try:
            _, claims = jose.peek(token)
        except (jose.JOSEError, CAError) as exc:
            fail(f"cannot read the token: {exc}")
    cns = csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    subject = str(claims.get("sub") or (cns[0].value if cns else ""))
    if token:
        sans = claims.get("sans") or [subject]
        names = split_sans([s for s in sans if isinstance(s, str)] if isinstance(sans, list) else [subject])
    else:
        try:
            names = RequestedNames.from_general_names(
                read_extensions(csr).get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            names = split_sans([subject]) if subject else RequestedNames()
        except ValueError as exc:
            fail(f"{csr_file}: the request's extensions cannot be read: {exc}")
    request = IssuanceRequest(provisioner=name, common_name=subject, names=names, public_key=public_key,
                              csr=csr, template_data={"token": claims})
    try:
        rendered = tpl.render(variables(request, name, found.type))
        shaped = apply(request, rendered)
    except CAError as exc:
        fail(exc.message)
    click.echo(json.dumps(rendered.model_dump(exclude_none=True), indent=2))
    click.echo(f"# subject CN: {shaped.common_name or '(empty)'}", err=True)
    click.echo(f"# names policy and lint will judge: {', '.join(shaped.names.as_strings()) or '(none)'}", err=True)
