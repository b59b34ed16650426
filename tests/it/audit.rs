//! The audit trail: every KeyAdmin write leaves exactly one event, written with the change;
//! a failed or no-op write leaves none. On SQLite and PostgreSQL.
use crate::support::{new_key, Admin, Db};
use crate::{on_both_stores, server_or_skip};
use keygate::grpc::pb;
use tonic::Code;

async fn trail(a: &Admin, tenant_id: &str, key_id: &str) -> Vec<pb::AuditEvent> {
    let (mut out, mut token) = (vec![], String::new());
    loop {
        let req = pb::ListAuditEventsRequest {
            tenant_id: tenant_id.into(),
            key_id: key_id.into(),
            page_size: 2,
            page_token: token,
            ..Default::default()
        };
        let page = a.list_audit_events(req).await.unwrap();
        out.extend(page.events);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

fn actions(events: &[pb::AuditEvent]) -> Vec<&str> {
    events.iter().map(|e| e.action.as_str()).collect()
}

async fn every_write_leaves_exactly_one_event(db: Db) {
    let s = server_or_skip!(db);
    let a = s.admin().await;
    let policy = pb::TenantPolicy {
        max_active_keys: 2,
        ..Default::default()
    };
    a.tenant("acme").policy(policy).upsert().await;
    let k = a.create_key(new_key("acme")).await.key.unwrap();
    let mut patch = k.clone();
    patch.name = "renamed".into();
    patch.scopes = vec!["read".into()];
    a.with_header("x-request-id", "req-from-caller-42")
        .update_key(patch.clone(), &["name", "scopes"])
        .await
        .unwrap();
    patch.enabled = false;
    a.update_key(patch.clone(), &["enabled"]).await.unwrap();
    patch.enabled = true;
    a.update_key(patch, &["enabled"]).await.unwrap();
    let rotated = a.rotate_key(&k.id, None).await.unwrap();
    let successor = rotated.key.unwrap().id;
    a.revoke_key(&successor, "leaked in CI logs").await.unwrap();

    // Failed and no-op writes leave nothing.
    a.revoke_key(&successor, "again").await.unwrap();
    let e = a
        .try_create_key(new_key("acme").name("bad\u{7}name"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = a.rotate_key(&k.id, None).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    a.create_key(new_key("acme").name("k2")).await;
    a.create_key(new_key("acme").name("k3")).await;
    let e = a
        .try_create_key(new_key("acme").name("over the cap"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    let all = trail(&a, "acme", "").await;
    assert_eq!(
        actions(&all),
        vec![
            "create_key",
            "create_key",
            "revoke_key",
            "rotate_key",
            "enable_key",
            "disable_key",
            "update_key",
            "create_key",
            "upsert_tenant"
        ],
        "newest first, one per successful write"
    );
    assert!(all
        .iter()
        .all(|e| e.actor == "env" && e.tenant_id == "acme" && e.id.starts_with("aud_")));
    let update = all.iter().find(|e| e.action == "update_key").unwrap();
    assert_eq!(update.changed_fields, vec!["name", "scopes"]);
    assert_eq!(update.request_id, "req-from-caller-42");
    let revoke = all.iter().find(|e| e.action == "revoke_key").unwrap();
    assert_eq!(
        (revoke.key_id.as_str(), revoke.detail.as_str()),
        (successor.as_str(), "leaked in CI logs")
    );
    let rotate = all.iter().find(|e| e.action == "rotate_key").unwrap();
    assert!(rotate.detail.contains(&successor));

    let of_key = trail(&a, "", &k.id).await;
    assert_eq!(
        actions(&of_key),
        vec![
            "rotate_key",
            "enable_key",
            "disable_key",
            "update_key",
            "create_key"
        ]
    );
    let everything = format!("{all:?}");
    assert!(!everything.contains("kg_"), "no key material in the trail");

    let e = a
        .list_audit_events(pb::ListAuditEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("tenant_id:"), "{}", e.message());
    let e = a
        .list_audit_events(pb::ListAuditEventsRequest {
            tenant_id: "acme".into(),
            page_token: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // A time window.
    let after = keygate::grpc::convert::timestamp(keygate::domain::UnixMillis(s.now().0 + 1));
    let none = a
        .list_audit_events(pb::ListAuditEventsRequest {
            tenant_id: "acme".into(),
            start_time: Some(after),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.events.is_empty());
}

on_both_stores!(every_write_leaves_exactly_one_event);
