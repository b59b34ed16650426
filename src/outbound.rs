//! Keygate's one outbound HTTP call: a webhook delivery. One HTTP/1.1 POST per attempt
//! over a fresh connection to an address resolved and checked here (so a host name that
//! resolves to a private address is refused at every attempt, not only when the endpoint
//! was created: no DNS rebinding into the operator's network). Redirects are not followed;
//! nothing of the response but its status is read.
use crate::domain::webhook::{is_public, Attempt};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// Sends deliveries. Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    tls: tokio_rustls::TlsConnector,
    allow_private: bool,
    timeout: Duration,
}

/// The headers and body of one delivery.
pub struct Post<'a> {
    pub url: &'a str,
    pub headers: [(&'static str, String); 3],
    pub body: Bytes,
}

impl Outbound {
    /// `extra_ca_pem`: roots trusted beside Mozilla's (a private CA's endpoints).
    pub fn new(
        allow_private: bool,
        timeout: Duration,
        extra_ca_pem: Option<&[u8]>,
    ) -> crate::error::Result<Outbound> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = extra_ca_pem {
            use rustls_pki_types::pem::PemObject;
            let mut n = 0;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| {
                    crate::error::Error::invalid("events.ca_path", format!("is not PEM: {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    crate::error::Error::invalid("events.ca_path", format!("bad certificate: {e}"))
                })?;
                n += 1;
            }
            if n == 0 {
                return Err(crate::error::Error::invalid(
                    "events.ca_path",
                    "holds no certificate",
                ));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| crate::error::Error::Internal {
                context: "webhook TLS",
                source: Some(Box::new(e)),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Outbound {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            allow_private,
            timeout,
        })
    }

    /// Makes one attempt; never fails, an error is an [`Attempt::Failed`].
    pub async fn post(&self, p: Post<'_>) -> Attempt {
        match tokio::time::timeout(self.timeout, self.try_post(p)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => Attempt::Delivered { status },
            Ok(Ok(status)) => Attempt::Failed {
                status,
                error: format!("endpoint answered HTTP {status}"),
            },
            Ok(Err(error)) => Attempt::Failed { status: 0, error },
            Err(_) => Attempt::Failed {
                status: 0,
                error: format!("no answer within {} ms", self.timeout.as_millis()),
            },
        }
    }

    async fn try_post(&self, p: Post<'_>) -> Result<u16, String> {
        let url = url::Url::parse(p.url).map_err(|e| format!("bad URL: {e}"))?;
        let host = url.host_str().ok_or("URL has no host")?.to_owned();
        let port = url.port_or_known_default().ok_or("URL has no port")?;
        let addr = self.resolve(&host, port).await?;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let mut path = url.path().to_owned();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        let authority = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let mut req = http::Request::post(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "Keygate-Webhooks/1");
        for (name, value) in p.headers {
            req = req.header(name, value);
        }
        let req = req
            .body(Full::new(p.body))
            .map_err(|e| format!("request: {e}"))?;
        if url.scheme() == "https" {
            let name = rustls_pki_types::ServerName::try_from(
                url.host_str()
                    .unwrap_or_default()
                    .trim_matches(['[', ']'])
                    .to_owned(),
            )
            .map_err(|e| format!("TLS name: {e}"))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            send(tls, req).await
        } else {
            send(tcp, req).await
        }
    }

    /// The first address of `host` that may be a target.
    async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        let bare = host.trim_matches(['[', ']']);
        let addrs: Vec<SocketAddr> = match bare.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|e| format!("resolve {bare}: {e}"))?
                .collect(),
        };
        addrs
            .into_iter()
            .find(|a| self.allow_private || is_public(a.ip()))
            .ok_or_else(|| {
                format!("{bare} resolves to no public address; private targets are not allowed")
            })
    }
}

async fn send<S>(io: S, req: http::Request<Full<Bytes>>) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let status = resp.status().as_u16();
    // Read (a bounded part of) the body so the connection ends cleanly; its content is
    // the receiver's and is not kept.
    let mut body = resp.into_body();
    let mut read = 0usize;
    while read < 64 * 1024 {
        match body.frame().await {
            Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
            _ => break,
        }
    }
    conn.abort();
    Ok(status)
}
