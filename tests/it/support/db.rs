//! A database owned by one test.
use super::{in_ci, PG_ADMIN_URL};
use std::sync::atomic::{AtomicU32, Ordering};

/// The store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
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
