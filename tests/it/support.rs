//! The test harness: start a real Keygate on a free port over a fresh database.
#![allow(dead_code)]
use keygate::config::Config;
use keygate::domain::{Clock, ManualClock, SystemClock, UnixMillis};
use keygate::grpc::pb::authorize_client::AuthorizeClient;
use keygate::grpc::pb::key_admin_client::KeyAdminClient;
use keygate::Options;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A database owned by one test: a SQLite file in a temp dir, or a PostgreSQL database
/// created for it and dropped afterwards.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

async fn pg_exec(sql: &str) -> Result<(), String> {
    use sea_orm::ConnectionTrait;
    let db = sea_orm::Database::connect(PG_ADMIN_URL)
        .await
        .map_err(|e| e.to_string())?;
    db.execute_unprepared(sql)
        .await
        .map_err(|e| e.to_string())?;
    db.close().await.map_err(|e| e.to_string())
}

impl TestDb {
    /// A fresh database, or `None` (after a loud message) when PostgreSQL is not running
    /// outside CI. Under CI=true a missing PostgreSQL fails the test.
    pub async fn new(kind: Db) -> Option<TestDb> {
        match kind {
            Db::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("keygate.db").display());
                Some(TestDb {
                    url,
                    pg_name: None,
                    _dir: Some(dir),
                })
            }
            Db::Postgres => {
                let name = format!(
                    "kgtest_{}_{}_{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::SeqCst),
                    keygate::domain::key::random_base62(6).to_lowercase()
                );
                match pg_exec(&format!("CREATE DATABASE {name}")).await {
                    Ok(()) => Some(TestDb {
                        url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
                        pg_name: Some(name),
                        _dir: None,
                    }),
                    Err(e) if !in_ci() => {
                        eprintln!(
                            "\n!!! SKIPPING a PostgreSQL test: cannot reach {PG_ADMIN_URL} ({e}).\n!!! Start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n"
                        );
                        None
                    }
                    Err(e) => {
                        panic!("PostgreSQL is required under CI=true and is unreachable: {e}")
                    }
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Async work in Drop: a runtime of its own on a thread of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let _ = rt.block_on(pg_exec(&format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )));
            })
            .join();
        }
    }
}

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: SocketAddr,
    /// The server's hasher: its verify count shows how often argon2 ran.
    pub hasher: keygate::hashing::SecretHasher,
    pub clock: Arc<ManualClock>,
    /// The database URL (shared by replicas).
    pub url: String,
    /// The database this server owns (dropped with it); `None` for a second replica.
    pub db: Option<TestDb>,
    /// The server's usage recorder and store, to flush on demand.
    pub usage: Arc<keygate::service::usage::UsageRecorder>,
    pub store: Arc<dyn keygate::store::KeyStore>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<keygate::error::Result<()>>>,
}

pub fn config_for(url: &str) -> Config {
    let mut cfg = Config {
        database_url: url.to_owned().into(),
        admin_token: Some(ADMIN_TOKEN.to_owned().into()),
        auto_migrate: true,
        shutdown_grace_secs: 5,
        ..Default::default()
    };
    // Tests run in parallel: every server gets its own metrics port.
    cfg.metrics.listen = "127.0.0.1:0".parse().unwrap();
    cfg.database.max_connections = 8;
    cfg
}

impl TestServer {
    /// Starts a server on a fresh database of `kind`; `None` when that store is absent
    /// outside CI.
    pub async fn start(kind: Db) -> Option<TestServer> {
        Self::start_with(kind, |_| {}).await
    }

    pub async fn start_with(kind: Db, tweak: impl FnOnce(&mut Config)) -> Option<TestServer> {
        let db = TestDb::new(kind).await?;
        let mut cfg = config_for(&db.url);
        tweak(&mut cfg);
        Some(Self::start_on(db, cfg).await)
    }

    pub async fn start_on(db: TestDb, cfg: Config) -> TestServer {
        let url = db.url.clone();
        Self::start_shared(Some(db), url, cfg).await
    }

    /// A server with `[tls]` configured: readiness is not polled over plaintext.
    pub async fn start_on_tls(db: TestDb, cfg: Config) -> TestServer {
        let url = db.url.clone();
        Self::start_inner(Some(db), url, cfg, false).await
    }

    /// Another replica on `url`, which some other server owns.
    pub async fn start_replica(url: &str, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut cfg = config_for(url);
        tweak(&mut cfg);
        Self::start_shared(None, url.to_owned(), cfg).await
    }

    async fn start_shared(db: Option<TestDb>, url: String, cfg: Config) -> TestServer {
        Self::start_inner(db, url, cfg, true).await
    }

    async fn start_inner(db: Option<TestDb>, url: String, cfg: Config, wait: bool) -> TestServer {
        let clock = Arc::new(ManualClock::new(SystemClock.now()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let opts = Options {
            clock: clock.clone(),
        };
        let app = keygate::App::build(cfg, opts).await.expect("server builds");
        let hasher = app.hasher.clone();
        let (usage, store) = (app.usage.clone(), app.store.clone());
        let metrics_addr = app.metrics_addr().expect("metrics enabled in tests");
        let handle = tokio::spawn(app.serve(listener, async move {
            let _ = rx.await;
        }));
        let server = TestServer {
            addr,
            metrics_addr,
            hasher,
            clock,
            url,
            db,
            usage,
            store,
            stop: Some(tx),
            handle: Some(handle),
        };
        if wait {
            server.wait_ready().await;
        }
        server
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(ch) = Channel::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect()
                .await
            {
                let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
                let req = tonic_health::pb::HealthCheckRequest {
                    service: "keygate.v1.KeyAdmin".into(),
                };
                if h.check(req).await.is_ok_and(|r| r.get_ref().status == 1) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server on {} did not become ready", self.addr);
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn admin(&self) -> Admin {
        Admin {
            client: KeyAdminClient::new(self.channel().await),
            token: ADMIN_TOKEN.into(),
        }
    }

    pub async fn authorize(&self) -> AuthorizeClient<Channel> {
        AuthorizeClient::new(self.channel().await)
    }

    pub fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    /// Writes the buffered usage now (as the periodic flush would).
    pub async fn flush_usage(&self) -> keygate::error::Result<()> {
        self.usage.flush(self.store.as_ref(), self.now()).await
    }

    /// Graceful stop; returns what `run_with` returned.
    pub async fn stop(mut self) -> keygate::error::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.handle.take().unwrap().await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A KeyAdmin client that sends a bearer token.
#[derive(Clone)]
pub struct Admin {
    pub client: KeyAdminClient<Channel>,
    pub token: String,
}

impl Admin {
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        r
    }
}

/// Generates `mod sqlite` and `mod postgres`, each with one `#[tokio::test]` per listed
/// async fn taking a `Db`, so every behaviour runs on both stores.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() { super::$name($crate::support::Db::Sqlite).await }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() { super::$name($crate::support::Db::Postgres).await }
            )*
        }
    };
}

/// Starts a server or returns from the test (after the loud skip message).
#[macro_export]
macro_rules! server_or_skip {
    ($db:expr) => {
        match $crate::support::TestServer::start($db).await {
            Some(s) => s,
            None => return,
        }
    };
    ($db:expr, $tweak:expr) => {
        match $crate::support::TestServer::start_with($db, $tweak).await {
            Some(s) => s,
            None => return,
        }
    };
}

/// The status code of a failed call, with its message for assertions.
pub fn code<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
) -> (tonic::Code, String) {
    let s = r.expect_err("call should have failed");
    (s.code(), s.message().to_owned())
}

/// A TCP proxy the test owns, to cut a dependency's connection and restore it.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let target = target.to_owned();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *cut_rx.borrow() {
                    continue; // dropped: the client sees the connection close
                }
                let target = target.clone();
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Proxy { addr, cut }
    }

    /// Closes every proxied connection and refuses new ones until `restore`.
    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }

    pub fn restore(&self) {
        let _ = self.cut.send(false);
    }
}
