//! Replays the fuzz corpus kept in `fuzz/regressions/<target>/` (hand-written seeds and
//! every input a fuzzer ever crashed on) through the same bodies the cargo-fuzz targets
//! run, in the normal suite, on stable. `scripts/fuzz.sh` runs the fuzzers themselves.
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_fuzz_target_has_a_binary_and_a_corpus() {
    for (name, _) in keygate::fuzzing::TARGETS {
        let target = root().join(format!("fuzz/fuzz_targets/{name}.rs"));
        let source = std::fs::read_to_string(&target)
            .unwrap_or_else(|e| panic!("{}: {e}", target.display()));
        assert!(
            source.contains(&format!("keygate::fuzzing::{name}(")),
            "{} must call keygate::fuzzing::{name}",
            target.display()
        );
        let manifest = std::fs::read_to_string(root().join("fuzz/Cargo.toml")).unwrap();
        assert!(
            manifest.contains(&format!("path = \"fuzz_targets/{name}.rs\"")),
            "fuzz/Cargo.toml lacks the {name} target"
        );
        let corpus = root().join(format!("fuzz/regressions/{name}"));
        let n = std::fs::read_dir(&corpus)
            .unwrap_or_else(|e| panic!("{}: {e}", corpus.display()))
            .count();
        assert!(n > 0, "{} is empty", corpus.display());
    }
}

#[test]
fn the_regression_corpus_passes_every_invariant() {
    let mut replayed = 0;
    for (name, body) in keygate::fuzzing::TARGETS {
        let dir = root().join(format!("fuzz/regressions/{name}"));
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| body(&data));
            assert!(outcome.is_ok(), "{name}: {} fails", file.display());
            replayed += 1;
        }
    }
    assert!(replayed >= 30, "only {replayed} inputs replayed");
}

/// The seeds exercise the paths they are named for (so the invariants actually run).
#[test]
fn the_key_seeds_are_what_they_say() {
    let read = |n: &str| {
        std::fs::read_to_string(root().join(format!("fuzz/regressions/key/{n}"))).unwrap()
    };
    assert!(keygate::domain::key::parse(&read("valid")).is_ok());
    assert!(keygate::domain::key::parse(&read("valid_no_env")).is_ok());
    assert_eq!(
        keygate::domain::key::parse(&read("bad_checksum")).err(),
        Some(keygate::domain::key::MalformedKey::BadChecksum)
    );
}
