#!/bin/bash
# certbot --manual-cleanup-hook=this file: removes the TXT value certbot_auth.sh put in place.
set -euo pipefail
exec "$(dirname "$0")/lego_exec.sh" cleanup "_acme-challenge.${CERTBOT_DOMAIN#\*.}" "$CERTBOT_VALIDATION"
