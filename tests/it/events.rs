//! Key events: signed webhooks to a real HTTP receiver, in order per key, retried until the
//! receiver is back, surviving SIGKILL, delivered once per replica set by lease;
//! `WatchEvents` from a cursor; runtime events; SSRF refused.
use crate::support::receiver::{verify, Receiver};
use crate::support::{check, new_key, spawn, Db, TestDb, TestServer};
use crate::{on_both_stores, server_or_skip};
use keygate::config::Config;
use keygate::grpc::pb;
use std::collections::HashMap;
use std::time::Duration;
use tonic::Code;

/// Webhooks to the test's own receiver on 127.0.0.1, retried fast.
fn to_local(c: &mut Config) {
    c.events.allow_private_targets = true;
    c.events.retry_initial_ms = 50;
    c.events.retry_max_ms = 200;
    c.events.poll_ms = 50;
}

/// The event types received for `key_id`, in arrival order.
fn types_of(got: &[crate::support::receiver::Received], key_id: &str) -> Vec<String> {
    got.iter()
        .filter(|r| r.json()["key_id"] == key_id)
        .map(|r| r.event_type())
        .collect()
}

async fn signed_events_reach_the_receiver_in_order(db: Db) {
    let s = server_or_skip!(db, to_local);
    let a = s.admin().await;
    a.tenant("hooks").upsert().await;
    let rx = Receiver::start().await;
    let ep = a
        .create_webhook_endpoint("hooks", &rx.url, &[])
        .await
        .unwrap();
    let secret = ep.secret.clone();
    assert!(secret.starts_with("whsec_"));
    let endpoint = ep.endpoint.unwrap();
    // The secret is shown once: listing never returns it.
    let listed = a.list_webhook_endpoints("hooks").await.unwrap();
    assert_eq!(listed.endpoints.len(), 1);
    assert!(!format!("{listed:?}").contains(&secret[6..]));

    let k = a.create_key(new_key("hooks").name("one")).await;
    let id = k.key.as_ref().unwrap().id.clone();
    let disable = pb::Key {
        id: id.clone(),
        enabled: false,
        ..Default::default()
    };
    a.update_key(disable.clone(), &["enabled"]).await.unwrap();
    a.update_key(
        pb::Key {
            enabled: true,
            ..disable
        },
        &["enabled"],
    )
    .await
    .unwrap();
    let rotated = a.rotate_key(&id, None).await.unwrap();
    let new_id = rotated.key.unwrap().id;
    a.revoke_key(&new_id, "done").await.unwrap();

    let got = rx
        .wait_until(Duration::from_secs(20), |g| {
            types_of(g, &new_id).len() >= 2 && types_of(g, &id).len() >= 4
        })
        .await;
    assert_eq!(
        types_of(&got, &id),
        ["key.created", "key.disabled", "key.enabled", "key.rotated"]
    );
    assert_eq!(types_of(&got, &new_id), ["key.created", "key.revoked"]);
    for r in &got {
        assert!(verify(&secret, r), "signature of {} does not verify", r.id);
        assert_eq!(r.json()["id"], r.id.as_str(), "webhook-id is the event id");
        let age = r.timestamp.parse::<i64>().unwrap() - s.now().0 / 1000;
        assert!(age.abs() < 600, "webhook-timestamp is seconds now");
        // Never a secret or a hash in an event.
        assert!(!r.body.contains(&k.secret[k.secret.len() - 20..]));
        assert!(!r
            .body
            .contains(&rotated.secret[rotated.secret.len() - 20..]));
        assert!(!r.body.contains("$argon2"));
        assert!(!r.body.contains(&secret[6..]));
    }
    // Another secret does not verify them.
    let other = keygate::domain::webhook::SigningSecret::generate();
    assert!(!verify(other.expose(), &got[0]));
    // The delivery log agrees.
    let list = a
        .list_deliveries(pb::ListDeliveriesRequest {
            tenant_id: "hooks".into(),
            endpoint_id: endpoint.id.clone(),
            state: pb::DeliveryState::Delivered as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(list.deliveries.len() >= 6, "{list:?}");
    assert!(list
        .deliveries
        .iter()
        .all(|d| d.attempts == 1 && d.last_status == 200));
}

async fn a_receiver_down_gets_every_event_afterwards_in_order(db: Db) {
    let s = server_or_skip!(db, to_local);
    let a = s.admin().await;
    a.tenant("flaky").upsert().await;
    let rx = Receiver::start().await;
    rx.answer(503);
    let ep = a
        .create_webhook_endpoint("flaky", &rx.url, &[])
        .await
        .unwrap();
    let mut ids = vec![];
    for i in 0..3 {
        let k = a.create_key(new_key("flaky").name(format!("k{i}"))).await;
        let id = k.key.unwrap().id;
        a.revoke_key(&id, "gone").await.unwrap();
        ids.push(id);
    }
    // Attempts fail (503) and are retried with backoff on the server's clock.
    for _ in 0..100 {
        if rx.received().len() >= 6 {
            break;
        }
        s.clock.advance(Duration::from_millis(300));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(rx.received().iter().all(|r| r.answered == 503));
    assert!(rx.accepted().is_empty());
    // Back up: everything arrives, each key's events in order.
    rx.answer(200);
    let mut got = vec![];
    for _ in 0..200 {
        got = rx.accepted();
        if ids.iter().all(|id| types_of(&got, id).len() == 2) {
            break;
        }
        s.clock.advance(Duration::from_millis(300));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in &ids {
        assert_eq!(types_of(&got, id), ["key.created", "key.revoked"], "{id}");
    }
    for r in &got {
        assert!(verify(&ep.secret, r));
    }
    let m = s.metrics().await;
    assert!(
        m.contains("keygate_webhook_deliveries_total{result=\"retry\"}"),
        "{m}"
    );
}

async fn an_endpoint_that_keeps_failing_is_disabled_and_audited(db: Db) {
    let s = server_or_skip!(db, |c: &mut Config| {
        to_local(c);
        c.events.retry_for_secs = 60;
    });
    let a = s.admin().await;
    a.tenant("dead").upsert().await;
    let rx = Receiver::start().await;
    rx.answer(500);
    let ep = a
        .create_webhook_endpoint("dead", &rx.url, &[])
        .await
        .unwrap();
    let ep_id = ep.endpoint.unwrap().id;
    a.create_key(new_key("dead").name("k")).await;
    let mut disabled = None;
    for _ in 0..300 {
        let list = a.list_webhook_endpoints("dead").await.unwrap();
        if !list.endpoints[0].enabled {
            disabled = Some(list.endpoints[0].clone());
            break;
        }
        s.clock.advance(Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = disabled.expect("the endpoint was disabled");
    assert!(e.disabled_reason.contains("no delivery succeeded"), "{e:?}");
    let failed = a
        .list_deliveries(pb::ListDeliveriesRequest {
            tenant_id: "dead".into(),
            state: pb::DeliveryState::Failed as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.deliveries.len(), 1);
    assert_eq!(failed.deliveries[0].last_status, 500);
    let audit = a
        .list_audit_events(pb::ListAuditEventsRequest {
            tenant_id: "dead".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let ev = audit
        .events
        .iter()
        .find(|e| e.action == "disable_webhook_endpoint")
        .expect("an audit event for the disabling");
    assert_eq!(ev.actor, "keygate");
    assert!(ev.detail.contains(&ep_id));
    // Re-enabled, a redelivered event arrives.
    rx.answer(200);
    let patch = pb::WebhookEndpoint {
        id: ep_id.clone(),
        enabled: true,
        ..Default::default()
    };
    a.update_webhook_endpoint(patch, &["enabled"])
        .await
        .unwrap();
    let event_id = failed.deliveries[0].event_id.clone();
    let again = a.redeliver_event(&event_id, "").await.unwrap();
    assert_eq!(again.deliveries.len(), 1);
    let got = rx
        .wait_until(Duration::from_secs(10), |g| {
            g.iter().any(|r| r.id == event_id)
        })
        .await;
    assert!(got
        .iter()
        .any(|r| r.id == event_id && verify(&ep.secret, r)));
}

async fn private_targets_are_refused(db: Db) {
    // Nothing is delivered: the public endpoint below is never called.
    let s = server_or_skip!(db, |c: &mut Config| c.events.deliver = false);
    let a = s.admin().await;
    a.tenant("ssrf").upsert().await;
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.7/internal",
        "http://[::1]/",
        "ftp://example.com/",
        "https://user:pass@example.com/",
    ] {
        let e = a
            .create_webhook_endpoint("ssrf", url, &[])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{url}: {e:?}");
        assert!(e.message().starts_with("url:"), "{url}: {}", e.message());
    }
    let e = a
        .create_webhook_endpoint("ssrf", "https://hooks.example.com/k", &["key.nope"])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("event_types[0]"), "{}", e.message());
    // An update to a private URL is refused the same way.
    let ep = a
        .create_webhook_endpoint("ssrf", "https://hooks.example.com/k", &["key.revoked"])
        .await
        .unwrap()
        .endpoint
        .unwrap();
    let patch = pb::WebhookEndpoint {
        id: ep.id.clone(),
        url: "http://192.168.0.1/".into(),
        ..Default::default()
    };
    let e = a
        .update_webhook_endpoint(patch, &["url"])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("endpoint.url:"), "{}", e.message());
}

/// Reads `n` events from a stream (10 s at most).
async fn take(stream: &mut tonic::Streaming<pb::Event>, n: usize) -> Vec<pb::Event> {
    let mut out = vec![];
    while out.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream stays open");
        out.push(next);
    }
    out
}

async fn watch_resumes_from_a_cursor_without_gap(db: Db) {
    let s = server_or_skip!(db, to_local);
    let a = s.admin().await;
    a.tenant("watched").upsert().await;
    a.tenant("elsewhere").upsert().await;
    let mut stream = a
        .watch_events(pb::WatchEventsRequest {
            tenant_id: "watched".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut made = vec![];
    for i in 0..3 {
        let k = a.create_key(new_key("watched").name(format!("w{i}"))).await;
        a.create_key(new_key("elsewhere").name(format!("e{i}")))
            .await;
        made.push(k.key.unwrap().id);
    }
    let first = take(&mut stream, 3).await;
    assert!(first
        .iter()
        .all(|e| e.tenant_id == "watched" && e.r#type == "key.created"));
    let keys: Vec<&str> = first.iter().map(|e| e.key_id.as_str()).collect();
    assert_eq!(keys, made.iter().map(String::as_str).collect::<Vec<_>>());
    // The follower goes away; more happens; it resumes from the last id it saw.
    drop(stream);
    for id in &made {
        a.revoke_key(id, "rotated out").await.unwrap();
    }
    let mut resumed = a
        .watch_events(pb::WatchEventsRequest {
            tenant_id: "watched".into(),
            after_event_id: first[2].id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let rest = take(&mut resumed, 3).await;
    let keys: Vec<&str> = rest.iter().map(|e| e.key_id.as_str()).collect();
    assert_eq!(keys, made.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(rest.iter().all(|e| e.r#type == "key.revoked"));
    // From the start, filtered by type: the same ids, nothing else.
    let mut all = a
        .watch_events(pb::WatchEventsRequest {
            tenant_id: "watched".into(),
            from_start: true,
            event_types: vec!["key.revoked".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let again = take(&mut all, 3).await;
    assert_eq!(
        again.iter().map(|e| &e.id).collect::<Vec<_>>(),
        rest.iter().map(|e| &e.id).collect::<Vec<_>>()
    );
    let payload: serde_json::Value = serde_json::from_str(&again[0].payload_json).unwrap();
    assert_eq!(payload["type"], "key.revoked");
    // An unknown cursor is refused, naming the field.
    let e = a
        .watch_events(pb::WatchEventsRequest {
            tenant_id: "watched".into(),
            after_event_id: "evt_nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().starts_with("after_event_id"), "{}", e.message());
}

async fn runtime_events_fire_once_per_occurrence(db: Db) {
    let s = server_or_skip!(db, |c: &mut Config| {
        to_local(c);
        c.events.sweep_secs = 1;
    });
    let a = s.admin().await;
    let policy = pb::TenantPolicy {
        default_rate_limits: vec![crate::support::limit("burst", 2, 60)],
        ..Default::default()
    };
    a.tenant("busy").policy(policy).upsert().await;
    let rx = Receiver::start().await;
    a.create_webhook_endpoint(
        "busy",
        &rx.url,
        &["rate_limit.exceeded", "key.expiring", "key.expired"],
    )
    .await
    .unwrap();
    let k = a.create_key(new_key("busy").name("hot")).await;
    let id = k.key.unwrap().id;
    let c = s.authorize().await;
    for _ in 0..6 {
        c.check(check(&k.secret)).await;
    }
    let got = rx
        .wait_until(Duration::from_secs(10), |g| !g.is_empty())
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let limited: Vec<_> = rx
        .accepted()
        .into_iter()
        .filter(|r| r.event_type() == "rate_limit.exceeded")
        .collect();
    assert_eq!(limited.len(), 1, "once per key, limit and window: {got:?}");
    assert_eq!(limited[0].json()["data"]["limit"]["name"], "burst");
    assert_eq!(limited[0].json()["key_id"], id.as_str());

    // A key expiring within the lead: key.expiring once; past its expiry, key.expired.
    let soon = a
        .create_key(
            new_key("busy")
                .name("soon")
                .expires_in(crate::support::secs(3600)),
        )
        .await;
    let soon_id = soon.key.unwrap().id;
    let got = rx
        .wait_until(Duration::from_secs(10), |g| {
            types_of(g, &soon_id).contains(&"key.expiring".to_string())
        })
        .await;
    assert_eq!(types_of(&got, &soon_id), ["key.expiring"]);
    s.clock.advance(Duration::from_secs(3601));
    let got = rx
        .wait_until(Duration::from_secs(10), |g| {
            types_of(g, &soon_id).len() >= 2
        })
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // another sweep or two
    let got_after = rx.accepted();
    assert_eq!(types_of(&got, &soon_id), ["key.expiring", "key.expired"]);
    assert_eq!(
        types_of(&got_after, &soon_id),
        ["key.expiring", "key.expired"]
    );
}

async fn quota_threshold_and_exhaustion_are_told_once(db: Db) {
    let s = server_or_skip!(db, |c: &mut Config| {
        to_local(c);
        c.quotas.lease_size = 1;
    });
    let a = s.admin().await;
    let policy = pb::TenantPolicy {
        default_key_quota: Some(crate::support::quota(10, pb::QuotaPeriod::Month)),
        quota_alert_fraction: 0.5,
        ..Default::default()
    };
    a.tenant("metered").policy(policy).upsert().await;
    let rx = Receiver::start().await;
    a.create_webhook_endpoint("metered", &rx.url, &["quota.threshold", "quota.exhausted"])
        .await
        .unwrap();
    let k = a.create_key(new_key("metered").name("m")).await;
    let c = s.authorize().await;
    for i in 0..5 {
        assert_eq!(c.reason(check(&k.secret)).await, pb::Reason::Ok, "call {i}");
    }
    let got = rx
        .wait_until(Duration::from_secs(10), |g| !g.is_empty())
        .await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].event_type(), "quota.threshold");
    assert_eq!(got[0].json()["data"]["quota"]["threshold"], 0.5);
    for _ in 0..8 {
        c.check(check(&k.secret)).await;
    }
    let got = rx
        .wait_until(Duration::from_secs(10), |g| g.len() >= 2)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let types: Vec<String> = rx.accepted().iter().map(|r| r.event_type()).collect();
    assert_eq!(types, ["quota.threshold", "quota.exhausted"], "{got:?}");
}

on_both_stores!(
    signed_events_reach_the_receiver_in_order,
    a_receiver_down_gets_every_event_afterwards_in_order,
    an_endpoint_that_keeps_failing_is_disabled_and_audited,
    private_targets_are_refused,
    watch_resumes_from_a_cursor_without_gap,
    runtime_events_fire_once_per_occurrence,
    quota_threshold_and_exhaustion_are_told_once,
);

/// Three replicas on one PostgreSQL: every event delivered, none lost, and a duplicate
/// only ever as the same event id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_deliver_every_event() {
    let Some(first) = TestServer::start_with(Db::Postgres, to_local).await else {
        return;
    };
    let second = TestServer::start_replica(&first.url, to_local).await;
    let third = TestServer::start_replica(&first.url, to_local).await;
    let admins = [
        first.admin().await,
        second.admin().await,
        third.admin().await,
    ];
    admins[0].tenant("fleet").upsert().await;
    let rx = Receiver::start().await;
    let ep = admins[1]
        .create_webhook_endpoint("fleet", &rx.url, &["key.created", "key.revoked"])
        .await
        .unwrap();
    let mut expected = 0;
    for i in 0..15 {
        let a = &admins[i % 3];
        let k = a.create_key(new_key("fleet").name(format!("k{i}"))).await;
        admins[(i + 1) % 3]
            .revoke_key(&k.key.unwrap().id, "fleet test")
            .await
            .unwrap();
        expected += 2;
    }
    let got = rx
        .wait_until(Duration::from_secs(30), |g| {
            g.iter()
                .map(|r| &r.id)
                .collect::<std::collections::HashSet<_>>()
                .len()
                >= expected
        })
        .await;
    let mut by_id: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in &got {
        assert!(verify(&ep.secret, r));
        by_id.entry(&r.id).or_default().push(&r.body);
    }
    assert_eq!(by_id.len(), expected, "every event arrived");
    for (id, bodies) in &by_id {
        assert!(
            bodies.iter().all(|b| b == &bodies[0]),
            "{id}: a duplicate is the same event"
        );
    }
    for id in by_id.keys() {
        let key_events: Vec<_> = got.iter().filter(|r| r.id == *id).collect();
        let key_id = key_events[0].json()["key_id"].as_str().unwrap().to_owned();
        let order = types_of(&got, &key_id);
        let first_revoked = order.iter().position(|t| t == "key.revoked").unwrap();
        assert!(
            order[..first_revoked].contains(&"key.created".to_string()),
            "{order:?}"
        );
    }
}

/// SIGKILL between the change and its delivery: the event arrives after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_survives_sigkill_before_delivery() {
    const TOKEN: &str = "events-test-admin-token-0123456789";
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    // Nothing listens on the receiver's port yet: every attempt fails.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let env = [
        ("KEYGATE_ADMIN_TOKEN", TOKEN),
        ("KEYGATE_EVENTS__ALLOW_PRIVATE_TARGETS", "true"),
        ("KEYGATE_EVENTS__RETRY_INITIAL_MS", "50"),
        ("KEYGATE_EVENTS__RETRY_MAX_MS", "200"),
        ("KEYGATE_EVENTS__POLL_MS", "50"),
        // A delivery leased by the killed process is taken over once its lease (the
        // attempt's timeout + 5 s) runs out.
        ("KEYGATE_EVENTS__REQUEST_TIMEOUT_MS", "1000"),
    ];
    let mut p = spawn(&db.url, &env, &[]).await;
    let a = p.admin(TOKEN).await;
    a.tenant("durable").upsert().await;
    let url = format!("http://{port}/hooks");
    let ep = a
        .create_webhook_endpoint("durable", &url, &[])
        .await
        .unwrap();
    let k = a.create_key(new_key("durable").name("k")).await;
    let id = k.key.unwrap().id;
    p.child.start_kill().unwrap();
    p.child.wait().await.unwrap();

    let rx = Receiver::start_on(port).await;
    let p = spawn(&db.url, &env, &[]).await;
    let got = rx
        .wait_until(Duration::from_secs(40), |g| !types_of(g, &id).is_empty())
        .await;
    assert_eq!(types_of(&got, &id), ["key.created"]);
    assert!(got.iter().all(|r| verify(&ep.secret, r)));
    let logs = p.output();
    assert!(
        !logs.contains(&ep.secret[6..]),
        "the signing secret reached the log"
    );
}

/// An https endpoint whose certificate chains to `events.ca_path` gets its deliveries; one
/// signed by another CA gets none (the attempt fails on the handshake and says so).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_endpoints_are_verified_against_the_configured_roots() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        (p.self_signed(&key).unwrap(), key)
    };
    let leaf = |(ca, ca_key): &(rcgen::Certificate, KeyPair)| {
        let p = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, ca, ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (trusted, foreign) = (ca("hooks CA"), ca("someone else's CA"));
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("hooks-ca.pem");
    std::fs::write(&ca_path, trusted.0.pem()).unwrap();
    let Some(s) = TestServer::start_with(Db::Sqlite, |c| {
        to_local(c);
        c.events.ca_path = Some(ca_path.clone());
    })
    .await
    else {
        return;
    };
    let a = s.admin().await;
    a.tenant("tls").upsert().await;
    let (cert, key) = leaf(&trusted);
    let good = Receiver::start_tls(&cert, &key).await;
    let (cert, key) = leaf(&foreign);
    let bad = Receiver::start_tls(&cert, &key).await;
    assert!(good.url.starts_with("https://127.0.0.1:"));
    let ep = a
        .create_webhook_endpoint("tls", &good.url, &[])
        .await
        .unwrap();
    let bad_ep = a
        .create_webhook_endpoint("tls", &bad.url, &[])
        .await
        .unwrap();
    let k = a.create_key(new_key("tls").name("over-tls")).await;
    let id = k.key.unwrap().id;
    let got = good
        .wait_until(Duration::from_secs(10), |g| !types_of(g, &id).is_empty())
        .await;
    assert_eq!(types_of(&got, &id), ["key.created"]);
    assert!(verify(&ep.secret, &got[0]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        bad.received().is_empty(),
        "a foreign certificate is refused"
    );
    let list = a
        .list_deliveries(pb::ListDeliveriesRequest {
            tenant_id: "tls".into(),
            endpoint_id: bad_ep.endpoint.unwrap().id,
            ..Default::default()
        })
        .await
        .unwrap();
    let d = &list.deliveries[0];
    assert_eq!(d.state, pb::DeliveryState::Pending as i32);
    assert!(d.attempts >= 1 && d.last_error.contains("TLS"), "{d:?}");
}
