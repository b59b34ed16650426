//! The test harness: a real Keygate on a free port over a fresh database (`TestServer`),
//! and what tests need around it.
#![allow(dead_code)]
mod db;
mod proxy;
mod server;

pub use db::{Db, TestDb};
pub use proxy::Proxy;
pub use server::{config_for, TestServer};

use keygate::grpc::pb::key_admin_client::KeyAdminClient;
use tonic::transport::Channel;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
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
