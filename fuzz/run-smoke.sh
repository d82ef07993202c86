#!/usr/bin/env bash
# Runs each fuzz target for N seconds (default 5), seeded with real archives, the
# documented example configuration, real superblocks, GPT/MBR heads, grubenv
# blocks, command lines, modules.dep/alias, uevents and bzImage headers. Exits 1 if a target crashed (the input is
# kept under fuzz/artifacts/<target>/), 2 if cargo-fuzz or nightly is missing.
#
#   fuzz/run-smoke.sh          # 5 s per target (CI)
#   fuzz/run-smoke.sh 300      # 5 min per target
#   RUNS=10000000 fuzz/run-smoke.sh 0   # 10 million executions per target
set -uo pipefail
cd "$(dirname "$0")"
secs="${1:-5}"
runs="${RUNS:--1}"
targets=(ustar config_json probe partition grubenv trial bootlog accounts cmdline modindex uevent bzimage minisign remote_records)

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
for t in "${targets[@]}"; do mkdir -p "corpus/$t"; done
mkdir -p logs
# Superblocks and partition tables made by the real tools (when installed).
img="$seed/fs.img"
for mk in "mkfs.ext4 -q -F -L hostpart" "mkfs.vfat -n EFIBOOT" "mkswap -L swap" "mkfs.btrfs -q -f -L b" "mkfs.xfs -q -f -L x"; do
  rm -f "$img"; truncate -s 300M "$img"
  if $mk "$img" >/dev/null 2>&1; then head -c 65536 "$img" > "corpus/probe/seed-${mk%% *}"; fi
done
rm -f "$img"; truncate -s 8M "$img"
if sgdisk -n 1:2048:+2M -c 1:hostpart -n 2:0:0 "$img" >/dev/null 2>&1; then head -c 65536 "$img" > corpus/partition/seed-gpt; fi
rm -f "$img"; truncate -s 8M "$img"
if printf 'label: dos\n,2M\n,\n' | sfdisk "$img" >/dev/null 2>&1; then head -c 4096 "$img" > corpus/partition/seed-mbr; fi
{ printf '# GRUB Environment Block\nhn_tries=3\nsaved_entry=hninit\n'; head -c 1024 /dev/zero | tr '\0' '#'; } | head -c 1024 > corpus/grubenv/seed-block
printf 'hn_tries=2\nhn_revert=auto\n' > corpus/grubenv/seed-body
printf '{"image":{"ino":12,"size":1048576},"tries_left":5,"tries":1}' > corpus/trial/seed-trial
printf '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  hn-root-new.img\n' > corpus/trial/seed-digest
printf '\x40 2026-12-05T09:00:00Z boot: console=ttyS0\n2026-12-05T09:00:01Z upgraded\n' > corpus/bootlog/seed-log
printf 'root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n\xffroot:*:19000:0:99999:7:::\n\xffroot:x:0:\nsudo:x:27:\nadm:x:4:syslog\n\xffroot:*::\nsudo:*::\n' > corpus/accounts/seed-debian
printf 'BOOT_IMAGE=(loop)/boot/kernel real_root=/images/hn-root.img "loopdev_hostpart=PARTLABEL=a b" rw hn.timeout=5 hn.on_error=shell hn.config=LABEL=cfg@524288 hn.tries=2 init=/sbin/init panic=10 hn.modules=xfs,btrfs' > corpus/cmdline/seed-cmdline
printf 'kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/virtio/virtio_ring.ko:\n\x01alias virtio:d00000002v* virtio_blk\nalias fs-ext4 ext4\n\x01kernel/fs/ext4/ext4.ko\n' > corpus/modindex/seed-index
printf 'add@/devices/pci0000:00/0000:00:04.0/virtio1/block/vda\0ACTION=add\0DEVPATH=/devices/pci0000:00/0000:00:04.0/virtio1/block/vda\0SUBSYSTEM=block\0DEVNAME=vda\0DEVTYPE=disk\0SEQNUM=1234\0MODALIAS=virtio:d00000002v00001AF4\0' > corpus/uevent/seed-uevent
for k in /boot/vmlinuz-*; do [ -r "$k" ] && head -c 65536 "$k" > corpus/bzimage/seed-vmlinuz && break; done
# A block index, a resume record (adaptive) and a zstd blob's hash state.
printf 'HNBIDX1\n' > corpus/remote_records/seed-magic
printf '{"version":1,"url":"http://h/x.img","etag":null,"last_modified":null,"remote_len":100,"zstd":false,"written":40,"offset":40,"adaptive":{"index_sha256":"ab","locals":["1-2-3-4-65536.bidx"]}}' > corpus/remote_records/seed-record
printf '6a09e667bb67ae853c6ef372a54ff53a510e527f9b05688c1f83d9ab5be0cd19:3:616263' > corpus/remote_records/seed-sha-state
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
  limit=(-max_total_time="$secs")
  [ "$secs" = 0 ] && limit=(-runs="$runs")
  cargo +nightly fuzz run "$t" "corpus/$t" -- "${limit[@]}" -max_len=65536 "${extra[@]}" > "logs/$t.log" 2>&1
  rc=$?
  grep -E '^(#[0-9]+ +DONE|Done [0-9]+ runs|==[0-9]+==|SUMMARY)' "logs/$t.log"
  if [ "$rc" != 0 ]; then
    tail -n 30 "logs/$t.log" >&2
    echo "run-smoke: $t FAILED; the crashing input is in fuzz/artifacts/$t/" >&2
    status=1
  fi
done
[ "$status" = 0 ] && echo "run-smoke: all targets ran ${secs}s without a crash"
exit "$status"
