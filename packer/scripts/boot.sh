#!/bin/bash
# `make image-boot`: boot the built image under qemu (TCG) from a copy-on-write overlay, with a dev-mode config
# disk, and check it from the host through loopback forwards only:
#   /health ok; a certificate issued by the appliance that `openssl verify` accepts; no SSH banner on port 22;
#   and, once the VM is stopped, the root partition unchanged (no writes to the root file system).
#   boot.sh IMAGE.qcow2 [WORK_DIR]
set -euo pipefail

IMAGE=$(realpath "${1:?usage: boot.sh IMAGE.qcow2 [WORK_DIR]}")
# shellcheck source=packer/scripts/partition.sh
. "$(dirname "$0")/partition.sh"
WORK=$(realpath -m "${2:-$(dirname "$IMAGE")/boot}")
HSMCA=${HSMCA:-hsmca}
OVMF=${OVMF:-/usr/share/ovmf/OVMF.fd}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-900}
rm -rf "$WORK"
mkdir -p "$WORK/disk"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
HTTPS=$(free_port)
HTTP=$(free_port)
SSH=$(free_port)

# The config disk: ext4 labelled HSMCA-CONFIG, dev mode, the names the host will use.
cat > "$WORK/disk/appliance.json" <<JSON
{"mode": "dev", "dnsNames": ["localhost", "127.0.0.1"], "ntp": ["10.0.2.2"],
 "publicURL": "http://127.0.0.1:9080"}
JSON
echo "boot-test-password" > "$WORK/disk/password.txt"
truncate -s 16M "$WORK/config.img"
mkfs.ext4 -q -L HSMCA-CONFIG -d "$WORK/disk" "$WORK/config.img"

qemu-img create -q -f qcow2 -b "$IMAGE" -F qcow2 "$WORK/overlay.qcow2"
qemu-system-x86_64 -machine q35 -accel tcg -m 2048 -smp 2 -bios "$OVMF" -display none \
	-drive "file=$WORK/overlay.qcow2,if=virtio,format=qcow2" \
	-drive "file=$WORK/config.img,if=virtio,format=raw" \
	-netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$HTTPS-:9000,hostfwd=tcp:127.0.0.1:$HTTP-:9080,hostfwd=tcp:127.0.0.1:$SSH-:22" \
	-device virtio-net-pci,netdev=n0 -serial "file:$WORK/serial.log" \
	-pidfile "$WORK/qemu.pid" -daemonize
stop_vm() {
	if [ -f "$WORK/qemu.pid" ] && kill -0 "$(cat "$WORK/qemu.pid")" 2>/dev/null; then
		kill "$(cat "$WORK/qemu.pid")"
	fi
}
trap stop_vm EXIT

started=$SECONDS
until curl -ksf --max-time 5 "https://127.0.0.1:$HTTPS/health" > "$WORK/health.json" 2>/dev/null; do
	if [ $((SECONDS - started)) -gt "$BOOT_TIMEOUT" ]; then
		echo "FAIL  /health did not answer within ${BOOT_TIMEOUT}s; the serial console:" >&2
		tail -40 "$WORK/serial.log" >&2
		exit 1
	fi
	sleep 5
done
echo "ok    /health after $((SECONDS - started))s: $(cat "$WORK/health.json")"

curl -ksf "https://127.0.0.1:$HTTPS/roots.pem" > "$WORK/root.pem"
echo "boot-test-password" > "$WORK/password"
"$HSMCA" certificate 127.0.0.1 "$WORK/leaf.crt" "$WORK/leaf.key" --ca-url "https://127.0.0.1:$HTTPS" \
	--root "$WORK/root.pem" --provisioner admin --password-file "$WORK/password" --force
openssl verify -CAfile "$WORK/root.pem" -untrusted "$WORK/leaf.crt" "$WORK/leaf.crt"
echo "ok    a certificate issued by the appliance verifies with openssl"

banner=$(python3 - "$SSH" <<'PY'
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as s:
        s.settimeout(5)
        print(s.recv(64).decode(errors="replace").strip())
except OSError:
    pass
PY
)
if [ -n "$banner" ]; then
	echo "FAIL  port 22 answered: $banner" >&2
	exit 1
fi
echo "ok    no SSH banner on port 22"

# Stop the VM (the root is mounted read-only, so how it stops cannot matter to it), then the root partition of the
# overlay must equal the image's.
kill "$(cat "$WORK/qemu.pid")"  # qemu stops on SIGTERM
for _ in $(seq 1 60); do
	kill -0 "$(cat "$WORK/qemu.pid")" 2>/dev/null || break
	sleep 1
done
if kill -0 "$(cat "$WORK/qemu.pid")" 2>/dev/null; then
	echo "FAIL  qemu did not stop" >&2
	exit 1
fi
root_sum() {
	qemu-img convert -O raw "$1" "$WORK/tmp.raw"
	read -r off size < <(partition_bytes "$WORK/tmp.raw" hsmca-root)
	dd if="$WORK/tmp.raw" bs=1M iflag=skip_bytes,count_bytes skip="$off" count="$size" status=none | sha256sum
	rm -f "$WORK/tmp.raw"
}
if [ "$(root_sum "$IMAGE")" != "$(root_sum "$WORK/overlay.qcow2")" ]; then
	echo "FAIL  the root partition changed while the appliance ran" >&2
	exit 1
fi
echo "ok    no writes to the root partition"
