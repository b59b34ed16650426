//! `AuditLog`: the trail read back newest first, paged and filtered. Events are written
//! the only way they can be, by the writes they describe.
use super::*;
use crate::on_both_stores;
use crate::stores_or_skip;

/// Writes tenant `tenant_id` once with an event at `time`; returns the event.
async fn event_at(s: &Stores, time: UnixMillis, tenant_id: &str) -> AuditEvent {
    let mut e = audit_at(time, "upsert_tenant", tenant_id, "");
    e.changed_fields = vec!["display_name".into(), "policy.max_active_keys".into()];
    e.detail = format!("at {}", time.0);
    s.tenants
        .upsert_tenant(tenant(tenant_id), e.clone())
        .await
        .unwrap();
    e
}

fn all(limit: u64) -> AuditQuery {
    AuditQuery {
        limit,
        ..Default::default()
    }
}

async fn list(s: &Stores, q: &AuditQuery) -> Vec<AuditEvent> {
    s.audit.list_audit_events(q).await.unwrap()
}

async fn events_list_newest_first_and_page_by_before(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    // Written out of time order, two in one millisecond (their ids order them).
    let mut written = vec![];
    for t in [30, 10, 20, 20, 40] {
        written.push(event_at(&s, at(t), "acme").await);
    }
    let mut expected = written.clone();
    expected.sort_by(|a, b| (b.time, &b.id).cmp(&(a.time, &a.id)));
    assert_eq!(list(&s, &all(100)).await, expected, "every field read back");
    assert_eq!(expected[0].time, at(40));
    assert_eq!(expected[4].time, at(10));

    let mut q = all(2);
    let mut paged = vec![];
    // Bounded: a cursor that failed to move on would repeat a page, not hang the test.
    for _ in 0..10 {
        let page = list(&s, &q).await;
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        q.before = Some((last.time, last.id.clone()));
        paged.extend(page);
    }
    assert_eq!(
        paged, expected,
        "pages resume exactly, also inside a millisecond"
    );
    assert_eq!(list(&s, &all(3)).await, expected[..3]);
}

async fn events_filter_by_tenant_key_and_time(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    let a10 = event_at(&s, at(10), "acme").await;
    let b20 = event_at(&s, at(20), "bolt").await;
    let a30 = event_at(&s, at(30), "acme").await;
    let k40 = audit_at(at(40), "create_key", "acme", "k1");
    s.keys
        .insert_key(key("acme", "k1"), 0, at(40), k40.clone())
        .await
        .unwrap();
    let k50 = audit_at(at(50), "revoke_key", "acme", "k1");
    s.keys
        .revoke_key("k1", at(50), "done", at(50), k50.clone())
        .await
        .unwrap();

    let q = |f: &dyn Fn(&mut AuditQuery)| {
        let mut q = all(100);
        f(&mut q);
        q
    };
    let ids = |v: Vec<AuditEvent>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    let id = |e: &AuditEvent| e.id.clone();
    assert_eq!(
        ids(list(&s, &q(&|q| q.tenant_id = Some("acme".into()))).await),
        [id(&k50), id(&k40), id(&a30), id(&a10)]
    );
    assert_eq!(
        ids(list(&s, &q(&|q| q.tenant_id = Some("bolt".into()))).await),
        [id(&b20)]
    );
    assert_eq!(
        ids(list(&s, &q(&|q| q.key_id = Some("k1".into()))).await),
        [id(&k50), id(&k40)]
    );
    // [start, end): the start is in, the end is out.
    assert_eq!(
        ids(list(
            &s,
            &q(&|q| {
                q.start = Some(at(20));
                q.end = Some(at(40));
            })
        )
        .await),
        [id(&a30), id(&b20)]
    );
    assert_eq!(
        ids(list(
            &s,
            &q(&|q| {
                q.tenant_id = Some("acme".into());
                q.start = Some(at(30));
            })
        )
        .await),
        [id(&k50), id(&k40), id(&a30)]
    );
    assert!(list(&s, &q(&|q| q.tenant_id = Some("none".into())))
        .await
        .is_empty());
    assert!(list(&s, &q(&|q| q.end = Some(at(10)))).await.is_empty());
}

async fn an_event_that_changes_nothing_is_recorded_and_read_back(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    let mut e = audit_at(at(70), "report_leak", "acme", "k9");
    e.detail = "on_leak=notify; source=commit".into();
    s.audit.record_audit_event(&e).await.unwrap();
    assert_eq!(list(&s, &all(10)).await, vec![e.clone()]);
    // Ids are unique: the same event twice is an error, not a silent duplicate.
    assert!(s.audit.record_audit_event(&e).await.is_err());
}

on_both_stores!(
    events_list_newest_first_and_page_by_before,
    events_filter_by_tenant_key_and_time,
    an_event_that_changes_nothing_is_recorded_and_read_back,
);
