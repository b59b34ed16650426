//! The wire: generated protobuf types, conversions, and thin handlers.
pub mod auth;
pub mod authorize;
pub mod codec;
pub mod convert;
pub mod key_admin;

use crate::domain::key;
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
            Error::InvalidArgument { .. } => Status::invalid_argument(cut(&e.to_string(), 256)),
            Error::FailedPrecondition { .. } => {
                Status::failed_precondition(cut(&e.to_string(), 256))
            }
            Error::NotFound { what, ref id } => Status::not_found(if key::parse(id).is_ok() {
                // A secret sent where an id belongs is never sent back.
                format!("{what} not found (the id given is shaped like an API key: send ids, never secrets)")
            } else {
                format!("{what} {:?} not found", cut(id, 64))
            }),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::ResourceExhausted { message, .. } => Status::resource_exhausted(message),
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

/// `text` of at most `max` bytes (on a character boundary), marked when cut: messages
/// may quote what was rejected, and a 1 MB field must not come back as a 1 MB trailer.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (cut)", &text[..end])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_and_secrets_never_echoed() {
        let s = Status::from(Error::invalid("time_zone", "x".repeat(1_000_000)));
        assert!(s.message().len() < 300, "{}", s.message().len());
        assert!(s.message().ends_with("… (cut)"));
        let secret = crate::domain::ApiKeyFormat::generate("kg_live_");
        let presented = secrecy::ExposeSecret::expose_secret(&secret.full).to_owned();
        let s = Status::from(Error::not_found("tenant", presented.clone()));
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert!(!s.message().contains(&presented), "{}", s.message());
        let s = Status::from(Error::not_found("key", "key_abc"));
        assert_eq!(s.message(), "key \"key_abc\" not found");
        assert_eq!(cut("héllo", 2), "h… (cut)");
    }
}
