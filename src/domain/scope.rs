//! Scopes: `*`, a bare word (`read`, `export`), `resource:action` or `resource:*`.
use crate::error::{Error, Result};
use std::fmt;

pub const MAX_SCOPE_LEN: usize = 64;
pub const MAX_SCOPES: usize = 256;

/// A well-formed scope. Construct with [`Scope::parse`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope(String);

fn is_word(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

impl Scope {
    /// Parses `[a-z][a-z0-9-]*(:([a-z][a-z0-9-]*|\*))?` or `*`, at most 64 chars.
    pub fn parse(field: &str, s: &str) -> Result<Self> {
        if s.len() > MAX_SCOPE_LEN {
            return Err(Error::invalid(
                field,
                format!("scope is longer than {MAX_SCOPE_LEN} characters"),
            ));
        }
        let ok = s == "*"
            || match s.split_once(':') {
                None => is_word(s),
                Some((res, act)) => is_word(res) && (act == "*" || is_word(act)),
            };
        if ok {
            Ok(Scope(s.to_owned()))
        } else {
            Err(Error::invalid(
                field,
                format!("{s:?} is not a scope: expected '*', 'word', 'resource:action' or 'resource:*' in lowercase letters, digits and '-'"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether holding `self` grants `required`: `*` grants all, `res:*` grants every
    /// `res:<action>`, anything else only itself.
    pub fn grants(&self, required: &Scope) -> bool {
        if self.0 == "*" || self == required {
            return true;
        }
        match self.0.strip_suffix(":*") {
            Some(res) => required.0.split_once(':').is_some_and(|(r, _)| r == res),
            None => false,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key's scopes, deduplicated and sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(Vec<Scope>);

impl ScopeSet {
    /// Parses a list from the wire; `field` names the list, entries are `field[i]`.
    pub fn parse<S: AsRef<str>>(field: &str, raw: &[S]) -> Result<Self> {
        if raw.len() > MAX_SCOPES {
            return Err(Error::invalid(
                field,
                format!("has {} scopes; at most {MAX_SCOPES} are allowed", raw.len()),
            ));
        }
        let scopes = raw
            .iter()
            .enumerate()
            .map(|(i, s)| Scope::parse(&format!("{field}[{i}]"), s.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::from_scopes(scopes))
    }

    pub fn from_scopes(mut scopes: Vec<Scope>) -> Self {
        scopes.sort();
        scopes.dedup();
        ScopeSet(scopes)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|s| s.0.clone()).collect()
    }

    /// The scopes in one string, `sep` between them (one allocation).
    pub fn joined(&self, sep: &str) -> String {
        let mut out = String::with_capacity(self.0.iter().map(|s| s.0.len() + sep.len()).sum());
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                out.push_str(sep);
            }
            out.push_str(&s.0);
        }
        out
    }

    /// Whether any scope of the set grants `required`.
    pub fn grants(&self, required: &Scope) -> bool {
        self.0.iter().any(|s| s.grants(required))
    }

    /// The first member a key of a tenant with this `catalogue` may not hold. The catalogue
    /// is the exact list of holdable scopes (a listed `*` means keys may hold `*`, not that
    /// any scope may be held); an empty catalogue allows every well-formed scope.
    pub fn first_outside<'a>(&'a self, catalogue: &ScopeSet) -> Option<&'a Scope> {
        if catalogue.is_empty() {
            return None;
        }
        self.0.iter().find(|s| !catalogue.0.contains(s))
    }

    /// The scopes this set still grants under `catalogue`: members listed in the catalogue
    /// are kept; a wildcard member that is not listed is narrowed to the catalogue entries
    /// it grants; anything else is dropped. An empty catalogue restricts nothing.
    pub fn limited_to(&self, catalogue: &ScopeSet) -> ScopeSet {
        if catalogue.is_empty() {
            return self.clone();
        }
        let mut out = Vec::new();
        for s in &self.0 {
            if catalogue.0.contains(s) {
                out.push(s.clone());
            } else {
                out.extend(catalogue.0.iter().filter(|c| s.grants(c)).cloned());
            }
        }
        ScopeSet::from_scopes(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Scope {
        Scope::parse("t", x).unwrap()
    }
    fn set(xs: &[&str]) -> ScopeSet {
        ScopeSet::parse("t", xs).unwrap()
    }

    #[test]
    fn grammar() {
        for ok in [
            "*",
            "read",
            "export",
            "products:read",
            "ai-jobs:write",
            "webhooks:manage",
            "orders:*",
            "v2",
        ] {
            s(ok);
        }
        for bad in [
            "",
            "Read",
            "products:",
            ":read",
            "a:b:c",
            "*:read",
            "pro ducts",
            "1abc",
            "a:1b",
            &"a".repeat(65),
        ] {
            assert!(Scope::parse("t", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn error_names_the_entry() {
        let e = ScopeSet::parse("scopes", &["read", "BAD"])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("scopes[1]:"), "{e}");
    }

    #[test]
    fn grants() {
        assert!(s("*").grants(&s("orders:write")));
        assert!(s("orders:*").grants(&s("orders:write")));
        assert!(!s("orders:*").grants(&s("products:read")));
        assert!(!s("orders:*").grants(&s("orders")));
        assert!(!s("write").grants(&s("read")));
        assert!(s("read").grants(&s("read")));
    }

    #[test]
    fn limited_to_catalogue_narrows_wildcards_and_drops_the_rest() {
        let cat = set(&["competitors:read", "alerts:read", "usage:read"]);
        assert_eq!(set(&["*"]).limited_to(&cat), cat);
        assert_eq!(
            set(&["alerts:read", "export"]).limited_to(&cat),
            set(&["alerts:read"])
        );
        assert_eq!(set(&["alerts:*"]).limited_to(&cat), set(&["alerts:read"]));
        assert_eq!(
            set(&["export"]).limited_to(&ScopeSet::default()),
            set(&["export"])
        );
        // A catalogue of only `*` admits full-access keys and nothing narrower.
        assert_eq!(
            set(&["orders:read"]).limited_to(&set(&["*"])),
            ScopeSet::default()
        );
        assert_eq!(set(&["*"]).limited_to(&set(&["*", "a:read"])), set(&["*"]));
    }

    #[test]
    fn catalogue_membership_is_exact() {
        let cat = set(&["products:read", "orders:*", "*"]);
        assert!(set(&["*", "orders:*", "products:read"])
            .first_outside(&cat)
            .is_none());
        assert_eq!(
            set(&["orders:read"])
                .first_outside(&cat)
                .map(|s| s.as_str()),
            Some("orders:read")
        );
        assert_eq!(
            set(&["billing:read"])
                .first_outside(&cat)
                .map(|s| s.as_str()),
            Some("billing:read")
        );
        assert!(set(&["anything"])
            .first_outside(&ScopeSet::default())
            .is_none());
    }
}
