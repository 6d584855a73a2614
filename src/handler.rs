//! The content phase: bypass → lookup → HIT or fallback.
//!
//! The decisions that need no memcached round trip (method, `rcache_bypass`,
//! an unusable key) are made here; lookups go to `upstream.rs`, which comes
//! back to [`serve_hit`] or [`fall_back`] once memcached has answered.

use core::ptr;
use core::slice;

use ngx::ffi::*;
use ngx::{ngx_log_error, ngx_string};

use crate::front;
use crate::key::{self, MAX_KEY_LEN};
use crate::upstream::{self, Failure};
use crate::variables::{self, CacheStatus, FrontStatus};

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
}

impl Verdict {
    fn cache_status(self) -> CacheStatus {
        match self {
            Verdict::Bypass => CacheStatus::Bypass,
            Verdict::Miss => CacheStatus::Miss,
            Verdict::Error(_) => CacheStatus::Error,
        }
    }

    /// The answer when there is no `rcache_fallback`: like stock
    /// `memcached_pass`, so that `error_page` can take over.
    fn status_without_fallback(self) -> ngx_int_t {
        match self {
            Verdict::Bypass | Verdict::Miss => NGX_HTTP_NOT_FOUND as ngx_int_t,
            Verdict::Error(failure) => failure.status(),
        }
    }
}

/// Flags of values that are pages: 0 or 16 (raw bytes / UTF-8 text as
/// pymemcache and pylibmc store `bytes` and `str`), plus the gzip bits.
pub fn page_flags(flags: u32, gzip_mask: u32) -> bool {
    matches!(flags & !gzip_mask, 0 | 16)
}

/// The location handler installed by `rcache_pass`.
pub unsafe extern "C" fn content_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls content handlers with a live request.
    unsafe {
        let lcf = crate::loc_conf(r);

        if (*r).method & lcf.methods == 0 {
            return fall_back(r, Verdict::Bypass);
        }
        if !lcf.bypass.is_null() {
            match ngx_http_test_predicates(r, lcf.bypass) {
                rc if rc == NGX_DECLINED as ngx_int_t => return fall_back(r, Verdict::Bypass),
                rc if rc == NGX_ERROR as ngx_int_t => {
                    return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
                }
                _ => {}
            }
        }

        let raw: &[u8] = if lcf.key.is_null() {
            (*r).uri.as_bytes()
        } else {
            let mut value = ngx_str_t::empty();
            if ngx_http_complex_value(r, lcf.key, &mut value) != NGX_OK as ngx_int_t {
                return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
            }
            pool_bytes(&value)
        };
        let log = (*(*r).connection).log;
        if raw.is_empty() {
            ngx_log_error!(NGX_LOG_INFO, log, "rcache: the key is empty: MISS");
            return fall_back(r, Verdict::Miss);
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
            return fall_back(r, Verdict::Miss);
        }

        let Some(key) = upstream::prepare(r, raw, escaped_len) else {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        };
        if let Some(fc) = lcf.front.as_ref() {
            if let Some(page) = front::lookup(fc.zone, key, (*r).pool) {
                variables::set_front(r, FrontStatus::Hit);
                return serve_hit(r, page.value, page.flags);
            }
            variables::set_front(r, FrontStatus::Miss);
        }
        upstream::start(r)
    }
}

/// Sends `value` as the page (HIT). Returns the rc to finalize `r` with.
///
/// # Safety
/// `r` must be a live request whose response has not started; `value` must
/// stay valid until the request ends (it lives in `r->pool`).
pub unsafe fn serve_hit(r: *mut ngx_http_request_t, value: &[u8], flags: u32) -> ngx_int_t {
    // SAFETY: r is live; headers and buffers are allocated from its pool.
    unsafe {
        let lcf = crate::loc_conf(r);
        let rc = ngx_http_discard_request_body(r);
        if rc != NGX_OK as ngx_int_t {
            return rc;
        }

        let mut body = value;
        if flags & lcf.gzip_mask() != 0 {
            if accepts_gzip(r) {
                if !add_header(
                    r,
                    ngx_string!("Content-Encoding"),
                    ngx_string!("gzip"),
                    true,
                ) {
                    return NGX_ERROR as ngx_int_t;
                }
            } else {
                match gunzip(r, value, lcf.max_size) {
                    Some(plain) => body = plain,
                    None => return fall_back(r, Verdict::Miss),
                }
            }
            if !add_header(
                r,
                ngx_string!("Vary"),
                ngx_string!("Accept-Encoding"),
                false,
            ) {
                return NGX_ERROR as ngx_int_t;
            }
        }

        variables::set_status(r, CacheStatus::Hit);
        let h = &mut (*r).headers_out;
        h.status = NGX_HTTP_OK as ngx_uint_t;
        h.content_length_n = body.len() as off_t;
        if ngx_http_set_content_type(r) != NGX_OK as ngx_int_t {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        }
        (*r).set_allow_ranges(1);

        let rc = ngx_http_send_header(r);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || (*r).header_only() != 0 {
            return rc;
        }

        let b = ngx_pcalloc((*r).pool, size_of::<ngx_buf_t>()) as *mut ngx_buf_t;
        if b.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        let last_buf = ptr::eq(r, (*r).main);
        if !body.is_empty() {
            let start = body.as_ptr().cast_mut();
            (*b).start = start;
            (*b).pos = start;
            (*b).last = start.add(body.len());
            (*b).end = (*b).last;
            (*b).set_memory(1);
        } else if !last_buf {
            (*b).set_sync(1);
        }
        (*b).set_last_buf(u32::from(last_buf));
        (*b).set_last_in_chain(1);
        let mut out = ngx_chain_t {
            buf: b,
            next: ptr::null_mut(),
        };
        ngx_http_output_filter(r, &mut out)
    }
}

/// Hands `r` to `rcache_fallback` (internal redirect, method, body and query
/// string kept), or answers 404/502/504 when there is none. Returns the rc
/// to finalize `r` with.
///
/// # Safety
/// `r` must be a live request whose response has not started.
pub unsafe fn fall_back(r: *mut ngx_http_request_t, verdict: Verdict) -> ngx_int_t {
    // SAFETY: r is live; the redirect target is evaluated in its pool.
    unsafe {
        variables::set_status(r, verdict.cache_status());
        let lcf = crate::loc_conf(r);
        if lcf.fallback.is_null() {
            return verdict.status_without_fallback();
        }
        let fallback = &mut *lcf.fallback;
        let mut target = ngx_str_t::empty();
        if ngx_http_complex_value(r, &mut fallback.target, &mut target) != NGX_OK as ngx_int_t {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        }
        match pool_bytes(&target).first() {
            Some(b'@') => ngx_http_named_location(r, &mut target),
            Some(b'/') => {
                // "/path?args" replaces the query string; "/path" keeps it.
                let mut args = (*r).args;
                if !fallback.args.is_null()
                    && ngx_http_complex_value(r, fallback.args, &mut args) != NGX_OK as ngx_int_t
                {
                    return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
                }
                ngx_http_internal_redirect(r, &mut target, &mut args)
            }
            _ => {
                ngx_log_error!(
                    NGX_LOG_ERR,
                    (*(*r).connection).log,
                    "rcache: rcache_fallback evaluated to \"{}\", which is neither a URI nor \
                     a named location",
                    String::from_utf8_lossy(pool_bytes(&target))
                );
                NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
            }
        }
    }
}

/// Whether the client gets gzip bytes as they are: nginx's own rules, as
/// for `gzip_static` (Accept-Encoding, `gzip_http_version`, `gzip_proxied`,
/// `gzip_disable`).
///
/// # Safety
/// `r` must be a live request.
unsafe fn accepts_gzip(r: *mut ngx_http_request_t) -> bool {
    #[cfg(ngx_feature = "http_gzip")]
    // SAFETY: ngx_http_gzip_ok only reads the request and sets its gzip flags.
    unsafe {
        let ok = ngx_http_gzip_ok(r) == NGX_OK as ngx_int_t;
        // rcache adds its own Vary; don't let the header filter add another.
        (*r).set_gzip_vary(0);
        ok
    }
    #[cfg(not(ngx_feature = "http_gzip"))]
    {
        // nginx built without any gzip module: always decompress.
        let _ = r;
        false
    }
}

/// Decompresses a gzip value into `r->pool`; logs and returns None when it
/// cannot be served.
///
/// # Safety
/// `r` must be a live request.
unsafe fn gunzip<'a>(r: *mut ngx_http_request_t, gz: &[u8], limit: usize) -> Option<&'a [u8]> {
    // SAFETY: the output buffer comes from r->pool and is fully written.
    unsafe {
        let log = (*(*r).connection).log;
        let result = crate::gzip::decompressed_size(gz, limit).and_then(|size| {
            let out = ngx_palloc((*r).pool, size.max(1)) as *mut u8;
            if out.is_null() {
                return Err(crate::gzip::GunzipError::Corrupt);
            }
            let out = slice::from_raw_parts_mut(out, size);
            crate::gzip::gunzip_into(gz, out)?;
            Ok(&*out)
        });
        match result {
            Ok(plain) => Some(plain),
            Err(e @ crate::gzip::GunzipError::TooLarge { .. }) => {
                ngx_log_error!(NGX_LOG_INFO, log, "rcache: {}: MISS", e);
                None
            }
            Err(e) => {
                ngx_log_error!(NGX_LOG_ERR, log, "rcache: {}: MISS", e);
                None
            }
        }
    }
}

/// Adds a response header.
///
/// # Safety
/// `r` must be a live request.
unsafe fn add_header(
    r: *mut ngx_http_request_t,
    name: ngx_str_t,
    value: ngx_str_t,
    content_encoding: bool,
) -> bool {
    // SAFETY: the list element is zeroed (so `next`, where the nginx version
    // has it, is NULL) and points at static strings.
    unsafe {
        let h = ngx_list_push(&mut (*r).headers_out.headers) as *mut ngx_table_elt_t;
        if h.is_null() {
            return false;
        }
        ptr::write_bytes(h, 0, 1);
        (*h).hash = 1;
        (*h).key = name;
        (*h).value = value;
        if content_encoding {
            (*r).headers_out.content_encoding = h;
        }
        true
    }
}

/// The bytes of an nginx string that lives in a request or config pool.
///
/// # Safety
/// `s` must point at `s.len` bytes that stay valid for `'a`.
unsafe fn pool_bytes<'a>(s: &ngx_str_t) -> &'a [u8] {
    if s.len == 0 || s.data.is_null() {
        return &[];
    }
    // SAFETY: per the contract above.
    unsafe { slice::from_raw_parts(s.data, s.len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_flags_0_and_16() {
        assert!(page_flags(0, 0));
        assert!(page_flags(16, 0));
        for other in [1, 2, 4, 8, 17, 32, 1 << 31, 3] {
            assert!(!page_flags(other, 0), "{other}");
        }
    }

    #[test]
    fn gzip_bits_are_allowed_on_top() {
        assert!(page_flags(2, 2));
        assert!(page_flags(2 | 16, 2));
        assert!(!page_flags(2 | 1, 2));
        assert!(!page_flags(2, 4));
    }
}
