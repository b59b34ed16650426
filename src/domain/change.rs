//! The port through which key lifecycle changes are announced: the cache drops its copies,
//! and with several replicas the change feed carries them on.
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

/// A shared listener.
pub type Listener = Arc<dyn ChangeListener>;
