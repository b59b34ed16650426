//! Helpers every benchmark shares. Each bench uses a subset, hence `dead_code` is allowed.
#![allow(dead_code)]
use std::net::SocketAddr;
use tonic::transport::{Channel, Endpoint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A positive integer from the environment, or `default` when unset.
pub fn env_or(name: &str, default: usize) -> Result<usize, BoxError> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{name}={v:?}: expected a positive integer").into()),
        },
    }
}

/// One HTTP/2 channel to `addr`.
pub async fn connect(addr: SocketAddr) -> Result<Channel, BoxError> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?)
}

/// A request carrying the admin bearer token.
pub fn authed<T>(msg: T, token: &str) -> Result<tonic::Request<T>, BoxError> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(req)
}

/// Largest and median value of rounds' figures.
pub fn best_and_median(v: &[f64]) -> (f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (v[n - 1], (v[(n - 1) / 2] + v[n / 2]) / 2.0)
}
