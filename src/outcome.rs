//! What a lookup produced, and why a request is not answered from memcached:
//! the upstream callbacks (`upstream.rs`, `peer.rs`) produce these, and
//! `respond.rs` alone turns them into a response or a fallback.

use ngx::core::Status;
use ngx::http::HTTPStatus;

use crate::value::Value;

/// How a lookup ended.
#[derive(Clone, Copy, Debug)]
pub enum Outcome<'a> {
    /// memcached had the page: its bytes and flags.
    Hit(Value<'a>, u32),
    /// The page is past its freshness (or marked stale) and this request won the
    /// right to regenerate it; `cas` names the item its new page replaces.
    Expired {
        value: Value<'a>,
        flags: u32,
        cas: u64,
    },
    /// The page is stale and another request is regenerating it: served meanwhile.
    /// `overdue`: that regeneration has run longer than `rcache_lock_age`; the CAS of
    /// the item, to hand the regeneration on to one more request.
    Updating {
        value: Value<'a>,
        flags: u32,
        overdue: Option<u64>,
    },
    /// memcached has no value for the key: a MISS that `rcache_store` may fill.
    Absent,
    /// No page, and this request won the lock (`rcache_lock`): a MISS whose page replaces
    /// the placeholder named by `cas`.
    LockWon { cas: u64 },
    /// No page yet: another request holds the lock and is rendering it.
    Wait,
    /// The key carries a hit-for-pass marker (its response was not cacheable): straight to
    /// the fallback, whose response replaces the marker (`cas`) if it is cacheable now.
    Pass { cas: u64 },
    /// memcached was asked, but its answer is not served.
    NotServed(Verdict),
    /// A purge: deleted or not there, or why memcached could not be asked.
    Purged(Result<bool, Failure>),
}

/// Why a request is not answered from memcached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The request must not see a cached page (method, `rcache_bypass`).
    Bypass,
    /// The page is not cached (not stored, unusable key, too large, not a
    /// page).
    Miss,
    /// memcached could not be asked or did not answer properly.
    Error(Failure),
    /// This request regenerates an expired or soft-purged page.
    Expired,
    /// The key's response was not cacheable lately (`rcache_hit_for_pass`).
    Pass,
}

impl Verdict {
    /// The answer when there is no `rcache_fallback`: like stock
    /// `memcached_pass`, so that `error_page` can take over.
    pub fn status_without_fallback(self) -> Status {
        match self {
            Verdict::Bypass | Verdict::Miss | Verdict::Expired | Verdict::Pass => {
                HTTPStatus::NOT_FOUND.into()
            }
            Verdict::Error(failure) => failure.status(),
        }
    }
}

/// Why memcached could not be used for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Connection refused or reset, premature close.
    Error,
    /// Connect, send or read timeout.
    Timeout,
    /// The balancer has no live server.
    NoLiveServers,
    /// A reply that is not a valid answer to our command.
    Protocol,
}

impl Failure {
    /// The status nginx's upstream module would have used (for locations
    /// without a fallback, so that `error_page` works as with stock nginx).
    pub fn status(self) -> Status {
        match self {
            Failure::Timeout => HTTPStatus::GATEWAY_TIME_OUT.into(),
            _ => HTTPStatus::BAD_GATEWAY.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_fallback_the_statuses_are_stock_memcached_pass_ones() {
        assert_eq!(Verdict::Miss.status_without_fallback(), Status(404));
        assert_eq!(Verdict::Bypass.status_without_fallback(), Status(404));
        assert_eq!(
            Verdict::Error(Failure::Timeout).status_without_fallback(),
            Status(504)
        );
        for failure in [Failure::Error, Failure::NoLiveServers, Failure::Protocol] {
            assert_eq!(
                Verdict::Error(failure).status_without_fallback(),
                Status(502)
            );
        }
    }
}
