//! Keygate: API-key authorization over gRPC.
//!
//! [`run`] serves `keygate.v1.KeyAdmin`, `keygate.v1.Authorize`, Envoy's ext_authz,
//! `grpc.health.v1` and server reflection on a listener until SIGTERM/SIGINT. The parts are
//! wired in [`app`]; `main.rs` only parses flags and calls it.
#![forbid(unsafe_code)]

pub mod app;
pub mod cache;
pub mod cli;
pub mod config;
mod config_section;
pub mod conn;
pub mod domain;
pub mod envoy;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod hashing;
pub mod limiter;
pub mod metrics;
pub mod outbound;
pub mod scanning;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod tls;

pub use app::{migrate, open_store, run, run_with, shutdown_signal, App, Handles, Options};
