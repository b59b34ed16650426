//! Why a check was decided as it was: the reason every entry point reports, with the
//! HTTP status a gateway should answer and client-safe text.

/// Why a decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Ok,
    MissingCredential,
    MalformedKey,
    KeyNotFound,
    KeyRevoked,
    KeyExpired,
    KeyDisabled,
    TenantMismatch,
    InsufficientScope,
    IpNotAllowed,
    QuotaExceeded,
    RateLimited,
}

impl Reason {
    /// What a gateway should answer.
    pub fn http_status(self) -> u16 {
        match self {
            Reason::Ok => 200,
            Reason::InsufficientScope | Reason::IpNotAllowed => 403,
            Reason::RateLimited | Reason::QuotaExceeded => 429,
            _ => 401,
        }
    }

    /// The documented name of the reason (as in the protobuf enum).
    pub fn code(self) -> &'static str {
        match self {
            Reason::Ok => "OK",
            Reason::MissingCredential => "MISSING_CREDENTIAL",
            Reason::MalformedKey => "MALFORMED_KEY",
            Reason::KeyNotFound => "KEY_NOT_FOUND",
            Reason::KeyRevoked => "KEY_REVOKED",
            Reason::KeyExpired => "KEY_EXPIRED",
            Reason::KeyDisabled => "KEY_DISABLED",
            Reason::TenantMismatch => "TENANT_MISMATCH",
            Reason::InsufficientScope => "INSUFFICIENT_SCOPE",
            Reason::IpNotAllowed => "IP_NOT_ALLOWED",
            Reason::RateLimited => "RATE_LIMITED",
            Reason::QuotaExceeded => "QUOTA_EXCEEDED",
        }
    }

    /// Text safe to show the client: it never contains the key.
    pub fn message(self) -> &'static str {
        match self {
            Reason::Ok => "Allowed",
            Reason::MissingCredential => "No API key was presented",
            Reason::MalformedKey => "Invalid API key",
            Reason::KeyNotFound => "Invalid API key",
            Reason::KeyRevoked => "The API key has been revoked",
            Reason::KeyExpired => "The API key has expired",
            Reason::KeyDisabled => "The API key is disabled",
            Reason::TenantMismatch => "The API key does not belong to this tenant",
            Reason::InsufficientScope => "Your plan or API key scopes do not allow this endpoint",
            Reason::IpNotAllowed => {
                "Requests from this IP address are not allowed for this API key"
            }
            Reason::RateLimited => "Rate limit exceeded",
            Reason::QuotaExceeded => "Quota exceeded",
        }
    }
}
