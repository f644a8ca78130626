#!/bin/bash
# Resolution time, ours vs supermin 5, on the same supermin.d, interleaved, minimum of N runs
# (the machine is shared; the minimum is the least disturbed run).
#   ours:     read_inputs + resolve (ELF closure on and off), from examples/resolve
#   supermin: from "mapping package names" to "after munging" in `supermin -v --build -f chroot`
#             (its package closure, file lists, excludes, hostfiles, stat, munge), timed
#             from the write(2) timestamps of its -v lines with strace.
# Usage: hostfiles/bench-resolve.sh [N] [SUPERMIN_D]   (needs strace and a release build:
#   cargo build --release -p supermin-hostfiles --examples)
set -euo pipefail
N=${1:-7}
SD=${2:-/usr/lib/x86_64-linux-gnu/guestfs/supermin.d}
BIN=${CARGO_TARGET_DIR:-target}/release/examples/resolve
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
for i in $(seq "$N"); do
  "$BIN" "$SD" 2>&1 >/dev/null | sed -n 's/.*resolve \([0-9.]*\)\(ms\|µs\|s\):.*/\1 \2/p' >> "$T/ours"
  NO_ELF=1 "$BIN" "$SD" 2>&1 >/dev/null | sed -n 's/.*resolve \([0-9.]*\)\(ms\|µs\|s\):.*/\1 \2/p' >> "$T/ours-noelf"
  rm -rf "$T/out"
  strace -f --seccomp-bpf -s 200 -ttt -e trace=write -e signal=none -o "$T/st" \
    supermin -v --build -f chroot -o "$T/out" "$SD" >/dev/null 2>&1
  awk '/mapping package names/ && !a {a=$2} /after munging/ && !b {b=$2} END {printf "%.3f ms\n", (b-a)*1000}' "$T/st" >> "$T/supermin"
done
min() { awk '{v=$1; if ($2=="µs") v/=1000; if ($2=="s") v*=1000; if (m=="" || v<m) m=v} END {printf "%.1f", m}' "$1"; }
o=$(min "$T/ours"); n=$(min "$T/ours-noelf"); s=$(min "$T/supermin")
echo "min of $N: ours ${o} ms (with ELF closure), ${n} ms (without); supermin ${s} ms"
awk -v o="$o" -v n="$n" -v s="$s" 'BEGIN {printf "ratio supermin/ours: %.2fx (with ELF closure), %.2fx (without)\n", s/o, s/n}'
