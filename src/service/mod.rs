//! Keygate's operations, generic over the store's seams: the key lifecycle (`admin`) and
//! the one decision procedure every entry point shares (`check`).
pub mod admin;
pub mod changes;
pub mod check;
pub mod events;
pub mod guessing;
pub mod imports;
pub mod leaks;
pub mod quota;
pub mod reservations;
pub mod tokens;
pub mod usage;
