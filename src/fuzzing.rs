//! Fuzz target bodies, shared by the cargo-fuzz targets in `fuzz/` and by the regression
//! test that replays `fuzz/regressions/` in the normal suite, so both run the same code.
//! Each asserts invariants, not only "does not panic". Not part of the API.
use crate::config::Config;
use crate::domain::key::{self, BODY_LEN, CHECKSUM_LEN, LOOKUP_LEN, SECRET_LEN};
use crate::domain::{IpAllowlist, Scope, ScopeSet, UnixMillis};
use crate::envoy::{self, settings::EnvoyConfig};
use crate::service::check::{Decision, Reason};
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::service::auth::v3 as ext;
use std::collections::HashMap;
use std::net::IpAddr;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name (`fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: &[(&str, Target)] = &[
    ("key", key),
    ("scopes", scopes),
    ("ip_allowlist", ip_allowlist),
    ("ext_authz", ext_authz),
    ("config", config),
];

fn lines(data: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(data)
        .split('\n')
        .map(str::to_owned)
        .collect()
}

/// Key parsing and the checksum: a key that parses is exactly its parts plus their
/// checksum, and any single-character change of its body is caught without a lookup.
pub fn key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = key::parse(text) else {
        // The right shape with its checksum recomputed can only fail for its prefix.
        if let Some(split) = text.rfind('_') {
            let (head, body) = text.split_at(split + 1);
            if body.len() == BODY_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric()) {
                let fixed = key::assemble(
                    head,
                    &body[..LOOKUP_LEN],
                    &body[LOOKUP_LEN..LOOKUP_LEN + SECRET_LEN],
                );
                assert_eq!(
                    key::parse(&fixed).err(),
                    key::parse(&fixed)
                        .err()
                        .filter(|e| *e == key::MalformedKey::BadPrefix),
                    "a re-summed key fails only for its prefix"
                );
            }
        }
        return;
    };
    let body = &text[parsed.head.len()..];
    assert_eq!(body.len(), BODY_LEN);
    assert_eq!(parsed.lookup_id, &body[..LOOKUP_LEN]);
    let secret = &body[LOOKUP_LEN..LOOKUP_LEN + SECRET_LEN];
    assert_eq!(key::assemble(parsed.head, parsed.lookup_id, secret), text);
    // CRC32 catches every single-character change.
    let at = data.len() - CHECKSUM_LEN - 1 - (data[0] as usize % (BODY_LEN - CHECKSUM_LEN));
    let mut typo = text.as_bytes().to_vec();
    typo[at] = if typo[at] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap_or_default();
    assert!(key::parse(&typo).is_err(), "a one-character typo is caught");
}

/// Scope parsing and matching: a set grants each of its scopes, `*` grants everything,
/// `res:*` grants every `res:<action>`, and limiting a set to itself changes nothing.
pub fn scopes(data: &[u8]) {
    let raw = lines(data);
    let Ok(set) = ScopeSet::parse("scopes", &raw) else {
        return;
    };
    assert!(set.first_outside(&set).is_none());
    assert_eq!(set.limited_to(&set), set);
    let reparsed = ScopeSet::parse("scopes", &set.to_strings()).expect("canonical form parses");
    assert_eq!(reparsed, set);
    let all = Scope::parse("s", "*").expect("* parses");
    for s in set.iter() {
        assert!(set.grants(s), "{s:?} granted by its own set");
        assert!(all.grants(s));
        if let Some(res) = s.as_str().strip_suffix(":*") {
            // (`res:x` is one character shorter than `res:*`, so it always parses.)
            let action = Scope::parse("s", &format!("{res}:x")).expect("res:action parses");
            assert!(s.grants(&action));
        } else if s.as_str() != "*" {
            assert!(!s.grants(&all), "only * grants *");
        }
    }
}

/// IP allowlists: canonical text re-parses to the same list; each listed address is
/// admitted; an empty list admits anyone, a non-empty one never an unknown address.
pub fn ip_allowlist(data: &[u8]) {
    let mut raw = lines(data);
    let probe = raw.pop().unwrap_or_default();
    let Ok(list) = IpAllowlist::parse("ip_allowlist", &raw) else {
        return;
    };
    let canonical = list.to_strings();
    assert_eq!(
        IpAllowlist::parse("ip_allowlist", &canonical).expect("canonical form parses"),
        list
    );
    assert_eq!(list.admits(None), list.is_empty());
    for r in &raw {
        if let Ok(ip) = r.trim().parse::<IpAddr>() {
            assert!(list.admits(Some(ip)), "{ip} is on the list");
        }
    }
    if let Ok(ip) = probe.trim().parse::<IpAddr>() {
        if list.is_empty() {
            assert!(list.admits(Some(ip)));
        }
        // IPv4-mapped IPv6 and IPv4 are the same address.
        if let IpAddr::V4(v4) = ip {
            assert_eq!(
                list.admits(Some(ip)),
                list.admits(Some(IpAddr::V6(v4.to_ipv6_mapped())))
            );
        }
    }
}

/// An ext_authz request from fuzz bytes: a raw protobuf (first byte 0), or lines
/// `h:name=value` (header), `x:key=value` (context extension), `a:address`, `p:path`,
/// `m:method`.
fn check_request(data: &[u8]) -> Option<ext::CheckRequest> {
    if let Some(raw) = data.strip_prefix(&[0]) {
        return prost::Message::decode(raw).ok();
    }
    let mut headers = HashMap::new();
    let mut extensions = HashMap::new();
    let (mut address, mut path, mut method) = (String::new(), String::new(), String::new());
    for line in lines(data) {
        let Some((kind, rest)) = line.split_once(':') else {
            continue;
        };
        let pair = || {
            rest.split_once('=')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
        };
        match kind {
            "h" => headers.extend(pair()),
            "x" => extensions.extend(pair()),
            "a" => address = rest.to_owned(),
            "p" => path = rest.to_owned(),
            "m" => method = rest.to_owned(),
            _ => {}
        }
    }
    Some(ext::CheckRequest {
        attributes: Some(ext::AttributeContext {
            source: Some(ext::attribute_context::Peer {
                address: Some(core::Address {
                    address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                        address,
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(ext::attribute_context::Request {
                http: Some(ext::attribute_context::HttpRequest {
                    headers,
                    path,
                    method,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: extensions,
            ..Default::default()
        }),
    })
}

/// ext_authz translation: the credential only ever comes from a header, and a denial sent
/// back to Envoy (headers and body) never contains it.
pub fn ext_authz(data: &[u8]) {
    let Some(req) = check_request(data) else {
        return;
    };
    let Ok((input, settings)) = envoy::translate(&EnvoyConfig::default(), &req) else {
        return;
    };
    assert!(input.cost >= 1);
    if input.api_key.is_empty() {
        return;
    }
    let headers = envoy_types::ext_authz::v3::CheckRequestExt::get_client_headers(&req)
        .cloned()
        .unwrap_or_default();
    let from_header = |v: &String| {
        use base64::Engine;
        // Verbatim, or inside a Basic credential (user or password part).
        v.contains(&input.api_key)
            || v.split_whitespace().any(|word| {
                base64::engine::general_purpose::STANDARD
                    .decode(word)
                    .is_ok_and(|d| String::from_utf8_lossy(&d).contains(&input.api_key))
            })
    };
    assert!(
        headers.values().any(from_header),
        "the credential came from a header"
    );
    // A denial does not depend on the key at all: the same request with every copy of the
    // key replaced answers the same (so it cannot echo it; comparing texts instead would
    // flag a key that happens to equal, say, the credential header's name).
    let other = "Z".repeat(input.api_key.len());
    let swapped: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.clone(), v.replace(&input.api_key, &other)))
        .collect();
    for reason in [
        Reason::MalformedKey,
        Reason::KeyNotFound,
        Reason::RateLimited,
    ] {
        let d = Decision {
            reason,
            key: None,
            scopes: ScopeSet::default(),
            rate_limit: None,
            quota: None,
            reservation_id: None,
        };
        let shown = format!(
            "{:?}",
            envoy::respond(&d, &settings, &headers, UnixMillis(0))
        );
        let with_other = format!(
            "{:?}",
            envoy::respond(&d, &settings, &swapped, UnixMillis(0))
        );
        assert_eq!(shown, with_other, "a denial depends on the presented key");
    }
}

/// Configuration parsing: deterministic, and a refusal names what is wrong.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = Config::from_toml_str(text);
    let second = Config::from_toml_str(text);
    match (&first, &second) {
        (Ok(_), Ok(_)) => {}
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string());
            assert!(!a.to_string().is_empty());
        }
        _ => panic!("the same text parsed differently"),
    }
}
