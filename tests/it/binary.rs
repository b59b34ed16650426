//! The `keygate` binary as an operator runs it: real process, real signals.
use crate::support::{check, command, new_key, spawn, CheckClient, Db, TestDb};
use keygate::grpc::pb;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

const TOKEN: &str = "binary-test-admin-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_returned_key_survives_kill_9() {
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let env = [("KEYGATE_ADMIN_TOKEN", TOKEN)];
    let mut p = spawn(&db.url, &env, &[]).await;
    let a = p.admin(TOKEN).await;
    a.tenant("durable").upsert().await;
    let mut issued = vec![];
    for i in 0..20 {
        issued.push(a.create_key(new_key("durable").name(format!("k{i}"))).await);
    }
    // No graceful anything: SIGKILL right after the last response.
    p.child.start_kill().unwrap();
    p.child.wait().await.unwrap();

    let p = spawn(&db.url, &env, &[]).await;
    let a = p.admin(TOKEN).await;
    for k in &issued {
        let got = a.get_key(&k.key.as_ref().unwrap().id).await.unwrap();
        assert_eq!(got.state, pb::KeyState::Active as i32);
    }
    // Every issued key is allowed, and the response agrees with itself.
    let c = CheckClient::connect(&p.addr).await.unwrap();
    for k in &issued {
        let r = c.check(check(&k.secret)).await;
        assert_eq!(r.reason, pb::Reason::Ok as i32);
        assert_eq!(r.http_status, 200);
        assert_eq!(r.decision, pb::Decision::Allow as i32);
    }
    let logs = p.output();
    assert!(
        logs.contains("key created") || logs.contains("keygate serving"),
        "logs were captured"
    );
    for k in &issued {
        assert!(
            !logs.contains(&k.secret[k.secret.len() - 30..]),
            "a key's secret reached the log"
        );
    }
    assert!(!logs.contains(TOKEN), "the admin token reached the log");
    assert!(!logs.contains("$argon2"), "a hash reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_prints_an_admin_token_once_and_it_works() {
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let mut p = spawn(&db.url, &[], &["serve"]).await;
    let out = p.output();
    let token = out
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("kgadm_")
                .map(|rest| format!("kgadm_{}", rest.trim()))
        })
        .unwrap_or_else(|| panic!("no admin token printed:\n{out}"));
    assert!(
        out.contains("grpcurl -plaintext -H 'authorization: Bearer kgadm_"),
        "ready-to-paste example: {out}"
    );
    let a = p.admin(&token).await;
    a.list_tenants(pb::ListTenantsRequest::default())
        .await
        .expect("generated token works");
    // The token is never in a log line (only in the one banner).
    assert_eq!(
        out.matches(&token).count(),
        2,
        "token appears only in the banner and its example"
    );
    p.child.start_kill().unwrap();
    p.child.wait().await.unwrap();

    let p = spawn(&db.url, &[], &[]).await;
    assert!(
        !p.output().contains("kgadm_"),
        "second start prints no new token"
    );
    let a = p.admin(&token).await;
    a.list_tenants(pb::ListTenantsRequest::default())
        .await
        .expect("stored token still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let mut p = spawn(&db.url, &[("KEYGATE_ADMIN_TOKEN", TOKEN)], &[]).await;
    let pid = p.child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), p.child.wait())
        .await
        .expect("exits promptly")
        .unwrap();
    assert_eq!(exit.code(), Some(0), "{}", p.output());
    assert!(p.output().contains("keygate stopped"));
}

/// SIGTERM while argon2 verifies are running (an operator raised the import ceiling, and
/// a key's stored cost takes minutes): the process still exits within the grace period,
/// not when the hashing pool is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_grace_period_during_long_verifies() {
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let mut p = spawn(
        &db.url,
        &[
            ("KEYGATE_ADMIN_TOKEN", TOKEN),
            ("KEYGATE_SHUTDOWN_GRACE_SECS", "2"),
            ("KEYGATE_ARGON2__MAX_ITERATIONS", "1000000"),
        ],
        &[],
    )
    .await;
    let a = p.admin(TOKEN).await;
    a.tenant("legacy").upsert().await;
    // About a minute or more of hashing per verify at 1 MiB: the hash need not match, the
    // verify pays the stored cost to find out.
    let slow = "$argon2id$v=19$m=1024,t=1000000,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA";
    a.import_keys(pb::ImportKeysRequest {
        tenant_id: "legacy".into(),
        key_prefix: "acme-".into(),
        format: pb::ImportHashFormat::Argon2Phc as i32,
        lookup_length: 8,
        keys: vec![pb::ImportedKey {
            name: "slow".into(),
            hash: slow.into(),
            lookup: "acme-SLOW0001".into(),
            ..Default::default()
        }],
    })
    .await
    .expect("import within the raised ceiling");
    for _ in 0..2 {
        let c = CheckClient::connect(&p.addr).await.unwrap();
        tokio::spawn(async move { c.try_check(check("acme-SLOW0001.whatever")).await });
    }
    // Let both verifies start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let pid = p.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exit = tokio::time::timeout(Duration::from_secs(30), p.child.wait())
        .await
        .unwrap_or_else(|_| panic!("still running 30 s after SIGTERM: {}", p.output()))
        .unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "took {took:?} for a 2 s grace period: {}",
        p.output()
    );
    assert!(exit.code().is_some(), "exited by itself: {exit:?}");
    assert!(p.output().contains("keygate stopped"), "{}", p.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_an_old_schema_until_migrated() {
    let Some(db) = TestDb::new(Db::Postgres).await else {
        return;
    };
    let out = command(&db.url, &[("KEYGATE_ADMIN_TOKEN", TOKEN)], &[])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("keygate migrate") && err.contains("m0001_initial"),
        "{err}"
    );

    let out = command(&db.url, &[], &["migrate"]).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = spawn(&db.url, &[("KEYGATE_ADMIN_TOKEN", TOKEN)], &[]).await;
    let a = p.admin(TOKEN).await;
    a.list_tenants(pb::ListTenantsRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_config_names_the_setting_and_hides_secrets() {
    let out = command(
        "sqlite://x.db",
        &[("KEYGATE_LISTEN", "not-an-address")],
        &[],
    )
    .output()
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen"), "{err}");

    let secret_url = "mysql://user:hunter2-secret@localhost/db";
    let out = command(secret_url, &[], &[]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("database_url"), "{err}");
    assert!(!err.contains("hunter2"), "database password printed: {err}");

    let out = command("sqlite://x.db", &[("KEYGATE_ADMIN_TOKEN", "short")], &[])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin_token") && !err.contains("short\""),
        "{err}"
    );
}

#[tokio::test]
async fn logs_to_a_pipe_have_no_colour() {
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    // The human format, the one that colours on a terminal; stderr is a pipe here.
    let env = [
        ("KEYGATE_ADMIN_TOKEN", TOKEN),
        ("KEYGATE_LOG__FORMAT", "pretty"),
    ];
    let mut child = command(&db.url, &env, &["serve"])
        .spawn()
        .expect("spawn keygate");
    let mut reader = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut lines = Vec::new();
    let started = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = reader.next_line().await.unwrap() {
            let serving = line.contains("keygate serving");
            lines.push(line);
            if serving {
                return true;
            }
        }
        false
    })
    .await;
    child.start_kill().unwrap();
    let log = lines.join("\n");
    assert_eq!(started, Ok(true), "keygate did not start:\n{log}");
    assert!(
        !log.contains("\x1b["),
        "ANSI escape sequences in a piped log:\n{log:?}"
    );
}

#[tokio::test]
async fn an_old_flat_environment_variable_names_its_replacement() {
    for (old, value, new) in [
        (
            "KEYGATE_REDIS_URL",
            "redis://:hunter2@redis:6379",
            "KEYGATE_REDIS__URL",
        ),
        (
            "KEYGATE_METRICS_LISTEN",
            "0.0.0.0:9464",
            "KEYGATE_METRICS__LISTEN",
        ),
        (
            "KEYGATE_OTLP_ENDPOINT",
            "http://otel:4317",
            "KEYGATE_OTLP__ENDPOINT",
        ),
    ] {
        let out = command("sqlite://x.db", &[(old, value)], &["check-config"])
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{old}: {err}");
        assert!(
            err.contains("was renamed") && err.contains(new) && err.contains(old),
            "{old}: {err}"
        );
        assert!(!err.contains("hunter2"), "a value was printed: {err}");
    }
    // The new names are read.
    let out = command(
        "sqlite://x.db",
        &[
            ("KEYGATE_RATE_LIMITER", "redis"),
            ("KEYGATE_REDIS__URL", "http://not-redis"),
        ],
        &["check-config"],
    )
    .output()
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("redis.url"), "{err}");
}
