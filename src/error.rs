//! The one error type of Keygate. Domain rules, stores and services return it; the gRPC
//! layer maps it to a `tonic::Status` in exactly one place (`impl From<Error> for Status` in
//! `grpc/mod.rs`).
//!
//! A *denial* (revoked key, missing scope, rate limited) is not an error: it is a
//! `Decision`. Errors are for requests that are wrong and for Keygate failing.

/// Everything that can go wrong in a Keygate operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is malformed; `field` names the offending field by its wire path.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// The request is well-formed but breaks a rule of the current state (a tenant's key
    /// cap, allowed expiries, a key that is already revoked).
    #[error("{rule}: {message}")]
    FailedPrecondition { rule: &'static str, message: String },
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller has used up a budget of its own (leak reports per minute); `retry_after`
    /// says when it may try again.
    #[error("{message}")]
    ResourceExhausted {
        message: String,
        retry_after: Option<std::time::Duration>,
    },
    /// A dependency (database, Redis) could not be reached or timed out: retrying may help,
    /// and gateways apply their failure mode.
    #[error("{what} unavailable")]
    Unavailable {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bug or an unexpected state. The cause is logged, never returned to the caller.
    #[error("internal error: {context}")]
    Internal {
        context: &'static str,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// Keygate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An `InvalidArgument` naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A `FailedPrecondition` naming the broken `rule`.
    pub fn precondition(rule: &'static str, message: impl Into<String>) -> Self {
        Error::FailedPrecondition {
            rule,
            message: message.into(),
        }
    }

    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound {
            what,
            id: id.into(),
        }
    }

    pub fn internal(context: &'static str) -> Self {
        Error::Internal {
            context,
            source: None,
        }
    }

    /// The kind's name, for metric labels (it names the gRPC code the kind maps to, so a
    /// dashboard reads the same as client-side error counts).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidArgument { .. } => "InvalidArgument",
            Error::FailedPrecondition { .. } => "FailedPrecondition",
            Error::NotFound { .. } => "NotFound",
            Error::Unauthenticated(_) => "Unauthenticated",
            Error::PermissionDenied(_) => "PermissionDenied",
            Error::ResourceExhausted { .. } => "ResourceExhausted",
            Error::Unavailable { .. } => "Unavailable",
            Error::Internal { .. } => "Internal",
        }
    }

    /// Prefixes the field of an `InvalidArgument` with its parent, e.g. `policy.` +
    /// `key_prefix`, so nested validation still names the full wire path.
    pub fn in_field(self, parent: &str) -> Self {
        match self {
            Error::InvalidArgument { field, message } => Error::InvalidArgument {
                field: format!("{parent}.{field}"),
                message,
            },
            other => other,
        }
    }
}
