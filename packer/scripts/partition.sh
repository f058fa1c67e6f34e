# shellcheck shell=bash
# Sourced by check.sh, boot.sh and release.sh: partitions of a disk image, found by their GPT names.

# partition_bytes RAW NAME  ->  "OFFSET SIZE" in bytes
partition_bytes() {
	sfdisk -J "$1" | python3 -c '
import json, sys
table = json.load(sys.stdin)["partitiontable"]
sector = table.get("sectorsize", 512)
found = [p for p in table["partitions"] if p.get("name") == sys.argv[1]]
if not found:
    sys.exit(f"no partition named {sys.argv[1]}")
print(found[0]["start"] * sector, found[0]["size"] * sector)
' "$2"
}

# raw_copy IMAGE.qcow2 RAW: a raw copy whose backup GPT is at the end (packer may have grown the disk)
raw_copy() {
	qemu-img convert -O raw "$1" "$2"
	sfdisk --quiet --relocate gpt-bak-std "$2" 2>/dev/null || true
}

# mount_partition RAW NAME DIR: mount the named ext4 partition read-only through a loop device at its offset (no
# partition nodes needed) without replaying its journal, so the image is never written
mount_partition() {
	local off size
	read -r off size < <(partition_bytes "$1" "$2")
	mount -o ro,loop,noload,offset="$off",sizelimit="$size" "$1" "$3"
}
