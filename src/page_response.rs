//! A value as the response: the status and headers of the page it is (a page rcache
//! stored carries its own; any other value is raw bytes), gzip bytes to clients that accept
//! them and decompressed to the others, and the body as a chain of buffers. Used for HITs
//! and stale pages (`respond.rs`) and for the stale page that replaces a failed
//! regeneration's error (`stale.rs`).

use core::ptr;
use core::slice;

use ngx::core::Status;
use ngx::ffi::*;
use ngx::{ngx_log_error, ngx_string};

use crate::conf::LocConf;
use crate::gzip::{self, GunzipError};
use crate::store::page::{self, STORED_FLAG};
use crate::value::Value;
use crate::variables::{self, CacheStatus};

/// Why a value cannot be sent as a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageProblem {
    /// Not a page after all (a broken stored form, gzip that does not decompress within
    /// `rcache_max_size`): logged.
    Unusable,
    /// The request's pool is exhausted.
    NoMemory,
}

/// Fills in `r`'s response headers for `value` as the page — its status and kept
/// headers for a page rcache stored, gzip bytes or decompressed, Content-Length and
/// Content-Type — and records `cache_status`. Returns the body to send. `lcf` is the
/// configuration of the rcache location; `value` lives in `r->pool`.
pub fn page_headers<'a>(
    r: &mut ngx_http_request_t,
    lcf: &LocConf,
    value: Value<'a>,
    flags: u32,
    cache_status: CacheStatus,
) -> Result<Value<'a>, PageProblem> {
    // A page rcache stored carries its headers; any other value is raw bytes.
    let mut status = NGX_HTTP_OK as ngx_uint_t;
    let stored = flags & STORED_FLAG != 0;
    let mut gzipped = !stored && flags & lcf.gzip_mask() != 0;
    let mut body = value;
    if stored {
        let value = in_one_piece(r, value).ok_or(PageProblem::NoMemory)?;
        let Some(page) = page::decode(value) else {
            ngx_log_error!(
                NGX_LOG_ERR,
                log(r),
                "rcache: a value with flag {} is not in rcache's stored form: MISS",
                STORED_FLAG
            );
            return Err(PageProblem::Unusable);
        };
        debug!(
            log(r),
            "rcache: stored page: status {}, {} headers",
            page.status,
            page.headers.len()
        );
        status = ngx_uint_t::from(page.status);
        for &(name, value) in &page.headers {
            if name == "Content-Encoding" {
                gzipped = value.eq_ignore_ascii_case(b"gzip");
            } else if !set_stored_header(r, name, value) {
                return Err(PageProblem::NoMemory);
            }
        }
        body = Value::whole(page.body);
    }
    if gzipped {
        if accepts_gzip(r) {
            let h = add_header(r, ngx_string!("Content-Encoding"), ngx_string!("gzip"))
                .ok_or(PageProblem::NoMemory)?;
            r.headers_out.content_encoding = h;
        } else {
            debug!(
                log(r),
                "rcache: the client does not accept gzip: decompressing"
            );
            let gz = in_one_piece(r, body).ok_or(PageProblem::NoMemory)?;
            body = Value::whole(gunzip(r, gz, lcf.max_size).ok_or(PageProblem::Unusable)?);
        }
        add_header(r, ngx_string!("Vary"), ngx_string!("Accept-Encoding"))
            .ok_or(PageProblem::NoMemory)?;
    }
    // nginx serves several ranges only from a body in one buffer.
    if !r.headers_in.range.is_null() {
        body = Value::whole(in_one_piece(r, body).ok_or(PageProblem::NoMemory)?);
    }

    variables::set_status(r, cache_status);
    debug!(
        log(r),
        "rcache: {}: {} bytes, status {}",
        cache_status,
        body.len(),
        status
    );
    let h = &mut r.headers_out;
    h.status = status;
    h.content_length_n = body.len() as off_t;
    // SAFETY: r is live; the content type is set from its location's types.
    if h.content_type.len == 0 && !Status(unsafe { ngx_http_set_content_type(r) }).is_ok() {
        return Err(PageProblem::NoMemory);
    }
    r.set_allow_ranges(1);
    Ok(body)
}

/// The body as a chain of in-memory buffers, one per piece (one empty buffer
/// for an empty page), the last one marked as the end of the response (of the
/// subrequest's part of it). `body` must live as long as `r`.
pub fn body_chain(r: &mut ngx_http_request_t, body: Value) -> Option<*mut ngx_chain_t> {
    let pool = r.pool;
    let last_buf = ptr::eq(r, r.main);
    let mut pieces = [ptr::null_mut::<ngx_buf_t>(); 2];
    let mut n = 0;
    for piece in body.pieces() {
        let b = calloc_buf(pool)?;
        let start = piece.as_ptr().cast_mut();
        b.start = start;
        b.pos = start;
        // SAFETY: the end of the same piece.
        b.last = unsafe { start.add(piece.len()) };
        b.end = b.last;
        // Read-only: a filter that rewrites in place (charset) gets a copy from the
        // copy filter first. A front-cache page is shared by every worker.
        b.set_memory(1);
        pieces[n] = b;
        n += 1;
    }
    if n == 0 {
        let b = calloc_buf(pool)?;
        // An empty subrequest part still has to flow through the filters.
        b.set_sync(u32::from(!last_buf));
        pieces[0] = b;
        n = 1;
    }
    // SAFETY: pieces[..n] are the buffers just allocated.
    let last = unsafe { &mut *pieces[n - 1] };
    last.set_last_buf(u32::from(last_buf));
    last.set_last_in_chain(1);

    let mut out = ptr::null_mut::<ngx_chain_t>();
    for &b in pieces[..n].iter().rev() {
        // SAFETY: a link from the request's pool, filled at once.
        unsafe {
            let cl = ngx_alloc_chain_link(pool);
            if cl.is_null() {
                return None;
            }
            (*cl).buf = b;
            (*cl).next = out;
            out = cl;
        }
    }
    Some(out)
}

/// A zeroed buffer header from `pool`.
fn calloc_buf<'a>(pool: *mut ngx_pool_t) -> Option<&'a mut ngx_buf_t> {
    // SAFETY: pool is a live request pool; the buffer is zeroed.
    unsafe { (ngx_pcalloc(pool, size_of::<ngx_buf_t>()) as *mut ngx_buf_t).as_mut() }
}

/// `value` as one slice in `r->pool`, joining its pieces if it has two.
pub fn in_one_piece<'a>(r: &ngx_http_request_t, value: Value<'a>) -> Option<&'a [u8]> {
    if let Some(bytes) = value.as_slice() {
        return Some(bytes);
    }
    let out = pool_bytes_mut(r, value.len())?;
    value.copy_to(out);
    Some(out)
}

/// `len` bytes of uninitialised memory from `r`'s pool, as a slice to fill.
fn pool_bytes_mut<'a>(r: &ngx_http_request_t, len: usize) -> Option<&'a mut [u8]> {
    // SAFETY: the request pool lives as long as anything that uses the bytes;
    // u8 has no invalid values (callers overwrite them all).
    unsafe {
        let out = ngx_pnalloc(r.pool, len.max(1)) as *mut u8;
        (!out.is_null()).then(|| slice::from_raw_parts_mut(out, len))
    }
}

/// Whether the client gets gzip bytes as they are: nginx's own rules, as
/// for `gzip_static` (Accept-Encoding, `gzip_http_version`, `gzip_proxied`,
/// `gzip_disable`).
pub fn accepts_gzip(r: &mut ngx_http_request_t) -> bool {
    #[cfg(ngx_feature = "http_gzip")]
    {
        // SAFETY: ngx_http_gzip_ok only reads the request and sets its gzip flags.
        let ok = unsafe { ngx_http_gzip_ok(r) } == Status::NGX_OK.0;
        // rcache adds its own Vary; don't let the header filter add another.
        r.set_gzip_vary(0);
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
fn gunzip<'a>(r: &ngx_http_request_t, gz: &[u8], limit: usize) -> Option<&'a [u8]> {
    let result = gzip::decompressed_size(gz, limit).and_then(|size| {
        let out = pool_bytes_mut(r, size).ok_or(GunzipError::Corrupt)?;
        gzip::gunzip_into(gz, out)?;
        Ok(&*out)
    });
    match result {
        Ok(plain) => Some(plain),
        Err(e @ GunzipError::TooLarge { .. }) => {
            ngx_log_error!(NGX_LOG_INFO, log(r), "rcache: {}: MISS", e);
            None
        }
        Err(e) => {
            ngx_log_error!(NGX_LOG_ERR, log(r), "rcache: {}: MISS", e);
            None
        }
    }
}

/// Adds a response header; `name` and `value` must outlive the request.
fn add_header(
    r: &mut ngx_http_request_t,
    name: ngx_str_t,
    value: ngx_str_t,
) -> Option<*mut ngx_table_elt_t> {
    // SAFETY: the list element is zeroed (so `next`, where the nginx version
    // has it, is NULL) before it is filled.
    unsafe {
        let h = ngx_list_push(&mut r.headers_out.headers) as *mut ngx_table_elt_t;
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

/// Restores a header of a page rcache stored (`value` lives in the request's
/// pool); before the headers are sent.
fn set_stored_header(r: &mut ngx_http_request_t, name: &'static str, value: &[u8]) -> bool {
    let value_str = ngx_str_t {
        len: value.len(),
        data: value.as_ptr().cast_mut(),
    };
    let out = &mut r.headers_out;
    match name {
        "Content-Type" => {
            out.content_type = value_str;
            out.content_type_len = value.iter().position(|&b| b == b';').unwrap_or(value.len());
            out.content_type_lowcase = ptr::null_mut();
            true
        }
        "Last-Modified" => {
            // nginx writes it from the time, and answers If-Modified-Since with it.
            // SAFETY: reads value_str.len bytes of value.
            out.last_modified_time = unsafe { ngx_parse_http_time(value_str.data, value_str.len) };
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
                r.headers_out.etag = h;
            }
            true
        }
    }
}

/// The request's log.
fn log(r: &ngx_http_request_t) -> *mut ngx_log_t {
    // SAFETY: a live request has a live connection.
    unsafe { (*r.connection).log }
}
