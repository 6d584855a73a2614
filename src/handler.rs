//! The content phase of a location with `rcache_pass` (and the directive that
//! installs it): bypass → key → front cache → lookup.
//!
//! The decisions that need no memcached round trip (method, `rcache_bypass`,
//! an unusable key, a front-cache HIT) are made here and answered through
//! `respond.rs`; everything else becomes a lookup (`upstream.rs`), whose
//! outcome `respond.rs` answers once memcached has replied.

use core::ffi::{c_char, c_void, CStr};
use core::slice;

use ngx::core::{Status, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::*;
use ngx::http::{HTTPStatus, HttpModuleLocationConf, NgxHttpCoreModule};
use ngx::ngx_log_error;

use crate::conf::{self, LocConf};
use crate::front::{self, Front};
use crate::key::{self, MAX_KEY_LEN};
use crate::outcome::Verdict;
use crate::respond;
use crate::upstream;
use crate::value::Value;
use crate::variables::{self, CacheStatus, FrontStatus};
use crate::HttpRcacheModule;

/// `rcache_pass ADDRESS | UPSTREAM;`: the upstream, and this file's content
/// handler for the location (as `memcached_pass` installs its own).
pub unsafe extern "C" fn set_pass(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with the configuration being
    // parsed and this module's LocConf.
    let (cf, lcf) = unsafe { (&mut *cf, &mut *(conf as *mut LocConf)) };
    if !lcf.upstream.upstream.is_null() {
        return conf::is_duplicate();
    }
    let value = conf::args(cf)[1];

    // SAFETY: a zeroed ngx_url_t is the "nothing set" state nginx expects.
    let mut url: ngx_url_t = unsafe { core::mem::zeroed() };
    url.url = value;
    url.set_no_resolve(1);

    // Parse once here so a bad address is reported with this directive's
    // name, then let nginx create (or find) the upstream.
    let mut probe = url;
    // SAFETY: probe is a copy; nginx parses it in the configuration pool.
    if !conf::ok(unsafe { ngx_parse_url(cf.pool, &mut probe) }) {
        // SAFETY: NULL or a static C string nginx set.
        let err = unsafe { probe.err.as_ref().map(|e| CStr::from_ptr(e)) };
        let err = err
            .and_then(|e| e.to_str().ok())
            .unwrap_or("invalid address");
        return conf::conf_error(
            cf,
            format_args!("{err} in \"{value}\" of the \"rcache_pass\" directive"),
        );
    }

    // SAFETY: cf is inside a location; nginx adds or finds the upstream.
    let uscf = unsafe { ngx_http_upstream_add(cf, &mut url, 0) };
    if uscf.is_null() {
        return NGX_CONF_ERROR;
    }
    let Some(mcf) = conf::main_conf_mut(cf) else {
        return NGX_CONF_ERROR;
    };
    // SAFETY: the configuration pool outlives every target.
    let Some(target) = (unsafe { mcf.targets.for_upstream(cf.pool, uscf) }) else {
        return NGX_CONF_ERROR;
    };
    lcf.upstream.upstream = uscf;
    lcf.target = target;
    lcf.pass_handler = Some(content_handler);

    let Some(clcf) = NgxHttpCoreModule::location_conf_mut(cf) else {
        return NGX_CONF_ERROR;
    };
    clcf.handler = Some(content_handler);
    if clcf.name.as_bytes().ends_with(b"/") {
        clcf.set_auto_redirect(1);
    }
    NGX_CONF_OK
}

/// The location handler installed by `rcache_pass`.
unsafe extern "C" fn content_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls content handlers with a live request.
    unsafe { handle(r) }.into()
}

/// # Safety
/// `r` must be a live request in its content phase.
unsafe fn handle(r: *mut ngx_http_request_t) -> Status {
    // SAFETY: per the contract above.
    let req = unsafe { &mut *r };
    let Some(lcf) = HttpRcacheModule::location_conf(req) else {
        return Status::NGX_ERROR;
    };
    let log = log(req);

    if lcf.purge != 0 && req.method_name.as_bytes() == b"PURGE" {
        // rcache_purge soft marks the page stale (`md ... I`) instead of deleting it.
        // SAFETY: forwarded contract.
        return unsafe { purge(r) };
    }
    if req.method & lcf.methods == 0 {
        debug!(
            log,
            "rcache: method \"{}\" is not in rcache_methods", req.method_name
        );
        return respond::fall_back(req, Verdict::Bypass);
    }
    // SAFETY: NULL or predicates compiled by ngx_http_set_predicate_slot.
    if let Some(bypass) = unsafe { lcf.bypass.as_mut() } {
        // SAFETY: r is live; the predicates are evaluated in its pool.
        match Status(unsafe { ngx_http_test_predicates(req, bypass) }) {
            Status::NGX_DECLINED => {
                debug!(log, "rcache: an rcache_bypass value is set");
                return respond::fall_back(req, Verdict::Bypass);
            }
            Status::NGX_ERROR => return HTTPStatus::INTERNAL_SERVER_ERROR.into(),
            _ => {}
        }
    }

    let key = match memcached_key(req, false) {
        Ok(key) => key,
        Err(KeyError::Unusable) => return respond::fall_back(req, Verdict::Miss),
        Err(KeyError::Internal) => return HTTPStatus::INTERNAL_SERVER_ERROR.into(),
    };
    if let Some(fc) = lcf.front() {
        // SAFETY: a front zone of this configuration; the page is valid for r's pool.
        match unsafe { front::lookup(fc.zone, key, req.pool) } {
            Front::Page(page) => {
                debug!(log, "rcache: front cache HIT");
                variables::set_front(req, FrontStatus::Hit);
                return respond::serve_page(
                    req,
                    Value::whole(page.value),
                    page.flags,
                    CacheStatus::Hit,
                );
            }
            Front::Pass => {
                debug!(log, "rcache: front cache: not cacheable lately, PASS");
                variables::set_front(req, FrontStatus::Pass);
                return respond::fall_back(req, Verdict::Pass);
            }
            Front::Miss => variables::set_front(req, FrontStatus::Miss),
        }
    }
    // SAFETY: forwarded contract; the lookup was prepared by memcached_key.
    unsafe { upstream::start(r) }
}

/// `PURGE` in a location with `rcache_purge`: deletes the page's key from memcached
/// (and the front cache) — 200 if it was there, 404 if not.
///
/// # Safety
/// `r` must be a request in its content phase.
unsafe fn purge(r: *mut ngx_http_request_t) -> Status {
    // SAFETY: forwarded contract.
    let req = unsafe { &mut *r };
    variables::set_status(req, CacheStatus::Purge);
    let key = match memcached_key(req, true) {
        Ok(key) => key,
        Err(KeyError::Unusable) => return HTTPStatus::NOT_FOUND.into(),
        Err(KeyError::Internal) => return HTTPStatus::INTERNAL_SERVER_ERROR.into(),
    };
    if let Some(fc) = HttpRcacheModule::location_conf(req).and_then(LocConf::front) {
        // SAFETY: a front zone of this configuration.
        unsafe { front::remove(fc.zone, key) };
    }
    // SAFETY: forwarded contract.
    unsafe { upstream::start(r) }
}

/// Why a request has no memcached key.
enum KeyError {
    /// Empty, or over 250 bytes once escaped (logged).
    Unusable,
    /// Evaluation or allocation failed.
    Internal,
}

/// Computes the request's memcached key (`rcache_key`, escaped) and prepares the
/// `get` (`delete` to `purge`). Returns the escaped key (in the request's pool).
fn memcached_key<'a>(r: &mut ngx_http_request_t, purge: bool) -> Result<&'a [u8], KeyError> {
    let Some(lcf) = HttpRcacheModule::location_conf(r) else {
        return Err(KeyError::Internal);
    };
    // SAFETY: NULL or a complex value compiled by the rcache_key slot.
    let raw: &[u8] = match unsafe { lcf.key.as_ref() } {
        None => pool_bytes(&r.uri),
        Some(cv) => {
            let mut value = ngx_str_t::empty();
            if !respond::complex_value(r, cv, &mut value) {
                return Err(KeyError::Internal);
            }
            pool_bytes(&value)
        }
    };
    let log = log(r);
    if raw.is_empty() {
        ngx_log_error!(NGX_LOG_INFO, log, "rcache: the key is empty: MISS");
        return Err(KeyError::Unusable);
    }
    let escaped_len = key::escaped_len(raw);
    if escaped_len > MAX_KEY_LEN {
        ngx_log_error!(
            NGX_LOG_INFO,
            log,
            "rcache: the key is {} bytes once escaped, more than {}: MISS",
            escaped_len,
            MAX_KEY_LEN
        );
        return Err(KeyError::Unusable);
    }
    upstream::prepare(r, raw, escaped_len, purge).ok_or(KeyError::Internal)
}

/// The bytes of a string that lives in the request's pool (so for as long
/// as the request, not just as long as `s`).
fn pool_bytes<'a>(s: &ngx_str_t) -> &'a [u8] {
    if s.len == 0 || s.data.is_null() {
        return &[];
    }
    // SAFETY: request strings point at s.len bytes of r->pool.
    unsafe { slice::from_raw_parts(s.data, s.len) }
}

/// The request's log.
fn log(r: &ngx_http_request_t) -> *mut ngx_log_t {
    // SAFETY: a live request has a live connection.
    unsafe { (*r.connection).log }
}
