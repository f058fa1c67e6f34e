#!/bin/bash
# Host side, as root, before `packer build`: the base disk. A minimal Debian bookworm root file system made by
# mmdebstrap from the packages in packer/packages.txt, a GPT UEFI disk made without loop devices (ESP with
# systemd-boot through mkfs.vfat + mcopy, root through mkfs.ext4 -d, an empty data partition, sfdisk), converted to
# qcow2; and the data disk apart (GPT, one ext4 partition named hsmca-data): the CA's state lives there, so an
# upgrade replaces the system disk and keeps the data disk. The build-time SSH server and a throwaway key let
# Packer in once; finalize.sh removes both.
#   BUILD_ID=ID disk.sh BUILD_DIR  writes BUILD_DIR/base.qcow2, base.qcow2.sha256, data.qcow2, build_key,
#                                  dpkg-manifest.txt
set -euo pipefail

PACKER_DIR=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(realpath -m "${1:?usage: disk.sh BUILD_DIR}")
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ESP_MIB=128
ROOT_MIB=2048
DATA_MIB=512
BUILD_ID=${BUILD_ID:?BUILD_ID names the build (the Makefile sets it)}
# The service user's ids are fixed, not allocated: a data disk made by one build is owned right under the next.
HSMCA_UID=950
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$PACKER_DIR" log -1 --format=%ct)}

[ "$(id -u)" = 0 ] || { echo "disk.sh must run as root (mmdebstrap, file ownership in the image)" >&2; exit 1; }
mkdir -p "$BUILD"
WORK=$(mktemp -d "$BUILD/work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root

rm -f "$BUILD/build_key" "$BUILD/build_key.pub"
ssh-keygen -q -t ed25519 -N '' -C hsmca-image-build -f "$BUILD/build_key"

packages=$(grep -v '^#' "$PACKER_DIR/packages.txt" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')
# shellcheck disable=SC2016  # $1 is the hook's argument (the root), expanded by mmdebstrap's shell, not here
mmdebstrap --quiet --variant=minbase --include="$packages" \
	--customize-hook='chroot "$1" systemctl enable systemd-networkd.service ssh.service' \
	--customize-hook="chroot \"\$1\" groupadd --system --gid $HSMCA_UID hsmca" \
	--customize-hook="chroot \"\$1\" useradd --system --uid $HSMCA_UID --gid $HSMCA_UID --home-dir /var/lib/hsmca \
		--no-create-home --shell /usr/sbin/nologin hsmca" \
	--customize-hook='chroot "$1" useradd --non-unique --uid 0 --gid 0 --home-dir /root --no-create-home \
		--shell /bin/bash --comment "break-glass console account (packer/README.md)" breakglass' \
	"$SUITE" "$ROOT" "$MIRROR"

# shellcheck disable=SC2016  # dpkg-query's own format fields
chroot "$ROOT" dpkg-query -W -f='${Package} ${Version} ${Architecture}\n' | sort > "$BUILD/dpkg-manifest.txt"
# The mirror must serve exactly the recorded packages: a changed mirror fails here rather than drifting.
# UPDATE_LOCK=1 accepts what it serves today and rewrites packer/packages.lock (review its diff like code).
if [ "${UPDATE_LOCK:-0}" = 1 ]; then
	cp "$BUILD/dpkg-manifest.txt" "$PACKER_DIR/packages.lock"
elif ! diff -u "$PACKER_DIR/packages.lock" "$BUILD/dpkg-manifest.txt" >&2; then
	echo "the packages differ from packer/packages.lock (above): the mirror changed; UPDATE_LOCK=1 to accept" >&2
	exit 1
fi

find "$ROOT/var/log" -type f -delete  # mmdebstrap's logs; /var/log is the data partition's from the first boot on

# Identity, network, mounts, boot.
echo hsmca > "$ROOT/etc/hostname"
# The source it was built from: the commit, marked +dirty when the working tree differed from it.
source=$(git -C "$PACKER_DIR" rev-parse HEAD 2>/dev/null || echo unknown)
[ -z "$(git -C "$PACKER_DIR/.." status --porcelain --untracked-files=no 2>/dev/null)" ] || source+=+dirty
printf 'HSMCA_BUILD_ID=%s\nHSMCA_SOURCE=%s\n' "$BUILD_ID" "$source" > "$ROOT/etc/hsmca-release"
printf '[Match]\nName=en*\n\n[Network]\nDHCP=yes\n' > "$ROOT/etc/systemd/network/50-wired.network"
# The root is read-only once finalize.sh has run: what must be written lives on the data disk (the CA's home,
# the logs: journal and auditd; finalize.sh adds its mounts, the build runs without it) or in memory (/tmp,
# /var/tmp, systemd's own state).
cat > "$ROOT/etc/fstab" <<'FSTAB'
PARTLABEL=hsmca-root  /               ext4   defaults,noatime                           0 1
PARTLABEL=hsmca-esp   /boot/efi       vfat   ro,umask=0077,noauto,nofail                0 2
tmpfs                 /tmp            tmpfs  nodev,nosuid,noexec,mode=1777              0 0
tmpfs                 /var/tmp        tmpfs  nodev,nosuid,noexec,mode=1777              0 0
tmpfs                 /var/lib/systemd tmpfs nodev,nosuid,noexec,mode=0755              0 0
FSTAB
mkdir -p "$ROOT/boot/efi" "$ROOT/data" "$ROOT/var/lib/hsmca" "$ROOT/root/.ssh"
install -m 0600 "$BUILD/build_key.pub" "$ROOT/root/.ssh/authorized_keys"
chmod 0700 "$ROOT/root/.ssh"

# The ESP: systemd-boot, one entry, the kernel and initrd from the root file system.
kernel=$(find "$ROOT/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | tail -1)
initrd=$(find "$ROOT/boot" -maxdepth 1 -name 'initrd.img-*' | sort | tail -1)
if [ -z "$kernel" ] || [ -z "$initrd" ]; then
	echo "no kernel or initrd in the root file system" >&2
	exit 1
fi
esp=$WORK/esp
mkdir -p "$esp/EFI/BOOT" "$esp/loader/entries"
cp /usr/lib/systemd/boot/efi/systemd-bootx64.efi "$esp/EFI/BOOT/BOOTX64.EFI"
cp "$kernel" "$esp/vmlinuz"
cp "$initrd" "$esp/initrd.img"
printf 'default hsmca.conf\ntimeout 0\neditor no\n' > "$esp/loader/loader.conf"
# The serial console is the system console (the last console= wins: systemd's messages go there). No getty is
# started by itself (systemd.getty_auto=0): a console login exists only while the config disk enables break-glass.
printf 'title hsmca\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' \
	"root=PARTLABEL=hsmca-root ro lockdown=integrity audit=1 console=tty0 console=ttyS0,115200 systemd.getty_auto=0 hsmca.build=$BUILD_ID" \
	> "$esp/loader/entries/hsmca.conf"

# The partitions as files, then one raw disk: [1 MiB gap][ESP][root][data][1 MiB for the backup GPT].
truncate -s "${ESP_MIB}M" "$WORK/esp.img"
mkfs.vfat -F 32 -n HSMCA-ESP "$WORK/esp.img" >/dev/null
mcopy -s -i "$WORK/esp.img" "$esp"/* ::/
truncate -s "${ROOT_MIB}M" "$WORK/root.img"
mkfs.ext4 -q -L hsmca-root -d "$ROOT" "$WORK/root.img"
mkdir -p "$WORK/data/hsmca" "$WORK/data/log/journal" "$WORK/data/log/audit"
chown "$HSMCA_UID:$HSMCA_UID" "$WORK/data/hsmca"
chmod 0700 "$WORK/data/hsmca" "$WORK/data/log/audit"
truncate -s "${DATA_MIB}M" "$WORK/data.img"
mkfs.ext4 -q -L hsmca-data -d "$WORK/data" "$WORK/data.img"

# The system disk: [1 MiB gap][ESP][root][1 MiB for the backup GPT].
raw=$WORK/disk.raw
truncate -s "$((1 + ESP_MIB + ROOT_MIB + 1))M" "$raw"
sfdisk --quiet "$raw" <<SFDISK
label: gpt
start=1MiB, size=${ESP_MIB}MiB, type=uefi, name=hsmca-esp
size=${ROOT_MIB}MiB, type=linux, name=hsmca-root
SFDISK
dd if="$WORK/esp.img" of="$raw" bs=1M seek=1 conv=notrunc status=none
dd if="$WORK/root.img" of="$raw" bs=1M seek=$((1 + ESP_MIB)) conv=notrunc status=none
qemu-img convert -O qcow2 "$raw" "$BUILD/base.qcow2"
(cd "$BUILD" && sha256sum base.qcow2 > base.qcow2.sha256)

# The data disk: [1 MiB gap][data][1 MiB for the backup GPT].
raw=$WORK/data.raw
truncate -s "$((1 + DATA_MIB + 1))M" "$raw"
sfdisk --quiet "$raw" <<SFDISK
label: gpt
start=1MiB, size=${DATA_MIB}MiB, type=linux, name=hsmca-data
SFDISK
dd if="$WORK/data.img" of="$raw" bs=1M seek=1 conv=notrunc status=none
qemu-img convert -O qcow2 "$raw" "$BUILD/data.qcow2"
echo "base disk: $BUILD/base.qcow2 ($(wc -l < "$BUILD/dpkg-manifest.txt") packages), data disk: $BUILD/data.qcow2" >&2
