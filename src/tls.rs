//! TLS and mTLS on the gRPC port (rustls with ring). The certificate, key and client CA
//! are read at start and again when one of their files changes (polled every
//! `tls.reload_secs`) or on SIGHUP: connections already open keep their session, new
//! ones get the new material, and a bad new file is logged and ignored (the old one stays).
//! With a client CA every client must present a certificate it signed (expired or
//! foreign ones fail the handshake); the certificate's subject CN names the caller, which
//! `[tls]` maps to admin identities or Authorize callers.
use crate::config::TlsConfig;
use crate::error::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};

pub use crate::conn::PeerInfo;
use crate::conn::{Admission, Conn};

/// The server's TLS material, swappable at run time.
pub struct Tls {
    files: Vec<PathBuf>,
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    config: RwLock<Arc<ServerConfig>>,
    stamps: RwLock<Vec<Option<SystemTime>>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn bad(field: &'static str, path: &Path, what: impl std::fmt::Display) -> Error {
    Error::invalid(field, format!("{}: {what}", path.display()))
}

fn stamp(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl Tls {
    /// Loads `[tls]`; `None` when no certificate is configured (plaintext).
    pub fn from_config(cfg: &TlsConfig) -> Result<Option<Tls>> {
        let (Some(cert), Some(key)) = (&cfg.cert_path, &cfg.key_path) else {
            return Ok(None);
        };
        let mut files = vec![cert.clone(), key.clone()];
        files.extend(cfg.client_ca_path.clone());
        let stamps = files.iter().map(|f| stamp(f)).collect();
        let config = build(cert, key, cfg.client_ca_path.as_deref())?;
        Ok(Some(Tls {
            stamps: RwLock::new(stamps),
            files,
            cert: cert.clone(),
            key: key.clone(),
            client_ca: cfg.client_ca_path.clone(),
            config: RwLock::new(Arc::new(config)),
        }))
    }

    /// Re-reads the files if any changed (or `force`); true when new material is in use.
    /// On a bad file the old material stays and the error is returned.
    pub fn reload(&self, force: bool) -> Result<bool> {
        let now: Vec<_> = self.files.iter().map(|f| stamp(f)).collect();
        let changed = *self.stamps.read().unwrap_or_else(|e| e.into_inner()) != now;
        if !changed && !force {
            return Ok(false);
        }
        let built = build(&self.cert, &self.key, self.client_ca.as_deref())?;
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(built);
        *self.stamps.write().unwrap_or_else(|e| e.into_inner()) = now;
        Ok(true)
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(
            self.config
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }

    /// Reloads on file change (every `every`) and on SIGHUP until `stop`.
    pub async fn watch(
        self: Arc<Self>,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            let force = tokio::select! {
                _ = tick.tick() => false,
                _ = hangup => true,
                _ = stop.wait_for(|s| *s) => return,
            };
            match self.reload(force) {
                Ok(true) => tracing::info!("TLS certificate reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; keeping the previous certificate")
                }
            }
        }
    }
}

/// A server config from PEM files: certificate chain, private key, optional client CA.
fn build(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("tls.cert_path", cert, e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad("tls.cert_path", cert, e))?;
    if chain.is_empty() {
        return Err(bad("tls.cert_path", cert, "no certificate in the file"));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("tls.key_path", key, e))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid("tls", e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in
                CertificateDer::pem_file_iter(ca).map_err(|e| bad("tls.client_ca_path", ca, e))?
            {
                let c = c.map_err(|e| bad("tls.client_ca_path", ca, e))?;
                roots.add(c).map_err(|e| bad("tls.client_ca_path", ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| bad("tls.client_ca_path", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, private)
        .map_err(|e| bad("tls.key_path", key, e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// An accepted TLS connection (the handshake bounds its own first bytes).
pub type TlsConn = Conn<tokio_rustls::server::TlsStream<TcpStream>>;

/// The subject CN of a DER certificate.
fn subject_cn(der: &[u8]) -> Option<String> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    cert.tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == x509_cert::der::oid::db::rfc4519::CN)
        .and_then(|atv| {
            use x509_cert::der::asn1::{PrintableStringRef, Utf8StringRef};
            atv.value
                .decode_as::<Utf8StringRef<'_>>()
                .map(|s| s.as_str().to_owned())
                .or_else(|_| {
                    atv.value
                        .decode_as::<PrintableStringRef<'_>>()
                        .map(|s| s.as_str().to_owned())
                })
                .ok()
        })
}

/// Accepts TCP connections within the admission's slots and completes TLS handshakes off
/// the accept loop (a slow or silent client cannot stall others; handshakes time out
/// after 10 s). Failed handshakes
/// are logged at debug and dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<Tls>,
    admission: Arc<Admission>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote, slot) = crate::conn::accept(&listener, &admission).await;
            let acceptor = tls.acceptor();
            let conns = tx.clone();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
                let stream = match handshake {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, peer = %remote, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %remote, "TLS handshake timed out");
                        return;
                    }
                };
                let client_subject = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| subject_cn(c));
                let info = PeerInfo {
                    remote: Some(remote),
                    client_subject,
                };
                let conn = Conn::new(stream, info, slot, None);
                let _ = conns.send(Ok(conn)).await;
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
