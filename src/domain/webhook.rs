//! Webhook endpoints and deliveries, signed per the Standard Webhooks specification: the
//! headers `webhook-id`, `webhook-timestamp` and `webhook-signature` (`v1,` + base64 of the
//! HMAC-SHA256 of `id.timestamp.body` under the endpoint's secret, `whsec_` + base64).
use super::event::EventType;
use super::UnixMillis;
use crate::error::{Error, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use std::net::IpAddr;
use std::time::Duration;

/// Longest endpoint URL accepted.
pub const MAX_URL_LEN: usize = 2048;
/// Longest endpoint description.
pub const MAX_DESCRIPTION_CHARS: usize = 500;
/// Endpoints one tenant may have.
pub const MAX_ENDPOINTS_PER_TENANT: usize = 20;
/// How long the secret before a rotation keeps signing beside the new one, so receivers
/// can switch without dropping a delivery.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// An endpoint's signing secret: `whsec_` + base64 of 32 random bytes. Never printed.
#[derive(Clone)]
pub struct SigningSecret(SecretString);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

impl SigningSecret {
    pub fn generate() -> SigningSecret {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        SigningSecret(SecretString::from(format!("whsec_{}", B64.encode(bytes))))
    }

    /// A stored secret; `None` when it is not `whsec_` + base64.
    pub fn from_stored(s: String) -> Option<SigningSecret> {
        let key = s.strip_prefix("whsec_")?;
        B64.decode(key).ok().filter(|k| !k.is_empty())?;
        Some(SigningSecret(SecretString::from(s)))
    }

    /// The `whsec_…` text: to store it, or to show it once to its creator.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    fn key(&self) -> Vec<u8> {
        let text = self.0.expose_secret();
        B64.decode(text.strip_prefix("whsec_").unwrap_or(text))
            .unwrap_or_default()
    }

    /// `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
    pub fn sign(&self, msg_id: &str, timestamp_secs: i64, body: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.key());
        let mut ctx = ring::hmac::Context::with_key(&key);
        ctx.update(msg_id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp_secs.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        format!("v1,{}", B64.encode(ctx.sign().as_ref()))
    }
}

/// A tenant's webhook endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: String,
    pub tenant_id: String,
    pub url: String,
    pub description: String,
    /// Empty: every type.
    pub event_types: Vec<EventType>,
    pub secret: SigningSecret,
    /// The secret before the last rotation, and until when it still signs.
    pub previous: Option<(SigningSecret, UnixMillis)>,
    pub enabled: bool,
    /// Why Keygate disabled it (empty when enabled, or disabled by an admin).
    pub disabled_reason: String,
    pub create_time: UnixMillis,
    pub update_time: UnixMillis,
}

impl Endpoint {
    pub fn wants(&self, kind: EventType) -> bool {
        self.event_types.is_empty() || self.event_types.contains(&kind)
    }

    /// The `webhook-signature` header: the current secret's signature, and the previous
    /// secret's while it overlaps, space-separated as the specification allows.
    pub fn signature(
        &self,
        msg_id: &str,
        timestamp_secs: i64,
        body: &[u8],
        now: UnixMillis,
    ) -> String {
        let mut sig = self.secret.sign(msg_id, timestamp_secs, body);
        if let Some((old, until)) = &self.previous {
            if now < *until {
                sig.push(' ');
                sig.push_str(&old.sign(msg_id, timestamp_secs, body));
            }
        }
        sig
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Pending,
    Delivered,
    /// Given up after the retry period, or its endpoint deleted.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryState> {
        match s {
            "pending" => Some(DeliveryState::Pending),
            "delivered" => Some(DeliveryState::Delivered),
            "failed" => Some(DeliveryState::Failed),
            _ => None,
        }
    }
}

/// One event's delivery to one endpoint.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub event_seq: i64,
    pub event_id: String,
    pub event_type: String,
    pub endpoint_id: String,
    pub tenant_id: String,
    pub state: DeliveryState,
    pub attempts: u32,
    pub next_attempt_time: UnixMillis,
    pub first_attempt_time: Option<UnixMillis>,
    /// HTTP status of the last attempt; 0 when it got none.
    pub last_status: u16,
    /// Why the last attempt failed (no response body is kept).
    pub last_error: String,
    pub create_time: UnixMillis,
    pub finish_time: Option<UnixMillis>,
}

/// How an attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// 2xx.
    Delivered { status: u16 },
    /// Anything else: a status, a timeout, a refused connection.
    Failed { status: u16, error: String },
}

/// The delay before retry number `attempt` (1 = the first retry): exponential from
/// `initial`, capped at `max`, with "full jitter" in [d/2, d] so replicas and endpoints do
/// not retry in lockstep. `unit` is a uniform sample in [0, 1).
pub fn retry_delay(attempt: u32, initial: Duration, max: Duration, unit: f64) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let d = exp.min(max);
    d.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// Whether an address is one a webhook may target without `allow_private_targets`: not
/// loopback, private, link-local, unique-local, carrier-grade NAT, documentation,
/// benchmarking, multicast, broadcast or unspecified (and IPv4 inside IPv6 alike).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
                || (a == 192 && b == 0 && c == 0) // IETF 192.0.0/24
                || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18/15
                || a >= 240) // reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link local fe80::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64: an IPv4 behind it
                || s[0] == 0x2002 // 6to4: an IPv4 inside
                || (s[0] & 0xffc0) == 0xfec0 // site local fec0::/10
                || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0))
            // IPv4-compatible
        }
    }
}

/// The URL as stored (normalised: percent-encoded, punycode) fits its column.
pub fn validate_url_len(field: &str, normalised: &str) -> Result<()> {
    if normalised.len() > MAX_URL_LEN {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_URL_LEN} characters once normalised"),
        ));
    }
    Ok(())
}

/// An endpoint URL, checked: `http` or `https`, a host, no credentials, at most
/// [`MAX_URL_LEN`]; and unless `allow_private`, no host that names this machine or a
/// private network (`localhost`, a private or loopback address). Host names are checked
/// again, resolved, at every delivery.
pub fn validate_url(field: &str, raw: &str, allow_private: bool) -> Result<url::Url> {
    if raw.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if raw.len() > MAX_URL_LEN {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_URL_LEN} characters"),
        ));
    }
    let url = url::Url::parse(raw)
        .map_err(|e| Error::invalid(field, format!("is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::invalid(field, "must be an http or https URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::invalid(
            field,
            "must not carry credentials; the signature authenticates deliveries",
        ));
    }
    if url.fragment().is_some() {
        return Err(Error::invalid(field, "must not have a #fragment"));
    }
    let host = match url.host() {
        Some(h) => h,
        None => return Err(Error::invalid(field, "must name a host")),
    };
    if allow_private {
        return Ok(url);
    }
    let refused = || {
        Error::invalid(
            field,
            "targets a loopback, private or link-local address; webhooks go to public \
             hosts only (an operator may allow private targets with \
             events.allow_private_targets)",
        )
    };
    match host {
        url::Host::Ipv4(ip) if !is_public(IpAddr::V4(ip)) => Err(refused()),
        url::Host::Ipv6(ip) if !is_public(IpAddr::V6(ip)) => Err(refused()),
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d == "localhost"
                || d.ends_with(".localhost")
                || d.ends_with(".local")
                || d.ends_with(".internal")
            {
                Err(refused())
            } else {
                Ok(url)
            }
        }
        _ => Ok(url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The specification's published example (standard-webhooks spec, "Signature
        // scheme"): this secret, id, timestamp and body give this signature.
        let s =
            SigningSecret::from_stored("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()).unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            s.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let s = SigningSecret::generate();
        assert!(s.expose().starts_with("whsec_"));
        assert!(!format!("{s:?}").contains(s.expose()));
    }

    #[test]
    fn private_targets_are_refused_unless_allowed() {
        for bad in [
            "http://127.0.0.1/hook",
            "http://localhost:8080/",
            "http://api.localhost/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0/",
            "http://100.64.0.1/",
            "http://[2002:7f00:1::]/",
            "http://[fec0::1]/",
            "http://2130706433/",
        ] {
            let e = validate_url("url", bad, false).unwrap_err().to_string();
            assert!(e.contains("url"), "{bad}: {e}");
            assert!(validate_url("url", bad, true).is_ok(), "{bad}");
        }
        for bad in [
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "nope",
            "",
        ] {
            assert!(validate_url("url", bad, true).is_err(), "{bad}");
        }
        assert!(validate_url("url", "https://hooks.example.com/keygate", false).is_ok());
        assert!(validate_url("url", "http://93.184.216.34:8080/x", false).is_ok());
    }

    #[test]
    fn retries_back_off_with_jitter_and_a_cap() {
        let (i, m) = (Duration::from_secs(5), Duration::from_secs(3600));
        assert_eq!(retry_delay(1, i, m, 1.0), Duration::from_secs(5));
        assert_eq!(retry_delay(3, i, m, 1.0), Duration::from_secs(20));
        assert_eq!(retry_delay(3, i, m, 0.0), Duration::from_secs(10));
        assert_eq!(retry_delay(40, i, m, 1.0), m);
    }
}
