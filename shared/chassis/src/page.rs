//! Pagination: page sizes and opaque page tokens.
//!
//! Lists are ordered by id (UUIDv7, i.e. creation order) and continue after
//! the last id returned (keyset pagination: no OFFSET scans, and stable while
//! rows are added).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::ServiceError;

/// Default number of items per page.
pub const DEFAULT_PAGE_SIZE: u64 = 50;
/// Largest accepted page size.
pub const MAX_PAGE_SIZE: u64 = 500;

const TOKEN_PREFIX: &str = "v1:";

/// A validated page request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub size: u64,
    /// Continue after this key; `None` for the first page.
    pub after: Option<String>,
}

impl PageRequest {
    pub fn parse(page_size: i32, page_token: &str) -> Result<Self, ServiceError> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => {
                return Err(ServiceError::invalid("page_size", "must not be negative"));
            }
            n => u64::try_from(n).unwrap_or(MAX_PAGE_SIZE),
        };
        if size > MAX_PAGE_SIZE {
            return Err(ServiceError::invalid(
                "page_size",
                format!("must be at most {MAX_PAGE_SIZE}"),
            ));
        }
        let after = if page_token.is_empty() {
            None
        } else {
            Some(decode_token(page_token).ok_or_else(|| {
                ServiceError::invalid("page_token", "is not a token returned by this list")
            })?)
        };
        Ok(Self { size, after })
    }

    /// Rows to fetch: one more than the page, to know whether another follows.
    pub fn fetch_limit(&self) -> u64 {
        self.size + 1
    }

    /// Cuts a fetched batch to the page and makes the next token from the
    /// last kept item's key.
    pub fn finish<T>(&self, mut rows: Vec<T>, key: impl Fn(&T) -> String) -> (Vec<T>, String) {
        let more = rows.len() as u64 > self.size;
        rows.truncate(self.size as usize);
        let token = match (more, rows.last()) {
            (true, Some(last)) => encode_token(&key(last)),
            _ => String::new(),
        };
        (rows, token)
    }
}

fn encode_token(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{TOKEN_PREFIX}{key}"))
}

fn decode_token(token: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let key = text.strip_prefix(TOKEN_PREFIX)?;
    (!key.is_empty() && key.len() <= 256).then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_default_and_cap() {
        assert_eq!(
            PageRequest::parse(0, "").expect("ok").size,
            DEFAULT_PAGE_SIZE
        );
        assert_eq!(PageRequest::parse(7, "").expect("ok").size, 7);
        assert!(PageRequest::parse(-1, "").is_err());
        assert!(PageRequest::parse(501, "").is_err());
        assert!(PageRequest::parse(10, "garbage!").is_err());
    }

    #[test]
    fn tokens_continue_after_the_last_item() {
        let page = PageRequest::parse(2, "").expect("ok");
        let (rows, token) = page.finish(vec!["a", "b", "c"], |s| s.to_string());
        assert_eq!(rows, ["a", "b"]);
        let next = PageRequest::parse(2, &token).expect("ok");
        assert_eq!(next.after.as_deref(), Some("b"));
        let (rows, token) = next.finish(vec!["c"], |s| s.to_string());
        assert_eq!(rows, ["c"]);
        assert!(token.is_empty());
    }
}
