//! TLS and mTLS end to end, with a CA and certificates this test generates (rcgen): client
//! certificates name admin identities and Authorize callers; a foreign CA, an expired
//! certificate, no certificate and plaintext are all refused; a renewed server
//! certificate is picked up from disk without dropping open connections.
use crate::support::{check, config_for, new_key, Admin, CheckClient, Db, TestDb, TestServer};
use keygate::grpc::pb;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

/// A leaf certificate signed by `ca`; `expired` puts its validity in the past.
fn leaf(ca: &Ca, cn: &str, sans: &[&str], expired: bool) -> (String, String) {
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// A gRPC channel over TLS to `addr`, trusting `ca_pem`, presenting `client` if given.
/// Also returns the server certificate it saw.
async fn channel(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    client: Option<&(String, String)>,
) -> Result<(tonic::transport::Channel, Arc<std::sync::Mutex<Vec<u8>>>), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen_by_connector = seen.clone();
    let ch = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let (connector, seen) = (connector.clone(), seen_by_connector.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let tls = connector
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await?;
                if let Some(c) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                    *seen.lock().unwrap() = c.to_vec();
                }
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok((ch, seen))
}

/// One call that needs no authorization: health. A refused handshake shows up here.
async fn health(ch: tonic::transport::Channel) -> Result<(), tonic::Status> {
    tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mtls_identities_refusals_and_certificate_reload() {
    let Some(db) = TestDb::new(Db::Sqlite).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ours = ca("keygate test CA");
    let foreign = ca("someone else's CA");
    let server = leaf(&ours, "keygate", &["localhost", "127.0.0.1"], false);
    let ops = leaf(&ours, "ops-console", &[], false);
    let checkout = leaf(&ours, "checkout", &[], false);
    let impostor = leaf(&foreign, "ops-console", &[], false);
    let stale = leaf(&ours, "ops-console", &[], true);
    let write = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let ca_pem = ours.cert.pem();
    let mut cfg = config_for(&db.url);
    cfg.tls.cert_path = Some(write("server.crt", &server.0));
    cfg.tls.key_path = Some(write("server.key", &server.1));
    cfg.tls.client_ca_path = Some(write("ca.crt", &ca_pem));
    cfg.tls.reload_secs = 1;
    cfg.tls.admin_subjects = vec![keygate::config::SubjectAdmin {
        subject: "ops-console".into(),
        role: "admin".into(),
        tenant: None,
    }];
    cfg.tls.authorize_subjects = vec!["checkout".into()];
    let s = TestServer::start_on_tls(db, cfg).await;

    // The ops console's certificate is an admin identity: no token needed, audited as such.
    let (ops_ch, first_seen) = channel(s.addr, &ca_pem, Some(&ops)).await.unwrap();
    // No token: the certificate alone.
    let admin = Admin::new(ops_ch.clone(), "");
    admin.tenant("t").upsert().await;
    let events = admin
        .list_audit_events(pb::ListAuditEventsRequest {
            tenant_id: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .events;
    assert_eq!(events[0].actor, "cert:ops-console");
    let admin = admin.with_token(crate::support::ADMIN_TOKEN);
    let key = admin.create_key(new_key("t")).await.secret;

    // Authorize: the checkout service's certificate is allowed, the ops console's is not.
    let (checkout_ch, _) = channel(s.addr, &ca_pem, Some(&checkout)).await.unwrap();
    let c = CheckClient::new(checkout_ch);
    let r = c.check(check(&key)).await;
    assert_eq!(r.reason, pb::Reason::Ok as i32);
    let wrong = CheckClient::new(ops_ch.clone());
    assert_eq!(
        wrong.try_check(check(&key)).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );

    // Refused at the handshake: a foreign CA, an expired certificate, no certificate.
    for (what, client) in [
        ("a foreign CA", Some(&impostor)),
        ("an expired certificate", Some(&stale)),
        ("no client certificate", None),
    ] {
        let refused = match channel(s.addr, &ca_pem, client).await {
            Err(_) => true,
            Ok((ch, _)) => health(ch).await.is_err(),
        };
        assert!(refused, "a client with {what} got through");
    }
    // Plaintext to the TLS port.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2));
    let refused = match plain.connect().await {
        Err(_) => true,
        Ok(ch) => health(ch).await.is_err(),
    };
    assert!(refused, "plaintext reached the TLS port");

    // Renewal: a new server certificate on disk is used by new connections within
    // seconds; the open connection keeps working.
    let renewed = leaf(&ours, "keygate-renewed", &["localhost"], false);
    std::fs::write(dir.path().join("server.key"), &renewed.1).unwrap();
    std::fs::write(dir.path().join("server.crt"), &renewed.0).unwrap();
    let want = der_of(&renewed.0);
    assert_ne!(*first_seen.lock().unwrap(), want);
    let mut picked_up = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (ch, seen) = channel(s.addr, &ca_pem, Some(&ops)).await.unwrap();
        health(ch).await.unwrap();
        if *seen.lock().unwrap() == want {
            picked_up = true;
            break;
        }
    }
    assert!(picked_up, "the renewed certificate was not picked up");
    health(ops_ch)
        .await
        .expect("the connection opened before the renewal still works");
}
