//! A store that goes away: cached keys keep working, uncached ones get UNAVAILABLE (so
//! gateways apply their failure mode), and service resumes when the store returns.
use crate::support::{check, new_key, TestServer};
use keygate::config::Config;
use keygate::grpc::pb::Reason;
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_cut_cached_keys_allow_uncached_unavailable_then_recovery() {
    let unready_soon = |cfg: &mut Config| cfg.store_unready_after_secs = 1;
    let Some((s, proxy)) = TestServer::start_behind_proxy(unready_soon).await else {
        return;
    };
    let a = s.admin().await;
    a.tenant("t").upsert().await;
    let warm = a.create_key(new_key("t").name("warm")).await.secret;
    let cold = a.create_key(new_key("t").name("cold")).await.secret;
    let c = s.authorize().await;
    assert_eq!(c.check(check(&warm)).await.reason, Reason::Ok as i32);

    proxy.cut();
    assert_eq!(
        c.check(check(&warm)).await.reason,
        Reason::Ok as i32,
        "cached key needs no store"
    );
    let err = c
        .try_check(check(&cold))
        .await
        .expect_err("uncached key cannot be decided");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        !err.message().contains(&cold[..20]),
        "the key is not in the error"
    );
    let err = a
        .try_create_key(new_key("t").name("during-outage"))
        .await
        .expect_err("admin write fails");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    // Readiness follows the store once it has been gone for store_unready_after_secs.
    let channel = s.channel().await;
    let health = |want: i32| {
        let channel = channel.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
            loop {
                let req = tonic_health::pb::HealthCheckRequest {
                    service: "keygate.v1.Authorize".into(),
                };
                if h.check(req).await.unwrap().into_inner().status == want {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "health never became {want}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    health(2).await; // NOT_SERVING
    let readyz = s.http_get("/readyz").await;
    assert_eq!(readyz.status, 503, "plain-HTTP readiness agrees");
    assert_eq!(s.http_get("/healthz").await.status, 200, "still alive");

    proxy.restore();
    health(1).await; // SERVING
    assert_eq!(s.http_get("/readyz").await.status, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match c.try_check(check(&cold)).await {
            Ok(r) => {
                assert_eq!(r.reason, Reason::Ok as i32);
                break;
            }
            Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recovery after the store returned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
