//! A memcached server that fails is marked down, and back up when it answers again.
//!
//! The rule is nginx's own round-robin one (`max_fails` failures, then no request for
//! `fail_timeout`, then one request tries it; an answer after that check clears it), but
//! nginx skips it for an upstream with a single server — `rcache_pass host:port`, or one
//! `server` line: the most common memcached setup — and keeps trying that server on every
//! request, with a connect attempt and an `[error]` line each, for the whole outage. For
//! a cache, whose every failure has a fallback, that is the wrong rule, so rcache applies
//! it itself to one-server upstreams and to `rcache_hash` (`peer.rs`,
//! `balancer/hash_peer.rs`), on state kept in shared memory (`health_zone.rs`). The
//! defaults are nginx's: `max_fails=1 fail_timeout=10s`.
//!
//! Each episode is said once: one `[error]` line when the server goes down (with the
//! address and why), one `[notice]` line when it answers again (how long it was down, how
//! many requests went to the fallback meanwhile); the requests in between log nothing
//! above `info`.

use ngx::ffi::*;
use ngx::ngx_log_error;

use crate::outcome::Failure;

/// A server's `max_fails` and `fail_timeout` (seconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub max_fails: ngx_uint_t,
    pub fail_timeout: time_t,
}

/// What the rule reads and writes of a server (the fields nginx's round-robin peer has).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerState {
    pub fails: ngx_uint_t,
    pub max_fails: ngx_uint_t,
    /// Seconds.
    pub fail_timeout: time_t,
    /// When it last failed.
    pub accessed: time_t,
    /// When a request last tried it after `fail_timeout`.
    pub checked: time_t,
}

impl PeerState {
    pub fn is_down(&self) -> bool {
        self.max_fails != 0 && self.fails >= self.max_fails
    }
}

/// Whether a request may try the server at `now` (seconds): not while it is down, except
/// the one request per `fail_timeout` that checks it.
pub fn admit(s: &mut PeerState, now: time_t) -> bool {
    if s.is_down() && now - s.checked <= s.fail_timeout {
        return false;
    }
    if now - s.checked > s.fail_timeout {
        s.checked = now;
    }
    true
}

/// What an attempt's end changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    None,
    /// This failure marked it down.
    WentDown,
    /// This answer brought it back.
    CameBack,
}

/// Records how an attempt on the server ended at `now`.
pub fn record(s: &mut PeerState, failed: bool, now: time_t) -> Change {
    let was_down = s.is_down();
    if failed {
        s.fails += 1;
        s.accessed = now;
        s.checked = now;
    } else if s.accessed < s.checked {
        s.fails = 0;
    }
    match (was_down, s.is_down()) {
        (false, true) => Change::WentDown,
        (true, false) => Change::CameBack,
        _ => Change::None,
    }
}

/// A server's current down episode, for the line when it ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Episode {
    /// When it went down (`ngx_current_msec`: the machine's monotonic clock, the same in
    /// every worker and across reloads).
    pub since: Option<ngx_msec_t>,
    /// Requests that went to the fallback without trying it, because it was down.
    pub fell_back: u64,
}

/// Why an attempt failed, for the line that says the server went down.
pub fn reason(failure: Failure) -> &'static str {
    match failure {
        Failure::Timeout => "timed out",
        Failure::Protocol => "sent a reply that is no valid answer",
        _ => "refused or closed the connection",
    }
}

/// Says that the server `name` went down: `fails` failures, the last one `why`.
pub fn log_down(
    log: *mut ngx_log_t,
    name: &str,
    fails: ngx_uint_t,
    fail_timeout: time_t,
    why: &str,
) {
    ngx_log_error!(
        NGX_LOG_ERR,
        log,
        "rcache: memcached server \"{}\" failed {} time(s) ({}): its keys go to the fallback \
         for {}s, then one request tries it again",
        name,
        fails,
        why,
        fail_timeout
    );
}

/// Says that the server `name` answers again, ending `episode` at `now` (msec).
pub fn log_back(log: *mut ngx_log_t, name: &str, episode: Episode, now: ngx_msec_t) {
    let down_for = episode.since.map_or(0, |since| now.wrapping_sub(since));
    ngx_log_error!(
        NGX_LOG_NOTICE,
        log,
        "rcache: memcached server \"{}\" answers again, after {}.{:03}s down; {} request(s) \
         went to the fallback without trying it meanwhile",
        name,
        down_for / 1000,
        down_for % 1000,
        episode.fell_back
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(max_fails: ngx_uint_t, fail_timeout: time_t) -> PeerState {
        PeerState {
            max_fails,
            fail_timeout,
            ..PeerState::default()
        }
    }

    #[test]
    fn one_failure_marks_it_down_for_fail_timeout_then_one_request_checks_it() {
        let mut s = server(1, 10);
        assert!(admit(&mut s, 100));
        assert_eq!(record(&mut s, true, 100), Change::WentDown);
        for now in 100..=110 {
            assert!(!admit(&mut s, now), "down at {now}");
        }
        // After fail_timeout one request goes through; the others wait another round.
        assert!(admit(&mut s, 111));
        assert!(!admit(&mut s, 111));
        assert!(!admit(&mut s, 120));
        // It answers: back.
        assert_eq!(record(&mut s, false, 111), Change::CameBack);
        assert!(admit(&mut s, 112));
    }

    #[test]
    fn a_failed_check_keeps_it_down_another_fail_timeout() {
        let mut s = server(1, 10);
        record(&mut s, true, 100);
        assert!(admit(&mut s, 111));
        assert_eq!(record(&mut s, true, 111), Change::None);
        assert!(!admit(&mut s, 121));
        assert!(admit(&mut s, 122));
    }

    #[test]
    fn max_fails_counts_failures_and_0_never_marks_it_down() {
        let mut s = server(3, 10);
        assert_eq!(record(&mut s, true, 100), Change::None);
        assert_eq!(record(&mut s, true, 100), Change::None);
        assert!(admit(&mut s, 100));
        assert_eq!(record(&mut s, true, 100), Change::WentDown);
        assert!(!admit(&mut s, 101));

        let mut never = server(0, 10);
        for now in 100..200 {
            assert!(admit(&mut never, now));
            assert_eq!(record(&mut never, true, now), Change::None);
        }
    }

    #[test]
    fn answers_before_the_next_check_do_not_forget_failures() {
        // nginx's rule: failures are forgotten by an answer after a later check, so
        // answers interleaved with failures within fail_timeout still add up.
        let mut s = server(2, 10);
        assert!(admit(&mut s, 100));
        record(&mut s, true, 100);
        assert!(admit(&mut s, 101));
        assert_eq!(record(&mut s, false, 101), Change::None);
        assert_eq!(s.fails, 1);
        assert_eq!(record(&mut s, true, 102), Change::WentDown);
    }
}
