# shellcheck shell=bash
# Sourced by check.sh and boot.sh: where a named GPT partition lies in a raw disk image.
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
