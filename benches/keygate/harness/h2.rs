//! A plain HTTP/2 client (h2c with prior knowledge): the load through Envoy, and Envoy's
//! admin API.
use super::tally::Outcome;
use super::BoxError;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
// `bytes::Bytes`, the buffer type of h2's client, re-exported by tonic.
use tonic::codegen::Bytes;

pub type SendRequest = ::h2::client::SendRequest<Bytes>;

/// A fresh HTTP/2 connection and the task driving it.
pub async fn connect(addr: SocketAddr) -> Result<(SendRequest, JoinHandle<()>), BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (send, conn) = ::h2::client::Builder::new()
        .enable_push(false)
        .handshake(tcp)
        .await?;
    // Ends once every `SendRequest` is dropped (or on a connection error, which the
    // streams report themselves).
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((send, driver))
}

/// Sends `req` once `send` has room for a stream and reads the response to its end.
async fn roundtrip(
    send: &mut SendRequest,
    req: http::Request<()>,
) -> Result<(http::StatusCode, Vec<u8>), ::h2::Error> {
    std::future::poll_fn(|cx| send.poll_ready(cx)).await?;
    let (response, _) = send.send_request(req, true)?;
    let (head, mut body) = response.await?.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        body.flow_control().release_capacity(chunk.len())?;
        data.extend_from_slice(&chunk);
    }
    Ok((head.status, data))
}

/// `GET uri` with an API key in `x-api-key` (and `extra` headers): the request every
/// stream repeats.
pub struct Get {
    pub uri: http::Uri,
    pub api_key: Option<http::HeaderValue>,
    pub extra: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// What a browser or an SDK sends beside the key: about 700 bytes in nine headers, as a
/// real request through a gateway carries (Envoy forwards every one to ext_authz unless
/// `allowed_headers` says otherwise).
pub fn typical_headers() -> Vec<(http::HeaderName, http::HeaderValue)> {
    let h = |n: &'static str, v: &'static str| {
        (
            http::HeaderName::from_static(n),
            http::HeaderValue::from_static(v),
        )
    };
    vec![
        h("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"),
        h("accept", "application/json, text/plain, */*"),
        h("accept-language", "en-US,en;q=0.9,de;q=0.8"),
        h("accept-encoding", "gzip, deflate, br, zstd"),
        h("referer", "https://app.example.com/dashboard/orders?page=2&sort=created"),
        h("origin", "https://app.example.com"),
        h("cookie", "_ga=GA1.2.1234567890.1700000000; session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U; theme=dark; consent=1"),
        h("x-request-id", "7f3c9a2e-5b1d-4e8f-9a6c-2d4b8e1f0a37"),
        h("sec-fetch-mode", "cors"),
    ]
}

impl Get {
    fn request(&self, method: http::Method) -> http::Request<()> {
        let mut req = http::Request::new(());
        *req.method_mut() = method;
        *req.uri_mut() = self.uri.clone();
        if let Some(key) = &self.api_key {
            req.headers_mut().insert("x-api-key", key.clone());
        }
        for (name, value) in &self.extra {
            req.headers_mut().append(name.clone(), value.clone());
        }
        req
    }
}

/// One load call on an open connection: 200 is the expected answer; a connection that
/// cannot take a stream is lost. h2 errors name a reason or an I/O error, never a header.
pub async fn call(send: &mut SendRequest, get: &Get) -> Outcome {
    if let Err(e) = std::future::poll_fn(|cx| send.poll_ready(cx)).await {
        return Outcome::Lost(e.to_string());
    }
    match roundtrip(send, get.request(http::Method::GET)).await {
        Ok((status, _)) if status == http::StatusCode::OK => Outcome::Expected,
        Ok((status, _)) => Outcome::Other(format!("status {}", status.as_u16())),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// One request on a connection of its own, given 5 s: the admin API and set-up checks.
pub async fn once(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    api_key: Option<&http::HeaderValue>,
) -> Result<(u16, String), BoxError> {
    let get = Get {
        uri: format!("http://{addr}{path}").parse()?,
        api_key: api_key.cloned(),
        extra: Vec::new(),
    };
    let req = get.request(method.clone());
    let once = async {
        let (mut send, driver) = connect(addr).await?;
        let answer = roundtrip(&mut send, req).await;
        drop(send);
        let _ = driver.await;
        Ok::<_, BoxError>(answer?)
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), once)
        .await
        .map_err(|_| format!("{method} {path} on {addr}: no answer within 5 s"))??;
    Ok((status.as_u16(), String::from_utf8_lossy(&body).into_owned()))
}
