"""The `hsmca` command."""

from __future__ import annotations

import click

import appliance
from appliance.cli import (
    acme,
    client,
    intermediate,
    kms,
    provisioner,
    public_url,
    renew,
    revocation,
    server,
    template,
)
from appliance.cli import appliance as appliance_command
from appliance.cli import audit as audit_command
from appliance.cli import backup as backup_command
from appliance.cli import ocsp as ocsp_command
from appliance.cli import ssh as ssh_command
from ceremony.cli import ceremony


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(appliance.__version__, prog_name="hsmca")
def main() -> None:
    """hsmca: a private certificate authority whose every signature is made inside an HSM.

    \b
    Run a CA:     hsmca init, then hsmca serve; hsmca public-url (the URLs certificates carry)
    Rotate:       hsmca intermediate csr|install|list|activate|retire
    Keys:         hsmca kms create-key|public-key|check
    Offline:      hsmca ceremony plan|root|sign-intermediate|verify
    Get certs:    hsmca bootstrap, hsmca certificate, hsmca token, hsmca renew, hsmca rekey
    Revocation:   hsmca revoke, hsmca crl
    Provisioners: hsmca provisioner add|update|list|remove|template (JWK, ACME, OIDC, X5C, K8sSA),
                  hsmca acme eab
    SSH:          hsmca ssh init-ca|certificate|renew|rekey|revoke|roots|config|inspect
    Templates:    hsmca template render
    Look inside:  hsmca inspect, hsmca ocsp
    Operations:   hsmca backup, hsmca restore (database, audit trail, configuration), hsmca db migrate

    The CA's files live under $HSMCA_PATH (default ~/.hsmca).
    """


for command in (server.init, server.serve, server.db, intermediate.intermediate, kms.kms, ceremony, client.certificate,
                client.token, client.bootstrap, client.inspect, renew.renew, renew.rekey,
                revocation.revoke, revocation.crl):
    main.add_command(command)
main.add_command(ocsp_command.ocsp)
main.add_command(provisioner.provisioner)
main.add_command(public_url.public_url)
main.add_command(acme.acme)
main.add_command(ocsp_command.ocsp_responder)
main.add_command(template.template)
main.add_command(audit_command.audit)
main.add_command(backup_command.backup)
main.add_command(backup_command.restore)
main.add_command(appliance_command.appliance)
main.add_command(ssh_command.ssh)


if __name__ == "__main__":
    main()
