//! A real Keygate on a free port, and everything tests read from inside it.
use super::{http, Admin, CheckClient, Db, Proxy, Resp, TestDb, ADMIN_TOKEN};
use keygate::config::Config;
use keygate::domain::{Clock, ManualClock, SystemClock, UnixMillis};
use keygate::Options;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: SocketAddr,
    /// The secret scanning partner endpoint, when `[leaks] listen` is configured.
    pub leaks_addr: Option<SocketAddr>,
    pub clock: Arc<ManualClock>,
    /// The database URL (shared by replicas).
    pub url: String,
    /// The database this server owns (dropped with it); `None` for a second replica.
    pub db: Option<TestDb>,
    /// The server's test window (`App::handles`): the only view tests have inside it.
    inside: keygate::Handles,
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

    /// A server on a fresh PostgreSQL database that it reaches through a `Proxy` the test
    /// can cut, with a 1 s store timeout; `None` as for `TestDb::new`.
    pub async fn start_behind_proxy(
        tweak: impl FnOnce(&mut Config),
    ) -> Option<(TestServer, Proxy)> {
        let db = TestDb::new(Db::Postgres).await?;
        let proxy = Proxy::start("127.0.0.1:5432").await;
        let via_proxy = db.url.replace("127.0.0.1:5432", &proxy.addr.to_string());
        let mut cfg = config_for(&via_proxy);
        cfg.database.timeout_ms = 1000;
        tweak(&mut cfg);
        Some((Self::start_on(db, cfg).await, proxy))
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
        let inside = app.handles();
        let metrics_addr = app.metrics_addr().expect("metrics enabled in tests");
        let leaks_addr = app.leaks_addr();
        let handle = tokio::spawn(app.serve(listener, async move {
            let _ = rx.await;
        }));
        let server = TestServer {
            addr,
            metrics_addr,
            leaks_addr,
            clock,
            url,
            db,
            inside,
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

    /// A KeyAdmin client with the platform admin token.
    pub async fn admin(&self) -> Admin {
        Admin::new(self.channel().await, ADMIN_TOKEN)
    }

    /// An Authorize client (no token: tests configure `authorize_token` themselves).
    pub async fn authorize(&self) -> CheckClient {
        CheckClient::new(self.channel().await)
    }

    /// GET `path` on the metrics listener (`/metrics`, `/healthz`, `/readyz`).
    pub async fn http_get(&self, path: &str) -> Resp {
        http(self.metrics_addr, "127.0.0.1", "GET", path, &[]).await
    }

    /// The Prometheus exposition at `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http_get("/metrics").await.body
    }

    pub fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    /// How many argon2 verifies the server has run.
    pub fn verify_count(&self) -> u64 {
        self.inside.argon2_verifies()
    }

    /// Usage rows recorded and not yet written to the store.
    pub fn buffered_usage_rows(&self) -> usize {
        self.inside.buffered_usage_rows()
    }

    /// Writes the buffered usage now (as the periodic flush would).
    pub async fn flush_usage(&self) -> keygate::error::Result<()> {
        self.inside.flush_usage().await
    }

    /// One retention pass as of `now`; how many usage buckets it deleted.
    pub async fn prune_usage(
        &self,
        now: UnixMillis,
        minute_retention: Duration,
        day_retention: Duration,
    ) -> keygate::error::Result<u64> {
        self.inside
            .prune_usage(now, minute_retention, day_retention)
            .await
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
