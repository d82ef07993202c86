#!/usr/bin/env bash
# Runs each fuzz target for N seconds (default 30), seeded with real archives and
# the documented example configuration. Exits 1 if a target crashed (the input is
# kept under fuzz/artifacts/<target>/), 2 if cargo-fuzz or nightly is missing.
#
#   fuzz/run-smoke.sh          # 30 s per target
#   fuzz/run-smoke.sh 300      # 5 min per target
set -uo pipefail
cd "$(dirname "$0")"
secs="${1:-30}"
targets=(ustar config_json minisign)

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "run-smoke: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2
  exit 2
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "run-smoke: the nightly toolchain is not installed (rustup toolchain install nightly)" >&2
  exit 2
fi

# Seeds (regenerated every run; corpus/ is not committed).
mkdir -p corpus/ustar corpus/config_json corpus/minisign
seed=$(mktemp -d)
trap 'rm -rf "$seed"' EXIT
mkdir -p "$seed/gandi"
printf '{"vm_hostname": "web1", "nameservers": ["192.0.2.53"]}' > "$seed/gandi/config"
printf '{"vm_hostname": "top"}' > "$seed/config"
ln -s ../config "$seed/gandi/link"
for format in ustar gnu pax v7; do
  tar -C "$seed" --format="$format" -cf "corpus/ustar/seed-$format.tar" ./gandi/config config gandi/link 2>/dev/null \
    || tar -C "$seed" --format="$format" -cf "corpus/ustar/seed-$format.tar" ./gandi/config config
done
awk '/^```json$/{on=1; next} /^```$/{on=0} on' ../docs/config.md > corpus/config_json/seed-example.json
printf '{"vm_hostname": "h"}' > corpus/config_json/seed-minimal.json
# Keys and signatures (prehashed and legacy) made by the real minisign tool.
if command -v minisign >/dev/null 2>&1; then
  printf 'image' > "$seed/img"
  minisign -G -W -f -p "$seed/k.pub" -s "$seed/k.key" >/dev/null
  minisign -S -s "$seed/k.key" -m "$seed/img" -t "version=2026.12.5 compat=web-amd64 size=5" >/dev/null
  minisign -S -l -s "$seed/k.key" -m "$seed/img" -x "$seed/legacy.minisig" -t "version=1" >/dev/null
  cp "$seed/k.pub" corpus/minisign/seed-key.pub
  cp "$seed/img.minisig" corpus/minisign/seed-prehashed.minisig
  cp "$seed/legacy.minisig" corpus/minisign/seed-legacy.minisig
else
  echo "run-smoke: minisign is not installed; the minisign target starts without seeds" >&2
fi

status=0
for t in "${targets[@]}"; do
  extra=()
  [ -f "$t.dict" ] && extra+=("-dict=$t.dict")
  echo "run-smoke: $t for ${secs}s"
  if ! cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=65536 "${extra[@]}"; then
    echo "run-smoke: $t FAILED; the crashing input is in fuzz/artifacts/$t/" >&2
    status=1
  fi
done
[ "$status" = 0 ] && echo "run-smoke: all targets ran ${secs}s without a crash"
exit "$status"
