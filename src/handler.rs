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
use crate::store::page::{self, STORED_FLAG};
use crate::upstream::{self, Failure};
use crate::value::Value;
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
/// pymemcache and pylibmc store `bytes` and `str`), plus the gzip bits; or a
/// page rcache stored itself (`STORED_FLAG`).
pub fn page_flags(flags: u32, gzip_mask: u32) -> bool {
    flags == STORED_FLAG || matches!(flags & !gzip_mask, 0 | 16)
}

/// The location handler installed by `rcache_pass`.
pub unsafe extern "C" fn content_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls content handlers with a live request.
    unsafe {
        let lcf = crate::loc_conf(r);

        if lcf.purge != 0 && (*r).method_name.as_bytes() == b"PURGE" {
            return purge(r);
        }
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

        let key = match memcached_key(r, false) {
            Ok(key) => key,
            Err(KeyError::Unusable) => return fall_back(r, Verdict::Miss),
            Err(KeyError::Internal) => return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
        };
        if let Some(fc) = lcf.front.as_ref() {
            if let Some(page) = front::lookup(fc.zone, key, (*r).pool) {
                variables::set_front(r, FrontStatus::Hit);
                return serve_hit(r, Value::whole(page.value), page.flags);
            }
            variables::set_front(r, FrontStatus::Miss);
        }
        upstream::start(r)
    }
}

/// `PURGE` in a location with `rcache_purge`: deletes the page's key from memcached
/// (and the front cache) — 200 if it was there, 404 if not.
///
/// # Safety
/// `r` must be a request in its content phase.
unsafe fn purge(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: forwarded contract.
    unsafe {
        variables::set_status(r, CacheStatus::Purge);
        let key = match memcached_key(r, true) {
            Ok(key) => key,
            Err(KeyError::Unusable) => return NGX_HTTP_NOT_FOUND as ngx_int_t,
            Err(KeyError::Internal) => return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
        };
        if let Some(fc) = crate::loc_conf(r).front.as_ref() {
            front::remove(fc.zone, key);
        }
        upstream::start(r)
    }
}

/// Answers a purge: what memcached said, or why it could not be asked.
///
/// # Safety
/// `r` must be a live purge request whose response has not started.
pub unsafe fn answer_purge(r: *mut ngx_http_request_t, result: Result<bool, Failure>) -> ngx_int_t {
    // SAFETY: forwarded contract.
    unsafe {
        let rc = ngx_http_discard_request_body(r);
        if rc != NGX_OK as ngx_int_t {
            return rc;
        }
        match result {
            Ok(true) => send_text(r, NGX_HTTP_OK, b"purged\n"),
            Ok(false) => NGX_HTTP_NOT_FOUND as ngx_int_t,
            Err(failure) => failure.status(),
        }
    }
}

/// Sends a short `text/plain` answer.
///
/// # Safety
/// `r` must be a live request whose response has not started.
unsafe fn send_text(r: *mut ngx_http_request_t, status: u32, body: &'static [u8]) -> ngx_int_t {
    // SAFETY: the body is static; the buffer comes from r's pool.
    unsafe {
        let out = &mut (*r).headers_out;
        out.status = status as ngx_uint_t;
        out.content_length_n = body.len() as off_t;
        out.content_type = ngx_string!("text/plain");
        out.content_type_len = out.content_type.len;
        let rc = ngx_http_send_header(r);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || (*r).header_only() != 0 {
            return rc;
        }
        let b = ngx_pcalloc((*r).pool, size_of::<ngx_buf_t>()) as *mut ngx_buf_t;
        if b.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        (*b).start = body.as_ptr().cast_mut();
        (*b).pos = (*b).start;
        (*b).last = (*b).start.add(body.len());
        (*b).end = (*b).last;
        (*b).set_memory(1);
        (*b).set_last_buf(1);
        (*b).set_last_in_chain(1);
        let mut chain = ngx_chain_t {
            buf: b,
            next: ptr::null_mut(),
        };
        ngx_http_output_filter(r, &mut chain)
    }
}

/// Why a request has no memcached key.
enum KeyError {
    /// Empty, or over 250 bytes once escaped (logged).
    Unusable,
    /// Evaluation or allocation failed.
    Internal,
}

/// Computes the request's memcached key (`rcache_key`, escaped) and prepares the
/// `get` (`delete` to `purge`). Returns the escaped key.
///
/// # Safety
/// `r` must be a request in its content phase.
unsafe fn memcached_key<'a>(r: *mut ngx_http_request_t, purge: bool) -> Result<&'a [u8], KeyError> {
    // SAFETY: forwarded contract; the key lives in r->pool.
    unsafe {
        let lcf = crate::loc_conf(r);
        let raw: &[u8] = if lcf.key.is_null() {
            (*r).uri.as_bytes()
        } else {
            let mut value = ngx_str_t::empty();
            if ngx_http_complex_value(r, lcf.key, &mut value) != NGX_OK as ngx_int_t {
                return Err(KeyError::Internal);
            }
            pool_bytes(&value)
        };
        let log = (*(*r).connection).log;
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
}

/// Sends `value` as the page (HIT). Returns the rc to finalize `r` with.
///
/// # Safety
/// `r` must be a live request whose response has not started; `value` must
/// stay valid until the request ends (it lives in `r->pool`).
pub unsafe fn serve_hit(r: *mut ngx_http_request_t, value: Value, flags: u32) -> ngx_int_t {
    // SAFETY: r is live; headers and buffers are allocated from its pool.
    unsafe {
        let lcf = crate::loc_conf(r);
        let rc = ngx_http_discard_request_body(r);
        if rc != NGX_OK as ngx_int_t {
            return rc;
        }

        // A page rcache stored carries its headers; any other value is raw bytes.
        let mut status = NGX_HTTP_OK as ngx_uint_t;
        let stored = flags & STORED_FLAG != 0;
        let mut gzipped = !stored && flags & lcf.gzip_mask() != 0;
        let mut body = value;
        if stored {
            let Some(value) = in_one_piece(r, value) else {
                return NGX_ERROR as ngx_int_t;
            };
            let Some(page) = page::decode(value) else {
                ngx_log_error!(
                    NGX_LOG_ERR,
                    (*(*r).connection).log,
                    "rcache: a value with flag {} is not in rcache's stored form: MISS",
                    STORED_FLAG
                );
                return fall_back(r, Verdict::Miss);
            };
            status = ngx_uint_t::from(page.status);
            for &(name, value) in &page.headers {
                if name == "Content-Encoding" {
                    gzipped = value.eq_ignore_ascii_case(b"gzip");
                } else if !set_stored_header(r, name, value) {
                    return NGX_ERROR as ngx_int_t;
                }
            }
            body = Value::whole(page.body);
        }
        if gzipped {
            if accepts_gzip(r) {
                let Some(h) = add_header(r, ngx_string!("Content-Encoding"), ngx_string!("gzip"))
                else {
                    return NGX_ERROR as ngx_int_t;
                };
                (*r).headers_out.content_encoding = h;
            } else {
                let Some(gz) = in_one_piece(r, body) else {
                    return NGX_ERROR as ngx_int_t;
                };
                match gunzip(r, gz, lcf.max_size) {
                    Some(plain) => body = Value::whole(plain),
                    None => return fall_back(r, Verdict::Miss),
                }
            }
            if add_header(r, ngx_string!("Vary"), ngx_string!("Accept-Encoding")).is_none() {
                return NGX_ERROR as ngx_int_t;
            }
        }
        // nginx serves several ranges only from a body in one buffer.
        if !(*r).headers_in.range.is_null() {
            let Some(whole) = in_one_piece(r, body) else {
                return NGX_ERROR as ngx_int_t;
            };
            body = Value::whole(whole);
        }

        variables::set_status(r, CacheStatus::Hit);
        let h = &mut (*r).headers_out;
        h.status = status;
        h.content_length_n = body.len() as off_t;
        if h.content_type.len == 0 && ngx_http_set_content_type(r) != NGX_OK as ngx_int_t {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        }
        (*r).set_allow_ranges(1);

        let rc = ngx_http_send_header(r);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || (*r).header_only() != 0 {
            return rc;
        }
        match body_chain(r, body) {
            Some(out) => ngx_http_output_filter(r, out),
            None => NGX_ERROR as ngx_int_t,
        }
    }
}

/// The body as a chain of in-memory buffers, one per piece (one empty buffer
/// for an empty page), the last one marked as the end of the response (of the
/// subrequest's part of it).
///
/// # Safety
/// `r` must be a live request; `body` must live as long as it.
unsafe fn body_chain(r: *mut ngx_http_request_t, body: Value) -> Option<*mut ngx_chain_t> {
    // SAFETY: buffers and links are allocated from r->pool and point into body.
    unsafe {
        let pool = (*r).pool;
        let mut pieces = [ptr::null_mut::<ngx_buf_t>(); 2];
        let mut n = 0;
        for piece in body.pieces() {
            let b = ngx_pcalloc(pool, size_of::<ngx_buf_t>()) as *mut ngx_buf_t;
            if b.is_null() {
                return None;
            }
            let start = piece.as_ptr().cast_mut();
            (*b).start = start;
            (*b).pos = start;
            (*b).last = start.add(piece.len());
            (*b).end = (*b).last;
            (*b).set_memory(1);
            pieces[n] = b;
            n += 1;
        }
        let last_buf = ptr::eq(r, (*r).main);
        if n == 0 {
            let b = ngx_pcalloc(pool, size_of::<ngx_buf_t>()) as *mut ngx_buf_t;
            if b.is_null() {
                return None;
            }
            // An empty subrequest part still has to flow through the filters.
            (*b).set_sync(u32::from(!last_buf));
            pieces[0] = b;
            n = 1;
        }
        let last = pieces[n - 1];
        (*last).set_last_buf(u32::from(last_buf));
        (*last).set_last_in_chain(1);

        let mut out = ptr::null_mut::<ngx_chain_t>();
        for &b in pieces[..n].iter().rev() {
            let cl = ngx_alloc_chain_link(pool);
            if cl.is_null() {
                return None;
            }
            (*cl).buf = b;
            (*cl).next = out;
            out = cl;
        }
        Some(out)
    }
}

/// `value` as one slice in `r->pool`, joining its pieces if it has two.
///
/// # Safety
/// `r` must be a live request; `value` must live as long as it.
unsafe fn in_one_piece<'a>(r: *mut ngx_http_request_t, value: Value<'a>) -> Option<&'a [u8]> {
    if let Some(bytes) = value.as_slice() {
        return Some(bytes);
    }
    // SAFETY: the copy is allocated from r->pool and fully written.
    unsafe {
        let out = ngx_palloc((*r).pool, value.len()) as *mut u8;
        if out.is_null() {
            return None;
        }
        let out = slice::from_raw_parts_mut(out, value.len());
        value.copy_to(out);
        Some(out)
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
/// `r` must be a live request; `name` and `value` must outlive it.
unsafe fn add_header(
    r: *mut ngx_http_request_t,
    name: ngx_str_t,
    value: ngx_str_t,
) -> Option<*mut ngx_table_elt_t> {
    // SAFETY: the list element is zeroed (so `next`, where the nginx version
    // has it, is NULL) before it is filled.
    unsafe {
        let h = ngx_list_push(&mut (*r).headers_out.headers) as *mut ngx_table_elt_t;
        if h.is_null() {
            return None;
        }
        ptr::write_bytes(h, 0, 1);
        (*h).hash = 1;
        (*h).key = name;
        (*h).value = value;
        Some(h)
    }
}

/// Restores a header of a page rcache stored (`value` lives in the request's pool).
///
/// # Safety
/// `r` must be a live request whose headers have not been sent.
unsafe fn set_stored_header(r: *mut ngx_http_request_t, name: &'static str, value: &[u8]) -> bool {
    let value_str = ngx_str_t {
        len: value.len(),
        data: value.as_ptr().cast_mut(),
    };
    // SAFETY: per the contract above.
    unsafe {
        let out = &mut (*r).headers_out;
        match name {
            "Content-Type" => {
                out.content_type = value_str;
                out.content_type_len = value.iter().position(|&b| b == b';').unwrap_or(value.len());
                out.content_type_lowcase = ptr::null_mut();
                true
            }
            "Last-Modified" => {
                // nginx writes it from the time, and answers If-Modified-Since with it.
                out.last_modified_time = ngx_parse_http_time(value_str.data, value_str.len);
                true
            }
            _ => {
                let name = ngx_str_t {
                    len: name.len(),
                    data: name.as_ptr().cast_mut(),
                };
                let Some(h) = add_header(r, name, value_str) else {
                    return false;
                };
                if name.as_bytes() == b"ETag" {
                    (*r).headers_out.etag = h;
                }
                true
            }
        }
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
    fn pages_rcache_stored() {
        assert!(page_flags(STORED_FLAG, 0));
        assert!(!page_flags(STORED_FLAG | 1, 0));
        assert!(!page_flags(STORED_FLAG | 2, 2));
    }

    #[test]
    fn gzip_bits_are_allowed_on_top() {
        assert!(page_flags(2, 2));
        assert!(page_flags(2 | 16, 2));
        assert!(!page_flags(2 | 1, 2));
        assert!(!page_flags(2, 4));
    }
}
