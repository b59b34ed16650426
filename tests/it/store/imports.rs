//! `ImportStore`: keys brought in by their stored hash under a prefix rule, all or nothing.
use super::*;
use crate::on_both_stores;
use crate::stores_or_skip;
use keygate::domain::import::{ImportFormat, ImportRule};

fn argon2_rule(prefix: &str, tenant_id: &str, lookup_len: usize) -> ImportRule {
    ImportRule {
        key_prefix: prefix.to_owned(),
        tenant_id: tenant_id.to_owned(),
        format: ImportFormat::Argon2,
        lookup_len,
    }
}

fn sha256_rule(prefix: &str, tenant_id: &str) -> ImportRule {
    ImportRule {
        key_prefix: prefix.to_owned(),
        tenant_id: tenant_id.to_owned(),
        format: ImportFormat::Sha256,
        lookup_len: 0,
    }
}

/// An imported key `id` under `rule`, with its audit event.
fn imported(rule: &ImportRule, id: &str) -> (NewKey, AuditEvent) {
    let mut k = key(&rule.tenant_id, id);
    k.record.lookup_id = format!("imp:{}{id}", rule.key_prefix);
    k.record.key_prefix = rule.key_prefix.clone();
    k.record.environment = String::new();
    let e = audit("import_key", &rule.tenant_id, id);
    (k, e)
}

async fn import(
    s: &Stores,
    rule: &ImportRule,
    ids: &[&str],
    cap: u32,
) -> keygate::error::Result<Vec<KeyRecord>> {
    let keys = ids.iter().map(|id| imported(rule, id)).collect();
    s.imports.import_keys(rule, keys, cap, T0).await
}

async fn import_stores_keys_and_records_the_rule_once(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    let rule = argon2_rule("sk_live_", "acme", 8);
    assert!(s.imports.import_rules().await.unwrap().is_empty());
    let batch = vec![imported(&rule, "a1"), imported(&rule, "a2")];
    let expected: Vec<KeyRecord> = batch.iter().map(|(k, _)| k.record.clone()).collect();
    let out = s
        .imports
        .import_keys(&rule, batch.clone(), 0, T0)
        .await
        .unwrap();
    assert_eq!(out, expected);
    for (k, _) in &batch {
        assert_eq!(
            s.keys.find_by_lookup_id(&k.record.lookup_id).await.unwrap(),
            Some((k.record.clone(), k.secret_hash.clone()))
        );
    }
    // A second import under the same rule is welcome; the rule stays recorded once.
    import(&s, &rule, &["a3"], 0).await.unwrap();
    let sha = sha256_rule("legacy_", "acme");
    import(&s, &sha, &["s1"], 0).await.unwrap();
    let mut rules = s.imports.import_rules().await.unwrap();
    rules.sort_by(|a, b| a.key_prefix.cmp(&b.key_prefix));
    assert_eq!(rules, [sha, rule]);
    // One event per key imported, with the key it names.
    let evs = events(&s, "acme").await;
    let mut imported_ids: Vec<&str> = evs
        .iter()
        .filter(|e| e.action == "import_key")
        .map(|e| e.key_id.as_str())
        .collect();
    imported_ids.sort();
    assert_eq!(imported_ids, ["a1", "a2", "a3", "s1"]);
}

async fn a_prefix_stays_bound_to_its_tenant_format_and_lookup_length(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    seed_tenant(&s, "other").await;
    let rule = argon2_rule("sk_live_", "acme", 8);
    import(&s, &rule, &["a1"], 0).await.unwrap();
    let refused = [
        argon2_rule("sk_live_", "other", 8),
        sha256_rule("sk_live_", "acme"),
        argon2_rule("sk_live_", "acme", 10),
        // Overlapping prefixes would let two rules claim one key.
        argon2_rule("sk_", "acme", 8),
        argon2_rule("sk_live_x", "acme", 8),
    ];
    for (i, r) in refused.iter().enumerate() {
        let id = format!("r{i}");
        assert_eq!(
            precondition(import(&s, r, &[id.as_str()], 0).await),
            "key_prefix",
            "{r:?}"
        );
        assert_eq!(s.keys.get_key(&id).await.unwrap(), None);
    }
    assert_eq!(s.imports.import_rules().await.unwrap(), [rule]);
    assert!(events(&s, "other")
        .await
        .iter()
        .all(|e| e.action != "import_key"));
    let imports = actions(&s, "acme").await;
    assert_eq!(imports, ["upsert_tenant", "import_key"]);
    // An unrelated prefix is fine.
    import(&s, &argon2_rule("pk_", "other", 8), &["p1"], 0)
        .await
        .unwrap();
}

async fn a_taken_lookup_id_refuses_the_whole_import(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    let rule = sha256_rule("legacy_", "acme");
    import(&s, &rule, &["a1"], 0).await.unwrap();
    // The second key's lookup id is already stored: the first is not kept either.
    let r = import(&s, &rule, &["b1", "a1"], 0).await;
    assert_eq!(precondition(r), "keys");
    assert_eq!(s.keys.get_key("b1").await.unwrap(), None);
    // Twice in one batch: refused the same way.
    let (k, e) = imported(&rule, "c1");
    let mut twin = imported(&rule, "c2");
    twin.0.record.lookup_id = k.record.lookup_id.clone();
    let r = s
        .imports
        .import_keys(&rule, vec![(k, e), twin], 0, T0)
        .await;
    assert_eq!(precondition(r), "keys");
    assert_eq!(s.keys.get_key("c1").await.unwrap(), None);
    // A new rule in a refused import is not recorded.
    let fresh = argon2_rule("new_", "acme", 4);
    let mut dup = imported(&fresh, "d1");
    dup.0.record.lookup_id = "imp:legacy_a1".into();
    let r = s.imports.import_keys(&fresh, vec![dup], 0, T0).await;
    assert_eq!(precondition(r), "keys");
    assert_eq!(s.imports.import_rules().await.unwrap(), [rule]);
    assert_eq!(actions(&s, "acme").await, ["upsert_tenant", "import_key"]);
}

async fn import_stays_within_the_cap_of_active_keys(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    let audit_ = audit("create_key", "acme", "native");
    s.keys
        .insert_key(key("acme", "native"), 0, T0, audit_)
        .await
        .unwrap();
    let rule = argon2_rule("sk_", "acme", 8);
    // One active key and a cap of 3: three more would make 4.
    let r = import(&s, &rule, &["i1", "i2", "i3"], 3).await;
    assert_eq!(precondition(r), "tenant.policy.max_active_keys");
    assert_eq!(s.keys.get_key("i1").await.unwrap(), None);
    assert_eq!(import(&s, &rule, &["i1", "i2"], 3).await.unwrap().len(), 2);
    assert_eq!(
        precondition(import(&s, &rule, &["i3"], 3).await),
        "tenant.policy.max_active_keys"
    );
    // 0 = no cap.
    assert_eq!(
        import(&s, &rule, &["i3", "i4", "i5"], 0)
            .await
            .unwrap()
            .len(),
        3
    );
    let imports = actions(&s, "acme")
        .await
        .iter()
        .filter(|a| *a == "import_key")
        .count();
    assert_eq!(imports, 5);
}

async fn import_for_an_unknown_tenant_is_not_found(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    let rule = sha256_rule("legacy_", "ghost");
    let (what, id) = not_found(import(&s, &rule, &["a1"], 0).await);
    assert_eq!((what, id.as_str()), ("tenant", "ghost"));
    assert!(s.imports.import_rules().await.unwrap().is_empty());
    assert!(events(&s, "ghost").await.is_empty());
}

on_both_stores!(
    import_stores_keys_and_records_the_rule_once,
    a_prefix_stays_bound_to_its_tenant_format_and_lookup_length,
    a_taken_lookup_id_refuses_the_whole_import,
    import_stays_within_the_cap_of_active_keys,
    import_for_an_unknown_tenant_is_not_found,
);
