#!/usr/bin/env bash
# Instruction counts of Keygate's check hot path, with valgrind's callgrind: repeatable
# for the same binary and inputs whatever else the machine is doing (unlike timings).
#
# Runs a benchmark runner scenario (`check_cached` by default: one hot key, ALLOW; any
# single-server one with PROFILE_SCENARIO, e.g. `ext_authz` or `check_rate_limited`) against the
# release `keygate` binary started under callgrind with instrumentation off; the runner
# turns it on when the measured window opens and off when it closes, so start-up and
# provisioning are not counted (the counts are written when the server exits). Prints instructions per answered check and the functions that cost
# most (self cost). Output in $PROFILE_DIR (default target/profile).
#
#   ./scripts/profile.sh                 # 8 calls in flight on 1 connection, 10 s
#   PROFILE_SECS=20 ./scripts/profile.sh
#   PROFILE_SCENARIO=ext_authz ./scripts/profile.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
command -v valgrind >/dev/null || { echo "profile.sh: valgrind is required (apt-get install valgrind)" >&2; exit 1; }
out="${PROFILE_DIR:-$root/target/profile}"
mkdir -p "$out"
rm -f "$out"/callgrind.*
secs="${PROFILE_SECS:-10}"
scenario="${PROFILE_SCENARIO:-check_cached}"
KG_BENCH_WRAP="valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$out/callgrind.%p.out" \
  cargo bench --bench keygate -- --scenario "$scenario" --conns 1 --concurrency 8 \
  --warmup 3 --duration "$secs" | tee "$out/bench.txt"
calls=$(sed -n 's/^callgrind: pid [0-9]* counted the measured window: \([0-9]*\) answered.*/\1/p' "$out/bench.txt" | tail -1)
dump=$(ls -t "$out"/callgrind.*.out 2>/dev/null | head -1)
if [ -z "$dump" ] || [ -z "$calls" ] || [ "$calls" = 0 ]; then
  echo "profile.sh: no callgrind dump of the measured window found in $out" >&2
  exit 1
fi
# `totals:` (at the end) is what was counted; `summary:` stays 0 when collection started off.
total=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$dump" | tail -1)
echo
echo "instructions in the measured window: $total over $calls checks"
echo "instructions per check: $(( total / calls ))"
echo
callgrind_annotate --inclusive=no "$dump" 2>/dev/null | sed -n '1,60p' > "$out/top-self.txt" || true
callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | sed -n '1,80p' > "$out/top-inclusive.txt" || true
sed -n '1,45p' "$out/top-self.txt"
echo "(full listings: $out/top-self.txt, $out/top-inclusive.txt; dump: $dump)"
