//! The `keygate` binary as an operator runs it: real process, real signals.
use crate::key_admin::{create, key_req, tenant};
use crate::support::{Admin, Db, TestDb};
use keygate::grpc::pb::{self, key_admin_client::KeyAdminClient};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `keygate` process and every stderr line it printed so far.
pub struct Proc {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    pub addr: String,
}

fn command(db_url: &str, extra_env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
    cmd.env_clear()
        .env("KEYGATE_DATABASE_URL", db_url)
        .env("KEYGATE_LISTEN", "127.0.0.1:0")
        .env("KEYGATE_METRICS__LISTEN", "127.0.0.1:0")
        .env("KEYGATE_LOG__FORMAT", "json")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd
}

pub async fn spawn(db_url: &str, extra_env: &[(&str, &str)], args: &[&str]) -> Proc {
    let mut child = command(db_url, extra_env, args)
        .spawn()
        .expect("spawn keygate");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let mut reader = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let addr = lines.lock().unwrap().iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["message"] == "keygate serving").then(|| v["listen"].as_str().unwrap().to_owned())
        });
        if let Some(addr) = addr {
            return Proc { child, lines, addr };
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "keygate exited early ({status}): {:#?}",
                lines.lock().unwrap()
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "keygate did not start: {:#?}",
            lines.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Proc {
    pub async fn admin(&self, token: &str) -> Admin {
        let client = KeyAdminClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap();
        Admin {
            client,
            token: token.into(),
        }
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

const TOKEN: &str = "binary-test-admin-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_returned_key_survives_kill_9() {
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let env = [("KEYGATE_ADMIN_TOKEN", TOKEN)];
    let mut p = spawn(&db.url, &env, &[]).await;
    let mut a = p.admin(TOKEN).await;
    tenant(&mut a, "durable", pb::TenantPolicy::default()).await;
    let mut issued = vec![];
    for i in 0..20 {
        issued.push(create(&mut a, key_req("durable", &format!("k{i}"))).await);
    }
    // No graceful anything: SIGKILL right after the last response.
    p.child.start_kill().unwrap();
    p.child.wait().await.unwrap();

    let p = spawn(&db.url, &env, &[]).await;
    let mut a = p.admin(TOKEN).await;
    for k in &issued {
        let id = k.key.as_ref().unwrap().id.clone();
        let got = a
            .client
            .get_key(a.req(pb::GetKeyRequest { key_id: id }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.state, pb::KeyState::Active as i32);
    }
    crate::check::assert_all_allowed(&p.addr, &issued).await;
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
    let mut a = p.admin(&token).await;
    a.client
        .list_tenants(a.req(pb::ListTenantsRequest::default()))
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
    let mut a = p.admin(&token).await;
    a.client
        .list_tenants(a.req(pb::ListTenantsRequest::default()))
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
    let mut a = p.admin(TOKEN).await;
    a.client
        .list_tenants(a.req(pb::ListTenantsRequest::default()))
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
