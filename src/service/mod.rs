//! Keygate's operations, generic over the store: the key lifecycle (`admin`) and the one
//! decision procedure every entry point shares (`check`).
pub mod admin;
pub mod changes;
pub mod check;
pub mod guessing;
pub mod imports;
pub mod quota;
pub mod usage;

use std::sync::Arc;

/// Told about every change to a key or tenant, so cached copies can be dropped at once.
pub trait ChangeListener: Send + Sync + 'static {
    fn key_changed(&self, key_id: &str, lookup_id: &str);
    fn tenant_changed(&self, tenant_id: &str);
}

/// A listener that does nothing (for tools like `keygate migrate` that hold no cache).
pub struct NoListener;

impl ChangeListener for NoListener {
    fn key_changed(&self, _: &str, _: &str) {}
    fn tenant_changed(&self, _: &str) {}
}

pub type Listener = Arc<dyn ChangeListener>;
