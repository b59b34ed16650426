//! Page sizes and page tokens. A token is opaque to clients but plain to us: the sort key
//! of the last item returned, so a page resumes exactly after it even while rows are
//! inserted, with no server-side cursor state.
use crate::domain::UnixMillis;
use crate::error::{Error, Result};

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// A page request: size 0 = default; token as returned by the previous page.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub size: u32,
    pub token: String,
}

impl Page {
    /// Rows to read: the requested size, or the default.
    pub(super) fn limit(&self) -> Result<u64> {
        match self.size {
            0 => Ok(u64::from(DEFAULT_PAGE_SIZE)),
            1..=MAX_PAGE_SIZE => Ok(u64::from(self.size)),
            _ => Err(Error::invalid(
                "page_size",
                format!("must be at most {MAX_PAGE_SIZE}"),
            )),
        }
    }

    /// The (time, id) a time-ordered page resumes from: `None` on the first page. Ids
    /// must carry `id_prefix` (`key_`, `aud_`), so a token of one list is refused by
    /// another.
    pub(super) fn time_cursor(&self, id_prefix: &str) -> Result<Option<(UnixMillis, String)>> {
        if self.token.is_empty() {
            return Ok(None);
        }
        let (t, id) = self.token.split_once('.').ok_or_else(bad_token)?;
        let t: i64 = t.parse().map_err(|_| bad_token())?;
        if !id.starts_with(id_prefix) {
            return Err(bad_token());
        }
        Ok(Some((UnixMillis(t), id.to_owned())))
    }
}

impl Page {
    /// The id an id-ordered page resumes after (`None` on the first page); the token must
    /// be `<kind>.<id>` as [`id_token`] wrote it.
    pub(super) fn id_cursor(&self, kind: &str) -> Result<Option<String>> {
        if self.token.is_empty() {
            return Ok(None);
        }
        let id = self
            .token
            .strip_prefix(kind)
            .and_then(|rest| rest.strip_prefix('.'))
            .ok_or_else(bad_token)?;
        crate::domain::text::validate_tenant_id("page_token", id).map_err(|_| bad_token())?;
        Ok(Some(id.to_owned()))
    }
}

/// The token of an id-ordered item.
pub(super) fn id_token(kind: &str, id: &str) -> String {
    format!("{kind}.{id}")
}

pub(super) fn bad_token() -> Error {
    Error::invalid("page_token", "is not a token this server returned")
}

/// The token of the page after `items`: empty when this page was the last (shorter than
/// `limit`), else the sort key of its last item.
pub(super) fn next_token<T>(items: &[T], limit: u64, key: impl Fn(&T) -> String) -> String {
    match items.last() {
        Some(last) if items.len() as u64 == limit => key(last),
        _ => String::new(),
    }
}

/// The token form of a time-ordered item's sort key.
pub(super) fn time_token(time: UnixMillis, id: &str) -> String {
    format!("{}.{id}", time.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(size: u32, token: &str) -> Page {
        Page {
            size,
            token: token.to_owned(),
        }
    }

    #[test]
    fn limit_defaults_and_caps() {
        assert_eq!(page(0, "").limit().unwrap(), 100);
        assert_eq!(page(1, "").limit().unwrap(), 1);
        assert_eq!(page(MAX_PAGE_SIZE, "").limit().unwrap(), 1000);
        let e = page(MAX_PAGE_SIZE + 1, "").limit().unwrap_err();
        assert!(e.to_string().starts_with("page_size: "), "{e}");
    }

    #[test]
    fn time_cursor_round_trips_and_refuses_foreign_tokens() {
        let token = time_token(UnixMillis(1_700_000_000_123), "key_abc");
        assert_eq!(
            page(0, &token).time_cursor("key_").unwrap(),
            Some((UnixMillis(1_700_000_000_123), "key_abc".to_owned()))
        );
        assert_eq!(page(0, "").time_cursor("key_").unwrap(), None);
        for bad in ["nodot", "x.key_abc", "12.aud_abc", "12", ".key_"] {
            let e = page(0, bad).time_cursor("key_").unwrap_err();
            assert!(e.to_string().starts_with("page_token: "), "{bad}: {e}");
        }
    }

    #[test]
    fn id_cursor_takes_only_its_own_tokens() {
        let token = id_token("tenants", "acme");
        assert_eq!(
            page(0, &token).id_cursor("tenants").unwrap(),
            Some("acme".into())
        );
        for bad in ["acme", "keys.acme", "tenants.", "tenants.a b", "tenants"] {
            let e = page(0, bad).id_cursor("tenants").unwrap_err();
            assert!(e.to_string().starts_with("page_token: "), "{bad}: {e}");
        }
    }

    #[test]
    fn next_token_only_when_the_page_is_full() {
        let items = ["a", "b"];
        assert_eq!(next_token(&items, 2, |s| s.to_string()), "b");
        assert_eq!(next_token(&items, 3, |s| s.to_string()), "");
        assert_eq!(next_token::<&str>(&[], 2, |s| s.to_string()), "");
    }
}
