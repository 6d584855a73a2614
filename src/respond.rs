//! Answering a request: the one place a lookup's outcome becomes a response.
//!
//! * a HIT is sent as the page (see `page_response.rs`); an expired page that this
//!   request regenerates is kept for `stale.rs`, in case the regeneration fails;
//! * a MISS, BYPASS or ERROR goes to `rcache_fallback` (an internal
//!   redirect), or is answered 404/502/504 without one, as stock
//!   `memcached_pass` would, so that `error_page` works;
//! * a purge is answered with what memcached said.
//!
//! Every path records `$rcache_status` first.

use core::ptr;

use ngx::core::Status;
use ngx::ffi::*;
use ngx::http::{HTTPStatus, HttpModuleLocationConf};
use ngx::{ngx_log_error, ngx_string};

use crate::conf::LocConf;
use crate::front;
use crate::lookup::{Command, Lookup};
use crate::metrics::Counter;
use crate::metrics_conf;
use crate::outcome::{Failure, Outcome, Verdict};
use crate::page_response;
use crate::stale;
use crate::store;
use crate::value::Value;
use crate::variables::{self, CacheStatus};
use crate::wait;
use crate::HttpRcacheModule;

/// Answers the outcome of `r`'s lookup. Returns the rc to finalize `r` with.
///
/// # Safety
/// `r` must be a live rcache request whose response has not started, its
/// upstream finished; the outcome's value must live in `r->pool`.
pub unsafe fn answer(r: *mut ngx_http_request_t, outcome: Outcome) -> Status {
    // SAFETY: per the contract above.
    let r = unsafe { &mut *r };
    let key = Lookup::of(r).map(|l| l.key());
    match outcome {
        Outcome::Hit(value, flags) => {
            if Lookup::of(r).is_some_and(|l| l.waits.get() > 0) {
                count(r, Counter::LockWaitPage);
            }
            if let (Some(fc), Some(key)) = (loc_conf(r).and_then(LocConf::front), key) {
                // SAFETY: a front zone of this configuration.
                unsafe { front::keep(fc.zone, key, value, flags, fc.ttl, fc.max_item) };
            }
            serve_page(r, value, flags, CacheStatus::Hit)
        }
        Outcome::Updating {
            value,
            flags,
            overdue,
        } => {
            if let (Some(cas), Some(key), Some(lcf)) = (overdue, key, loc_conf(r)) {
                // The request regenerating the page is overdue (its nginx died, or the
                // app is that slow): hand the regeneration on to the next request.
                store::client::take_over(lcf, key, cas);
            }
            serve_page(r, value, flags, CacheStatus::Updating)
        }
        Outcome::Expired { value, flags, cas } => {
            if loc_conf(r).and_then(LocConf::fallback).is_none() {
                // Nothing can regenerate the page: serve it as long as memcached has it.
                return serve_page(r, value, flags, CacheStatus::Stale);
            }
            if !Lookup::of(r).is_some_and(|l| l.may_regenerate) {
                // A soft-purged page hands its win to any lookup; one whose response
                // cannot become the page (a HEAD, a query string) gives it back.
                if let (Some(key), Some(lcf)) = (key, loc_conf(r)) {
                    store::client::release(lcf, key);
                }
                return serve_page(r, value, flags, CacheStatus::Updating);
            }
            if let (Some(key), Some(lcf)) = (key, loc_conf(r)) {
                stale::keep(r, lcf, key, value, flags);
                store::capture::prepare(r, key, Some(cas));
            }
            fall_back(r, Verdict::Expired)
        }
        Outcome::Absent => {
            if let Some(key) = key {
                store::capture::prepare(r, key, None);
            }
            fall_back(r, Verdict::Miss)
        }
        Outcome::LockWon { cas } => {
            if let Some(key) = key {
                store::capture::prepare(r, key, Some(cas));
            }
            fall_back(r, Verdict::Miss)
        }
        Outcome::Pass { cas } => {
            count(r, Counter::HitForPassHonoured);
            if let (Some(lcf), Some(key)) = (loc_conf(r), key) {
                if let Some(fc) = lcf.front() {
                    // SAFETY: a front zone of this configuration.
                    unsafe { front::remember_pass(fc, key, lcf.hit_for_pass) };
                }
            }
            if let Some(key) = key {
                store::capture::prepare_over_marker(r, key, cas);
            }
            fall_back(r, Verdict::Pass)
        }
        Outcome::Wait => {
            if Lookup::of(r).is_some_and(|l| l.waits.get() == 0) {
                count(r, Counter::LockWaited);
            }
            match wait::again(r) {
                Some(rc) => rc,
                // Waited rcache_lock_timeout: to the fallback itself, not stored.
                None => {
                    count(r, Counter::LockWaitTimeout);
                    fall_back(r, Verdict::Miss)
                }
            }
        }
        Outcome::NotServed(verdict) => fall_back(r, verdict),
        Outcome::Purged(result) => answer_purge(r, result),
    }
}

/// Sends `value` as the page (a HIT, or a stale page: UPDATING, STALE). Returns the rc
/// to finalize `r` with.
///
/// `value` must stay valid until the request ends (it lives in `r->pool`).
pub fn serve_page(
    r: &mut ngx_http_request_t,
    value: Value,
    flags: u32,
    cache_status: CacheStatus,
) -> Status {
    let Some(lcf) = loc_conf(r) else {
        return Status::NGX_ERROR;
    };
    // SAFETY: r is a live request in its content phase.
    let rc = Status(unsafe { ngx_http_discard_request_body(r) });
    if !rc.is_ok() {
        return rc;
    }
    let body = match page_response::page_headers(r, lcf, value, flags, cache_status) {
        Ok(body) => body,
        Err(page_response::PageProblem::Unusable) => return fall_back(r, Verdict::Miss),
        Err(page_response::PageProblem::NoMemory) => return Status::NGX_ERROR,
    };
    if let Some(rc) = send_header(r) {
        return rc;
    }
    match page_response::body_chain(r, body) {
        // SAFETY: the chain and its buffers live in r->pool.
        Some(out) => Status(unsafe { ngx_http_output_filter(r, out) }),
        None => Status::NGX_ERROR,
    }
}

/// Sends the response header; `Some(rc)` when there is no body to send after
/// it (an error, a status nginx answers itself, a HEAD request).
fn send_header(r: &mut ngx_http_request_t) -> Option<Status> {
    // SAFETY: r is live and its headers_out is filled in.
    let rc = unsafe { ngx_http_send_header(r) };
    if rc == Status::NGX_ERROR.0 || rc > Status::NGX_OK.0 || r.header_only() != 0 {
        return Some(Status(rc));
    }
    None
}

/// Hands `r` to `rcache_fallback` (internal redirect, method, body and query
/// string kept), or answers 404/502/504 when there is none. Returns the rc
/// to finalize `r` with.
pub fn fall_back(r: &mut ngx_http_request_t, verdict: Verdict) -> Status {
    let status = cache_status(verdict);
    variables::set_status(r, status);
    let Some(fallback) = loc_conf(r).and_then(LocConf::fallback) else {
        let rc = verdict.status_without_fallback();
        debug!(
            log(r),
            "rcache: {} ({:?}): no rcache_fallback, answering {:?}", status, verdict, rc
        );
        return rc;
    };
    let mut target = ngx_str_t::empty();
    if !complex_value(r, &fallback.target, &mut target) {
        return HTTPStatus::INTERNAL_SERVER_ERROR.into();
    }
    debug!(
        log(r),
        "rcache: {} ({:?}): to the fallback \"{}\"", status, verdict, target
    );
    match target.as_bytes().first() {
        // SAFETY: r is live; the target lives in its pool.
        Some(b'@') => Status(unsafe { ngx_http_named_location(r, &mut target) }),
        Some(b'/') => {
            // "/path?args" replaces the query string; "/path" keeps it.
            let mut args = r.args;
            // SAFETY: NULL or a complex value compiled by set_fallback.
            if let Some(cv) = unsafe { fallback.args.as_ref() } {
                if !complex_value(r, cv, &mut args) {
                    return HTTPStatus::INTERNAL_SERVER_ERROR.into();
                }
            }
            // SAFETY: as above.
            Status(unsafe { ngx_http_internal_redirect(r, &mut target, &mut args) })
        }
        _ => {
            ngx_log_error!(
                NGX_LOG_ERR,
                log(r),
                "rcache: rcache_fallback evaluated to \"{}\", which is neither a URI nor \
                 a named location",
                target
            );
            HTTPStatus::INTERNAL_SERVER_ERROR.into()
        }
    }
}

fn cache_status(verdict: Verdict) -> CacheStatus {
    match verdict {
        Verdict::Bypass => CacheStatus::Bypass,
        Verdict::Miss => CacheStatus::Miss,
        Verdict::Error(_) => CacheStatus::Error,
        Verdict::Expired => CacheStatus::Expired,
        Verdict::Pass => CacheStatus::Pass,
    }
}

/// Answers a purge: what memcached said, or why it could not be asked.
pub fn answer_purge(r: &mut ngx_http_request_t, result: Result<bool, Failure>) -> Status {
    debug!(log(r), "rcache: purge: {:?}", result);
    // SAFETY: r is a live request in its content phase.
    let rc = Status(unsafe { ngx_http_discard_request_body(r) });
    if !rc.is_ok() {
        return rc;
    }
    if let Some(zone) = metrics_conf::zone_of(r) {
        let soft = Lookup::of(r).is_some_and(|l| l.command == Command::Invalidate);
        zone.count(Counter::purge(soft, result.ok()));
    }
    match result {
        Ok(true) => send_text(r, HTTPStatus::OK, b"purged\n"),
        Ok(false) => HTTPStatus::NOT_FOUND.into(),
        Err(failure) => failure.status(),
    }
}

/// Counts `counter` for `r`'s configuration, if it counts.
fn count(r: &ngx_http_request_t, counter: Counter) {
    if let Some(zone) = metrics_conf::zone_of(r) {
        zone.count(counter);
    }
}

/// Sends a short `text/plain` answer.
fn send_text(r: &mut ngx_http_request_t, status: HTTPStatus, body: &'static [u8]) -> Status {
    let out = &mut r.headers_out;
    out.status = status.into();
    out.content_length_n = body.len() as off_t;
    out.content_type = ngx_string!("text/plain");
    out.content_type_len = out.content_type.len;
    if let Some(rc) = send_header(r) {
        return rc;
    }
    match page_response::body_chain(r, Value::whole(body)) {
        // SAFETY: the chain lives in r->pool, the body is static.
        Some(out) => Status(unsafe { ngx_http_output_filter(r, out) }),
        None => Status::NGX_ERROR,
    }
}

/// Evaluates a complex value of `r` into `out` (in `r`'s pool).
pub fn complex_value(
    r: &mut ngx_http_request_t,
    cv: &ngx_http_complex_value_t,
    out: &mut ngx_str_t,
) -> bool {
    // SAFETY: nginx only reads cv (the binding wants *mut); the result lives
    // in r->pool.
    let rc = unsafe { ngx_http_complex_value(r, ptr::from_ref(cv).cast_mut(), out) };
    rc == Status::NGX_OK.0
}

fn loc_conf(r: &ngx_http_request_t) -> Option<&'static LocConf> {
    HttpRcacheModule::location_conf(r)
}

/// The request's log.
fn log(r: &ngx_http_request_t) -> *mut ngx_log_t {
    // SAFETY: a live request has a live connection.
    unsafe { (*r.connection).log }
}
