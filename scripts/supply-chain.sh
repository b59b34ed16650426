#!/usr/bin/env bash
# Supply-chain and API-contract checks, run by scripts/test.sh before the Rust suite:
#   advisories   cargo-audit against the RustSec snapshot in ../shared/advisory-db, fetching
#                off, over Cargo.lock and fuzz/Cargo.lock; fails on any vulnerability,
#                unsound or unmaintained advisory (cargo deny's defaults against the live
#                database) not ignored, with a reason, in deny.toml's [advisories].
#   cargo deny   licences (an exact allowlist), bans (duplicate versions only from the
#                skip list), sources (crates.io only): deny.toml. Warnings fail too.
#   buf          format and lint (buf.yaml), and breaking changes against the released
#                contract, proto/keygate/v1.binpb; then a self-test: renumbering, retyping
#                or removing a field, or renaming an enum value, on a temporary copy of
#                the proto must fail `buf breaking`, so the check cannot pass by accident.
#
# Tools come from scripts/install-tools.sh (a cache outside the clone). Under CI=true a
# missing tool or advisory database fails; elsewhere that check skips loudly.
#
#   KEYGATE_ADVISORY_DB=/path/to/advisory-db ./scripts/supply-chain.sh   # another snapshot
#
# After a deliberate, released contract change, refresh the image (README "Security"):
#   buf build --exclude-source-info -o proto/keygate/v1.binpb
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tools="${KEYGATE_TOOLS_ROOT:-${HOME:-/root}/.cache/keygate/tools}"
export PATH="$tools/bin:$tools/npm/node_modules/.bin:$PATH"
# The clone's sibling ../shared holds the maintainers' snapshot (the same files as the
# advisory-db repository, without .git), in CI as in a developer's checkout.
db="${KEYGATE_ADVISORY_DB:-$(cd "$root/.." && pwd)/shared/advisory-db}"
proto=proto/keygate/v1/keygate.proto
image=proto/keygate/v1.binpb

passed=0 failed=0 skipped=0
started=$SECONDS
say() { echo "supply-chain: $*" >&2; }
missing() { # what, how to get it
  if [ "${CI:-}" = true ]; then
    say "FAILED: $1 is missing and CI=true requires it; $2"
    failed=$((failed + 1))
  else
    echo "!!! supply-chain: SKIPPING a check: $1 is missing; $2" >&2
    skipped=$((skipped + 1))
  fi
}
check() { # name, command...: runs one check, records its verdict and time
  local name="$1" t0=$SECONDS
  shift
  echo "== supply-chain: $name" >&2
  if "$@"; then
    passed=$((passed + 1))
    say "ok: $name ($((SECONDS - t0)) s)"
  else
    failed=$((failed + 1))
    say "FAILED: $name"
  fi
}

# ---- advisories --------------------------------------------------------------------
# deny.toml's [advisories] ignore list, one id per line; an entry without a reason fails.
advisory_ignores() {
  python3 - <<'PY'
import sys, tomllib
entries = tomllib.load(open("deny.toml", "rb")).get("advisories", {}).get("ignore", [])
bad = [e for e in entries if not isinstance(e, dict) or not str(e.get("reason", "")).strip()]
if bad:
    sys.exit(f"deny.toml: an ignored advisory needs {{ id = ..., reason = ... }}: {bad}")
for e in entries:
    print(e.get("id") or e["crate"])
PY
}
audit() {
  local ignores args=() id snapshot date
  ignores="$(advisory_ignores)" || return 1
  for id in $ignores; do args+=(--ignore "$id"); done
  snapshot="$(head -n1 "$db/SNAPSHOT.txt" 2>/dev/null || true)"
  [ -n "$snapshot" ] && say "$snapshot"
  # The snapshot has no git history, so cargo-audit cannot tell its age: say it here.
  date="$(grep -oE '[0-9]{4}-[0-9]{2}-[0-9]{2}' <<<"$snapshot" | head -n1 || true)"
  if [ -n "$date" ] && [ $(( ($(date +%s) - $(date -d "$date" +%s)) / 86400 )) -gt 90 ]; then
    echo "!!! supply-chain: WARNING: the advisory snapshot is from $date, over 90 days old;" \
      "advisories published since are not checked. Ask the maintainers to refresh it." >&2
  fi
  args+=(--deny unmaintained --deny unsound)
  cargo audit --db "$db" --no-fetch "${args[@]}" --file Cargo.lock || return 1
  # The fuzz workspace (nightly only) has its own lock file. Its extra crates are not in
  # the local crates.io index cache until fuzz.sh has built it, so the yanked lookup
  # would only print "no such crate" there: vulnerabilities still fail.
  cargo audit --db "$db" --no-fetch "${args[@]}" --no-yanked --file fuzz/Cargo.lock
}
if ! command -v cargo-audit >/dev/null 2>&1; then
  missing cargo-audit "run ./scripts/install-tools.sh"
elif [ ! -d "$db/crates" ]; then
  missing "the RustSec advisory database at $db" \
    "put a copy of the advisory-db repository there, or point KEYGATE_ADVISORY_DB at one"
else
  check "cargo audit (advisories, fetching off)" audit
fi

# ---- cargo deny ----------------------------------------------------------------------
if ! command -v cargo-deny >/dev/null 2>&1; then
  missing cargo-deny "run ./scripts/install-tools.sh"
else
  check "cargo deny check licenses bans sources" \
    cargo deny --locked check --deny warnings --show-stats licenses bans sources
fi

# ---- protobuf contract ---------------------------------------------------------------
# Applies one incompatible edit to a copy of the proto and requires `buf breaking` to
# reject it (exit code 100, not a config error's 1) with the expected message.
breaking_must_fail() { # description, sed expression, expected message
  local copy out rc
  copy="$(mktemp -d)"
  cp -r buf.yaml proto "$copy/"
  sed -i "$2" "$copy/$proto"
  if cmp -s "$proto" "$copy/$proto"; then
    say "self-test '$1': the edit no longer matches $proto; update the sed expression"
    rm -rf "$copy"
    return 1
  fi
  rc=0
  out="$(cd "$copy" && buf breaking --against "$root/$image" 2>&1)" || rc=$?
  rm -rf "$copy"
  if [ "$rc" != 100 ] || ! grep -qF "$3" <<<"$out"; then
    say "self-test '$1': buf breaking should have failed with \"$3\"; exit $rc:"
    echo "$out" >&2
    return 1
  fi
  say "self-test: $1 fails buf breaking, as it must"
}
contract() {
  buf format --diff --exit-code || { say "run: buf format -w"; return 1; }
  buf lint || return 1
  buf breaking --against "$image" || {
    say "a breaking change to keygate.v1 (above). If it is deliberate and released, refresh"
    say "the image: buf build --exclude-source-info -o $image"
    return 1
  }
  breaking_must_fail "renumbering CheckRequest.api_key" \
    's/^  string api_key = 1;$/  string api_key = 100;/' \
    'Previously present field "1" with name "api_key" on message "CheckRequest" was deleted.'
  breaking_must_fail "retyping CheckRequest.cost" \
    's/^  uint32 cost = 7;$/  uint64 cost = 7;/' \
    'changed type from "uint32" to "uint64"'
  breaking_must_fail "removing CheckRequest.dry_run" \
    '/^  bool dry_run = 8;$/d' \
    'Previously present field "8" with name "dry_run" on message "CheckRequest" was deleted.'
  breaking_must_fail "renaming the enum value DENY (JSON carries the name)" \
    's/^  DENY = 2;$/  DECISION_DENY = 2;/' \
    'Enum value "2" on enum "Decision" changed name from "DENY" to "DECISION_DENY".'
  # The image is only as good as it is recent: something added since it was built is not
  # yet protected. A notice, not a failure: refresh the image when the contract ships.
  if ! buf breaking "$image" --against . >/dev/null 2>&1; then
    say "note: the proto has additions the image lacks; they are protected once the image"
    say "is refreshed: buf build --exclude-source-info -o $image"
  fi
}
if ! command -v buf >/dev/null 2>&1; then
  missing buf "run ./scripts/install-tools.sh (npm @bufbuild/buf)"
else
  check "buf format, lint, breaking against $image" contract
fi

say "$passed checks passed, $failed failed, $skipped skipped ($((SECONDS - started)) s)"
[ "$failed" = 0 ]
