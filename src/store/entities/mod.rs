//! sea-orm entities, one file per table. Rows mirror `migrations/`; conversion to the
//! domain happens in `store::sea`.
pub mod admin_tokens;
pub mod api_keys;
pub mod audit_events;
pub mod import_prefixes;
pub mod plans;
pub mod tenants;
