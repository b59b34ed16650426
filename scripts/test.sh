#!/usr/bin/env bash
# Runs Keygate's whole test suite: unit tests, and the integration suite against the real
# server, real SQLite, the machine's real PostgreSQL, and real grpcurl for the README.
#
# It installs the tools it needs (scripts/install-tools.sh) and starts PostgreSQL/Redis if
# they are down (scripts/services.sh). Under CI=true a missing service or tool fails the
# suite; otherwise such tests skip with a loud message saying how to get it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

tools_bin="$("$root/scripts/install-tools.sh")" || {
  echo "test.sh: could not install the test tools" >&2
  [ "${CI:-}" = true ] && exit 1
}
export PATH="${tools_bin:+$tools_bin:}$PATH"

if ! "$root/scripts/services.sh"; then
  if [ "${CI:-}" = true ]; then
    echo "test.sh: PostgreSQL/Redis are required under CI=true" >&2
    exit 1
  fi
  echo "test.sh: WARNING: a service is down; tests needing it will skip (see messages)" >&2
fi

# The Helm chart, example manifests and Dockerfile (no cluster needed).
if ! "$root/scripts/check-deploy.sh"; then
  echo "test.sh: deployment checks failed" >&2
  exit 1
fi

# Advisories, licences, duplicate crates, sources; the proto's format, lint and breaking changes.
"$root/scripts/supply-chain.sh" || { echo "test.sh: supply-chain checks failed" >&2; exit 1; }

cargo test --workspace --lib --bins --tests --locked "$@"

# The cargo-fuzz targets, 30 s each, whenever a nightly toolchain is present (fuzz.sh
# skips loudly otherwise; the regression corpus already ran in cargo test above).
if [ "${CI:-}" = true ]; then
  FUZZ_SECONDS="${FUZZ_SECONDS:-30}" "$root/scripts/fuzz.sh"
fi
