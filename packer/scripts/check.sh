#!/bin/bash
# `make image-check`: offline checks of a built image, as root. The qcow2 is converted to raw, its root partition
# mounted read-only (partition.sh), the ESP read with mtools. Every check prints ok/FAIL; the script exits 1 if any
# failed.
#   check.sh IMAGE.qcow2
# shellcheck disable=SC2317,SC2016  # checks are called through `check`; dpkg-query's format is its own
set -euo pipefail

PACKER_DIR=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=packer/scripts/partition.sh
. "$PACKER_DIR/scripts/partition.sh"
IMAGE=$(realpath "${1:?usage: check.sh IMAGE.qcow2}")
[ "$(id -u)" = 0 ] || { echo "check.sh must run as root (loop mounts)" >&2; exit 1; }

WORK=$(mktemp -d)
ROOT=$WORK/root
ESP=$WORK/esp
DATA=$WORK/data
RELEASE=$(dirname "$IMAGE")
cleanup() {
	umount "$ROOT" 2>/dev/null || true
	umount "$DATA" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$ROOT" "$ESP" "$DATA"

raw_copy "$IMAGE" "$WORK/disk.raw"
mount_partition "$WORK/disk.raw" hsmca-root "$ROOT"
read -r off _ < <(partition_bytes "$WORK/disk.raw" hsmca-esp)
mtype -i "$WORK/disk.raw@@$off" ::/loader/entries/hsmca.conf > "$ESP/hsmca.conf"  # mtools: no vfat module needed
if [ -f "$RELEASE/hsmca-data.qcow2" ]; then
	raw_copy "$RELEASE/hsmca-data.qcow2" "$WORK/data.raw"
	mount_partition "$WORK/data.raw" hsmca-data "$DATA"
fi

failed=0
check() {  # check NAME COMMAND...: ok when COMMAND succeeds
	local name=$1
	shift
	if out=$("$@" 2>&1); then
		echo "ok    $name"
	else
		echo "FAIL  $name"
		printf '%s\n' "$out" | sed 's/^/      /' | head -20
		failed=1
	fi
}

exposure() {
	local level
	level=$(systemd-analyze security --offline=yes --root="$ROOT" hsmca.service 2>&1 |
		sed -n 's/.*Overall exposure level for hsmca.service: \([0-9.]*\).*/\1/p')
	echo "exposure $level"
	python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) <= 2.0 else 1)' "$level"
}
firewall() {
	unshare -n nft -c -f "$ROOT/etc/nftables.conf"
	grep -q 'type filter hook input priority filter; policy drop;' "$ROOT/etc/nftables.conf"
	grep -q 'type filter hook output priority filter; policy drop;' "$ROOT/etc/nftables.conf"
}
root_locked() { grep -q '^root:[!*]' "$ROOT/etc/shadow" && grep -q '^breakglass:[!*]' "$ROOT/etc/shadow"; }
no_console_login() {  # a getty only when the config disk enables break-glass
	grep -qE '^options .*\bsystemd\.getty_auto=0\b' "$ESP/hsmca.conf" || return 1
	local found
	found=$(find "$ROOT/etc/systemd/system" -name '*getty@*.service' 2>/dev/null)
	[ -z "$found" ] || { echo "$found"; return 1; }
}
no_compilers() {
	local found
	found=$(find "$ROOT/usr/bin" "$ROOT/usr/local/bin" \( -name 'gcc*' -o -name 'cc' -o -name 'c++' -o -name 'g++*' \
		-o -name 'clang*' -o -name 'tcc' -o -name 'as' -o -name 'ld' \) 2>/dev/null)
	[ -z "$found" ] || { echo "$found"; return 1; }
}
no_sshd() { [ ! -e "$ROOT/usr/sbin/sshd" ] && [ ! -e "$ROOT/etc/ssh/sshd_config" ] && [ ! -e "$ROOT/root/.ssh" ]; }
no_sources() {
	local found
	found=$(find "$ROOT/etc/apt" -name '*.list' -o -name '*.sources' 2>/dev/null)
	[ -z "$found" ] || { echo "$found"; return 1; }
}
setuid_allowlist() {
	local found
	found=$(cd "$ROOT" && find . -xdev \( -perm -4000 -o -perm -2000 \) -type f | sed 's#^\.##' | sort)
	diff -u <(grep -v '^#' "$PACKER_DIR/setuid-allowlist.txt" | sort) <(printf '%s\n' "$found")
}
no_private_keys() {
	local found
	# Key files (a header line of its own). The wheels' own code quotes such headers; the wheels are checked by hash.
	found=$(grep -rlE --exclude-dir=site-packages -- '^-----BEGIN ([A-Z]+ )?PRIVATE KEY-----$' \
		"$ROOT/etc" "$ROOT/root" "$ROOT/var" "$ROOT/opt" "$ROOT/home" "$ROOT/usr/local" 2>/dev/null || true)
	found+=$(find "$ROOT/var/lib/softhsm/tokens" "$ROOT/var/lib/hsmca" -mindepth 1 2>/dev/null || true)
	[ -z "$found" ] || { echo "$found"; return 1; }
}
cmdline() { grep -E '^options .*\bro\b.*\blockdown=integrity\b.*\baudit=1\b' "$ESP/hsmca.conf"; }
read_only_root() { grep -E '^\S+\s+/\s+\S+\s+ro,' "$ROOT/etc/fstab"; }
machine_id_empty() { [ ! -s "$ROOT/etc/machine-id" ]; }
no_build_logs() {
	local found
	found=$(find "$ROOT/var/log" -type f -size +0 2>/dev/null)
	[ -z "$found" ] || { echo "$found"; return 1; }
}
audit_rules() {  # compiled at build time and loaded as they are (the root is read-only: no augenrules at boot)
	grep -q -- '-k hsmca-keys' "$ROOT/etc/audit/audit.rules" && grep -q -- '^-e 2' "$ROOT/etc/audit/audit.rules" &&
		grep -q 'auditctl -R /etc/audit/audit.rules' "$ROOT/etc/systemd/system/auditd.service.d/hsmca.conf"
}
data_disk() {  # the CA's home, owned by the fixed hsmca ids, private, empty; the logs' directories
	[ -d "$DATA/hsmca" ] || { echo "no $RELEASE/hsmca-data.qcow2 with a hsmca-data partition"; return 1; }
	[ "$(stat -c %u:%g:%a "$DATA/hsmca")" = 950:950:700 ] || { stat -c '%n %u:%g:%a' "$DATA/hsmca"; return 1; }
	grep -q '^hsmca:x:950:950:' "$ROOT/etc/passwd"
	[ -z "$(find "$DATA/hsmca" -mindepth 1)" ] && [ -d "$DATA/log/journal" ] && [ -d "$DATA/log/audit" ]
}
data_mounts() { grep -E '^PARTLABEL=hsmca-data\s+/data\s' "$ROOT/etc/fstab" && grep -E '^/data/hsmca\s+/var/lib/hsmca\s' "$ROOT/etc/fstab"; }
release_signed() {  # SHA256SUMS covers the image and what ships beside it; its signature verifies
	(cd "$RELEASE" && sha256sum --strict -c SHA256SUMS) || return 1
	for h in sha256 sha384 sha512; do
		openssl dgst "-$h" -verify "$RELEASE/signing-key.pem" -signature "$RELEASE/SHA256SUMS.sig" \
			"$RELEASE/SHA256SUMS" 2>/dev/null && return 0
	done
	openssl pkeyutl -verify -pubin -inkey "$RELEASE/signing-key.pem" -rawin -in "$RELEASE/SHA256SUMS" \
		-sigfile "$RELEASE/SHA256SUMS.sig"
}
manifest() {  # what was built is what was recorded, less the build-time SSH server
	diff -u <(grep -vE '^openssh-(server|sftp-server|client) ' "$PACKER_DIR/packages.lock") \
		<(chroot "$ROOT" dpkg-query -W -f='${Package} ${Version} ${Architecture}\n' | sort)
}

check "systemd-analyze security: hsmca.service exposure <= 2.0" exposure
check "nftables: the ruleset parses, default drop inbound and outbound" firewall
check "root and breakglass accounts locked" root_locked
check "no console login by default (systemd.getty_auto=0, no getty enabled)" no_console_login
check "no compilers" no_compilers
check "no SSH server, no root SSH keys" no_sshd
check "no package sources" no_sources
check "setuid/setgid files only from packer/setuid-allowlist.txt" setuid_allowlist
check "no private key material, no tokens, no CA data in the image" no_private_keys
check "kernel command line: ro lockdown=integrity audit=1" cmdline
check "read-only root in fstab" read_only_root
check "empty machine-id" machine_id_empty
check "no build logs" no_build_logs
check "dpkg manifest = packer/packages.lock (less the build-time openssh)" manifest
check "auditd: the appliance's rules compiled into audit.rules and loaded at boot without augenrules" audit_rules
check "data disk: /hsmca empty, 0700, owned by hsmca (950:950); log directories" data_disk
check "fstab mounts the data disk's partition at /data and binds /var/lib/hsmca from it" data_mounts
check "SHA256SUMS matches the image and its manifests; SHA256SUMS.sig verifies with signing-key.pem" release_signed
exit "$failed"
