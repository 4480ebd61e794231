//! Pagination: page sizes and opaque page tokens.
//!
//! Lists are ordered by id (UUIDv7, i.e. creation order) and continue after
//! the last id returned (keyset pagination: no OFFSET scans, and stable while
//! rows are added).
//!
//! A token is bound to the list that returned it, to that request's other
//! fields (its filters), as AIP-158 asks, and to the caller's tenant: a token
//! of another list, of this list with other filters or of another tenant is
//! refused rather than read as a key of another shape (a `changed_since`
//! listing's token on the plain listing gave an empty page and no next
//! token, which reads as "the end"; another tenant's token skipped
//! ListOpportunities' check of the account, which runs on a first page).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::context::TenantId;
use crate::error::ServiceError;

/// Default number of items per page.
pub const DEFAULT_PAGE_SIZE: u64 = 50;
/// Largest accepted page size.
pub const MAX_PAGE_SIZE: u64 = 500;

/// Tokens bound to their list and tenant (`v3:<scope>:<key>`).
const TOKEN_PREFIX: &str = "v3:";
/// Tokens bound to their list only (`v2:<scope>:<key>`), and tokens issued
/// before they were bound (`v1:<key>`): still read, so that a client paging
/// through a rolling upgrade is not refused; none is issued.
const LIST_BOUND_PREFIX: &str = "v2:";
const UNBOUND_PREFIX: &str = "v1:";

/// A list request: the name its tokens are bound to, and itself without its
/// page fields (what else a token is bound to).
pub trait ListRequest: prost::Message + Clone {
    /// The list, as `service.Rpc`: a token of one list is refused by another.
    const LIST: &'static str;
    fn without_page(&self) -> Self;
    /// The request's `page_size` and `page_token`.
    fn page(&self) -> (i32, &str);
}

macro_rules! list_requests {
    ($($list:literal => $request:ty),* $(,)?) => {$(
        impl ListRequest for $request {
            const LIST: &'static str = $list;
            fn without_page(&self) -> Self {
                let mut request = self.clone();
                request.page_size = 0;
                request.page_token.clear();
                request
            }
            fn page(&self) -> (i32, &str) {
                (self.page_size, &self.page_token)
            }
        }
    )*};
}

list_requests! {
    "lifecycle.ListAccounts" => cascade_proto::lifecycle::v1::ListAccountsRequest,
    "lifecycle.ListContacts" => cascade_proto::lifecycle::v1::ListContactsRequest,
    "lifecycle.ListAccountTransitions" => cascade_proto::lifecycle::v1::ListAccountTransitionsRequest,
    "lifecycle.ListContactTransitions" => cascade_proto::lifecycle::v1::ListContactTransitionsRequest,
    "lifecycle.ListNotifications" => cascade_proto::lifecycle::v1::ListNotificationsRequest,
    "opportunity.ListOpportunities" => cascade_proto::opportunity::v1::ListOpportunitiesRequest,
    "scoring.ListTopAccounts" => cascade_proto::scoring::v1::ListTopAccountsRequest,
    "scoring.ExplainAccountScore" => cascade_proto::scoring::v1::ExplainAccountScoreRequest,
    "admin.ListDeadLetters" => cascade_proto::admin::v1::ListDeadLettersRequest,
}

/// What a request's tokens are bound to: the tenant, its list and its other
/// fields, as sent (a filter written another way is another listing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListScope {
    /// Of the tenant, the list and the filters.
    bound: String,
    /// Of the list and the filters alone, as `v2:` tokens were.
    list: String,
}

impl ListScope {
    pub fn of<R: ListRequest>(tenant: &TenantId, request: &R) -> Self {
        let mut hash = Sha256::new();
        hash.update(R::LIST.as_bytes());
        hash.update([0]);
        hash.update(request.without_page().encode_to_vec());
        let list = hash.clone();
        hash.update([0]);
        hash.update(tenant.as_str().as_bytes());
        // 64 bits tell listings apart; the token is not a secret.
        let short = |hash: Sha256| hex::encode(&hash.finalize()[..8]);
        Self {
            bound: short(hash),
            list: short(list),
        }
    }
}

/// A validated page request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub size: u64,
    /// Continue after this key; `None` for the first page.
    pub after: Option<String>,
    scope: ListScope,
}

impl PageRequest {
    /// `request`'s page: its size (`default_size` when 0) and where its
    /// token continues, if it is a token of this listing.
    pub fn of<R: ListRequest>(tenant: &TenantId, request: &R) -> Result<Self, ServiceError> {
        let (size, token) = request.page();
        Self::parse(size, token, ListScope::of(tenant, request))
    }

    /// As `of`, with `page_size` read as `size` (a list whose default size is
    /// its own).
    pub fn of_sized<R: ListRequest>(
        tenant: &TenantId,
        request: &R,
        size: i32,
    ) -> Result<Self, ServiceError> {
        Self::parse(size, request.page().1, ListScope::of(tenant, request))
    }

    pub fn parse(page_size: i32, page_token: &str, scope: ListScope) -> Result<Self, ServiceError> {
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
            Some(decode_token(page_token, &scope)?)
        };
        Ok(Self { size, after, scope })
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
            (true, Some(last)) => encode_token(&self.scope, &key(last)),
            _ => String::new(),
        };
        (rows, token)
    }
}

fn encode_token(scope: &ListScope, key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{TOKEN_PREFIX}{}:{key}", scope.bound))
}

/// The key a token continues after, if it is a token of `scope`'s listing.
fn decode_token(token: &str, scope: &ListScope) -> Result<String, ServiceError> {
    let not_a_token =
        || ServiceError::invalid("page_token", "is not a token returned by this list");
    let text = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(not_a_token)?;
    let bound = [
        (TOKEN_PREFIX, scope.bound.as_str()),
        (LIST_BOUND_PREFIX, scope.list.as_str()),
    ]
    .into_iter()
    .find_map(|(prefix, expected)| Some((text.strip_prefix(prefix)?, expected)));
    let key = if let Some((bound, expected)) = bound {
        let (of, key) = bound
            .split_once(':')
            .filter(|(_, key)| !key.is_empty())
            .ok_or_else(not_a_token)?;
        if of != expected {
            return Err(ServiceError::invalid(
                "page_token",
                "was returned by another list, by this one with other filters, or to another \
                 tenant: repeat the request that returned it, changing only page_token (and \
                 page_size if you like)",
            ));
        }
        key
    } else {
        text.strip_prefix(UNBOUND_PREFIX).ok_or_else(not_a_token)?
    };
    if key.is_empty() || key.len() > 256 {
        return Err(not_a_token());
    }
    Ok(key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    use cascade_proto::lifecycle::v1 as pb;

    fn accounts(page_size: i32, page_token: &str) -> pb::ListAccountsRequest {
        pb::ListAccountsRequest {
            page_size,
            page_token: page_token.to_owned(),
            ..Default::default()
        }
    }

    fn tenant(name: &str) -> TenantId {
        TenantId::parse(name).expect("a tenant id")
    }

    fn page(request: &pb::ListAccountsRequest) -> Result<PageRequest, ServiceError> {
        PageRequest::of(&tenant("acme"), request)
    }

    fn refusal(result: Result<PageRequest, ServiceError>) -> String {
        match result {
            Err(ServiceError::InvalidArgument(v)) if v.len() == 1 && v[0].field == "page_token" => {
                v[0].description.clone()
            }
            other => panic!("not a page_token refusal: {other:?}"),
        }
    }

    #[test]
    fn sizes_default_and_cap() {
        assert_eq!(page(&accounts(0, "")).expect("ok").size, DEFAULT_PAGE_SIZE);
        assert_eq!(page(&accounts(7, "")).expect("ok").size, 7);
        assert!(page(&accounts(-1, "")).is_err());
        assert!(page(&accounts(501, "")).is_err());
        assert!(page(&accounts(10, "garbage!")).is_err());
    }

    #[test]
    fn tokens_continue_after_the_last_item() {
        let first = page(&accounts(2, "")).expect("ok");
        let (rows, token) = first.finish(vec!["a", "b", "c"], |s| s.to_string());
        assert_eq!(rows, ["a", "b"]);
        // The page size may change between pages.
        let next = page(&accounts(5, &token)).expect("ok");
        assert_eq!(next.after.as_deref(), Some("b"));
        let (rows, token) = next.finish(vec!["c"], |s| s.to_string());
        assert_eq!(rows, ["c"]);
        assert!(token.is_empty());
    }

    #[test]
    fn a_token_serves_only_the_listing_that_returned_it() {
        let changed = pb::ListAccountsRequest {
            changed_since: Some(prost_types::Timestamp::default()),
            ..accounts(1, "")
        };
        let (_, token) = page(&changed)
            .expect("ok")
            .finish(vec!["k1", "k2"], |s| s.to_string());
        let again = pb::ListAccountsRequest {
            page_token: token.clone(),
            ..changed.clone()
        };
        assert_eq!(
            page(&again).expect("its own listing").after.as_deref(),
            Some("k1")
        );
        // The plain listing, other filters, another list: refused, saying why.
        let other_filter = pb::ListAccountsRequest {
            owner_id: "jo".into(),
            ..again.clone()
        };
        let contacts = pb::ListContactsRequest {
            page_token: token.clone(),
            ..Default::default()
        };
        for refused in [
            page(&accounts(1, &token)),
            page(&other_filter),
            PageRequest::of(&tenant("acme"), &contacts),
            // Another tenant's (a tester saw it skip a first page's checks).
            PageRequest::of(&tenant("globex"), &again),
        ] {
            assert!(refusal(refused).contains("another list"));
        }
    }

    #[test]
    fn tokens_from_before_binding_still_read() {
        let old = URL_SAFE_NO_PAD.encode("v1:0192f0c4-8b6e-7cc2-9d7e-7d1c7f3b5a10");
        assert_eq!(
            page(&accounts(2, &old)).expect("read").after.as_deref(),
            Some("0192f0c4-8b6e-7cc2-9d7e-7d1c7f3b5a10")
        );
        let empty = URL_SAFE_NO_PAD.encode("v2:0011223344556677:");
        assert!(refusal(page(&accounts(2, &empty))).contains("not a token"));
        // A token bound to its list alone, as the release before issued.
        let request = accounts(2, "");
        let list = &ListScope::of(&tenant("acme"), &request).list;
        let v2 = URL_SAFE_NO_PAD.encode(format!("v2:{list}:k1"));
        assert_eq!(
            page(&accounts(2, &v2)).expect("read").after.as_deref(),
            Some("k1")
        );
    }
}
