//! Opening the store, and `keygate migrate`.
use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::{self, Backend, SeaStore};
use secrecy::ExposeSecret;

/// Opens the store and brings its schema up to date (always on SQLite; on PostgreSQL only
/// with `auto_migrate`, else an outdated schema is an error).
pub async fn open_store(config: &Config) -> Result<SeaStore> {
    let url = config.database_url.expose_secret();
    let db = store::connect(url, config.database.max_connections, config.db_timeout()).await?;
    let backend =
        Backend::of_url(url).ok_or_else(|| Error::invalid("database_url", "unsupported scheme"))?;
    if backend == Backend::Sqlite || config.auto_migrate {
        store::migrate(&db).await?;
    } else {
        let pending = store::pending_migrations(&db).await?;
        if !pending.is_empty() {
            return Err(Error::precondition(
                "database schema",
                format!(
                    "the database lacks {} migration(s) this binary needs ({}); run `keygate migrate` or start with --auto-migrate",
                    pending.len(),
                    pending.join(", ")
                ),
            ));
        }
    }
    Ok(SeaStore::new(db))
}

/// `keygate migrate`: applies pending migrations and reports what it did.
pub async fn migrate(config: &Config) -> Result<()> {
    let url = config.database_url.expose_secret();
    let db = store::connect(url, 1, config.db_timeout()).await?;
    let pending = store::pending_migrations(&db).await?;
    store::migrate(&db).await?;
    if pending.is_empty() {
        eprintln!("keygate: schema already up to date");
    } else {
        eprintln!("keygate: applied {}", pending.join(", "));
    }
    Ok(())
}
