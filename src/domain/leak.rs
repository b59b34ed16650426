//! Leaked keys: what a secret scanner reports, what a tenant wants done about it, and what
//! a report found. Pure rules; the responder (`service::leaks`) applies them.
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Longest reported URL kept in the audit trail (longer ones are cut).
pub const MAX_REPORT_URL: usize = 300;
/// Longest reported source kept in the audit trail. With the URL and the rest of the
/// event's detail this stays within the trail's 600 characters on every store.
pub const MAX_REPORT_SOURCE: usize = 100;
/// Most tokens one report may carry.
pub const MAX_TOKENS_PER_REPORT: usize = 1000;

/// A tenant's response to one of its keys turning up in public (`TenantPolicy.on_leak`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeakAction {
    /// Revoke the key at once (the default): it never works again.
    #[default]
    Revoke,
    /// Disable it: it stops working until an admin enables it again (UpdateKey).
    Disable,
    /// Change nothing: record the report in the audit trail and metrics only.
    Notify,
}

impl LeakAction {
    pub fn as_str(self) -> &'static str {
        match self {
            LeakAction::Revoke => "revoke",
            LeakAction::Disable => "disable",
            LeakAction::Notify => "notify",
        }
    }
}

/// One token a scanner found, and where. `Debug` never shows the token.
#[derive(Clone)]
pub struct LeakReport {
    pub token: SecretString,
    /// The scanner's name for the token type (GitHub's `type`), if it gave one.
    pub kind: String,
    /// Where it was found (a commit URL, a paste), as reported.
    pub url: String,
    /// What kind of place (GitHub's `source`: `content`, `commit`, `gist`, …) or the
    /// scanner's name.
    pub source: String,
}

impl std::fmt::Debug for LeakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeakReport")
            .field("token", &"<redacted>")
            .field("kind", &self.kind)
            .field("url", &self.url)
            .field("source", &self.source)
            .finish()
    }
}

impl LeakReport {
    /// `url` and `source` fit for the audit trail: control characters dropped, then the
    /// token blanked out should the reporter have put it there, as it is or
    /// percent-encoded (a URL like `…?key=<token>`), then cut to length
    /// ([`MAX_REPORT_URL`], [`MAX_REPORT_SOURCE`]): nothing Keygate stores holds a raw key.
    pub fn scrubbed(&self) -> (String, String) {
        let token = self.token.expose_secret();
        let forms = [
            token.to_owned(),
            percent_encoded(token, false),
            percent_encoded(token, true),
        ];
        let clean = |text: &str, max: usize| -> String {
            let mut text: String = text.chars().filter(|c| !c.is_control()).collect();
            if !token.is_empty() {
                for form in &forms {
                    text = text.replace(form.as_str(), "[token]");
                }
            }
            text.chars().take(max).collect()
        };
        (
            clean(&self.url, MAX_REPORT_URL),
            clean(&self.source, MAX_REPORT_SOURCE),
        )
    }
}

/// `text` with every byte but unreserved URL characters as `%XX` (hex digits in lower
/// case when `lower`).
fn percent_encoded(text: &str, lower: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else if lower {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What a report found for one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeakVerdict {
    /// A live or past key of this Keygate: `action` is what was done about it now.
    Found {
        key_id: String,
        tenant_id: String,
        action: LeakOutcome,
    },
    /// Not shaped like a key this Keygate issues or imported (no lookup was made).
    NotAKey,
    /// Shaped like a key, but no key has this secret (or the reporter may not act on it).
    Unknown,
}

/// What was done about a found key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeakOutcome {
    Revoked,
    Disabled,
    /// Recorded only (`on_leak = notify`, or disable of a key already disabled).
    Notified,
    /// It was revoked before the report; recorded only.
    AlreadyRevoked,
}

impl LeakOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            LeakOutcome::Revoked => "revoked",
            LeakOutcome::Disabled => "disabled",
            LeakOutcome::Notified => "notified",
            LeakOutcome::AlreadyRevoked => "already_revoked",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(token: &str, url: &str) -> LeakReport {
        LeakReport {
            token: token.to_owned().into(),
            kind: "keygate_api_key".into(),
            url: url.into(),
            source: "content\n".into(),
        }
    }

    #[test]
    fn scrubbed_text_never_holds_the_token() {
        let r = report(
            "kg_secret123",
            "https://paste.example/raw?k=kg_secret123&x=1",
        );
        let (url, source) = r.scrubbed();
        assert_eq!(url, "https://paste.example/raw?k=[token]&x=1");
        assert_eq!(source, "content");
        // A control character inside the token does not hide it from the scrub.
        let r = report("kg_secret123", "https://x.example/?k=kg_sec\u{7}ret123");
        assert_eq!(r.scrubbed().0, "https://x.example/?k=[token]");
        // Nor does percent-encoding (imported keys may hold + / =).
        let r = report(
            "sk_a+b/c=",
            "https://x.example/?k=sk_a%2Bb%2Fc%3D&l=sk_a%2bb%2fc%3d",
        );
        assert_eq!(r.scrubbed().0, "https://x.example/?k=[token]&l=[token]");
        let long = report("t", &"a".repeat(5000));
        assert_eq!(long.scrubbed().0.chars().count(), MAX_REPORT_URL);
    }

    #[test]
    fn a_report_never_prints_its_token() {
        let shown = format!("{:?}", report("kg_secret123", "u"));
        assert!(!shown.contains("secret123"), "{shown}");
    }

    #[test]
    fn on_leak_defaults_to_revoke_and_reads_lowercase() {
        assert_eq!(LeakAction::default(), LeakAction::Revoke);
        let a: LeakAction = serde_json::from_str("\"notify\"").unwrap();
        assert_eq!(a, LeakAction::Notify);
        assert_eq!(
            serde_json::to_string(&LeakAction::Disable).unwrap(),
            "\"disable\""
        );
    }
}
