//! `AdminTokenStore`: admin tokens kept as digests, listed oldest first, revoked once.
use super::*;
use crate::on_both_stores;
use crate::stores_or_skip;

async fn tokens_round_trip_and_list_oldest_first(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    assert!(s.tokens.admin_tokens().await.unwrap().is_empty());
    let mut viewer = token("tok_b", at(10));
    viewer.role = Role::Viewer;
    viewer.tenant_id = Some("acme".into());
    // Two created in one millisecond: the id orders them.
    let written = [
        token("tok_c", at(30)),
        viewer.clone(),
        token("tok_z", at(20)),
        token("tok_a", at(20)),
    ];
    for t in &written {
        s.tokens.add_admin_token(t).await.unwrap();
    }
    let listed = s.tokens.admin_tokens().await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["tok_b", "tok_a", "tok_z", "tok_c"]);
    let b = &listed[0];
    assert_eq!(b.digest, viewer.digest);
    assert_eq!(b.role, Role::Viewer);
    assert_eq!(b.tenant_id.as_deref(), Some("acme"));
    assert_eq!(b.description, "tok_b token");
    assert_eq!(b.create_time, at(10));
    assert_eq!(b.revoke_time, None);
    let c = &listed[3];
    assert_eq!((c.role, c.tenant_id.as_deref()), (Role::Admin, None));
    assert_eq!(c.digest, token("tok_c", at(30)).digest);
    assert_ne!(c.digest, b.digest);
}

async fn a_new_token_is_never_stored_revoked(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    let mut t = token("tok_a", at(10));
    t.revoke_time = Some(at(5));
    s.tokens.add_admin_token(&t).await.unwrap();
    assert_eq!(s.tokens.admin_tokens().await.unwrap()[0].revoke_time, None);
    // An id is one token: a second with the same id is refused, the first unchanged.
    let mut twin = token("tok_a", at(20));
    twin.description = "twin".into();
    assert!(s.tokens.add_admin_token(&twin).await.is_err());
    let listed = s.tokens.admin_tokens().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].description, "tok_a token");
}

async fn revoke_succeeds_once(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    s.tokens
        .add_admin_token(&token("tok_a", at(10)))
        .await
        .unwrap();
    s.tokens
        .add_admin_token(&token("tok_b", at(11)))
        .await
        .unwrap();
    assert!(s.tokens.revoke_admin_token("tok_a", at(100)).await.unwrap());
    assert!(!s.tokens.revoke_admin_token("tok_a", at(200)).await.unwrap());
    assert!(!s
        .tokens
        .revoke_admin_token("tok_none", at(200))
        .await
        .unwrap());
    let listed = s.tokens.admin_tokens().await.unwrap();
    let revoked: Vec<_> = listed
        .iter()
        .map(|t| (t.id.as_str(), t.revoke_time))
        .collect();
    assert_eq!(
        revoked,
        [("tok_a", Some(at(100))), ("tok_b", None)],
        "revoked tokens stay listed, with the first revocation time"
    );
}

on_both_stores!(
    tokens_round_trip_and_list_oldest_first,
    a_new_token_is_never_stored_revoked,
    revoke_succeeds_once,
);
