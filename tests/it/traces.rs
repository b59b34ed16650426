//! Traces: the real binary exports over OTLP/gRPC to a collector this test runs, and a
//! Check carrying a W3C `traceparent` shows up as a child of the caller's span, with its
//! store and limiter work as child spans and no secret in any attribute.
use crate::support::{check, ext_authz, limit, new_key, spawn, Admin, CheckClient, Db, TestDb};
use keygate::grpc::pb;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            other => Some(format!("{other:?}")),
        }
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_spans_join_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    let svc = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });

    let token = "traces-test-admin-token-0123456789";
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let endpoint = format!("http://{otlp}");
    let mut p = spawn(
        &db.url,
        &[
            ("KEYGATE_ADMIN_TOKEN", token),
            ("KEYGATE_OTLP__ENDPOINT", &endpoint),
            // Root checks are never sampled; callers' decisions are still followed.
            ("KEYGATE_OTLP__SAMPLE_RATIO", "0"),
        ],
        &[],
    )
    .await;
    let a = Admin::connect(&p.addr, token).await;
    a.tenant("t").upsert().await;
    let traced = new_key("t")
        .name("traced")
        .rate_limits([limit("m", 10, 60)]);
    let k = a.create_key(traced).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let c = CheckClient::connect(&p.addr).await.unwrap();
    let in_trace = |trace: &str, flags: &str| {
        c.with_header("traceparent", &format!("00-{trace}-{caller_span}-{flags}"))
    };
    assert_eq!(
        in_trace(trace_id, "01")
            .check(check(&k.secret))
            .await
            .reason,
        pb::Reason::Ok as i32
    );

    // The same key again is a cache hit: its trace has no store span.
    let hit_trace = "5a1e0c7f3b2d4e6f8a9b0c1d2e3f4a5b";
    assert_eq!(
        in_trace(hit_trace, "01")
            .check(check(&k.secret))
            .await
            .reason,
        pb::Reason::Ok as i32
    );

    // Neither a root check (ratio 0) nor a caller that did not sample is traced.
    let unsampled = "11111111111111111111111111111111";
    in_trace(unsampled, "00").check(check(&k.secret)).await;
    c.check(check(&k.secret)).await;

    // Through ext_authz the trace context arrives in the HTTP headers Envoy forwards.
    let ext_trace = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{ext_trace}-b7ad6b7169203331-01");
    let mut e = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(format!("http://{}", p.addr))
        .await
        .unwrap();
    e.check(ext_authz(&[
        ("x-api-key", &k.secret),
        ("traceparent", &traceparent),
    ]))
    .await
    .unwrap();

    // SIGTERM: a graceful stop flushes buffered spans.
    let pid = p.child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(15), p.child.wait())
        .await
        .expect("exits")
        .unwrap();

    let spans = collector.0.lock().unwrap().clone();
    let check = spans
        .iter()
        .find(|s| s.name == "Authorize/Check" && hex(&s.trace_id) == trace_id)
        .unwrap_or_else(|| {
            panic!(
                "no Authorize/Check span in the caller's trace: {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(
        hex(&check.parent_span_id),
        caller_span,
        "parent is the caller's span"
    );
    assert_eq!(
        attr(check, "key_id").as_deref(),
        Some(k.key.as_ref().unwrap().id.as_str())
    );
    assert_eq!(attr(check, "tenant_id").as_deref(), Some("t"));
    assert_eq!(attr(check, "decision").as_deref(), Some("ALLOW"));
    assert_eq!(attr(check, "reason").as_deref(), Some("OK"));
    assert_eq!(attr(check, "cache").as_deref(), Some("miss"));
    for child in ["store.lookup_and_verify", "limiter.check"] {
        let s = spans
            .iter()
            .find(|s| s.name == child && s.parent_span_id == check.span_id);
        assert!(s.is_some(), "{child} is a child of the check span");
    }
    let traced: Vec<String> = spans
        .iter()
        .filter(|s| s.name == "Authorize/Check")
        .map(|s| hex(&s.trace_id))
        .collect();
    assert_eq!(
        traced.len(),
        2,
        "only the two sampled callers' checks are traced: {traced:?}"
    );
    let hit: Vec<&str> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == hit_trace)
        .map(|s| s.name.as_str())
        .collect();
    assert!(hit.contains(&"Authorize/Check"), "{hit:?}");
    assert!(
        !hit.contains(&"store.lookup_and_verify"),
        "a cache hit made a store span: {hit:?}"
    );
    let hit_check = spans
        .iter()
        .find(|s| hex(&s.trace_id) == hit_trace && s.name == "Authorize/Check")
        .unwrap();
    assert_eq!(attr(hit_check, "cache").as_deref(), Some("hit"));
    let ext = spans
        .iter()
        .find(|s| s.name == "ext_authz/Check" && hex(&s.trace_id) == ext_trace);
    assert_eq!(
        ext.map(|s| hex(&s.parent_span_id)).as_deref(),
        Some("b7ad6b7169203331"),
        "ext_authz joins the HTTP caller's trace"
    );
    let logs = p.output();
    assert!(
        !logs.contains(&k.secret[k.secret.len() - 30..]) && !logs.contains(token),
        "no secret in the log"
    );
    let everything = format!("{spans:?}");
    assert!(
        !everything.contains(&k.secret[k.secret.len() - 30..]),
        "no secret in any span"
    );
    assert!(!everything.contains(token), "no admin token in any span");
}
