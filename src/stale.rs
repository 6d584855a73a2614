//! Serving the stale page when its regeneration fails (`$rcache_status` STALE).
//!
//! The request that won the regeneration of an expired or soft-purged page (EXPIRED)
//! goes to the fallback with a copy of the stale page in its pool. If the fallback
//! answers with a server error — the app's own 5xx, or nginx's 502/504 when the app is
//! down or does not answer within `proxy_read_timeout` — rcache's header filter replaces
//! the error's status and headers with the page's, and its body filter sends the page
//! instead of the error's body (which is consumed and dropped, so the fallback finishes
//! as usual). The win has been given back by then, so one other request tries again;
//! the site stays up on the stale page for as long as memcached keeps it.
//!
//! Like `proxy_cache_use_stale error timeout http_500 http_502 http_503 http_504`, but
//! the stale copy is the one in memcached, shared by every nginx host.

use core::ffi::c_void;
use core::{ptr, slice};

use ngx::core::Status;
use ngx::ffi::*;

use crate::conf::LocConf;
use crate::gzip;
use crate::page_response::{self, PageProblem};
use crate::store::client;
use crate::store::page::{self, STORED_FLAG};
use crate::value::Value;
use crate::variables::{self, CacheStatus};

/// The stale page a regenerating request keeps, in its pool.
struct StaleCopy {
    /// The configuration of the rcache location (not of the fallback's).
    lcf: *const LocConf,
    key: *const u8,
    key_len: usize,
    page: *const u8,
    len: usize,
    flags: u32,
    state: Swap,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Swap {
    /// The fallback has not answered yet.
    Armed,
    /// The fallback answered an error: the page's body is to be sent instead of its.
    Swapped(*mut ngx_chain_t),
    /// The page's body has been sent; the error's is dropped.
    Sent,
}

/// A regenerating request `r` (its content phase, before the redirect to the
/// fallback) keeps a copy of the stale page `value` (flags `flags`) under `key`, to
/// serve if the fallback fails. Values that could not be served to this client (a
/// broken stored form, gzip that does not decompress within `rcache_max_size`) are not
/// kept.
pub fn keep(r: &mut ngx_http_request_t, lcf: &LocConf, key: &[u8], value: Value, flags: u32) {
    if !ptr::eq(r, r.main) || !servable(r, lcf, value, flags) {
        return;
    }
    // SAFETY: the copy and its bytes are allocated in the request's pool and live as
    // long as the request; the cleanup only marks the copy (it owns nothing else).
    unsafe {
        let bytes = ngx_pnalloc(r.pool, value.len().max(1)) as *mut u8;
        if bytes.is_null() {
            return;
        }
        value.copy_to(slice::from_raw_parts_mut(bytes, value.len()));
        let cln = ngx_pool_cleanup_add(r.pool, size_of::<StaleCopy>());
        if cln.is_null() {
            return;
        }
        ptr::write(
            (*cln).data as *mut StaleCopy,
            StaleCopy {
                lcf,
                key: key.as_ptr(),
                key_len: key.len(),
                page: bytes,
                len: value.len(),
                flags,
                state: Swap::Armed,
            },
        );
        (*cln).handler = Some(forget);
    }
}

/// Whether `value` can be sent to `r`'s client as the page, checked before it is kept
/// (once the error's headers are replaced, there is no way back).
fn servable(r: &mut ngx_http_request_t, lcf: &LocConf, value: Value, flags: u32) -> bool {
    if flags & STORED_FLAG != 0 {
        return page_response::in_one_piece(r, value).is_some_and(|v| page::decode(v).is_some());
    }
    if flags & lcf.gzip_mask() != 0 && !page_response::accepts_gzip(r) {
        return page_response::in_one_piece(r, value)
            .is_some_and(|gz| gzip::decompressed_size(gz, lcf.max_size).is_ok());
    }
    true
}

/// The cleanup that marks a [`StaleCopy`] (its bytes are freed with the pool).
unsafe extern "C" fn forget(data: *mut c_void) {
    // SAFETY: the StaleCopy keep() wrote; the pool is going away.
    unsafe { (*(data as *mut StaleCopy)).len = 0 };
}

/// The stale copy of `r`, if it has one.
///
/// # Safety
/// `r` must be a live main request.
unsafe fn find<'a>(r: &ngx_http_request_t) -> Option<&'a mut StaleCopy> {
    let ours: unsafe extern "C" fn(*mut c_void) = forget;
    // SAFETY: the pool's cleanup list; the one under `forget` holds keep()'s StaleCopy.
    unsafe {
        let mut cln = (*r.pool).cleanup;
        while !cln.is_null() {
            if (*cln).handler.is_some_and(|h| ptr::fn_addr_eq(h, ours)) {
                return ((*cln).data as *mut StaleCopy).as_mut();
            }
            cln = (*cln).next;
        }
    }
    None
}

static mut NEXT_HEADER_FILTER: ngx_http_output_header_filter_pt = None;
static mut NEXT_BODY_FILTER: ngx_http_output_body_filter_pt = None;

/// Postconfiguration: puts the stale filters in nginx's chains. Installed before the
/// store's capture filters, so that those see the fallback's own answer (an error is
/// never stored, and its win is given back) and these come after them.
///
/// # Safety
/// Called once per configuration, from postconfiguration.
pub unsafe fn install_filters() {
    // SAFETY: nginx's filter chain pointers are set up at configuration time, on one
    // thread; ours are read only by the filters.
    unsafe {
        NEXT_HEADER_FILTER = ngx_http_top_header_filter;
        ngx_http_top_header_filter = Some(header_filter);
        NEXT_BODY_FILTER = ngx_http_top_body_filter;
        ngx_http_top_body_filter = Some(body_filter);
    }
}

unsafe extern "C" fn header_filter(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls header filters with a live request.
    let req = unsafe { &mut *r };
    // Cheap tests first: every response of every request passes here.
    if ptr::eq(req, req.main)
        && req.headers_out.status >= NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_uint_t
        && variables::status_is(req, CacheStatus::Expired)
    {
        // SAFETY: a live main request.
        if let Some(copy) = unsafe { find(req) } {
            if copy.state == Swap::Armed && !swap(req, copy) {
                return Status::NGX_ERROR.into();
            }
        }
    }
    // SAFETY: the next filter, set at configuration time, with nginx's request.
    match unsafe { NEXT_HEADER_FILTER } {
        Some(next) => unsafe { next(r) },
        None => Status::NGX_ERROR.into(),
    }
}

/// The fallback answered an error: make the response the stale page's. False when the
/// request's pool is exhausted.
fn swap(r: &mut ngx_http_request_t, copy: &mut StaleCopy) -> bool {
    // SAFETY: the rcache location's conf, live for the configuration; the page and
    // key live in the request's pool.
    let (lcf, page, key) = unsafe {
        (
            &*copy.lcf,
            slice::from_raw_parts(copy.page, copy.len),
            slice::from_raw_parts(copy.key, copy.key_len),
        )
    };
    let error = r.headers_out.status;
    clear_headers(r);
    let body = match page_response::page_headers(
        r,
        lcf,
        Value::whole(page),
        copy.flags,
        CacheStatus::Stale,
    ) {
        Ok(body) => body,
        // keep() served only values that decode: only memory can be short here.
        Err(PageProblem::Unusable | PageProblem::NoMemory) => return false,
    };
    let Some(chain) = page_response::body_chain(r, body) else {
        return false;
    };
    copy.state = Swap::Swapped(chain);
    ngx::ngx_log_error!(
        NGX_LOG_INFO,
        log(r),
        "rcache: the fallback answered {} while regenerating \"{}\": STALE, the stale page \
         served",
        error,
        String::from_utf8_lossy(key)
    );
    // Where rcache does not store, the app was to write the page itself: give the win
    // back so that one other request tries again (a store gives it back itself).
    if lcf.store != 1 {
        client::release(lcf, key);
    }
    true
}

/// Forgets the error's response headers (nginx skips list entries whose hash is 0).
fn clear_headers(r: &mut ngx_http_request_t) {
    let out = &mut r.headers_out;
    let mut part: *mut ngx_list_part_t = &mut out.headers.part;
    // SAFETY: walks the header list's parts; elements are ngx_table_elt_t.
    unsafe {
        while !part.is_null() {
            let elts =
                slice::from_raw_parts_mut((*part).elts as *mut ngx_table_elt_t, (*part).nelts);
            for h in elts {
                h.hash = 0;
            }
            part = (*part).next;
        }
    }
    out.status_line = ngx_str_t::empty();
    out.content_type = ngx_str_t::empty();
    out.content_type_len = 0;
    out.content_type_lowcase = ptr::null_mut();
    out.content_type_hash = 0;
    out.charset = ngx_str_t::empty();
    out.content_length = ptr::null_mut();
    out.content_length_n = -1;
    out.content_encoding = ptr::null_mut();
    out.content_range = ptr::null_mut();
    out.accept_ranges = ptr::null_mut();
    out.location = ptr::null_mut();
    out.refresh = ptr::null_mut();
    out.www_authenticate = ptr::null_mut();
    out.last_modified = ptr::null_mut();
    out.last_modified_time = -1;
    out.etag = ptr::null_mut();
    out.expires = ptr::null_mut();
}

unsafe extern "C" fn body_filter(r: *mut ngx_http_request_t, chain: *mut ngx_chain_t) -> ngx_int_t {
    // SAFETY: nginx calls body filters with a live request and its output chain.
    let req = unsafe { &mut *r };
    let mut out = chain;
    if ptr::eq(req, req.main) && variables::status_is(req, CacheStatus::Stale) {
        // SAFETY: a live main request.
        if let Some(copy) = unsafe { find(req) } {
            match copy.state {
                Swap::Armed => {}
                Swap::Swapped(page) => {
                    consume(chain);
                    copy.state = Swap::Sent;
                    out = page;
                }
                Swap::Sent => {
                    consume(chain);
                    out = ptr::null_mut();
                }
            }
        }
    }
    // SAFETY: the next filter, set at configuration time, with nginx's request.
    match unsafe { NEXT_BODY_FILTER } {
        Some(next) => unsafe { next(r, out) },
        None => Status::NGX_ERROR.into(),
    }
}

/// Marks every buffer of the error's body as sent, so that whoever produced it reuses
/// or frees it as usual.
fn consume(chain: *mut ngx_chain_t) {
    let mut cl = chain;
    // SAFETY: NULL or a link of the output chain, each with a buffer.
    while let Some(link) = unsafe { cl.as_ref() } {
        // SAFETY: as above.
        let b = unsafe { &mut *link.buf };
        b.pos = b.last;
        b.file_pos = b.file_last;
        cl = link.next;
    }
}

/// The request's log.
fn log(r: &ngx_http_request_t) -> *mut ngx_log_t {
    // SAFETY: a live request has a live connection.
    unsafe { (*r.connection).log }
}
