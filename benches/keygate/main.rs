//! The benchmark runner: every scenario of Keygate's hot and cold paths against a no-op
//! tonic server (the suite), and the A/B experiments (Envoy in front, trace export, usage
//! recording, Redis limiter, revocation between replicas), in one run on one machine, as
//! tables and as JSON.
//!
//! ```text
//! cargo bench --bench keygate                          # the suite (~3 minutes on 2 cores)
//! cargo bench --bench keygate -- --quick               # the suite in under a minute
//! cargo bench --bench keygate -- --scenario check_cached --scenario noop --duration 10
//! cargo bench --bench keygate -- --conns 4 --concurrency 32 --warmup 1
//! cargo bench --bench keygate -- --scenario envoy      # one experiment (3 sides, see envoy.rs)
//! cargo bench --bench keygate -- --scenario experiments --quick
//! cargo bench --bench keygate -- --scenario all        # the suite and every experiment
//! cargo bench --bench keygate -- --scenario h2load     # server-bound: h2load client, pinned
//! ```
//!
//! Options (flags win over the environment variables, which the former separate runners
//! read and which still give the defaults):
//!
//! | flag | variable | default | meaning |
//! |---|---|---|---|
//! | `--scenario NAME` | | the suite | repeatable; a name below, or `suite`, `experiments`, `replicas`, `all` |
//! | `--quick` | | off | measure 2 s after 0.5 s of warm-up; 10k/1k keys |
//! | `--duration S` | `KG_BENCH_SECS` | 5 | measured seconds per run (each round of an experiment) |
//! | `--warmup S` | | 1 | seconds of load before the window opens |
//! | `--conns N` | `KG_BENCH_CONNS` | 4 | HTTP/2 connections per run |
//! | `--concurrency N` | `KG_BENCH_CONCURRENCY` | 32 (`envoy`: 16) | calls in flight per connection |
//! | `--rounds N` | `KG_BENCH_ROUNDS` | 3 (≥ 2) | alternating rounds of each experiment |
//! | `--keys N` | | 100k | `check_many_keys`' keys |
//! | `--cold-keys N` | | 10k | `cold_start`'s keys |
//! | `--revocations N` | `KG_BENCH_REVOCATIONS` | 100 | `revocation`'s samples |
//! | `--sample-ratio R` | `KG_BENCH_SAMPLE_RATIO` | 1 | `tracing`: B's `otlp_sample_ratio` |
//! | | `KG_BENCH_REDIS_URL` | `redis://127.0.0.1:6379` | `check_redis`, `redis_vs_memory` |
//! | | `KG_BENCH_AB=usage` | | with `tracing` selected, run `usage` instead |
//! | | `KG_BENCH_WRAP` | | a command every keygate runs under (`scripts/profile.sh`: callgrind) |
//!
//! The former runners map to: `--bench envoy` → `--scenario envoy`; `--bench tracing` →
//! `--scenario tracing` (`KG_BENCH_AB=usage`: `--scenario usage`); `--bench replicas` →
//! `--scenario replicas` (= `redis_vs_memory` + `revocation`).
//!
//! Method. Every server is a separate process — the real release `keygate` binary
//! (`CARGO_BIN_EXE_keygate`), this runner re-executed as the no-op server, or Envoy —
//! listening on `127.0.0.1:0`, so a row's **server CPU per request** is that process's
//! user + system time over the measured window (`/proc/<pid>/stat`, read when the window
//! opens and closes) divided by the expected answers in it. Each keygate gets a fresh
//! SQLite file in a temp dir (PostgreSQL for `revocation`), no metrics port, JSON logs at
//! `warn,keygate=info`, a cache of 1M keys for 1 h (so every run is the hot path, not a
//! refresh), an admin token of the run's own, and an otherwise cleared environment, so
//! that a stray `RUST_LOG`, `KEYGATE_*` or `OTEL_*` in the shell cannot skew one side.
//! The load generator is this process: `--conns` HTTP/2 connections with `--concurrency`
//! calls in flight on each, each sending its next call when the last returns (closed
//! loop); after `--warmup` seconds, calls completing within `--duration` seconds are
//! counted; latency is an hdrhistogram in µs over the expected answers (ALLOW,
//! RATE_LIMITED, HTTP 200, …); any other answer is counted as `other`, failed calls and
//! lost connections as `errors`, and the first of each is printed.
//!
//! The suite (results in `results.json`). The no-op server (tonic with `grpc.health.v1`
//! only, same tonic/hyper/h2 stack and server settings) is measured first and last and
//! its mean is each row's denominator (`×noop`), so drift over the run touches every ratio
//! alike. Scenarios:
//! - `noop` — the ceiling (always run with the suite).
//! - `check_cached` — one hot key, ALLOW, in-memory limiter with a huge limit.
//! - `check_many_keys` — 100k distinct keys (10k with `--quick`), all cached, drawn from a
//!   Zipf distribution (s = 1). The rows are written straight into the SQLite file with
//!   the cheapest argon2 parameters (set-up in seconds; a cached check never verifies).
//!   Also reports the server's RSS growth per cached key.
//! - `check_rate_limited` — a key over its limit: the DENY path.
//! - `check_uncached` — a store lookup and an argon2 verify on every call: each call
//!   presents a known key id with a secret never seen before (so nothing can be cached);
//!   the argon2 parameters are in the row.
//! - `check_redis` — the Redis limiter on the machine's Redis (`KG_BENCH_REDIS_URL`), a key
//!   prefix of its own, `[redis] on_error = deny`.
//! - `ext_authz` — Envoy's `envoy.service.auth.v3.Authorization/Check` message sent straight
//!   to Keygate's adapter (the `envoy` experiment puts a real Envoy in front).
//! - `cold_start` — a fresh replica on a SQLite file holding 10k keys (1k with `--quick`),
//!   hashed with the default argon2 parameters: time from spawn to SERVING, then every key
//!   checked once (first-seen keys verified per second) while a warm key is checked
//!   alongside (its p99).
//! - `open_loop` — `check_cached` at a fixed arrival rate of half the closed-loop peak,
//!   latency measured from each call's scheduled start (no coordinated omission).
//!
//! The experiments (run only when named). Each compares a baseline A with B, the same
//! set-up plus one thing, alternating A and B for `--rounds` rounds on fresh connections;
//! it prints each round, B/A req/s best-of-rounds and median-of-rounds (and per round),
//! the latency B adds (p99 and p50 of B minus A in the same round, median over rounds),
//! and the CPU µs per expected answer of each process involved (median over rounds,
//! A -> B; `gen` is this process, the load generator), which depends much less than
//! req/s on how the cores happen to be shared. Every hot key is checked five times first
//! (verified once, then cached).
//! - `envoy` (`envoy.json`) — "envoy": Envoy (`--concurrency 1`) whose one route it
//!   answers itself (`direct_response` 200), nothing else; "envoy+keygate": the same plus
//!   the `envoy.filters.http.ext_authz` gRPC filter of `examples/envoy/envoy.yaml`
//!   (`failure_mode_allow: false`, `status_on_error: 503`, 1 s timeout) on a cluster
//!   speaking HTTP/2 to one keygate. The load is `GET /` with the key in `x-api-key` over
//!   h2c (prior knowledge). Before measuring, "envoy" must answer 200, "envoy+keygate"
//!   401 without the key and 200 with it (so ext_authz is really in the path). Also
//!   printed: Envoy's own ext_authz counters for the whole run. Needs Envoy in
//!   `.tools/venv/bin` (`./scripts/install-tools.sh`) or on `PATH`. Envoy's worker also runs
//!   the ext_authz gRPC client, whose CPU lands in the `envoy` column, and in "envoy"
//!   Keygate idles: the ratio is "what ext_authz costs on this box", an upper bound on
//!   the cost when Keygate has cores of its own; loopback hides the network round trip.
//! - `tracing` (`tracing.json`) — OTLP trace export off (A) and on (B): B exports to an
//!   OTLP/gRPC collector inside this runner that only counts what it receives, with
//!   `otlp_sample_ratio` from `--sample-ratio` (default 1: every check traced). Target:
//!   B/A ≥ 0.95. Both are then stopped with SIGTERM (B flushes its spans) and the spans
//!   received are listed by name, each per check B answered (every check is one
//!   `Authorize/Check` with a child `limiter.check`, plus `store.lookup_and_verify` on a
//!   cache miss); `Authorize/Check` spans short of the checks answered were dropped by the
//!   SDK or never flushed. The collector decodes in this process, taking CPU from the
//!   load generator during B only (`gen` shows how much), so the req/s ratio is
//!   pessimistic; the `keygate` CPU column's B/A is the cleaner measure.
//! - `usage` (`usage.json`) — usage recording off (A: `usage.enabled = false`, only
//!   `last_used_time` and the use count kept) and on (B: the default, per-minute/day
//!   counts by endpoint and reason), neither exporting traces. Target: B/A ≥ 0.95.
//! - `redis_vs_memory` (`replicas.json`, `limiter`) — the in-memory limiter (A) against
//!   the Redis limiter (B) on `KG_BENCH_REDIS_URL` with a prefix of the run's own
//!   (`kgbench:<pid>:<nanos>`), `[redis] timeout_ms = 1000`, `[redis] on_error = deny`:
//!   concurrent checks share `EVALSHA` round trips (the limiter batches them). The keys
//!   under the prefix are deleted at the end (SCAN + DEL); had the run died first, they
//!   expire on their own (PEXPIRE of a window and a slot plus 1 s, here 62 s). The issue's
//!   targets are Redis ≥ 0.8 × memory here and ≥ 0.6 × the no-op ceiling in the suite's
//!   `check_redis` row.
//! - `revocation` (`replicas.json`, `propagation`) — a fresh PostgreSQL database on
//!   `127.0.0.1:5432` (user `postgres`; `CREATE DATABASE kgbench_<pid>_<nanos>`, dropped at
//!   the end `WITH (FORCE)`) and two replicas A and B on it. Then `--revocations` times:
//!   create a key on A, check it on B until ALLOW (B now caches it), revoke it on A, and,
//!   from the moment A's RevokeKey response arrives, check it on B back to back until B
//!   answers KEY_REVOKED. The delay includes one Check round trip and, on B, the store
//!   lookup and argon2 verify that follow the cache invalidation. One unrecorded
//!   revocation first makes sure B is LISTENing; one not seen within 5 s is counted as
//!   timed out.
//!
//! - `h2load` (`h2load.json`) — the server-bound view (see `h2load.rs`): h2load (C, from
//!   Debian's nghttp2-client) as the client instead of this process, pinned to CPU 0 with
//!   the servers on CPU 1; noop, check_cached, check_rate_limited, check_malformed and
//!   ext_authz, each with req/s and server CPU per call as ratios to the no-op's; then an
//!   open loop (h2load `--rps`) of noop and check_cached at half the no-op's peak, p50 / p99
//!   / p99.9 from h2load's per-request log (`h2load_open_loop.json`).
//!
//! - `memory` (`memory.json`) — what a cached key costs, part by part, in this process
//!   (see `memory.rs`): moka's own cost per entry, the key cache, and the in-memory
//!   limiter's bucket after one call and with all 60 slots in use; `--keys` entries.
//!
//! Caveats. The load generator, the servers, Envoy, Redis and PostgreSQL share the
//! machine's cores (2 on the reference machine): compare ratios, not absolute figures.
//! Loopback TCP hides network latency, which a real Redis round trip adds to every check
//! and a real NOTIFY to every propagation.
//!
//! Results go to `$CARGO_TARGET_DIR/bench/` (else `target/bench/`). The runner never
//! fails on a figure; it fails (non-zero exit, after running the rest) when a selected
//! scenario cannot run — Envoy not installed, Redis or PostgreSQL unreachable — and says
//! how to provide what is missing.
mod envoy;
mod h2load;
mod harness;
mod memory;
mod replicas;
mod settings;
mod suite;
mod tracing;

use harness::report::machine;
use harness::server::{keygate_binary, serve_noop, SERVE_NOOP};
use harness::BoxError;
use settings::{parse_args, Settings, SUITE};

async fn run(s: Settings) -> Result<(), BoxError> {
    let (cpus, model) = machine();
    println!("keygate bench: {cpus} CPUs ({model})");
    println!("keygate binary: {}", keygate_binary()?.display());
    println!("scenarios: {}", s.scenarios.join(", "));
    let mut failures: Vec<String> = Vec::new();
    let mut note = |name: &str, outcome: Result<(), BoxError>| {
        if let Err(e) = outcome {
            eprintln!("{name}: {e}");
            failures.push(format!("{name}: {e}"));
        }
    };
    if SUITE.iter().any(|n| s.wants(n)) {
        note("suite", suite::run(&s).await);
    }
    if s.wants("envoy") {
        note("envoy", envoy::run(&s).await);
    }
    for feature in [tracing::Feature::Tracing, tracing::Feature::Usage] {
        if s.wants(feature.name()) {
            note(feature.name(), tracing::run(&s, feature).await);
        }
    }
    if s.wants("redis_vs_memory") || s.wants("revocation") {
        note("replicas", replicas::run(&s).await);
    }
    if s.wants("h2load") {
        note("h2load", h2load::run(&s).await);
    }
    if s.wants("memory") {
        note("memory", memory::run(&s).await);
    }
    if !failures.is_empty() {
        return Err(format!("scenarios that could not run:\n  {}", failures.join("\n  ")).into());
    }
    Ok(())
}

/// The allocator keygate's binary uses, here too: the no-op server is this binary
/// re-executed, and a baseline on another allocator would flatter keygate's ratios.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), BoxError> {
    if std::env::args().any(|a| a == SERVE_NOOP) {
        return serve_noop();
    }
    let settings = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(settings))
}
