//! `KeyStore`: inserts under the tenant's cap, the hot path's lookup, listing, and the
//! lifecycle writes, each with exactly one audit event (a failed or idle write, none).
use super::*;
use crate::on_both_stores;
use crate::stores_or_skip;
use keygate::store::KeyQuery;
use std::sync::Arc;

const CAP_RULE: &str = "tenant.policy.max_active_keys";

async fn insert(
    s: &Stores,
    k: NewKey,
    cap: u32,
    now: UnixMillis,
) -> keygate::error::Result<KeyRecord> {
    let audit = audit_at(now, "create_key", &k.record.tenant_id, &k.record.id);
    s.keys.insert_key(k, cap, now, audit).await
}

fn query(tenant_id: &str, now: UnixMillis) -> KeyQuery {
    KeyQuery {
        tenant_id: tenant_id.to_owned(),
        after: None,
        limit: 100,
        include_revoked: false,
        include_expired: false,
        now,
    }
}

async fn listed(s: &Stores, q: &KeyQuery) -> Vec<String> {
    s.keys
        .list_keys(q)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect()
}

async fn insert_then_read_back_every_field(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    let new = full_key("acme", "key_full");
    let hash = new.secret_hash.clone();
    let returned = insert(&s, new.clone(), 0, T0).await.unwrap();
    assert_eq!(returned, new.record);
    assert_eq!(
        s.keys.get_key("key_full").await.unwrap(),
        Some(new.record.clone())
    );
    assert_eq!(
        s.keys.find_by_lookup_id("lk_key_full").await.unwrap(),
        Some((new.record, hash)),
        "the hot path gets the record and its hash in one query"
    );
    assert_eq!(s.keys.get_key("key_other").await.unwrap(), None);
    assert_eq!(
        s.keys.find_by_lookup_id("lk_key_other").await.unwrap(),
        None
    );
    // The lookup id is not the key id.
    assert_eq!(s.keys.find_by_lookup_id("key_full").await.unwrap(), None);
    assert_eq!(actions(&s, "acme").await, ["upsert_tenant", "create_key"]);
}

async fn insert_refuses_a_key_over_the_cap(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "capped").await;
    seed_tenant(&s, "open").await;
    insert(&s, key("capped", "k1"), 2, T0).await.unwrap();
    insert(&s, key("capped", "k2"), 2, T0).await.unwrap();
    assert_eq!(
        precondition(insert(&s, key("capped", "k3"), 2, T0).await),
        CAP_RULE
    );
    assert_eq!(s.keys.get_key("k3").await.unwrap(), None);
    assert_eq!(s.keys.find_by_lookup_id("lk_k3").await.unwrap(), None);
    // The cap is the caller's: the same tenant under a higher one takes another key.
    insert(&s, key("capped", "k4"), 3, T0).await.unwrap();
    assert_eq!(
        actions(&s, "capped").await,
        ["upsert_tenant", "create_key", "create_key", "create_key"],
        "the refused insert left no event"
    );
    // 0 = no cap; and the other tenant's keys never counted against `capped`.
    for i in 0..5 {
        insert(&s, key("open", &format!("o{i}")), 0, T0)
            .await
            .unwrap();
    }
    assert_eq!(listed(&s, &query("open", T0)).await.len(), 5);
    assert_eq!(listed(&s, &query("capped", T0)).await, ["k1", "k2", "k4"]);
}

async fn revoked_and_expired_keys_do_not_count_against_the_cap(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    let cap = 1;
    insert(&s, key("acme", "revoked"), cap, T0).await.unwrap();
    s.keys
        .revoke_key(
            "revoked",
            at(10),
            "gone",
            at(1),
            audit("revoke_key", "acme", "revoked"),
        )
        .await
        .unwrap();
    // Before its revocation time a key still counts; from that instant on, it does not.
    assert_eq!(
        precondition(insert(&s, key("acme", "early"), cap, at(9)).await),
        CAP_RULE
    );
    insert(&s, key("acme", "expiring").expiring(at(20)), cap, at(10))
        .await
        .unwrap();
    // Likewise an expiring key, until the instant it expires.
    assert_eq!(
        precondition(insert(&s, key("acme", "early"), cap, at(19)).await),
        CAP_RULE
    );
    insert(&s, key("acme", "active"), cap, at(20))
        .await
        .unwrap();
    // A revocation scheduled later (a rotation's grace) leaves the key counted until then.
    s.keys
        .revoke_key(
            "active",
            at(1_000),
            "later",
            at(20),
            audit("revoke_key", "acme", "active"),
        )
        .await
        .unwrap();
    assert_eq!(
        precondition(insert(&s, key("acme", "early"), cap, at(999)).await),
        CAP_RULE
    );
    insert(&s, key("acme", "last"), cap, at(1_000))
        .await
        .unwrap();
    assert_eq!(s.keys.get_key("early").await.unwrap(), None);
    let q = KeyQuery {
        include_revoked: true,
        include_expired: true,
        ..query("acme", at(1_000))
    };
    assert_eq!(
        listed(&s, &q).await,
        ["active", "expiring", "last", "revoked"]
    );
}

async fn concurrent_inserts_never_exceed_the_cap(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    // Several rounds, each a tenant of its own: the first also opens the pool's
    // connections, so the later ones start their transactions truly at once.
    for round in 0..3 {
        let tenant_id = format!("t{round}");
        seed_tenant(&s, &tenant_id).await;
        let start = Arc::new(tokio::sync::Barrier::new(12));
        let tasks: Vec<_> = (0..12)
            .map(|i| {
                let (s, start) = (s.clone(), start.clone());
                let k = key(&tenant_id, &format!("{tenant_id}k{i}"));
                tokio::spawn(async move {
                    start.wait().await;
                    insert(&s, k, 3, T0).await
                })
            })
            .collect();
        let mut created = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => created += 1,
                Err(e) => assert_eq!(precondition::<()>(Err(e)), CAP_RULE),
            }
        }
        assert_eq!(created, 3, "round {round}");
        assert_eq!(listed(&s, &query(&tenant_id, T0)).await.len(), 3);
        let creates = actions(&s, &tenant_id)
            .await
            .iter()
            .filter(|a| *a == "create_key")
            .count();
        assert_eq!(
            creates, 3,
            "one event per key created, none for the refused"
        );
    }
}

async fn insert_for_an_unknown_tenant_is_not_found(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    let (what, id) = not_found(insert(&s, key("ghost", "k1"), 0, T0).await);
    assert_eq!((what, id.as_str()), ("tenant", "ghost"));
    assert_eq!(s.keys.get_key("k1").await.unwrap(), None);
    assert!(events(&s, "ghost").await.is_empty());
}

async fn insert_refuses_a_taken_lookup_id_without_an_event(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    insert(&s, key("acme", "k1"), 0, T0).await.unwrap();
    let mut clash = key("acme", "k2");
    clash.record.lookup_id = "lk_k1".into();
    assert!(insert(&s, clash, 0, T0).await.is_err());
    assert_eq!(s.keys.get_key("k2").await.unwrap(), None);
    assert_eq!(actions(&s, "acme").await, ["upsert_tenant", "create_key"]);
}

async fn list_keys_pages_oldest_first_and_filters(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    seed_tenant(&s, "other").await;
    // Two keys share a creation time: the id breaks the tie.
    for (id, t) in [
        ("k1", 0),
        ("k3", 1),
        ("k2", 1),
        ("k4", 2),
        ("k5", 3),
        ("k6", 4),
    ] {
        let mut k = key("acme", id).created(at(t));
        // Disabled is a setting, not a state the listing filters on.
        k.record.enabled = id != "k5";
        insert(&s, k, 0, at(t)).await.unwrap();
    }
    insert(&s, key("other", "o1"), 0, T0).await.unwrap();
    let now = at(100);
    s.keys
        .revoke_key(
            "k4",
            at(50),
            "leaked",
            now,
            audit("revoke_key", "acme", "k4"),
        )
        .await
        .unwrap();
    // Revocation scheduled after `now`: still listed as live.
    s.keys
        .revoke_key(
            "k6",
            at(500),
            "rotated",
            now,
            audit("revoke_key", "acme", "k6"),
        )
        .await
        .unwrap();
    // Expiring exactly at `now`: expired.
    insert(
        &s,
        key("acme", "k7").created(at(5)).expiring(at(100)),
        0,
        at(5),
    )
    .await
    .unwrap();

    let mut q = query("acme", now);
    assert_eq!(listed(&s, &q).await, ["k1", "k2", "k3", "k5", "k6"]);
    q.include_revoked = true;
    assert_eq!(listed(&s, &q).await, ["k1", "k2", "k3", "k4", "k5", "k6"]);
    q.include_expired = true;
    assert_eq!(
        listed(&s, &q).await,
        ["k1", "k2", "k3", "k4", "k5", "k6", "k7"]
    );
    q.include_revoked = false;
    assert_eq!(listed(&s, &q).await, ["k1", "k2", "k3", "k5", "k6", "k7"]);

    // Pages of two, each resuming after the last (create_time, id) seen.
    let mut q = KeyQuery {
        limit: 2,
        include_revoked: true,
        include_expired: true,
        ..query("acme", now)
    };
    let mut pages = vec![];
    // Bounded: a cursor that failed to move on would repeat a page, not hang the test.
    for _ in 0..10 {
        let page = s.keys.list_keys(&q).await.unwrap();
        let Some(last) = page.last() else { break };
        q.after = Some((last.create_time, last.id.clone()));
        pages.push(page.iter().map(|k| k.id.clone()).collect::<Vec<_>>());
    }
    assert_eq!(
        pages,
        [
            vec!["k1", "k2"],
            vec!["k3", "k4"],
            vec!["k5", "k6"],
            vec!["k7"]
        ]
    );
    // A cursor in the middle of a shared timestamp resumes within it.
    q.after = Some((at(1), "k2".into()));
    q.limit = 100;
    assert_eq!(listed(&s, &q).await, ["k3", "k4", "k5", "k6", "k7"]);
    assert_eq!(listed(&s, &query("other", now)).await, ["o1"]);
    assert!(listed(&s, &query("nobody", now)).await.is_empty());
}

async fn update_key_settings_writes_settings_and_never_revocation(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    let stored = insert(&s, key("acme", "k1").expiring(at(DAY)), 0, T0)
        .await
        .unwrap();
    let revoked = s
        .keys
        .revoke_key(
            "k1",
            at(100),
            "leaked",
            at(100),
            audit("revoke_key", "acme", "k1"),
        )
        .await
        .unwrap();
    // The caller's copy is stale (taken before the revocation) and also carries changes
    // to fields that are not settings: none of those may reach the row.
    let mut edit = full_key("acme", "k1").record;
    edit.name = "renamed".into();
    edit.enabled = false;
    edit.update_time = at(200);
    edit.revoke_time = None;
    edit.revoke_reason = None;
    edit.expire_time = Some(at(2 * DAY));
    edit.lookup_id = "lk_changed".into();
    edit.environment = "test".into();
    edit.create_time = at(200);
    edit.use_count = 99;
    s.keys
        .update_key_settings(&edit, audit("update_key", "acme", "k1"))
        .await
        .unwrap();
    let after = s.keys.get_key("k1").await.unwrap().unwrap();
    let expected = KeyRecord {
        name: "renamed".into(),
        scopes: edit.scopes.clone(),
        ip_allowlist: edit.ip_allowlist.clone(),
        rate_limits: edit.rate_limits.clone(),
        quota: edit.quota,
        metadata: edit.metadata.clone(),
        enabled: false,
        update_time: at(200),
        ..revoked.clone()
    };
    assert_eq!(after, expected);
    assert_eq!(after.revoke_time, Some(at(100)), "still revoked");
    assert_eq!(after.revoke_reason.as_deref(), Some("leaked"));
    assert_eq!(after.expire_time, stored.expire_time);
    assert_eq!(s.keys.find_by_lookup_id("lk_changed").await.unwrap(), None);
    assert_eq!(
        actions(&s, "acme").await,
        ["upsert_tenant", "create_key", "revoke_key", "update_key"]
    );
}

async fn update_of_an_unknown_key_is_not_found_without_an_event(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    let ghost = key("acme", "ghost").record;
    let (what, id) = not_found(
        s.keys
            .update_key_settings(&ghost, audit("update_key", "acme", "ghost"))
            .await,
    );
    assert_eq!((what, id.as_str()), ("key", "ghost"));
    assert_eq!(s.keys.get_key("ghost").await.unwrap(), None);
    assert_eq!(actions(&s, "acme").await, ["upsert_tenant"]);
}

async fn revoke_key_only_moves_revocation_earlier(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    insert(&s, key("acme", "k1"), 0, T0).await.unwrap();
    let revoke = |at_: UnixMillis, reason: &'static str, now: UnixMillis| {
        let s = s.clone();
        async move {
            s.keys
                .revoke_key(
                    "k1",
                    at_,
                    reason,
                    now,
                    audit_at(now, "revoke_key", "acme", "k1"),
                )
                .await
        }
    };
    let first = revoke(at(500), "first", at(100)).await.unwrap();
    assert_eq!(first.revoke_time, Some(at(500)));
    assert_eq!(first.revoke_reason.as_deref(), Some("first"));
    assert_eq!(first.update_time, at(100));
    assert_eq!(s.keys.get_key("k1").await.unwrap(), Some(first.clone()));

    // Already revoked at (or before) the time asked: nothing changes, nothing is audited.
    assert_eq!(revoke(at(500), "again", at(200)).await.unwrap(), first);
    assert_eq!(revoke(at(900), "later", at(300)).await.unwrap(), first);
    assert_eq!(s.keys.get_key("k1").await.unwrap(), Some(first.clone()));
    assert_eq!(
        actions(&s, "acme").await,
        ["upsert_tenant", "create_key", "revoke_key"]
    );

    // Earlier than scheduled: the revocation moves forward, with its reason and event.
    let sooner = revoke(at(400), "leaked", at(400)).await.unwrap();
    assert_eq!(sooner.revoke_time, Some(at(400)));
    assert_eq!(sooner.revoke_reason.as_deref(), Some("leaked"));
    assert_eq!(sooner.update_time, at(400));
    assert_eq!(
        KeyRecord {
            revoke_time: first.revoke_time,
            revoke_reason: first.revoke_reason.clone(),
            update_time: first.update_time,
            ..sooner
        },
        first,
        "nothing but the revocation and update time changed"
    );
    assert_eq!(
        actions(&s, "acme").await,
        ["upsert_tenant", "create_key", "revoke_key", "revoke_key"]
    );

    let (what, _) = not_found(
        s.keys
            .revoke_key(
                "ghost",
                at(1),
                "x",
                at(1),
                audit("revoke_key", "acme", "ghost"),
            )
            .await,
    );
    assert_eq!(what, "key");
    assert_eq!(actions(&s, "acme").await.len(), 4);
}

/// The successor of `old`, as the service builds it.
fn successor(old: &KeyRecord, id: &str, now: UnixMillis) -> NewKey {
    let fresh = key(&old.tenant_id, id);
    NewKey {
        record: KeyRecord {
            id: id.to_owned(),
            lookup_id: fresh.record.lookup_id,
            display_prefix: fresh.record.display_prefix,
            create_time: now,
            update_time: now,
            rotated_from: Some(old.id.clone()),
            ..old.clone()
        },
        secret_hash: fresh.secret_hash,
    }
}

async fn rotate_key_schedules_the_old_revocation_and_inserts_the_new(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    let old = insert(&s, full_key("acme", "old"), 0, T0).await.unwrap();
    let now = at(1_000);
    let new = successor(&old, "new", now);
    let (old_after, new_after) = s
        .keys
        .rotate_key(
            "old",
            at(61_000),
            new.clone(),
            audit_at(now, "rotate_key", "acme", "old"),
        )
        .await
        .unwrap();
    let expected_old = KeyRecord {
        revoke_time: Some(at(61_000)),
        revoke_reason: Some("rotated:new".into()),
        update_time: now,
        ..old
    };
    assert_eq!(old_after, expected_old);
    assert_eq!(new_after, new.record);
    assert_eq!(s.keys.get_key("old").await.unwrap(), Some(expected_old));
    assert_eq!(
        s.keys.find_by_lookup_id("lk_new").await.unwrap(),
        Some((new.record.clone(), new.secret_hash))
    );
    // Within the grace both secrets work; after it only the successor is live.
    assert_eq!(listed(&s, &query("acme", now)).await, ["old", "new"]);
    assert_eq!(listed(&s, &query("acme", at(61_000))).await, ["new"]);
    assert_eq!(
        actions(&s, "acme").await,
        ["upsert_tenant", "create_key", "rotate_key"]
    );
}

async fn rotate_key_refuses_a_revoked_or_rotated_key(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    let old = insert(&s, key("acme", "old"), 0, T0).await.unwrap();
    s.keys
        .rotate_key(
            "old",
            at(100),
            successor(&old, "new1", at(10)),
            audit("rotate_key", "acme", "old"),
        )
        .await
        .unwrap();
    let again = s
        .keys
        .rotate_key(
            "old",
            at(200),
            successor(&old, "new2", at(20)),
            audit("rotate_key", "acme", "old"),
        )
        .await;
    assert_eq!(precondition(again), "key.state");
    assert_eq!(s.keys.get_key("new2").await.unwrap(), None);
    assert_eq!(
        s.keys.get_key("old").await.unwrap().unwrap().revoke_time,
        Some(at(100))
    );

    let other = insert(&s, key("acme", "other"), 0, T0).await.unwrap();
    s.keys
        .revoke_key(
            "other",
            at(5),
            "leaked",
            at(5),
            audit("revoke_key", "acme", "other"),
        )
        .await
        .unwrap();
    let revoked = s
        .keys
        .rotate_key(
            "other",
            at(200),
            successor(&other, "new3", at(20)),
            audit("rotate_key", "acme", "other"),
        )
        .await;
    assert_eq!(precondition(revoked), "key.state");
    assert_eq!(s.keys.get_key("new3").await.unwrap(), None);
    assert_eq!(
        actions(&s, "acme").await,
        [
            "upsert_tenant",
            "create_key",
            "rotate_key",
            "create_key",
            "revoke_key"
        ]
    );
}

/// All or nothing: when the successor cannot be inserted, the old key keeps its state.
async fn rotate_key_is_atomic(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    let old = insert(&s, key("acme", "old"), 0, T0).await.unwrap();
    insert(&s, key("acme", "taken"), 0, T0).await.unwrap();
    let mut clash = successor(&old, "new", at(10));
    clash.record.lookup_id = "lk_taken".into();
    let r = s
        .keys
        .rotate_key("old", at(100), clash, audit("rotate_key", "acme", "old"))
        .await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(s.keys.get_key("old").await.unwrap(), Some(old));
    assert_eq!(s.keys.get_key("new").await.unwrap(), None);
    assert_eq!(
        actions(&s, "acme").await,
        ["upsert_tenant", "create_key", "create_key"]
    );
}

async fn concurrent_rotations_of_one_key_make_one_successor(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    let old = insert(&s, key("acme", "old"), 0, T0).await.unwrap();
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            let s = s.clone();
            let new = successor(&old, &format!("new{i}"), at(10));
            tokio::spawn(async move {
                s.keys
                    .rotate_key("old", at(100), new, audit("rotate_key", "acme", "old"))
                    .await
            })
        })
        .collect();
    let mut winners = vec![];
    for t in tasks {
        match t.await.unwrap() {
            Ok((_, new)) => winners.push(new.id),
            Err(e) => assert_eq!(precondition::<()>(Err(e)), "key.state"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let stored_old = s.keys.get_key("old").await.unwrap().unwrap();
    assert_eq!(
        stored_old.revoke_reason,
        Some(format!("rotated:{}", winners[0]))
    );
    let q = KeyQuery {
        include_revoked: true,
        ..query("acme", at(10))
    };
    assert_eq!(listed(&s, &q).await, ["old", winners[0].as_str()]);
    let rotations = actions(&s, "acme")
        .await
        .iter()
        .filter(|a| *a == "rotate_key")
        .count();
    assert_eq!(rotations, 1);
}

/// No change without its event: a write whose audit event cannot be stored (its id is
/// taken) does not happen.
async fn a_key_write_whose_event_fails_changes_nothing(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    let used = audit("create_key", "acme", "k1");
    let k1 = s
        .keys
        .insert_key(key("acme", "k1"), 0, T0, used.clone())
        .await
        .unwrap();

    assert!(s
        .keys
        .insert_key(key("acme", "k2"), 0, T0, used.clone())
        .await
        .is_err());
    assert_eq!(s.keys.get_key("k2").await.unwrap(), None);

    let mut edit = k1.clone();
    edit.name = "renamed".into();
    assert!(s
        .keys
        .update_key_settings(&edit, used.clone())
        .await
        .is_err());

    assert!(s
        .keys
        .revoke_key("k1", at(5), "x", at(5), used.clone())
        .await
        .is_err());

    let r = s
        .keys
        .rotate_key("k1", at(5), successor(&k1, "k3", at(5)), used.clone())
        .await;
    assert!(r.is_err());
    assert_eq!(s.keys.get_key("k3").await.unwrap(), None);

    assert_eq!(s.keys.get_key("k1").await.unwrap(), Some(k1));
    assert_eq!(actions(&s, "acme").await, ["upsert_tenant", "create_key"]);
}

async fn disable_key_changes_only_enabled_and_only_once(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    let stored = insert(&s, key("acme", "k1"), 0, T0).await.unwrap();
    // A concurrent settings update lands between a reader's read and its disable.
    let mut renamed = stored.clone();
    renamed.name = "renamed meanwhile".into();
    s.keys
        .update_key_settings(&renamed, audit("update_key", "acme", "k1"))
        .await
        .unwrap();
    assert!(s
        .keys
        .disable_key("k1", at(50), audit("report_leak", "acme", "k1"))
        .await
        .unwrap());
    let after = s.keys.get_key("k1").await.unwrap().unwrap();
    assert!(!after.enabled);
    assert_eq!(after.name, "renamed meanwhile", "the other update survives");
    assert_eq!(after.update_time, at(50));
    // Already disabled: nothing written, no second event.
    let again = audit("report_leak", "acme", "k1");
    assert!(!s
        .keys
        .disable_key("k1", at(60), again.clone())
        .await
        .unwrap());
    let events = s
        .audit
        .list_audit_events(&AuditQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(events.iter().all(|e| e.id != again.id));
    assert!(!s
        .keys
        .disable_key("nope", at(60), audit("report_leak", "acme", "nope"))
        .await
        .unwrap());
}

on_both_stores!(
    disable_key_changes_only_enabled_and_only_once,
    insert_then_read_back_every_field,
    insert_refuses_a_key_over_the_cap,
    revoked_and_expired_keys_do_not_count_against_the_cap,
    concurrent_inserts_never_exceed_the_cap,
    insert_for_an_unknown_tenant_is_not_found,
    insert_refuses_a_taken_lookup_id_without_an_event,
    list_keys_pages_oldest_first_and_filters,
    update_key_settings_writes_settings_and_never_revocation,
    update_of_an_unknown_key_is_not_found_without_an_event,
    revoke_key_only_moves_revocation_earlier,
    rotate_key_schedules_the_old_revocation_and_inserts_the_new,
    rotate_key_refuses_a_revoked_or_rotated_key,
    rotate_key_is_atomic,
    concurrent_rotations_of_one_key_make_one_successor,
    a_key_write_whose_event_fails_changes_nothing,
);
