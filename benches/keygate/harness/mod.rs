//! What every scenario of the runner stands on: server processes (Keygate, the no-op
//! ceiling, Envoy, an OTLP collector), provisioning over the public gRPC API, the load
//! loops, tallies, A/B rounds and the report. Nothing here prints a key or an admin token.
pub mod ab;
pub mod h2;
pub mod load;
pub mod otlp;
pub mod provision;
pub mod proxy;
pub mod report;
pub mod server;
pub mod tally;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
