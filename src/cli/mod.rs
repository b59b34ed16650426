//! The command line (`run.rs`: flags and dispatch) and the `keygate admin …` and
//! `keygate key inspect` commands: operator tools that work on the store directly (admin
//! tokens) or on nothing at all (key inspection).
mod run;

use crate::config::Config;
use crate::domain::access::Role;
use crate::domain::key::{self, MalformedKey};
use crate::domain::{text, Clock, SystemClock};
use crate::error::{Error, Result};
use crate::store::{AdminTokenStore, TenantStore};
pub use run::main;

/// `keygate admin create`: stores a new admin token's digest and returns the token, to
/// be printed once.
pub async fn create_admin_token(
    config: &Config,
    role: &str,
    tenant: Option<String>,
    description: &str,
) -> Result<(crate::store::AdminTokenRecord, String)> {
    let role = Role::parse("--role", role)?;
    text::validate_text("--description", description, text::MAX_NAME_CHARS)?;
    let store = crate::app::open_store(config).await?;
    if let Some(t) = &tenant {
        text::validate_tenant_id("--tenant", t)?;
        if store.get_tenant(t).await?.is_none() {
            return Err(Error::not_found("tenant", t));
        }
    }
    let (record, token) =
        crate::service::tokens::new_admin_token(role, tenant, description, SystemClock.now());
    store.add_admin_token(&record).await?;
    Ok((record, token))
}

/// `keygate admin list`: one line per token (never the token or its digest).
pub async fn list_admin_tokens(config: &Config) -> Result<Vec<String>> {
    let store = crate::app::open_store(config).await?;
    Ok(store
        .admin_tokens()
        .await?
        .into_iter()
        .map(|t| {
            format!(
                "{}\t{}\t{}\t{}\t{}",
                t.id,
                t.role.as_str(),
                t.tenant_id.as_deref().unwrap_or("*"),
                if t.revoke_time.is_some() {
                    "revoked"
                } else {
                    "active"
                },
                t.description
            )
        })
        .collect())
}

/// `keygate admin revoke <id>`: the token stops working within seconds on every replica.
pub async fn revoke_admin_token(config: &Config, id: &str) -> Result<()> {
    let store = crate::app::open_store(config).await?;
    if store.revoke_admin_token(id, SystemClock.now()).await? {
        Ok(())
    } else {
        Err(Error::not_found("active admin token", id))
    }
}

/// What `keygate key inspect` tells about a presented key, offline: no lookup, nothing
/// secret (only the printable head and the display prefix a key list shows).
pub fn inspect_key(presented: &str) -> serde_json::Value {
    let presented = presented.trim();
    match key::parse(presented) {
        Ok(p) => {
            let mut parts = p.head.trim_end_matches('_').splitn(2, '_');
            let prefix = parts.next().map(|s| format!("{s}_")).unwrap_or_default();
            let environment = parts.next().unwrap_or_default();
            serde_json::json!({
                "well_formed": true,
                "checksum": "valid",
                "key_prefix": p.head,
                "tenant_prefix": prefix,
                "environment": environment,
                "display_prefix": &p.lookup_id[..8],
            })
        }
        Err(e) => serde_json::json!({
            "well_formed": false,
            "problem": match e {
                MalformedKey::NoPrefix => "no prefix (<prefix>_ or <prefix><env>_)",
                MalformedKey::BadPrefix => "the prefix is not lowercase letters, digits and _",
                MalformedKey::BadLength => "wrong length after the prefix (42 characters expected)",
                MalformedKey::BadAlphabet => "characters outside base62 after the prefix",
                MalformedKey::BadChecksum => "checksum does not match: a typo, or not a Keygate key",
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_tells_prefix_environment_and_checksum_without_secrets() {
        let k = key::ApiKeyFormat::generate("nxc_live_");
        let full = secrecy::ExposeSecret::expose_secret(&k.full).to_owned();
        let v = inspect_key(&full);
        assert_eq!(v["well_formed"], true);
        assert_eq!(v["tenant_prefix"], "nxc_");
        assert_eq!(v["environment"], "live");
        let shown = v.to_string();
        assert!(
            !shown.contains(&full[full.len() - 30..]),
            "no secret part shown"
        );
        let mut typo = full.clone();
        let last = typo.pop().unwrap();
        typo.push(if last == 'a' { 'b' } else { 'a' });
        assert_eq!(inspect_key(&typo)["well_formed"], false);
        assert_eq!(inspect_key("hello")["well_formed"], false);
    }
}
