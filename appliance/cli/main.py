"""The `hsmca` command."""

from __future__ import annotations

import click

import appliance
from appliance.cli import client, intermediate, kms, server
from ceremony.cli import ceremony


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(appliance.__version__, prog_name="hsmca")
def main() -> None:
    """hsmca: a private certificate authority whose every signature is made inside an HSM.

    \b
    Run a CA:     hsmca init, then hsmca serve
    Rotate:       hsmca intermediate csr|install|list|activate|retire
    Keys:         hsmca kms create-key|public-key|check
    Offline:      hsmca ceremony plan|root|sign-intermediate|verify
    Get certs:    hsmca bootstrap, hsmca certificate, hsmca token
    Look inside:  hsmca inspect

    The CA's files live under $HSMCA_PATH (default ~/.hsmca).
    """


for command in (server.init, server.serve, server.db, intermediate.intermediate, kms.kms, ceremony, client.certificate,
                client.token, client.bootstrap, client.inspect):
    main.add_command(command)


if __name__ == "__main__":
    main()
