//! Plain HTTP/1.1, as Envoy's clients and Prometheus speak it: the server's metrics
//! listener (`/metrics`, `/healthz`, `/readyz`) and Envoy's listener.
use std::collections::HashMap;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A response as the client saw it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
    /// The headers the upstream received (only on a proxied 200).
    pub fn upstream_headers(&self) -> serde_json::Value {
        self.json()["headers"].clone()
    }
}

/// One HTTP/1.1 request from `source_ip` (any 127.x address), `Connection: close`.
pub async fn http(
    to: SocketAddr,
    source_ip: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Resp {
    request(to, source_ip, method, path, headers, b"").await
}

/// One HTTP/1.1 POST of `body` from 127.0.0.1, `Connection: close`.
pub async fn post(to: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    request(to, "127.0.0.1", "POST", path, headers, body).await
}

async fn request(
    to: SocketAddr,
    source_ip: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{source_ip}:0").parse().unwrap())
        .unwrap();
    let mut stream: TcpStream = socket.connect(to).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: api.test\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// The value of the sample `name{labels}` in a Prometheus text exposition.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}
