//! ImportKeys: keys from another system keep working by their stored hash (SHA-256 hex or
//! argon2 PHC), all or nothing, audited, within the tenant's cap. On both stores.
use crate::support::{check, code, Admin, Db};
use crate::{on_both_stores, server_or_skip};
use argon2::password_hash::{PasswordHasher, SaltString};
use keygate::grpc::pb::{self, ImportHashFormat};
use sha2::{Digest, Sha256};
use tonic::Code;

fn sha_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn argon(s: &str) -> String {
    let salt = SaltString::encode_b64(b"import-test-salt").unwrap();
    argon2::Argon2::default()
        .hash_password(s.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

fn imported(name: &str, hash: String, lookup: &str) -> pb::ImportedKey {
    pb::ImportedKey {
        name: name.into(),
        hash,
        lookup: lookup.into(),
        ..Default::default()
    }
}

async fn import(
    a: &Admin,
    tenant_id: &str,
    prefix: &str,
    format: ImportHashFormat,
    lookup_length: u32,
    keys: Vec<pb::ImportedKey>,
) -> Result<pb::ImportKeysResponse, tonic::Status> {
    a.import_keys(pb::ImportKeysRequest {
        tenant_id: tenant_id.into(),
        key_prefix: prefix.into(),
        format: format as i32,
        lookup_length,
        keys,
    })
    .await
}

async fn imported_keys_keep_working(db: Db) {
    let s = server_or_skip!(db);
    let a = s.admin().await;
    let policy = pb::TenantPolicy {
        max_active_keys: 3,
        ..Default::default()
    };
    a.tenant("legacy").policy(policy).upsert().await;
    a.tenant("other").upsert().await;
    let sha_key = "sk_live_9f8e7d6c5b4a39281706f5e4d3c2b1a0";
    let argon_key = "acme-AB12CD34.the-secret-part-of-it";
    let got = import(
        &a,
        "legacy",
        "sk_live_",
        ImportHashFormat::Sha256Hex,
        0,
        vec![imported("old sha", sha_hex(sha_key), "")],
    )
    .await
    .unwrap();
    assert_eq!(got.keys[0].key_prefix, "sk_live_");
    let argon_id = import(
        &a,
        "legacy",
        "acme-",
        ImportHashFormat::Argon2Phc,
        8,
        vec![imported("old argon", argon(argon_key), "acme-AB12CD34")],
    )
    .await
    .unwrap()
    .keys[0]
        .clone();
    assert_eq!(argon_id.display_prefix, "AB12CD34");

    let c = s.authorize().await;
    assert_eq!(c.reason(check(sha_key)).await, pb::Reason::Ok);
    assert_eq!(c.reason(check(argon_key)).await, pb::Reason::Ok);
    // Under an imported prefix a wrong key is unknown, not malformed; elsewhere, malformed.
    assert_eq!(
        c.reason(check("sk_live_0000000000000000000000000000000"))
            .await,
        pb::Reason::KeyNotFound
    );
    assert_eq!(
        c.reason(check("acme-AB12CD34.wrong-secret")).await,
        pb::Reason::KeyNotFound
    );
    assert_eq!(
        c.reason(check("acme-ZZ99ZZ99.whatever")).await,
        pb::Reason::KeyNotFound
    );
    assert_eq!(
        c.reason(check("pk_test_nothing_like_it")).await,
        pb::Reason::MalformedKey
    );
    // The imported key lives the normal life: revoke it and it is denied at once.
    a.revoke_key(&argon_id.id, "migrated").await.unwrap();
    assert_eq!(c.reason(check(argon_key)).await, pb::Reason::KeyRevoked);
    let trail = a
        .list_audit_events(pb::ListAuditEventsRequest {
            key_id: argon_id.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = trail.events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, vec!["revoke_key", "import_key"]);

    // All or nothing: a duplicate in the batch imports none of it.
    let list = |a: &Admin| {
        let a = a.clone();
        async move {
            a.list_keys(pb::ListKeysRequest {
                tenant_id: "legacy".into(),
                include_revoked: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .keys
            .len()
        }
    };
    let before = list(&a).await;
    let (c1, m) = code(
        import(
            &a,
            "legacy",
            "sk_live_",
            ImportHashFormat::Sha256Hex,
            0,
            vec![
                imported("new", sha_hex("sk_live_another"), ""),
                imported("dup", sha_hex(sha_key), ""),
            ],
        )
        .await,
    );
    assert_eq!(c1, Code::FailedPrecondition, "{m}");
    assert!(m.contains("keys[1]"), "{m}");
    assert_eq!(list(&a).await, before);
    // The cap counts imported keys (1 active of 3 after the revoke: three more exceed it).
    let (c2, m) = code(
        import(
            &a,
            "legacy",
            "sk_live_",
            ImportHashFormat::Sha256Hex,
            0,
            vec![
                imported("a", sha_hex("sk_live_a1"), ""),
                imported("b", sha_hex("sk_live_b2"), ""),
                imported("c", sha_hex("sk_live_c3"), ""),
            ],
        )
        .await,
    );
    assert_eq!(c2, Code::FailedPrecondition, "{m}");
    assert!(m.contains("max_active_keys"), "{m}");
    // Another tenant cannot claim an overlapping prefix; bad input names its field.
    let (c3, _) = code(
        import(
            &a,
            "other",
            "sk_",
            ImportHashFormat::Sha256Hex,
            0,
            vec![imported("x", sha_hex("sk_x"), "")],
        )
        .await,
    );
    assert_eq!(c3, Code::FailedPrecondition);
    let (c4, m) = code(
        import(
            &a,
            "legacy",
            "sk_live_",
            ImportHashFormat::Sha256Hex,
            0,
            vec![imported("x", "nothex".into(), "")],
        )
        .await,
    );
    assert_eq!(c4, Code::InvalidArgument);
    assert!(m.starts_with("keys[0].hash"), "{m}");
    let (c5, m) = code(
        import(
            &a,
            "legacy",
            "acme-",
            ImportHashFormat::Argon2Phc,
            8,
            vec![imported("x", argon("acme-x"), "acme-short")],
        )
        .await,
    );
    assert_eq!(c5, Code::InvalidArgument);
    assert!(m.starts_with("keys[0].lookup"), "{m}");
    let (c6, m) = code(
        import(
            &a,
            "legacy",
            "acme-",
            ImportHashFormat::Unspecified,
            8,
            vec![],
        )
        .await,
    );
    assert_eq!(c6, Code::InvalidArgument, "{m}");
}

/// A prefix belongs to one tenant: no import under (or overlapping) another tenant's
/// native prefix or imported prefix, and no tenant prefix overlapping another's import.
async fn an_imported_prefix_belongs_to_one_tenant(db: Db) {
    let s = server_or_skip!(db);
    let a = s.admin().await;
    let owner = pb::TenantPolicy {
        key_prefix: "tt_".into(),
        ..Default::default()
    };
    a.tenant("owner").policy(owner).upsert().await;
    a.tenant("taker").upsert().await;
    let one = |seed: &str| vec![imported("k", sha_hex(seed), "")];
    let sha = ImportHashFormat::Sha256Hex;
    for prefix in ["tt_", "tt_live_", "tt"] {
        let (c, m) = code(import(&a, "taker", prefix, sha, 0, one(prefix)).await);
        assert_eq!(c, Code::FailedPrecondition, "{prefix}: {m}");
        assert!(m.starts_with("key_prefix: overlaps"), "{m}");
        assert!(!m.contains("owner"), "another tenant is never named: {m}");
    }
    // Its own native prefix is the owner's to import under, and so is a fresh one.
    import(&a, "owner", "tt_old_", sha, 0, one("a"))
        .await
        .unwrap();
    import(&a, "owner", "legacy_", sha, 0, one("b"))
        .await
        .unwrap();
    // Another tenant's imported prefix, or one overlapping it, is refused too …
    let (c, m) = code(import(&a, "taker", "legacy_x", sha, 0, one("c")).await);
    assert_eq!(c, Code::FailedPrecondition, "{m}");
    assert!(m.contains("another tenant imported"), "{m}");
    // … and so is a tenant prefix overlapping it.
    let taken = pb::TenantPolicy {
        key_prefix: "legacy_".into(),
        ..Default::default()
    };
    let (c, m) = code(a.tenant("taker").policy(taken).try_upsert().await);
    assert_eq!(c, Code::FailedPrecondition, "{m}");
    assert!(m.starts_with("tenant.policy.key_prefix:"), "{m}");
}

/// Whoever imports keys does not choose what a check costs: argon2 parameters above the
/// server's ceiling are refused by field, before anything is stored.
async fn imported_argon2_cost_is_bounded(db: Db) {
    let s = server_or_skip!(db);
    let a = s.admin().await;
    a.tenant("legacy").upsert().await;
    let bomb = |params: &str| {
        format!("$argon2id$v=19${params}$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA")
    };
    for (params, what) in [
        ("m=4194304,t=1,p=1", "memory (m, KiB) is 4194304"),
        ("m=8,t=4294967295,p=1", "iterations (t) is 4294967295"),
        ("m=1024,t=1,p=64", "parallelism (p) is 64"),
    ] {
        let keys = vec![
            imported("fine", argon("acme-FINE0001.x"), "acme-FINE0001"),
            imported("bomb", bomb(params), "acme-BOMB0001"),
        ];
        let (c, m) =
            code(import(&a, "legacy", "acme-", ImportHashFormat::Argon2Phc, 8, keys).await);
        assert_eq!(c, Code::InvalidArgument, "{params}: {m}");
        assert!(m.starts_with("keys[1].hash: argon2 "), "{m}");
        assert!(m.contains(what), "{m}");
    }
    // All or nothing: the acceptable key of the refused batch was not stored either.
    let listed = a
        .list_keys(pb::ListKeysRequest {
            tenant_id: "legacy".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(listed.keys.is_empty(), "{:?}", listed.keys);
}

on_both_stores!(
    imported_keys_keep_working,
    an_imported_prefix_belongs_to_one_tenant,
    imported_argon2_cost_is_bounded
);
