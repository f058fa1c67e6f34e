#!/bin/bash
# `make image-boot`: boot the built image under qemu (TCG) with a dev-mode config disk and a copy of its empty data
# disk, and check it from the host through loopback forwards only:
#   1. first build: /health ok; a certificate issued by the appliance that `openssl verify` accepts and OCSP
#      answers `good` for; no SSH banner on any forwarded port; the break-glass console login (enabled by the
#      config disk) refuses a wrong password and lets the right one in; stopped cleanly (ACPI power button);
#   2. upgrade: the second build's system disk with the same data disk: its build id on the kernel command line,
#      the same root, the first certificate still good, a second one issued;
#   3. rollback: the first build's system disk again, break-glass no longer on the config disk: the same root,
#      both certificates good, no console login offered;
#   and after each boot, the root partition of the system disk unchanged (no writes to the root file system);
#   at the end, the data disk's audit trail, written by both builds, verifies with `hsmca audit verify` on the
#   host and holds the break-glass records.
# The system disks are copy-on-write overlays of the built images; the data disk is a copy (the images stay as
# built). Without SECOND_IMAGE_DIR, only the first boot runs (and says so).
#   boot.sh IMAGE_DIR [SECOND_IMAGE_DIR [WORK_DIR]]
set -euo pipefail

FIRST=$(realpath "${1:?usage: boot.sh IMAGE_DIR [SECOND_IMAGE_DIR [WORK_DIR]]}")
SECOND=${2:+$(realpath -m "$2")}
# shellcheck source=packer/scripts/partition.sh
. "$(dirname "$0")/partition.sh"
WORK=$(realpath -m "${3:-$FIRST/boot}")
HSMCA=${HSMCA:-hsmca}
OVMF=${OVMF:-/usr/share/ovmf/OVMF.fd}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-900}
STOP_TIMEOUT=${STOP_TIMEOUT:-180}
if [ -n "$SECOND" ] && [ ! -f "$SECOND/hsmca.qcow2" ]; then
	echo "no second build in $SECOND (make image-repro makes it): cannot test the upgrade" >&2
	exit 1
fi
rm -rf "$WORK"
mkdir -p "$WORK/disk"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
HTTPS=$(free_port)
HTTP=$(free_port)
SSH=$(free_port)
build_id() { sed -n 's/^HSMCA_BUILD_ID=//p' "$1/hsmca-release"; }

# The config disk: ext4 labelled HSMCA-CONFIG, dev mode, the names the host will use; break-glass enabled or not.
GLASS_PASSWORD=boot-test-glass-$RANDOM$RANDOM
config_disk() {  # config_disk yes|no
	local glass=""
	[ "$1" = no ] || glass=", \"breakGlass\": {\"passwordHash\": \"$(openssl passwd -6 "$GLASS_PASSWORD")\"}"
	cat > "$WORK/disk/appliance.json" <<JSON
{"mode": "dev", "dnsNames": ["localhost", "127.0.0.1"], "ntp": ["10.0.2.2"],
 "publicURL": "http://127.0.0.1:9080"$glass}
JSON
	echo "boot-test-password" > "$WORK/disk/password.txt"
	rm -f "$WORK/config.img"
	truncate -s 16M "$WORK/config.img"
	mkfs.ext4 -q -L HSMCA-CONFIG -d "$WORK/disk" "$WORK/config.img"
}
config_disk yes
echo "boot-test-password" > "$WORK/password"
qemu-img convert -O qcow2 "$FIRST/hsmca-data.qcow2" "$WORK/data.qcow2"  # the appliance's data disk, kept throughout

VM_PID=""
stop_vm_hard() {
	if [ -n "$VM_PID" ] && kill -0 "$VM_PID" 2>/dev/null; then
		kill "$VM_PID"
	fi
}
trap stop_vm_hard EXIT

# boot NAME SYSTEM_OVERLAY: start qemu with this system disk, the data disk and the config disk; wait for /health
boot() {
	local name=$1 system=$2 started=$SECONDS
	qemu-system-x86_64 -machine q35 -accel tcg -m 2048 -smp 2 -bios "$OVMF" -display none \
		-drive "file=$system,if=virtio,format=qcow2" \
		-drive "file=$WORK/data.qcow2,if=virtio,format=qcow2" \
		-drive "file=$WORK/config.img,if=virtio,format=raw" \
		-netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$HTTPS-:9000,hostfwd=tcp:127.0.0.1:$HTTP-:9080,hostfwd=tcp:127.0.0.1:$SSH-:22" \
		-device virtio-net-pci,netdev=n0 \
		-chardev "socket,id=ser0,path=$WORK/serial.sock,server=on,wait=off,logfile=$WORK/serial-$name.log" \
		-serial chardev:ser0 \
		-monitor "unix:$WORK/monitor.sock,server,nowait" -pidfile "$WORK/qemu.pid" -daemonize
	VM_PID=$(cat "$WORK/qemu.pid")
	until curl -ksf --max-time 5 "https://127.0.0.1:$HTTPS/health" > "$WORK/health.json" 2>/dev/null; do
		if [ $((SECONDS - started)) -gt "$BOOT_TIMEOUT" ]; then
			echo "FAIL  $name: /health did not answer within ${BOOT_TIMEOUT}s; the serial console:" >&2
			tail -40 "$WORK/serial-$name.log" >&2
			exit 1
		fi
		sleep 5
	done
	echo "ok    $name: /health after $((SECONDS - started))s: $(cat "$WORK/health.json")"
}

# stop NAME: the ACPI power button (systemd powers off cleanly), then wait for qemu to exit
stop() {
	local name=$1 started=$SECONDS
	python3 - "$WORK/monitor.sock" <<'PY'
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"system_powerdown\n")
time.sleep(1)
s.close()
PY
	while kill -0 "$VM_PID" 2>/dev/null; do
		if [ $((SECONDS - started)) -gt "$STOP_TIMEOUT" ]; then
			echo "FAIL  $name: no clean power-off within ${STOP_TIMEOUT}s" >&2
			exit 1
		fi
		sleep 2
	done
	VM_PID=""
	echo "ok    $name: powered off cleanly after $((SECONDS - started))s"
}

# booted_build NAME IMAGE_DIR: the kernel command line on the serial console names this image's build
booted_build() {
	local id
	id=$(build_id "$2")
	if ! grep -q "hsmca\.build=$id\b" "$WORK/serial-$1.log"; then
		echo "FAIL  $1: the serial console does not show build $id booting" >&2
		exit 1
	fi
	echo "ok    $1: build $id booted"
}

root_fingerprint() {
	curl -ksf "https://127.0.0.1:$HTTPS/roots.pem" > "$WORK/root-now.pem"
	openssl x509 -noout -fingerprint -sha256 -in "$WORK/root-now.pem" | cut -d= -f2
}

issue() {  # issue NAME: a certificate for 127.0.0.1 into WORK/NAME.crt (leaf + intermediate), verified by openssl
	"$HSMCA" certificate 127.0.0.1 "$WORK/$1.crt" "$WORK/$1.key" --ca-url "https://127.0.0.1:$HTTPS" \
		--root "$WORK/root.pem" --provisioner admin --password-file "$WORK/password" --force >/dev/null
	openssl verify -CAfile "$WORK/root.pem" -untrusted "$WORK/$1.crt" "$WORK/$1.crt" >/dev/null
	echo "ok    a certificate ($1, serial $(openssl x509 -noout -serial -in "$WORK/$1.crt" | cut -d= -f2)) issued by the appliance verifies with openssl"
}

good() {  # good NAME: the appliance's OCSP responder says the certificate is good (recorded as issued)
	awk 'n==1 {print} /END CERTIFICATE/ {n++}' "$WORK/$1.crt" > "$WORK/$1.issuer.pem"
	local answer
	answer=$(openssl ocsp -issuer "$WORK/$1.issuer.pem" -cert "$WORK/$1.crt" -url "http://127.0.0.1:$HTTP/ocsp" \
		-CAfile "$WORK/root.pem" -timeout 30 2>&1)
	if ! grep -q "^$WORK/$1.crt: good" <<<"$answer"; then
		echo "FAIL  OCSP for $1: $answer" >&2
		exit 1
	fi
	echo "ok    OCSP: $1 is good"
}

no_ssh_banner() {
	local port banner
	for port in "$SSH" "$HTTPS" "$HTTP"; do
		banner=$(python3 - "$port" <<'PY'
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as s:
        s.settimeout(5)
        print(s.recv(64).decode(errors="replace").strip())
except OSError:
    pass
PY
)
		if [[ "$banner" == SSH-* ]]; then
			echo "FAIL  port $port answered: $banner" >&2
			exit 1
		fi
	done
	echo "ok    no SSH banner on any forwarded port (22, 9000, 9080)"
}

break_glass() {  # the console login: a wrong password refused, the right one gets a root shell, then logout
	python3 - "$WORK/serial.sock" "$GLASS_PASSWORD" <<'PY'
import socket, sys, time

sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
sock.settimeout(1)
seen = b""


before = b""  # what came before the last thing expected


def expect(wanted: bytes, timeout: float = 300, poke: bool = False) -> None:
    global seen, before
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if wanted in seen:
            before, _, seen = seen.partition(wanted)
            return
        try:
            seen += sock.recv(4096)
        except socket.timeout:
            if poke:
                sock.sendall(b"\r")
    sys.exit(f"FAIL  break-glass: no {wanted!r} on the serial console within {timeout:.0f}s; last: {seen[-300:]!r}")


def send(text: str) -> None:
    sock.sendall(text.encode() + b"\r")


expect(b"login: ", poke=True)
send("breakglass")
expect(b"Password: ")
send("not-the-password")
expect(b"Login incorrect", timeout=60)
expect(b"login: ", timeout=60)
send("breakglass")
expect(b"Password: ")
send(sys.argv[2])
expect(b"# ", timeout=120)
# As root: are the appliance's auditd rules loaded? (Only a shell on the running appliance can tell.)
send("echo glass-ok-$((6 * 7))-rules-$(auditctl -l | grep -c -- '-k hsmca')-end")
expect(b"glass-ok-42-rules-", timeout=60)
expect(b"-end", timeout=30)
count = before.decode(errors="replace")
if not count.isdigit() or int(count) == 0:
    sys.exit(f"FAIL  break-glass: auditctl -l lists no hsmca rule on the running appliance ({count!r})")
send("exit")
expect(b"login: ", timeout=120)
print(f"ok    auditd: {count} hsmca rules loaded on the running appliance (auditctl -l, from the break-glass shell)")
PY
	echo "ok    break-glass: a wrong password refused; the right one logged in on the serial console, then out"
}

audit_trail_verifies() {  # on the host, from the stopped appliance's data disk
	local mnt=$WORK/data-mnt cert out status=0 events e
	mkdir -p "$mnt"
	raw_copy "$WORK/data.qcow2" "$WORK/data.raw"
	mount_partition "$WORK/data.raw" hsmca-data "$mnt"
	cert=$(python3 - "$mnt/hsmca" <<'PY'
import json, sys
home = sys.argv[1]
with open(f"{home}/config/ca.json") as f:
    name = json.load(f)["audit"]["certificate"]
print(home + "/" + name.removeprefix("/var/lib/hsmca/"))
PY
)
	out=$("$HSMCA" audit verify "$mnt"/hsmca/audit/*.jsonl --key "$cert" 2>&1) || status=$?
	events=$(grep -ho '"action":"operator\.break-glass\.[a-z]*"' "$mnt"/hsmca/audit/*.jsonl | sort | uniq -c)
	umount "$mnt"
	rm -f "$WORK/data.raw"
	if [ "$status" != 0 ]; then
		echo "FAIL  the appliance's audit trail does not verify:" >&2
		echo "$out" >&2
		exit 1
	fi
	echo "ok    the audit trail on the data disk (both builds, three boots) verifies with hsmca audit verify"
	printf '%s\n' "$out" | head -12
	for e in enabled login logout; do
		if ! grep -q "operator\.break-glass\.$e" <<<"$events"; then
			echo "FAIL  no operator.break-glass.$e record in the audit trail; found: $events" >&2
			exit 1
		fi
	done
	if ! grep -Eq '^ *2 "action":"operator\.break-glass\.enabled"' <<<"$events"; then
		echo "FAIL  break-glass was enabled at two boots (first, upgrade), not at the rollback; found: $events" >&2
		exit 1
	fi
	echo "ok    break-glass recorded in the audit trail: $(tr -s ' \n' ' ' <<<"$events")"
}

root_sum() {
	raw_copy "$1" "$WORK/tmp.raw"
	read -r off size < <(partition_bytes "$WORK/tmp.raw" hsmca-root)
	dd if="$WORK/tmp.raw" bs=1M iflag=skip_bytes,count_bytes skip="$off" count="$size" status=none | sha256sum
	rm -f "$WORK/tmp.raw"
}
root_unchanged() {  # root_unchanged NAME IMAGE OVERLAY
	if [ "$(root_sum "$2")" != "$(root_sum "$3")" ]; then
		echo "FAIL  $1: the root partition changed while the appliance ran" >&2
		exit 1
	fi
	echo "ok    $1: no writes to the root partition"
}

qemu-img create -q -f qcow2 -b "$FIRST/hsmca.qcow2" -F qcow2 "$WORK/first.qcow2"
boot first "$WORK/first.qcow2"
booted_build first "$FIRST"
curl -ksf "https://127.0.0.1:$HTTPS/roots.pem" > "$WORK/root.pem"
ROOT_FP=$(root_fingerprint)
echo "ok    root $ROOT_FP"
issue leaf1
good leaf1
no_ssh_banner
break_glass
stop first
root_unchanged first "$FIRST/hsmca.qcow2" "$WORK/first.qcow2"

if [ -z "$SECOND" ]; then
	echo "skip  upgrade and rollback: no second build given" >&2
	exit 0
fi
qemu-img create -q -f qcow2 -b "$SECOND/hsmca.qcow2" -F qcow2 "$WORK/second.qcow2"
boot upgrade "$WORK/second.qcow2"
booted_build upgrade "$SECOND"
[ "$(root_fingerprint)" = "$ROOT_FP" ] || { echo "FAIL  upgrade: the root changed" >&2; exit 1; }
echo "ok    upgrade: the same root"
good leaf1
issue leaf2
stop upgrade
root_unchanged upgrade "$SECOND/hsmca.qcow2" "$WORK/second.qcow2"

config_disk no
boot rollback "$WORK/first.qcow2"
booted_build rollback "$FIRST"
[ "$(root_fingerprint)" = "$ROOT_FP" ] || { echo "FAIL  rollback: the root changed" >&2; exit 1; }
echo "ok    rollback: the same root"
good leaf1
good leaf2
issue leaf3
if grep -aq "login: " "$WORK/serial-rollback.log"; then
	echo "FAIL  rollback: a console login was offered without breakGlass on the config disk" >&2
	exit 1
fi
echo "ok    rollback: no console login offered once breakGlass is off the config disk"
stop rollback
root_unchanged rollback "$FIRST/hsmca.qcow2" "$WORK/first.qcow2"
audit_trail_verifies
