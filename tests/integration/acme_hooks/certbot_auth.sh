#!/bin/bash
# certbot --manual --preferred-challenges dns --manual-auth-hook=this file: certbot passes the
# domain and the TXT value in CERTBOT_DOMAIN / CERTBOT_VALIDATION; the record goes to the tests'
# DNS server (tests/integration/acme_dns.py) through its management endpoint $ACME_DNS_URL.
set -euo pipefail
exec "$(dirname "$0")/lego_exec.sh" present "_acme-challenge.${CERTBOT_DOMAIN#\*.}" "$CERTBOT_VALIDATION"
