//! The wire: generated protobuf types, conversions, and thin handlers.
pub mod auth;
pub mod authorize;
pub mod convert;
pub mod key_admin;

use crate::error::Error;
use tonic::Status;

/// Generated `keygate.v1` types, clients and servers.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("keygate.v1");
}

/// The descriptor set server reflection serves.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("keygate_descriptor");

/// The one mapping from Keygate's error to gRPC. Internal causes are logged with their
/// chain and returned opaque; nothing here ever carries a key, hash or token.
impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
            Error::FailedPrecondition { .. } => Status::failed_precondition(e.to_string()),
            Error::NotFound { .. } => Status::not_found(e.to_string()),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::Unavailable { what, ref source } => {
                tracing::warn!(dependency = what, error = %chain(source.as_ref()), "dependency unavailable");
                Status::unavailable(format!("{what} unavailable; retry later"))
            }
            Error::Internal {
                context,
                ref source,
            } => {
                let cause = source.as_deref().map(|s| chain(s)).unwrap_or_default();
                tracing::error!(context, error = %cause, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
