//! Timing does not tell an attacker whether a key id exists or which part of a key was
//! wrong: on a cold cache, an unknown key id (verified against a dummy hash), a known id
//! with a wrong secret, and a valid key (a real argon2 verify) cost the same, within a
//! generous statistical bound. Every sample presents a key never seen before, so every
//! sample misses the cache; the three kinds are interleaved at random so machine noise
//! hits them alike, and medians are compared.
use crate::server_or_skip;
use crate::support::{check, new_key, Db};
use keygate::domain::key;
use keygate::grpc::pb;
use rand::seq::SliceRandom;
use std::time::{Duration, Instant};

const SAMPLES: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Valid,
    WrongSecret,
    UnknownId,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_wrong_secrets_and_valid_keys_take_the_same_time() {
    let s = server_or_skip!(Db::Sqlite, |cfg| {
        // Every sample fails on purpose: the per-IP throttle must not step in.
        cfg.limits.failed_checks_per_ip = 0;
        // A costlier hash than the default makes the verify dominate a check, so a
        // missing dummy verify stands out far beyond the noise of a busy machine.
        cfg.argon2.memory_kib = 16 * 1024;
        cfg.argon2.iterations = 2;
    });
    let a = s.admin().await;
    a.tenant("t").upsert().await;
    let mut valid = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES * 2 {
        valid.push(
            a.create_key(new_key("t").name(format!("k{i}")))
                .await
                .secret,
        );
    }
    // Half the keys are presented as they are, the other half with their secret changed
    // (checksum recomputed, so they pass the format check and reach the verify).
    let wrong: Vec<String> = valid.split_off(SAMPLES);
    let wrong: Vec<String> = wrong
        .iter()
        .map(|k| {
            let p = key::parse(k).unwrap();
            key::assemble(p.head, p.lookup_id, &key::random_base62(key::SECRET_LEN))
        })
        .collect();
    let head = key::parse(&valid[0]).unwrap().head.to_owned();
    let unknown: Vec<String> = (0..SAMPLES)
        .map(|_| {
            key::assemble(
                &head,
                &key::random_base62(key::LOOKUP_LEN),
                &key::random_base62(key::SECRET_LEN),
            )
        })
        .collect();
    let mut plan: Vec<(Kind, String)> = valid
        .into_iter()
        .map(|k| (Kind::Valid, k))
        .chain(wrong.into_iter().map(|k| (Kind::WrongSecret, k)))
        .chain(unknown.into_iter().map(|k| (Kind::UnknownId, k)))
        .collect();
    plan.shuffle(&mut rand::thread_rng());

    let c = s.authorize().await;
    // Warm the connection and the store's statement cache (not the key cache).
    for _ in 0..5 {
        let warm = key::assemble(&head, &key::random_base62(12), &key::random_base62(24));
        c.check(check(&warm)).await;
    }
    let verifies_before = s.verify_count();
    let (mut t_valid, mut t_wrong, mut t_unknown) = (vec![], vec![], vec![]);
    for (kind, k) in &plan {
        let started = Instant::now();
        let r = c.check(check(k)).await;
        let took = started.elapsed();
        let expected = match kind {
            Kind::Valid => pb::Reason::Ok,
            Kind::WrongSecret | Kind::UnknownId => pb::Reason::KeyNotFound,
        };
        assert_eq!(r.reason, expected as i32, "{kind:?}");
        match kind {
            Kind::Valid => t_valid.push(took),
            Kind::WrongSecret => t_wrong.push(took),
            Kind::UnknownId => t_unknown.push(took),
        }
    }
    let (v, w, u) = (median(t_valid), median(t_wrong), median(t_unknown));
    eprintln!("cold-cache check medians: valid {v:?}, wrong secret {w:?}, unknown id {u:?}");
    // Every sample ran argon2 once: the cache was cold throughout, and unknown ids were
    // verified too (against the dummy hash).
    assert_eq!(
        s.verify_count() - verifies_before,
        plan.len() as u64,
        "one argon2 verify per sample"
    );
    for (name, other) in [("wrong secret", w), ("unknown id", u)] {
        let ratio = other.as_secs_f64() / v.as_secs_f64();
        assert!(
            (0.5..=2.0).contains(&ratio),
            "{name} takes {ratio:.2}x a valid key's check ({other:?} vs {v:?}): timing tells them apart"
        );
    }
}
