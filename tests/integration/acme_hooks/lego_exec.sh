#!/bin/bash
# lego's exec DNS provider (`--dns exec`, EXEC_PATH=this file), default mode:
#   lego_exec.sh present|cleanup <fqdn> <value> [<ttl>]   (older lego versions pass the TTL; EXEC_MODE=RAW
#   is not supported)
# puts or removes the TXT record on the tests' DNS server (tests/integration/acme_dns.py),
# whose management endpoint is $ACME_DNS_URL (http://127.0.0.1:PORT).
set -euo pipefail
: "${ACME_DNS_URL:?set ACME_DNS_URL to the management URL of the test DNS server}"
if [ $# -lt 3 ] || [ $# -gt 4 ]; then echo "usage: $0 present|cleanup <fqdn> <value> [<ttl>]" >&2; exit 2; fi
action=$1 fqdn=${2%.} value=$3
case $action in
  present) endpoint=set-txt ;;
  cleanup) endpoint=clear-txt ;;
  *) echo "$0: unknown action '$action'" >&2; exit 2 ;;
esac
# Names and base64url values only: they go into JSON unescaped.
name_re='^[A-Za-z0-9._*-]+$' value_re='^[A-Za-z0-9_=-]+$'
if ! [[ $fqdn =~ $name_re && $value =~ $value_re ]]; then echo "$0: bad name or value" >&2; exit 2; fi
curl -fsS --max-time 5 -H 'Content-Type: application/json' \
  -d "{\"host\": \"$fqdn\", \"value\": \"$value\"}" "$ACME_DNS_URL/$endpoint" >/dev/null
