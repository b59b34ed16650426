//! `EventLog` and `WebhookStore`: a change writes its events with its audit event (and a
//! failed one writes none), occurrences are stored once, deliveries fan out to the
//! endpoints that want them, a delivery is leased to one claimer, deliveries go in order
//! per endpoint and key, and an endpoint is never overwritten from a stale read.
use super::*;
use crate::on_both_stores;
use crate::stores_or_skip;
use keygate::domain::event::{Event, EventType};
use keygate::domain::webhook::{DeliveryState, Endpoint, SigningSecret};
use keygate::store::{AttemptRecord, DeliveryQuery};

fn endpoint(id: &str, tenant_id: &str, types: &[EventType], enabled: bool) -> Endpoint {
    Endpoint {
        id: id.into(),
        tenant_id: tenant_id.into(),
        url: format!("https://hooks.example.com/{id}"),
        description: String::new(),
        event_types: types.to_vec(),
        secret: SigningSecret::generate(),
        previous: None,
        enabled,
        disabled_reason: String::new(),
        create_time: T0,
        update_time: T0,
    }
}

async fn add_endpoint(s: &Stores, e: &Endpoint) {
    s.webhooks
        .create_endpoint(e, 20, audit("create_webhook_endpoint", &e.tenant_id, ""))
        .await
        .unwrap();
}

/// The types of `tenant_id`'s events, in commit order.
async fn types(s: &Stores, tenant_id: &str) -> Vec<&'static str> {
    s.events
        .events_after(Some(tenant_id), 0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind.as_str())
        .collect()
}

fn attempt(state: DeliveryState, now: UnixMillis, next: UnixMillis) -> AttemptRecord {
    AttemptRecord {
        state,
        now,
        next_attempt: next,
        status: if state == DeliveryState::Delivered {
            200
        } else {
            503
        },
        error: String::new(),
    }
}

async fn changes_write_their_events_and_failures_none(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    s.keys
        .insert_key(
            key("acme", "key_a"),
            1,
            T0,
            audit("create_key", "acme", "key_a"),
        )
        .await
        .unwrap();
    // Over the cap: refused, and neither its audit event nor its key event is written.
    let refused = s
        .keys
        .insert_key(
            key("acme", "key_b"),
            1,
            T0,
            audit("create_key", "acme", "key_b"),
        )
        .await;
    assert_eq!(precondition(refused), "tenant.policy.max_active_keys");
    s.keys
        .revoke_key(
            "key_a",
            at(1),
            "done",
            at(1),
            audit("revoke_key", "acme", "key_a"),
        )
        .await
        .unwrap();
    // Revoking again changes nothing and announces nothing.
    s.keys
        .revoke_key(
            "key_a",
            at(2),
            "again",
            at(2),
            audit("revoke_key", "acme", "key_a"),
        )
        .await
        .unwrap();
    s.tenants
        .upsert_plan(plan("pro"), audit("upsert_plan", "", ""))
        .await
        .unwrap();
    assert_eq!(
        types(&s, "acme").await,
        ["tenant.updated", "key.created", "key.revoked"]
    );
    let all = s.events.events_after(None, 0, 1000).await.unwrap();
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "seq increases");
    assert_eq!(
        s.events.last_event_seq().await.unwrap(),
        all.last().unwrap().seq
    );
    let e = s.events.event_by_id(&all[1].id).await.unwrap().unwrap();
    assert_eq!(e, all[1]);
}

async fn an_occurrence_is_stored_once(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    let once = |t| {
        Event::once(
            EventType::QuotaExhausted,
            "key:key_a\n0",
            t,
            "acme",
            "key_a",
            serde_json::json!({}),
        )
    };
    let first = s.events.append_events(&[once(T0)]).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(first[0].seq > 0);
    // Another replica, later: the same occurrence, nothing new.
    assert!(s
        .events
        .append_events(&[once(at(5))])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        types(&s, "acme").await,
        ["tenant.updated", "quota.exhausted"]
    );
}

async fn deliveries_fan_out_to_the_endpoints_that_want_them(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    seed_tenant(&s, "other").await;
    add_endpoint(&s, &endpoint("whep_all", "acme", &[], true)).await;
    add_endpoint(
        &s,
        &endpoint("whep_revoked", "acme", &[EventType::KeyRevoked], true),
    )
    .await;
    add_endpoint(&s, &endpoint("whep_off", "acme", &[], false)).await;
    add_endpoint(&s, &endpoint("whep_theirs", "other", &[], true)).await;
    s.keys
        .insert_key(
            key("acme", "key_a"),
            0,
            T0,
            audit("create_key", "acme", "key_a"),
        )
        .await
        .unwrap();
    let list = s
        .webhooks
        .list_deliveries(&DeliveryQuery {
            tenant_id: "acme".into(),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let to: Vec<&str> = list.iter().map(|d| d.endpoint_id.as_str()).collect();
    assert_eq!(to, ["whep_all"]);
    assert_eq!(list[0].event_type, "key.created");
    assert_eq!(list[0].state, DeliveryState::Pending);
    let (pending, oldest) = s.webhooks.delivery_backlog().await.unwrap();
    assert_eq!((pending, oldest), (1, Some(T0)));
}

async fn a_delivery_is_leased_to_one_claimer(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    add_endpoint(&s, &endpoint("whep_all", "acme", &[], true)).await;
    for i in 0..10 {
        let id = format!("key_{i}");
        s.keys
            .insert_key(key("acme", &id), 0, T0, audit("create_key", "acme", &id))
            .await
            .unwrap();
    }
    let lease = Duration::from_secs(30);
    let claims = futures::future::join_all((0..6).map(|i| {
        let w = s.webhooks.clone();
        async move {
            w.claim_deliveries(&format!("replica-{i}"), at(1), lease, 100)
                .await
        }
    }))
    .await;
    let mut holder = std::collections::HashMap::new();
    let mut n = 0;
    for (i, c) in claims.into_iter().enumerate() {
        for c in c.unwrap() {
            n += 1;
            holder.insert(c.delivery.id, format!("replica-{i}"));
        }
    }
    assert_eq!(
        (n, holder.len()),
        (10, 10),
        "each delivery claimed exactly once"
    );
    // Leased: nobody else gets them until the lease runs out.
    assert!(s
        .webhooks
        .claim_deliveries("late", at(2), lease, 100)
        .await
        .unwrap()
        .is_empty());
    let after_lease = s
        .webhooks
        .claim_deliveries("late", at(31_000), lease, 100)
        .await
        .unwrap();
    assert_eq!(after_lease.len(), 10, "a lapsed lease is taken over");
    // The old holder can no longer record its attempt; the new one can.
    let id = &after_lease[0].delivery.id;
    let done = attempt(DeliveryState::Delivered, at(31_001), at(31_001));
    assert!(!s
        .webhooks
        .finish_attempt(id, &holder[id], &done)
        .await
        .unwrap());
    assert!(s.webhooks.finish_attempt(id, "late", &done).await.unwrap());
}

async fn deliveries_go_in_order_per_endpoint_and_key(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    add_endpoint(&s, &endpoint("whep_all", "acme", &[], true)).await;
    for id in ["key_a", "key_b"] {
        s.keys
            .insert_key(key("acme", id), 0, T0, audit("create_key", "acme", id))
            .await
            .unwrap();
    }
    s.keys
        .revoke_key(
            "key_a",
            at(1),
            "x",
            at(1),
            audit("revoke_key", "acme", "key_a"),
        )
        .await
        .unwrap();
    let lease = Duration::from_secs(30);
    let first = s
        .webhooks
        .claim_deliveries("r", at(2), lease, 100)
        .await
        .unwrap();
    let got: Vec<(&str, &str)> = first
        .iter()
        .map(|c| (c.event.key_id.as_str(), c.event.kind.as_str()))
        .collect();
    assert_eq!(got, [("key_a", "key.created"), ("key_b", "key.created")]);
    // key_b's goes through; key_a's first event fails and waits for its retry: its
    // revocation waits too.
    let ok = attempt(DeliveryState::Delivered, at(3), at(3));
    assert!(s
        .webhooks
        .finish_attempt(&first[1].delivery.id, "r", &ok)
        .await
        .unwrap());
    let a = &first[0].delivery.id;
    let retry = attempt(DeliveryState::Pending, at(3), at(60_000));
    assert!(s.webhooks.finish_attempt(a, "r", &retry).await.unwrap());
    assert!(s
        .webhooks
        .claim_deliveries("r", at(4), lease, 100)
        .await
        .unwrap()
        .is_empty());
    // Due again, and delivered: then the revocation goes.
    let again = s
        .webhooks
        .claim_deliveries("r", at(60_000), lease, 100)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery.id, *a);
    assert_eq!(again[0].delivery.attempts, 1);
    let ok = attempt(DeliveryState::Delivered, at(60_001), at(60_001));
    assert!(s.webhooks.finish_attempt(a, "r", &ok).await.unwrap());
    let next = s
        .webhooks
        .claim_deliveries("r", at(60_002), lease, 100)
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].event.kind, EventType::KeyRevoked);
    assert_eq!(
        s.webhooks.last_success("whep_all").await.unwrap(),
        Some(at(60_001))
    );
}

async fn an_endpoint_is_not_overwritten_from_a_stale_read(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    let e = endpoint("whep_a", "acme", &[], true);
    add_endpoint(&s, &e).await;
    // A rotation commits first...
    let mut rotated = e.clone();
    rotated.secret = SigningSecret::generate();
    rotated.update_time = at(10);
    s.webhooks
        .update_endpoint(&rotated, T0, audit("rotate_webhook_secret", "acme", ""))
        .await
        .unwrap();
    // ...then an update made from the read before it is refused, not applied.
    let mut stale = e.clone();
    stale.description = "renamed".into();
    stale.update_time = at(11);
    let r = s
        .webhooks
        .update_endpoint(&stale, T0, audit("update_webhook_endpoint", "acme", ""))
        .await;
    assert_eq!(precondition(r), "endpoint.update_time");
    let stored = s.webhooks.get_endpoint("whep_a").await.unwrap().unwrap();
    assert_eq!(stored.secret.expose(), rotated.secret.expose());
    assert_eq!(stored.description, "");
    // Deleting fails its pending deliveries and says whether it existed.
    assert!(s
        .webhooks
        .delete_endpoint(
            "whep_a",
            at(12),
            audit("delete_webhook_endpoint", "acme", "")
        )
        .await
        .unwrap());
    assert!(!s
        .webhooks
        .delete_endpoint(
            "whep_a",
            at(13),
            audit("delete_webhook_endpoint", "acme", "")
        )
        .await
        .unwrap());
}

async fn pruning_gives_up_what_can_go_nowhere_and_keeps_the_rest(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    add_endpoint(&s, &endpoint("whep_on", "acme", &[], true)).await;
    add_endpoint(&s, &endpoint("whep_off", "acme", &[], true)).await;
    s.keys
        .insert_key(
            key("acme", "key_a"),
            0,
            T0,
            audit("create_key", "acme", "key_a"),
        )
        .await
        .unwrap();
    let off = s.webhooks.get_endpoint("whep_off").await.unwrap().unwrap();
    let disable = audit("disable_webhook_endpoint", "acme", "");
    assert!(s
        .webhooks
        .disable_endpoint(&off.id, "x", at(1), disable)
        .await
        .unwrap());
    let state = |endpoint: &'static str| {
        let w = s.webhooks.clone();
        async move {
            let q = DeliveryQuery {
                tenant_id: "acme".into(),
                endpoint_id: Some(endpoint.into()),
                limit: 10,
                ..Default::default()
            };
            w.list_deliveries(&q).await.unwrap()[0].state
        }
    };
    // Within the retry period: the disabled endpoint keeps its backlog for re-enabling.
    s.events
        .prune_events(at(2), UnixMillis(0), T0)
        .await
        .unwrap();
    assert_eq!(state("whep_off").await, DeliveryState::Pending);
    // Past it: given up; the enabled endpoint's delivery is untouched, the event kept.
    s.events
        .prune_events(at(3), UnixMillis(0), at(1))
        .await
        .unwrap();
    assert_eq!(state("whep_off").await, DeliveryState::Failed);
    assert_eq!(state("whep_on").await, DeliveryState::Pending);
    // Past the retention, the event stays while a delivery of it is pending.
    s.events.prune_events(at(4), at(10), at(1)).await.unwrap();
    assert_eq!(types(&s, "acme").await, ["key.created"]);
}

on_both_stores!(
    pruning_gives_up_what_can_go_nowhere_and_keeps_the_rest,
    changes_write_their_events_and_failures_none,
    an_occurrence_is_stored_once,
    deliveries_fan_out_to_the_endpoints_that_want_them,
    a_delivery_is_leased_to_one_claimer,
    deliveries_go_in_order_per_endpoint_and_key,
    an_endpoint_is_not_overwritten_from_a_stale_read,
);
