//! Opening the database and applying migrations.
use crate::error::{Error, Result};
use keygate_migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, SqlxSqliteConnector};
use std::str::FromStr;
use std::time::Duration;

/// The two supported databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Unavailable {
        what: "database",
        source: Box::new(e),
    }
}

/// Opens a pool. SQLite runs in WAL mode with `synchronous=FULL` (a key whose secret was
/// returned survives power loss) and a busy timeout (writers queue instead of failing).
pub async fn connect(
    url: &str,
    max_connections: u32,
    timeout: Duration,
) -> Result<DatabaseConnection> {
    match Backend::of_url(url) {
        Some(Backend::Sqlite) => {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| Error::invalid("database_url", format!("not a SQLite URL: {e}")))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(timeout)
                .connect_with(opts)
                .await
                .map_err(unavailable)?;
            Ok(SqlxSqliteConnector::from_sqlx_sqlite_pool(pool))
        }
        Some(Backend::Postgres) => {
            let mut opts = ConnectOptions::new(url.to_owned());
            opts.max_connections(max_connections)
                .connect_timeout(timeout)
                .acquire_timeout(timeout)
                .sqlx_logging(false);
            Database::connect(opts).await.map_err(unavailable)
        }
        None => Err(Error::invalid(
            "database_url",
            "must start with sqlite: or postgres://",
        )),
    }
}

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> Result<()> {
    Migrator::up(db, None).await.map_err(unavailable)
}

/// Names of migrations this binary has that the database lacks.
pub async fn pending_migrations(db: &DatabaseConnection) -> Result<Vec<String>> {
    let pending = Migrator::get_pending_migrations(db)
        .await
        .map_err(unavailable)?;
    Ok(pending.iter().map(|m| m.name().to_owned()).collect())
}
