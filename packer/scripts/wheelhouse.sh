#!/bin/bash
# Host side, before `packer build`: hsmca (built from this checkout) and every runtime dependency as wheels in OUT,
# with requirements.txt (hashes) and SHA256SUMS for the guest. The dependencies are pinned by packer/wheels.lock
# (name==version --hash=sha256:...): a package index that serves anything else fails the build loudly instead of
# drifting. `--update-lock` resolves them afresh from the index and rewrites the lock: review its diff like code.
set -euo pipefail

PACKER_DIR=$(cd "$(dirname "$0")/.." && pwd)
REPO=$(dirname "$PACKER_DIR")
LOCK=$PACKER_DIR/wheels.lock
OUT=${1:?usage: wheelhouse.sh OUT [--update-lock]}
PY=${PYTHON:-python3}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct)}  # a reproducible hsmca wheel

rm -rf "$OUT"
mkdir -p "$OUT"
"$PY" -m pip wheel --quiet --no-deps --wheel-dir "$OUT" "$REPO"
hsmca_wheel=$(find "$OUT" -maxdepth 1 -name 'hsmca-*.whl' -printf '%f\n')
[ -n "$hsmca_wheel" ] || { echo "no hsmca wheel was built" >&2; exit 1; }

if [ "${2:-}" = --update-lock ]; then
	resolved=$(mktemp -d)
	"$PY" -m pip download --quiet --only-binary=:all: --dest "$resolved" "$OUT/${hsmca_wheel}[postgresql,mysql]"
	rm -f "$resolved/$hsmca_wheel"
	"$PY" - "$resolved" > "$LOCK" <<'PYEOF'
import hashlib, pathlib, sys
print("# Runtime dependencies of hsmca for the appliance image (packer/scripts/wheelhouse.sh --update-lock).")
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl"), key=lambda p: p.name.lower()):
    name, version = wheel.name.split("-")[:2]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    print(f"{name.lower().replace('_', '-')}=={version} --hash=sha256:{digest}")
PYEOF
	rm -rf "$resolved"
	echo "wrote $LOCK" >&2
fi

"$PY" -m pip download --quiet --only-binary=:all: --no-deps --require-hashes -r "$LOCK" --dest "$OUT"
{
	grep -v '^#' "$LOCK"
	echo "hsmca @ file:///root/build/wheelhouse/$hsmca_wheel --hash=sha256:$(sha256sum "$OUT/$hsmca_wheel" | cut -d' ' -f1)"
} > "$OUT/requirements.txt"
(cd "$OUT" && sha256sum -- *.whl requirements.txt > SHA256SUMS)
echo "$(find "$OUT" -name '*.whl' | wc -l) wheels in $OUT" >&2
