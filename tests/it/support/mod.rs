//! The test harness: a real Keygate on a free port over a fresh database (`TestServer`),
//! typed clients for its services (`Admin`, `CheckClient`), the fixtures tests build
//! their requests from (`new_key`, `check`, `limit`, …), plain HTTP (`http`, `sample`) and
//! the binary as a process (`spawn`). Tests import all of it from here.
mod client;
mod db;
mod fixtures;
mod http;
mod process;
mod proxy;
pub mod receiver;
pub mod redis_server;
mod server;

pub use client::{Admin, CheckClient};
pub use db::{Db, TestDb};
pub use fixtures::*;
pub use http::{http, post, sample, Resp};
pub use process::{command, spawn};
pub use proxy::Proxy;
pub use server::{config_for, TestServer};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
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
pub fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (tonic::Code, String) {
    let s = r.expect_err("call should have failed");
    (s.code(), s.message().to_owned())
}

/// The status code of a call: `Ok` when it succeeded.
pub fn outcome<T>(r: Result<T, tonic::Status>) -> tonic::Code {
    r.map_or_else(|s| s.code(), |_| tonic::Code::Ok)
}
