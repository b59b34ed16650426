//! Leaked keys: a secret scanning partner's signed report on the `[leaks]` listener (a test
//! ECDSA P-256 key pair stands in for GitHub's), and `KeyAdmin/ReportLeakedKeys` for
//! internal scanners. Each tenant's `on_leak` is applied at once, on every replica.
use crate::support::{check, new_key, post, sample, Admin, Db, Resp, TestServer};
use crate::{on_both_stores, server_or_skip};
use base64::Engine;
use keygate::grpc::pb::{self, Reason};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use std::time::{Duration, Instant};

const PATH: &str = "/github/secret-scanning";

/// A signing key as the partner holds it, and its public half as the key file lists it.
struct Signer {
    id: String,
    pair: EcdsaKeyPair,
    public_pem: String,
}

impl Signer {
    fn new(id: &str) -> Signer {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &kp.serialize_der(),
            &SystemRandom::new(),
        )
        .unwrap();
        Signer {
            id: id.into(),
            pair,
            public_pem: kp.public_key_pem(),
        }
    }

    fn sign(&self, body: &[u8]) -> String {
        let sig = self.pair.sign(&SystemRandom::new(), body).unwrap();
        base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
    }
}

/// The key file, in the JSON GitHub serves at /meta/public_keys/secret_scanning.
fn key_file(signers: &[&Signer]) -> String {
    let keys: Vec<_> = signers
        .iter()
        .map(|s| {
            serde_json::json!({
                "key_identifier": s.id,
                "key": s.public_pem,
                "is_current": true,
            })
        })
        .collect();
    serde_json::json!({ "public_keys": keys }).to_string()
}

struct Partner {
    server: TestServer,
    signer: Signer,
    _dir: tempfile::TempDir,
}

/// A server with the partner endpoint on, trusting one test signing key.
async fn partner(db: Db, tweak: impl FnOnce(&mut keygate::config::Config)) -> Option<Partner> {
    let signer = Signer::new("test-key-1");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret_scanning.json");
    std::fs::write(&path, key_file(&[&signer])).unwrap();
    let server = TestServer::start_with(db, |cfg| {
        cfg.leaks.listen = Some("127.0.0.1:0".parse().unwrap());
        cfg.leaks.public_keys_path = Some(path);
        tweak(cfg);
    })
    .await?;
    Some(Partner {
        server,
        signer,
        _dir: dir,
    })
}

impl Partner {
    /// POSTs `body` with `signature` under the signer's key id (`None`: unsigned).
    async fn post_signed_as(&self, body: &str, key_id: &str, signature: Option<String>) -> Resp {
        let addr = self.server.leaks_addr.expect("leaks listener");
        let mut headers = vec![("content-type", "application/json".to_owned())];
        if let Some(sig) = signature {
            headers.push(("Github-Public-Key-Identifier", key_id.to_owned()));
            headers.push(("Github-Public-Key-Signature", sig));
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        post(addr, PATH, &headers, body.as_bytes()).await
    }

    async fn post(&self, body: &str) -> Resp {
        let sig = self.signer.sign(body.as_bytes());
        self.post_signed_as(body, &self.signer.id, Some(sig)).await
    }
}

fn matches(tokens: &[&str]) -> String {
    let m: Vec<_> = tokens
        .iter()
        .map(|t| {
            serde_json::json!({
                "token": t,
                "type": "keygate_api_key",
                "url": format!("https://github.com/octo/repo/blob/abc/config.env?t={t}"),
                "source": "content",
            })
        })
        .collect();
    serde_json::Value::Array(m).to_string()
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A key with a valid shape and checksum under `of`'s lookup id, but another secret.
fn same_id_other_secret(of: &str) -> String {
    let p = keygate::domain::key::parse(of).unwrap();
    let secret = keygate::domain::key::random_base62(keygate::domain::key::SECRET_LEN);
    keygate::domain::key::assemble(p.head, p.lookup_id, &secret)
}

async fn audit_of(admin: &Admin, key_id: &str) -> Vec<pb::AuditEvent> {
    admin
        .list_audit_events(pb::ListAuditEventsRequest {
            key_id: key_id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .events
}

async fn a_signed_report_revokes_the_key_and_labels_every_token(db: Db) {
    let Some(p) = partner(db, |_| {}).await else {
        return;
    };
    let admin = p.server.admin().await;
    let authz = p.server.authorize().await;
    admin.tenant("acme").upsert().await;
    let k = admin.create_key(new_key("acme")).await;
    let key_id = k.key.clone().unwrap().id;
    assert_eq!(authz.reason(check(&k.secret)).await, Reason::Ok);

    let wrong_secret = same_id_other_secret(&k.secret);
    let tokens = [
        k.secret.as_str(),
        "ghp_notakeyofkeygate0000",
        wrong_secret.as_str(),
    ];
    let r = p.post(&matches(&tokens)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/json");
    let labels = r.json();
    let labels = labels.as_array().unwrap();
    assert_eq!(labels.len(), 3);
    for (label, (token, want)) in
        labels.iter().zip(
            tokens
                .iter()
                .zip(["true_positive", "false_positive", "false_positive"]),
        )
    {
        assert_eq!(label["label"], want, "{token}: {label}");
        assert_eq!(label["token_hash"], sha256_hex(token));
        assert_eq!(label["token_type"], "keygate_api_key");
        assert!(label.get("token_raw").is_none());
    }
    for t in tokens {
        assert!(!r.body.contains(t), "a token came back: {}", r.body);
    }

    // Denied at once on this replica (its cache entry was dropped).
    assert_eq!(authz.reason(check(&k.secret)).await, Reason::KeyRevoked);
    let key = admin.get_key(&key_id).await.unwrap();
    assert_eq!(key.state, pb::KeyState::Revoked as i32);
    // Audited with who reported, where, and what was done; never the token.
    let events = audit_of(&admin, &key_id).await;
    let e = events
        .iter()
        .find(|e| e.action == "report_leak")
        .expect("a report_leak event");
    assert!(e.actor.starts_with("secret-scanning:"), "{}", e.actor);
    assert!(e.detail.contains("on_leak=revoke"), "{}", e.detail);
    assert!(e.detail.contains("done=revoked"), "{}", e.detail);
    assert!(e.detail.contains("source=content"), "{}", e.detail);
    assert!(
        e.detail
            .contains("https://github.com/octo/repo/blob/abc/config.env?t=[token]"),
        "{}",
        e.detail
    );
    for ev in &events {
        assert!(
            !ev.detail.contains(&k.secret),
            "the token was stored: {}",
            ev.detail
        );
    }

    let m = p.server.metrics().await;
    let n = |finding: &str| {
        sample(
            &m,
            &format!("keygate_leak_reports_total{{channel=\"partner\",finding=\"{finding}\"}}"),
        )
    };
    assert_eq!((n("found"), n("not_a_key"), n("unknown")), (1.0, 1.0, 1.0));
    assert_eq!(
        sample(&m, "keygate_leaked_keys_total{action=\"revoked\"}"),
        1.0
    );

    // Reported again: still a true positive, recorded, nothing more to do.
    let again = p.post(&matches(&[&k.secret])).await;
    assert_eq!(again.json()[0]["label"], "true_positive");
    let events = audit_of(&admin, &key_id).await;
    assert!(events
        .iter()
        .any(|e| e.detail.contains("done=already_revoked")));
}

async fn unsigned_or_tampered_reports_are_401_and_change_nothing(db: Db) {
    let Some(p) = partner(db, |_| {}).await else {
        return;
    };
    let admin = p.server.admin().await;
    let authz = p.server.authorize().await;
    admin.tenant("acme").upsert().await;
    let k = admin.create_key(new_key("acme")).await;
    assert_eq!(authz.reason(check(&k.secret)).await, Reason::Ok);
    let verifies = p.server.verify_count();

    let body = matches(&[&k.secret]);
    let good = p.signer.sign(body.as_bytes());
    let stranger = Signer::new("test-key-1");
    let tampered = body.replace("content", "c0ntent");
    let cases: [(&str, &str, Option<String>); 5] = [
        ("unsigned", &body, None),
        ("body changed after signing", &tampered, Some(good.clone())),
        ("unknown key id", &body, Some(good.clone())),
        (
            "another key's signature",
            &body,
            Some(stranger.sign(body.as_bytes())),
        ),
        ("not base64", &body, Some("!!!".into())),
    ];
    for (what, body, sig) in cases {
        let key_id = if what == "unknown key id" {
            "no-such-key"
        } else {
            &p.signer.id
        };
        let r = p.post_signed_as(body, key_id, sig).await;
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert!(!r.body.contains(&k.secret));
    }
    assert_eq!(authz.reason(check(&k.secret)).await, Reason::Ok);
    assert_eq!(
        p.server.verify_count(),
        verifies,
        "no argon2 verify for an unsigned report"
    );
    let m = p.server.metrics().await;
    let refused = |reason: &str| {
        sample(
            &m,
            &format!("keygate_leak_report_refusals_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refused("unsigned"), 1.0);
    assert_eq!(refused("bad_signature"), 2.0);
    assert_eq!(refused("unknown_key"), 1.0);
    assert_eq!(refused("malformed_signature"), 1.0);
}

async fn a_malformed_body_is_400_and_says_what_is_wrong(db: Db) {
    let Some(p) = partner(db, |_| {}).await else {
        return;
    };
    let token = keygate::domain::key::assemble("kg_", "AAAAAAAAAAAA", &"B".repeat(24));
    let cases = [
        ("not json", "is not valid JSON".to_owned()),
        ("{\"token\": \"x\"}", "must be a JSON array".to_owned()),
        (
            &*format!("[{{\"tokn\": \"{token}\"}}]"),
            "must be a JSON array of objects with a string \"token\"".to_owned(),
        ),
        ("[]", "keys: at least one key is required".to_owned()),
    ];
    for (body, want) in cases {
        let r = p.post(body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let msg = r.json()["error"].as_str().unwrap().to_owned();
        assert!(msg.contains(&want), "{body}: {msg}");
        assert!(!msg.contains(&token), "the error quoted the token: {msg}");
    }
}

async fn on_leak_notify_and_disable_do_what_the_tenant_chose(db: Db) {
    let Some(p) = partner(db, |_| {}).await else {
        return;
    };
    let admin = p.server.admin().await;
    let authz = p.server.authorize().await;
    for (tenant, action) in [
        ("quiet", pb::LeakAction::Notify),
        ("careful", pb::LeakAction::Disable),
    ] {
        let policy = pb::TenantPolicy {
            on_leak: action as i32,
            ..Default::default()
        };
        let t = admin.tenant(tenant).policy(policy).upsert().await;
        assert_eq!(t.policy.unwrap().on_leak, action as i32, "read back");
    }
    let quiet = admin.create_key(new_key("quiet")).await;
    let careful = admin.create_key(new_key("careful")).await;
    let r = p.post(&matches(&[&quiet.secret, &careful.secret])).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()[0]["label"], "true_positive");
    assert_eq!(r.json()[1]["label"], "true_positive");

    // notify: the key keeps working; the report is on record.
    assert_eq!(authz.reason(check(&quiet.secret)).await, Reason::Ok);
    let quiet_id = quiet.key.unwrap().id;
    let events = audit_of(&admin, &quiet_id).await;
    assert!(
        events
            .iter()
            .any(|e| e.action == "report_leak" && e.detail.contains("done=notified")),
        "{events:?}"
    );
    // disable: refused until an admin enables it again.
    assert_eq!(
        authz.reason(check(&careful.secret)).await,
        Reason::KeyDisabled
    );
    let mut key = careful.key.unwrap();
    key.enabled = true;
    admin.update_key(key, &["enabled"]).await.unwrap();
    assert_eq!(authz.reason(check(&careful.secret)).await, Reason::Ok);
}

async fn report_leaked_keys_answers_internal_scanners(db: Db) {
    let s = server_or_skip!(db);
    let admin = s.admin().await;
    let authz = s.authorize().await;
    admin.tenant("acme").upsert().await;
    let k = admin.create_key(new_key("acme")).await;
    let wrong = same_id_other_secret(&k.secret);
    let r = admin
        .report_leaked_keys(
            &[&k.secret, "AKIAIOSFODNN7EXAMPLE", &wrong],
            "https://paste.example/raw/1",
            "gitleaks",
        )
        .await
        .unwrap();
    let findings: Vec<i32> = r.results.iter().map(|r| r.finding).collect();
    assert_eq!(
        findings,
        [
            pb::LeakFinding::LeakedKeyFound as i32,
            pb::LeakFinding::NotAKey as i32,
            pb::LeakFinding::Unknown as i32,
        ]
    );
    let found = &r.results[0];
    assert_eq!(found.key_id, k.key.as_ref().unwrap().id);
    assert_eq!(found.tenant_id, "acme");
    assert_eq!(found.action, "revoked");
    assert!(r.results[1].key_id.is_empty() && r.results[2].key_id.is_empty());
    assert_eq!(authz.reason(check(&k.secret)).await, Reason::KeyRevoked);
    let events = audit_of(&admin, &found.key_id).await;
    let e = events.iter().find(|e| e.action == "report_leak").unwrap();
    assert!(e.detail.contains("source=gitleaks"), "{}", e.detail);
    assert!(
        e.detail.contains("url=https://paste.example/raw/1"),
        "{}",
        e.detail
    );

    // Tokens that fail the shape or checksum cost no lookup and no verify.
    let verifies = s.verify_count();
    let r = admin
        .report_leaked_keys(
            &[
                "kg_short",
                "AKIAIOSFODNN7EXAMPLE",
                &wrong[..wrong.len() - 1],
            ],
            "",
            "",
        )
        .await
        .unwrap();
    assert!(r
        .results
        .iter()
        .all(|r| r.finding == pb::LeakFinding::NotAKey as i32));
    assert_eq!(s.verify_count(), verifies);

    let (code, msg) = crate::support::code(admin.report_leaked_keys(&[], "", "").await);
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(msg.contains("keys"), "{msg}");
    let many: Vec<String> = (0..1001).map(|i| format!("tok{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let (code, msg) = crate::support::code(admin.report_leaked_keys(&many, "", "").await);
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(msg.contains("at most 1000"), "{msg}");
}

on_both_stores!(
    a_signed_report_revokes_the_key_and_labels_every_token,
    unsigned_or_tampered_reports_are_401_and_change_nothing,
    a_malformed_body_is_400_and_says_what_is_wrong,
    on_leak_notify_and_disable_do_what_the_tenant_chose,
    report_leaked_keys_answers_internal_scanners,
    repeated_tokens_and_long_reports_are_handled_once_and_fit_the_trail,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_reporter_has_a_budget_of_tokens_per_minute() {
    fn refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let Some(p) = partner(Db::Sqlite, |_| {}).await else {
        return;
    };
    let admin = p.server.admin().await;
    let tokens = |tag: &str, n: usize| (0..n).map(|i| format!("{tag}{i}")).collect::<Vec<_>>();
    // The default budget, 1000 tokens a minute per reporter (a full report fits).
    let first = tokens("a", 600);
    assert_eq!(p.post(&matches(&refs(&first))).await.status, 200);
    let second = tokens("b", 600);
    let over = p.post(&matches(&refs(&second))).await;
    assert_eq!(over.status, 429, "{}", over.body);
    let wait: u64 = over.headers["retry-after"].parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // The admin API is another reporter, with a budget of its own.
    let third = tokens("c", 1000);
    assert!(admin
        .report_leaked_keys(&refs(&third), "", "")
        .await
        .is_ok());
    let (code, msg) = crate::support::code(admin.report_leaked_keys(&["c-more"], "", "").await);
    assert_eq!(code, tonic::Code::ResourceExhausted);
    assert!(msg.contains("1000 keys per minute"), "{msg}");

    // Badly signed requests from an address do not lock that address out: behind a TLS
    // proxy every partner request comes from the same one.
    for _ in 0..100 {
        assert_eq!(p.post_signed_as("[]", &p.signer.id, None).await.status, 401);
    }
    p.server.clock.advance(Duration::from_secs(61));
    assert_eq!(p.post(&matches(&["d1"])).await.status, 200);
}

#[test]
fn a_budget_below_a_full_report_is_refused() {
    let err = keygate::config::Config::from_toml_str("[leaks]\ntokens_per_minute = 10\n")
        .expect_err("refused");
    assert!(err.to_string().contains("leaks.tokens_per_minute"), "{err}");
    let err = keygate::config::Config::from_toml_str("[leaks]\nlisten = \"127.0.0.1:0\"\n")
        .expect_err("refused");
    assert!(err.to_string().contains("leaks.public_keys_path"), "{err}");
}

async fn repeated_tokens_and_long_reports_are_handled_once_and_fit_the_trail(db: Db) {
    let s = server_or_skip!(db);
    let admin = s.admin().await;
    admin.tenant("acme").upsert().await;
    let k = admin.create_key(new_key("acme")).await;
    let verifies = s.verify_count();
    // 2,000-character source and URL: cut to fit the audit trail on every store.
    let long_url = format!("https://paste.example/{}", "u".repeat(2000));
    let long_source = "s".repeat(2000);
    let r = admin
        .report_leaked_keys(&[&k.secret, &k.secret, &k.secret], &long_url, &long_source)
        .await
        .unwrap();
    assert_eq!(
        s.verify_count(),
        verifies + 1,
        "one verify for one token reported thrice"
    );
    for res in &r.results {
        assert_eq!(res.finding, pb::LeakFinding::LeakedKeyFound as i32);
        assert_eq!(res.action, "revoked");
    }
    let key_id = k.key.unwrap().id;
    let events: Vec<_> = audit_of(&admin, &key_id)
        .await
        .into_iter()
        .filter(|e| e.action == "report_leak")
        .collect();
    assert_eq!(events.len(), 1, "one action, one event");
    assert!(
        events[0].detail.chars().count() <= 600,
        "{}",
        events[0].detail.len()
    );
    assert!(events[0].detail.contains("url=https://paste.example/uuu"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_public_key_file_is_reread_when_it_changes_and_checked_at_start() {
    let Some(p) = partner(Db::Sqlite, |_| {}).await else {
        return;
    };
    let next = Signer::new("test-key-2");
    let body = matches(&["x1"]);
    let signed_by_next = next.sign(body.as_bytes());
    let r = p
        .post_signed_as(&body, &next.id, Some(signed_by_next.clone()))
        .await;
    assert_eq!(r.status, 401, "not yet trusted");
    // The partner rotates: the operator refreshes the file.
    let path = p._dir.path().join("secret_scanning.json");
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&path, key_file(&[&p.signer, &next])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = p
            .post_signed_as(&body, &next.id, Some(signed_by_next.clone()))
            .await;
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new key never trusted: {}",
            r.body
        );
        // Some filesystems keep mtimes in whole seconds: touch it again.
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(&path, key_file(&[&p.signer, &next])).unwrap();
    }

    // At start, a bad file or a missing one stops the server with the field named.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("keys.json");
    for (text, want) in [
        ("{\"public_keys\": []}", "lists no public keys"),
        ("[1, 2]", "is not a public-key file"),
        (
            "{\"public_keys\": [{\"key_identifier\": \"k\", \"key\": \"nope\"}]}",
            "not a PEM public key",
        ),
    ] {
        std::fs::write(&bad, text).unwrap();
        let db = crate::support::TestDb::new(Db::Sqlite).await.unwrap();
        let mut cfg = crate::support::config_for(&db.url);
        cfg.leaks.listen = Some("127.0.0.1:0".parse().unwrap());
        cfg.leaks.public_keys_path = Some(bad.clone());
        let err = keygate::App::build(cfg, keygate::Options::default())
            .await
            .err()
            .expect("a bad key file is refused");
        let msg = err.to_string();
        assert!(msg.contains("leaks.public_keys_path"), "{msg}");
        assert!(msg.contains(want), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leak_reported_on_one_replica_is_denied_on_every_replica_within_a_second() {
    let Some(p) = partner(Db::Postgres, |_| {}).await else {
        return;
    };
    let b = TestServer::start_replica(&p.server.url, |_| {}).await;
    let c = TestServer::start_replica(&p.server.url, |_| {}).await;
    let admin = p.server.admin().await;
    admin.tenant("acme").upsert().await;
    let k = admin.create_key(new_key("acme")).await;
    let (cb, cc) = (b.authorize().await, c.authorize().await);
    // Both replicas hold the key in their caches.
    assert_eq!(cb.reason(check(&k.secret)).await, Reason::Ok);
    assert_eq!(cc.reason(check(&k.secret)).await, Reason::Ok);
    let start = Instant::now();
    let r = p.post(&matches(&[&k.secret])).await;
    assert_eq!(r.json()[0]["label"], "true_positive");
    for replica in [&cb, &cc] {
        loop {
            if replica.reason(check(&k.secret)).await == Reason::KeyRevoked {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "a replica still admits the leaked key after 1 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
