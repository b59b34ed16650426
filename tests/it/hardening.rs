//! What an adversarial review of the running server found, one test per finding: each
//! fails without its fix. (The argon2 ceiling and prefix ownership are in `import.rs`.)
use crate::support::{code, new_key, Db, ADMIN_TOKEN};
use crate::{on_both_stores, server_or_skip};
use keygate::grpc::pb;
use tonic::Code;

/// `CheckRequest` / `GetTenantRequest` with field 1 as raw bytes, so a test can send a
/// string field that is not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawField1 {
    #[prost(bytes = "vec", tag = "1")]
    field1: Vec<u8>,
}

/// Sends `msg` to `path` and returns the status it failed with.
async fn raw_call(
    s: &crate::support::TestServer,
    path: &'static str,
    msg: RawField1,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(s.channel().await);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    let codec = tonic_prost::ProstCodec::<RawField1, pb::Tenant>::default();
    grpc.unary(req, http::uri::PathAndQuery::from_static(path), codec)
        .await
        .expect_err("an undecodable request must fail")
}

async fn undecodable_requests_are_invalid_argument(db: Db) {
    let s = server_or_skip!(db);
    let not_utf8 = RawField1 {
        field1: vec![b'k', 0xff, 0xfe, b'g'],
    };
    for path in [
        "/keygate.v1.Authorize/Check",
        "/keygate.v1.KeyAdmin/GetTenant",
    ] {
        let st = raw_call(&s, path, not_utf8.clone()).await;
        assert_eq!(st.code(), Code::InvalidArgument, "{path}: {st:?}");
        assert!(
            st.message().starts_with("request: not a valid protobuf"),
            "{st:?}"
        );
    }
}

async fn errors_never_echo_a_secret_or_a_huge_value(db: Db) {
    let s = server_or_skip!(db);
    let a = s.admin().await;
    a.tenant("t").upsert().await;
    let secret = a.create_key(new_key("t")).await.secret;
    // A secret sent as an id is refused without being sent back.
    let (c, m) = code(a.get_key(&secret).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(!m.contains(&secret), "{m}");
    let (c, m) = code(a.get_tenant(&secret).await);
    assert_eq!(c, Code::NotFound, "{m}");
    assert!(!m.contains(&secret), "{m}");
    // A 100 kB field comes back cut, not whole.
    let huge = pb::TenantPolicy {
        time_zone: "Z".repeat(100_000),
        ..Default::default()
    };
    let (c, m) = code(a.tenant("t").policy(huge).try_upsert().await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.len() < 400 && m.ends_with("… (cut)"), "{} bytes", m.len());
}

async fn quota_adjustments_near_the_counter_limit_are_refused(db: Db) {
    use pb::adjust_quota_request::{Change, Target};
    let s = server_or_skip!(db);
    let a = s.admin().await;
    let policy = pb::TenantPolicy {
        quota: Some(crate::support::quota(100, pb::QuotaPeriod::Month)),
        ..Default::default()
    };
    a.tenant("t").policy(policy).upsert().await;
    for (change, field) in [
        (Change::Delta(i64::MAX), "delta"),
        (Change::Delta(i64::MIN), "delta"),
        (Change::SetRemaining(u64::MAX), "set_remaining"),
    ] {
        let r = pb::AdjustQuotaRequest {
            target: Some(Target::TenantId("t".into())),
            change: Some(change),
            reason: "test".into(),
        };
        let (c, m) = code(a.adjust_quota(r).await);
        assert_eq!(c, Code::InvalidArgument, "{m}");
        assert!(m.starts_with(&format!("{field}: must be at most")), "{m}");
    }
}

async fn audit_queries_and_names_are_checked(db: Db) {
    let s = server_or_skip!(db);
    let a = s.admin().await;
    a.tenant("t").upsert().await;
    let at = |ms: i64| {
        Some(keygate::grpc::convert::timestamp(
            keygate::domain::UnixMillis(ms),
        ))
    };
    let backwards = pb::ListAuditEventsRequest {
        tenant_id: "t".into(),
        start_time: at(2_000_000_000_000),
        end_time: at(1_000_000_000_000),
        ..Default::default()
    };
    let (c, m) = code(a.list_audit_events(backwards).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.starts_with("start_time:"), "{m}");
    let unknown = pb::ListAuditEventsRequest {
        tenant_id: "nobody".into(),
        ..Default::default()
    };
    assert_eq!(code(a.list_audit_events(unknown).await).0, Code::NotFound);
    for name in ["evil\u{202E}txt.exe", "\u{200B}\u{200B}"] {
        let (c, m) = code(a.try_create_key(new_key("t").name(name)).await);
        assert_eq!(c, Code::InvalidArgument, "{name:?}: {m}");
        assert!(m.starts_with("name:"), "{m}");
    }
    let long_plan = pb::TenantPolicy {
        plan_id: "p".repeat(65),
        ..Default::default()
    };
    let (c, m) = code(a.tenant("t").policy(long_plan).try_upsert().await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.starts_with("tenant.policy.plan_id:"), "{m}");
}

on_both_stores!(
    undecodable_requests_are_invalid_argument,
    errors_never_echo_a_secret_or_a_huge_value,
    quota_adjustments_near_the_counter_limit_are_refused,
    audit_queries_and_names_are_checked
);

/// Connections that send nothing cannot exhaust the server: beyond `max_connections` a
/// connection is closed at once (and counted), a silent one is closed after
/// `handshake_timeout_ms`, the probes port keeps answering, and service resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_bounded_and_closed() {
    use tokio::io::AsyncReadExt;
    let Some(s) = crate::support::TestServer::start_with(Db::Sqlite, |cfg| {
        cfg.limits.max_connections = 3;
        cfg.limits.handshake_timeout_ms = 500;
    })
    .await
    else {
        return;
    };
    // Closed by the server (EOF or a reset) within `within`; what it sent before (its
    // HTTP/2 SETTINGS) is read past.
    async fn closed(c: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
        let mut buf = [0u8; 256];
        tokio::time::timeout(within, async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await
        .is_ok()
    }
    // Slots free up as the readiness probe's connections close.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(s.addr).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut extra = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    assert!(
        closed(&mut extra, std::time::Duration::from_millis(400)).await,
        "a connection beyond the limit is closed at once"
    );
    let m = s.metrics().await;
    assert!(
        crate::support::sample(&m, "keygate_connections_refused_total") >= 1.0,
        "{m}"
    );
    for c in &mut silent {
        assert!(
            closed(c, std::time::Duration::from_secs(3)).await,
            "a connection that sends nothing is closed after handshake_timeout_ms"
        );
    }
    // Slots are free again: a real client gets through.
    let c = s.authorize().await;
    assert_eq!(
        c.reason(crate::support::check("")).await,
        pb::Reason::MissingCredential
    );
}
