#!/bin/bash
# After `packer build`: what ships beside the image, and its signature. BUILD_DIR/image gets
#   hsmca-data.qcow2   the empty data disk for a new appliance (kept across upgrades: see packer/README.md)
#   packages.txt       the dpkg manifest read from the built image (package, version, architecture)
#   wheels.txt         the wheels installed, with their SHA-256 (the wheelhouse's SHA256SUMS)
#   hsmca-release      the build id and hsmca version, as /etc/hsmca-release in the image says
#   SHA256SUMS         of all of the above and hsmca.qcow2
#   SHA256SUMS.sig     a detached signature of SHA256SUMS made through kms/ (`hsmca kms sign`)
#   signing-key.pem    the signer's public key (check it against the one you hold, not against this copy)
# The key is SIGN_KEY (a key URI: pkcs11:…, awskms:…, vault:…; SIGN_CONFIG a ca.json completing it). Without
# SIGN_KEY a development key is used, kept in a SoftHSM token under DEV_SIGNING_DIR and said to be so.
#   release.sh BUILD_DIR
set -euo pipefail

PACKER_DIR=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=packer/scripts/partition.sh
. "$PACKER_DIR/scripts/partition.sh"
BUILD=$(realpath "${1:?usage: release.sh BUILD_DIR}")
IMAGE=$BUILD/image
HSMCA=${HSMCA:-hsmca}
PYTHON=${PYTHON:-python3}
[ -f "$IMAGE/hsmca.qcow2" ] || { echo "no $IMAGE/hsmca.qcow2: run packer build first" >&2; exit 1; }

WORK=$(mktemp -d "$BUILD/release.XXXXXX")
cleanup() {
	umount "$WORK/root" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/root"

cp "$BUILD/data.qcow2" "$IMAGE/hsmca-data.qcow2"
raw_copy "$IMAGE/hsmca.qcow2" "$WORK/disk.raw"
mount_partition "$WORK/disk.raw" hsmca-root "$WORK/root"
# shellcheck disable=SC2016  # dpkg-query's own format fields
chroot "$WORK/root" dpkg-query -W -f='${Package} ${Version} ${Architecture}\n' | sort > "$IMAGE/packages.txt"
cp "$WORK/root/etc/hsmca-release" "$IMAGE/hsmca-release"
umount "$WORK/root"
sort -k2 "$BUILD/wheelhouse/SHA256SUMS" > "$IMAGE/wheels.txt"
rm -f "$IMAGE/SHA256SUMS" "$IMAGE/SHA256SUMS.sig"
(cd "$IMAGE" && sha256sum hsmca.qcow2 hsmca-data.qcow2 packages.txt wheels.txt hsmca-release > SHA256SUMS)

sign_args=()
if [ -n "${SIGN_KEY:-}" ]; then
	key=$SIGN_KEY
	[ -z "${SIGN_CONFIG:-}" ] || sign_args=(--config "$SIGN_CONFIG")
else
	dev=$(realpath -m "${DEV_SIGNING_DIR:-$BUILD/../signing}")
	# shellcheck disable=SC2016  # Python source
	key=$("$PYTHON" - "$dev" <<'PY'
import secrets, sys
from pathlib import Path
import softhsm

directory = Path(sys.argv[1])
conf = softhsm.write_config(directory)
pin = directory / "pin"
if not softhsm.token_exists("hsmca-image-dev", conf):
    pin.write_text(secrets.token_hex(16) + "\n")
    pin.chmod(0o600)
    softhsm.init_token("hsmca-image-dev", secrets.token_hex(16), pin.read_text().strip(), conf=conf)
print(f"pkcs11:token=hsmca-image-dev;object=image-signing?module-path={softhsm.DEFAULT_MODULE}&pin-source=file:{pin}")
PY
)
	export SOFTHSM2_CONF=$dev/softhsm2.conf
	if ! "$HSMCA" kms public-key "$key" >/dev/null 2>&1; then
		"$HSMCA" kms create-key "$key" --type EC-P256 >/dev/null
	fi
	echo "signing with the DEVELOPMENT key in $dev (SoftHSM); set SIGN_KEY=<key URI> for a release" >&2
fi
"$HSMCA" kms sign "${sign_args[@]}" "$key" "$IMAGE/SHA256SUMS" --public-key "$IMAGE/signing-key.pem"
echo "release files in $IMAGE: $(cd "$IMAGE" && echo SHA256SUMS* signing-key.pem hsmca-data.qcow2 packages.txt wheels.txt hsmca-release)" >&2
