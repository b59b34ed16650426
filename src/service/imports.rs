//! The imported key prefixes this server knows (see `domain::import`): read by the check
//! path when a presented key is not in Keygate's format, updated by ImportKeys here and
//! reloaded from the store every few seconds for imports made on other replicas.
use crate::domain::import::{self, ImportRule};
use crate::domain::key;
use crate::error::Result;
use crate::store::ImportStore;
use std::borrow::Cow;
use std::sync::{Arc, RwLock};

#[derive(Default)]
pub struct ImportRegistry(RwLock<Arc<Vec<ImportRule>>>);

impl ImportRegistry {
    /// Where a presented key is looked up: its lookup id and printable start, from
    /// Keygate's own format (borrowed: no allocation, no lookup; the checksum has held),
    /// else an imported prefix. `None`: not a key this Keygate issues or imported. Checks
    /// and leak reports identify a presented key through this one door.
    pub fn locate<'a>(&self, presented: &'a str) -> Option<(Cow<'a, str>, Cow<'a, str>)> {
        match key::parse(presented) {
            Ok(p) => Some((p.lookup_id.into(), p.head.into())),
            Err(_) => self
                .lookup(presented)
                .map(|(id, prefix)| (id.into(), prefix.into())),
        }
    }

    /// The lookup id and key prefix of an imported key, if `presented` starts with an
    /// imported prefix.
    pub fn lookup(&self, presented: &str) -> Option<(String, String)> {
        let rules = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        if rules.is_empty() {
            return None;
        }
        let rule = import::rule_for(&rules, presented)?;
        Some((import::lookup_id(rule, presented)?, rule.key_prefix.clone()))
    }

    /// Every imported prefix's rule, as last loaded.
    pub fn rules(&self) -> Arc<Vec<ImportRule>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, rules: Vec<ImportRule>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
    }

    pub async fn refresh(&self, store: &dyn ImportStore) -> Result<()> {
        self.set(store.import_rules().await?);
        Ok(())
    }
}
