//! Integration tests: the real server on 127.0.0.1:0 with the generated clients, against
//! real SQLite files and real PostgreSQL databases (one per test), in one binary so the
//! suite links once.
mod support;

mod access;
mod apidoc;
mod audit;
mod binary;
mod check;
mod deploy;
mod envoy;
mod events;
mod fuzz_regressions;
mod hardening;
mod hygiene;
mod import;
mod key_admin;
mod leaks;
mod limiter;
mod observability;
mod outage;
mod plans;
mod quotas;
mod readme;
mod redis_cluster;
mod replicas;
mod reservations;
mod store;
mod timing;
mod tls;
mod traces;
mod usage;
