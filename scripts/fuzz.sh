#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for FUZZ_SECONDS each (default 60), starting from
# the checked-in seeds and crash regressions in fuzz/regressions/<target>/. Fails when a
# target finds a crash: the input is left in fuzz/artifacts/<target>/ — fix the bug, then
# copy the input into fuzz/regressions/<target>/ so the normal suite replays it forever
# (tests/it/fuzz_regressions.rs).
#
# cargo-fuzz needs a nightly toolchain. Without one this script skips with a loud
# message; tests/it/fuzz_regressions.rs still replays the corpus on stable. cargo-fuzz
# itself is installed from crates.io into a cache outside the clone. Keygate has no
# `unsafe`, so what the fuzzers hunt is panics and broken invariants: the default build
# has no sanitizer (much faster to build); FUZZ_SANITIZER=address turns ASan on.
#
#   FUZZ_SECONDS=300 ./scripts/fuzz.sh            # all targets, 5 minutes each
#   ./scripts/fuzz.sh key ext_authz               # only these
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
seconds="${FUZZ_SECONDS:-60}"
tools="${KEYGATE_TOOLS_ROOT:-${HOME:-/root}/.cache/keygate/tools}"
export PATH="$tools/bin:$PATH"

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "!!! fuzz.sh: SKIPPING fuzzing: no nightly toolchain (rustup toolchain install nightly)." >&2
  echo "!!! fuzz.sh: the regression corpus is still replayed by 'cargo test' on stable." >&2
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz into $tools" >&2
  cargo install --quiet --locked --root "$tools" cargo-fuzz@0.13.1 >&2
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^keygate-fuzz$')
fi
# The fuzz build has its own target dir (sanitizer flags would invalidate the main one).
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${HOME:-/root}/.cache/keygate/fuzz-target}"
echo "fuzz.sh: building ${#targets[@]} targets with nightly" >&2
started=$(date +%s)
cargo +nightly fuzz build --sanitizer "${FUZZ_SANITIZER:-none}" >&2
echo "fuzz.sh: built in $(( $(date +%s) - started ))s" >&2

failed=()
for t in "${targets[@]}"; do
  corpus="fuzz/corpus/$t"
  mkdir -p "$corpus"
  echo "== fuzz $t for ${seconds}s" >&2
  # New inputs go to the first directory (fuzz/corpus, not committed); the regressions
  # directory is only read.
  if ! cargo +nightly fuzz run --sanitizer "${FUZZ_SANITIZER:-none}" "$t" "$corpus" "fuzz/regressions/$t" -- \
      -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 2>"fuzz/$t.log"; then
    tail -40 "fuzz/$t.log" >&2
    failed+=("$t")
  else
    grep -E '^stat::number_of_executed_units|^Done' "fuzz/$t.log" | tr '\n' ' ' >&2
    echo >&2
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, ${seconds}s each, no crash" >&2
