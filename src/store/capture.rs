//! Copying the fallback's response on its way to the client.
//!
//! At a MISS (memcached has no value for the key) in a location with `rcache_store on`,
//! rcache leaves a store state on the request — in its pool, so that it survives the
//! internal redirect to the fallback and is freed with the request. rcache's header filter
//! then decides from the response headers whether the page is cacheable; if so its body
//! filter copies the body as it passes (at most `rcache_store_max_size`), and when the last
//! buffer has gone by, the page is handed to the store client (`client.rs`). The client
//! gets every byte at the app's speed: nothing is held back or reordered.

use core::ffi::c_void;
use core::{ptr, slice};

use ngx::core::Status;
use ngx::ffi::*;
use ngx::http::HttpModuleLocationConf;

use super::client::{self, Captured};
use super::page;
use super::policy::{self, Reason};
use crate::conf::LocConf;
use crate::front;
use crate::variables::{self, StoreStatus};
use crate::HttpRcacheModule;

/// A page being captured for memcached.
pub struct StoreState {
    /// The configuration of the rcache location (not of the fallback's).
    pub lcf: *const LocConf,
    /// The escaped memcached key, in the request's pool.
    key: *const u8,
    key_len: usize,
    phase: Phase,
    /// What is captured so far, handed to the store client once complete.
    page: Captured,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the fallback's response headers.
    Headers,
    /// Copying the body.
    Body,
    /// Decided: stored, not cacheable, too large.
    Done,
}

impl StoreState {
    pub fn key(&self) -> &[u8] {
        // SAFETY: the key lives in the request's pool, as this state does.
        unsafe { slice::from_raw_parts(self.key, self.key_len) }
    }
}

/// At a MISS (`replaces` None) or when this request regenerates an expired page
/// (`replaces`: the CAS of the item its page replaces): starts capturing if
/// `rcache_store` is on and the request may be stored. Called in the rcache location,
/// before the redirect to the fallback; `key` lives in `r`'s pool.
pub fn prepare(r: &mut ngx_http_request_t, key: &[u8], replaces: Option<u64>) {
    start(r, key, replaces, false);
}

/// At a PASS: capture the fallback's response in case it is cacheable now; it then
/// replaces the hit-for-pass marker `cas` names.
pub fn prepare_over_marker(r: &mut ngx_http_request_t, key: &[u8], cas: u64) {
    start(r, key, Some(cas), true);
}

fn start(r: &mut ngx_http_request_t, key: &[u8], replaces: Option<u64>, over_marker: bool) {
    let Some(lcf) = HttpRcacheModule::location_conf(r) else {
        return;
    };
    if lcf.store != 1 || !ptr::eq(r, r.main) {
        return;
    }
    if let Some(reason) = refusal(r, lcf) {
        // SAFETY: a live request has a live connection.
        debug!(
            unsafe { (*r.connection).log },
            "rcache: not stored: {}", reason
        );
        client::set_status(r, StoreStatus::NotCacheable);
        if replaces.is_some() && !over_marker {
            client::release(lcf, key);
        }
        return;
    }
    debug!(
        unsafe { (*r.connection).log },
        "rcache: store: MISS, capturing the fallback's response"
    );

    // SAFETY: the state is written into the cleanup's data, which lives (and is
    // dropped) with the request's pool; key lives in that pool too.
    unsafe {
        let cln = ngx_pool_cleanup_add(r.pool, size_of::<StoreState>());
        if cln.is_null() {
            return;
        }
        let state = (*cln).data as *mut StoreState;
        ptr::write(
            state,
            StoreState {
                lcf,
                key: key.as_ptr(),
                key_len: key.len(),
                phase: Phase::Headers,
                page: Captured {
                    replaces,
                    over_marker,
                    ..Captured::default()
                },
            },
        );
        (*cln).handler = Some(drop_state);
    }
}

/// Why the response to `r` may not be stored whatever it is (method, query string,
/// `rcache_store_bypass`); None when it may.
pub fn refusal(r: &mut ngx_http_request_t, lcf: &LocConf) -> Option<Reason> {
    if r.method != NGX_HTTP_GET as ngx_uint_t {
        Some(Reason::Method)
    } else if lcf.store_args == 0 && r.args.len > 0 {
        Some(Reason::QueryString)
    } else if !lcf.store_bypass.is_null()
        // SAFETY: predicates compiled by ngx_http_set_predicate_slot, on a live request.
        && unsafe { ngx_http_test_predicates(r, lcf.store_bypass) } != Status::NGX_OK.0
    {
        Some(Reason::Bypass)
    } else {
        None
    }
}

/// The request's pool is going away: free the capture. A regeneration that never got to
/// its store (the client went away, the fallback failed before answering) gives its win
/// back.
unsafe extern "C" fn drop_state(data: *mut c_void) {
    // SAFETY: data is the StoreState written by prepare(), dropped once, here.
    unsafe {
        let state = &*(data as *const StoreState);
        if state.phase != Phase::Done && state.page.replaces.is_some() && !state.page.over_marker {
            client::release(&*state.lcf, state.key());
        }
        ptr::drop_in_place(data as *mut StoreState)
    }
}

/// The store state of `r`, if it has one.
///
/// # Safety
/// `r` must be a live request.
unsafe fn find<'a>(r: *mut ngx_http_request_t) -> Option<&'a mut StoreState> {
    // SAFETY: the pool's cleanup list holds our state under drop_state.
    unsafe {
        // Cheap tests first: every response of every request passes here.
        if !ptr::eq(r, (*r).main) || !variables::status_may_store(&*r) {
            return None;
        }
        let mut cln = (*(*r).pool).cleanup;
        while !cln.is_null() {
            // The handler rcache set in prepare(): the very function item, so its
            // address is the one compared here.
            let ours: unsafe extern "C" fn(*mut c_void) = drop_state;
            if (*cln).handler.is_some_and(|h| ptr::fn_addr_eq(h, ours)) {
                return ((*cln).data as *mut StoreState).as_mut();
            }
            cln = (*cln).next;
        }
        None
    }
}

static mut NEXT_HEADER_FILTER: ngx_http_output_header_filter_pt = None;
static mut NEXT_BODY_FILTER: ngx_http_output_body_filter_pt = None;

/// Postconfiguration: puts rcache's filters at the top of nginx's chains, so they see
/// the response as the fallback produced it (before gzip, SSI, ...).
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
    if let Some(state) = unsafe { find(r) } {
        if state.phase == Phase::Headers {
            // SAFETY: as above; the state belongs to r.
            decide(unsafe { &mut *r }, state);
        }
    }
    // SAFETY: the next filter, set at configuration time.
    match unsafe { NEXT_HEADER_FILTER } {
        // SAFETY: nginx's filter chain, with the request nginx gave us.
        Some(next) => unsafe { next(r) },
        None => Status::NGX_ERROR.into(),
    }
}

/// Reads the response headers: capture the body, or record why not.
fn decide(r: &mut ngx_http_request_t, state: &mut StoreState) {
    state.phase = Phase::Done;
    // SAFETY: the rcache location's conf, live for the configuration.
    let lcf = unsafe { &*state.lcf };
    let facts = response_facts(r);
    let decided = policy::decide(
        &facts,
        lcf.store_statuses(),
        u32::try_from(lcf.store_ttl).unwrap_or(0),
        ngx_time(),
    );
    let ttl = match decided {
        Ok(ttl) => ttl,
        Err(reason) => {
            debug!(log(r), "rcache: not stored: {}", reason);
            // A server error (whatever else makes it not cacheable) is a failure, not a page.
            let failed = facts.status >= 500;
            stop_after(r, state, StoreStatus::NotCacheable, failed);
            return;
        }
    };
    let length = r.headers_out.content_length_n;
    if length > 0 && length as u64 > lcf.store_max_size as u64 {
        stop(r, state, StoreStatus::TooLarge);
        return;
    }

    debug!(
        log(r),
        "rcache: store: cacheable for {}s, capturing the body", ttl
    );
    state.page.status = facts.status;
    state.page.ttl = ttl;
    state.page.headers = kept_headers(r);
    if length > 0 {
        state.page.body.reserve_exact(length as usize);
    }
    state.phase = Phase::Body;
}

/// What the cacheability rules look at in a response (values in the request's pool).
fn response_facts<'a>(r: &'a ngx_http_request_t) -> policy::Response<'a> {
    let out = &r.headers_out;
    let mut facts = policy::Response {
        status: u16::try_from(out.status).unwrap_or(0),
        ..Default::default()
    };
    for h in headers(&out.headers) {
        let name = h.key.as_bytes();
        if name.eq_ignore_ascii_case(b"set-cookie") {
            facts.set_cookie = true;
        } else if name.eq_ignore_ascii_case(b"cache-control") {
            facts.cache_control.push(h.value.as_bytes());
        } else if name.eq_ignore_ascii_case(b"vary") {
            facts.vary.push(h.value.as_bytes());
        }
    }
    facts.content_encoding = content_encoding(r).map(|ce| ce.value.as_bytes());
    // SAFETY: NULL, or the upstream (proxy, fastcgi, ...) that produced the response.
    if let Some(u) = unsafe { r.upstream.as_ref() } {
        // nginx's proxy and fastcgi modules consume X-Accel-Expires (it is not in
        // headers_out); it is still in what the upstream sent. Like proxy_cache,
        // rcache_store follows `proxy_ignore_headers X-Accel-Expires Cache-Control`.
        // SAFETY: NULL or the upstream's conf.
        let ignored = unsafe { u.conf.as_ref() }.map_or(0, |c| c.ignore_headers);
        if ignored & NGX_HTTP_UPSTREAM_IGN_XA_EXPIRES as ngx_uint_t == 0 {
            // SAFETY: NULL or the header the upstream sent.
            if let Some(xae) = unsafe { u.headers_in.x_accel_expires.as_ref() } {
                facts.x_accel_expires = Some(xae.value.as_bytes());
            }
        }
        if ignored & NGX_HTTP_UPSTREAM_IGN_CACHE_CONTROL as ngx_uint_t != 0 {
            facts.cache_control.clear();
        }
    }
    facts
}

/// The response's Content-Encoding header, unless deleted.
fn content_encoding(r: &ngx_http_request_t) -> Option<&ngx_table_elt_t> {
    // SAFETY: NULL or an element of the response's header list.
    unsafe { r.headers_out.content_encoding.as_ref() }.filter(|ce| ce.hash != 0)
}

/// The response headers a stored page keeps (see `page::KEPT_HEADERS`).
fn kept_headers(r: &ngx_http_request_t) -> Vec<(&'static str, Vec<u8>)> {
    let out = &r.headers_out;
    let mut kept = Vec::new();
    if out.content_type.len > 0 {
        kept.push(("Content-Type", out.content_type.as_bytes().to_vec()));
    }
    if content_encoding(r).is_some_and(|ce| ce.value.as_bytes().eq_ignore_ascii_case(b"gzip")) {
        kept.push(("Content-Encoding", b"gzip".to_vec()));
    }
    if out.last_modified_time != -1 {
        let mut buf = [0u8; 32];
        // SAFETY: nginx writes at most 29 bytes ("Mon, 28 Sep 1970 06:00:00 GMT").
        let len = unsafe {
            let end = ngx_http_time(buf.as_mut_ptr(), out.last_modified_time);
            end.offset_from(buf.as_ptr()) as usize
        };
        kept.push(("Last-Modified", buf[..len].to_vec()));
    }
    for h in headers(&out.headers) {
        let Some(kept_name) = page::kept_header(h.key.as_bytes()) else {
            continue;
        };
        if !matches!(
            kept_name,
            "Content-Type" | "Content-Encoding" | "Last-Modified"
        ) {
            kept.push((kept_name, h.value.as_bytes().to_vec()));
        }
    }
    kept
}

/// The live entries of a header list (nginx deletes a header by zeroing its hash).
fn headers(list: &ngx_list_t) -> impl Iterator<Item = &ngx_table_elt_t> {
    let mut part: *const ngx_list_part_t = &list.part;
    core::iter::from_fn(move || {
        // SAFETY: walks the list's parts; elements are ngx_table_elt_t.
        unsafe {
            while !part.is_null() {
                let elts =
                    slice::from_raw_parts((*part).elts as *const ngx_table_elt_t, (*part).nelts);
                part = (*part).next;
                if !elts.is_empty() {
                    return Some(elts);
                }
            }
            None
        }
    })
    .flatten()
    .filter(|h| h.hash != 0)
}

unsafe extern "C" fn body_filter(r: *mut ngx_http_request_t, chain: *mut ngx_chain_t) -> ngx_int_t {
    let mut complete = false;
    // SAFETY: nginx calls body filters with a live request and its output chain.
    if let Some(state) = unsafe { find(r) } {
        if state.phase == Phase::Body {
            // SAFETY: as above.
            complete = copy_chain(unsafe { &mut *r }, state, chain);
        }
    }
    // SAFETY: the next filter, set at configuration time, with nginx's arguments.
    let rc = match unsafe { NEXT_BODY_FILTER } {
        Some(next) => unsafe { next(r, chain) },
        None => Status::NGX_ERROR.into(),
    };
    if complete {
        // SAFETY: as above (the request is still live after the next filters).
        if let Some(state) = unsafe { find(r) } {
            state.phase = Phase::Done;
            let page = core::mem::take(&mut state.page);
            // SAFETY: the rcache location's conf; the response has passed.
            unsafe { client::write(r, &*state.lcf, state.key(), page) };
        }
    }
    rc
}

/// Appends the chain's bytes to the capture; true once the last buffer is in.
fn copy_chain(r: &mut ngx_http_request_t, state: &mut StoreState, chain: *mut ngx_chain_t) -> bool {
    // SAFETY: the rcache location's conf, live for the configuration.
    let max = unsafe { (*state.lcf).store_max_size };
    let mut cl = chain;
    // SAFETY: NULL or a link of the output chain, valid while the filter runs.
    while let Some(link) = unsafe { cl.as_ref() } {
        // SAFETY: every link of an output chain has a buffer.
        let b = unsafe { &*link.buf };
        let body = &mut state.page.body;
        if buf_in_memory(b) {
            // SAFETY: an in-memory buffer holds pos..last.
            let bytes = unsafe { slice::from_raw_parts(b.pos, b.last.offset_from(b.pos) as usize) };
            if body.len() + bytes.len() > max {
                return stop(r, state, StoreStatus::TooLarge);
            }
            body.extend_from_slice(bytes);
        } else if b.in_file() != 0 {
            let n = (b.file_last - b.file_pos) as usize;
            if body.len() + n > max {
                return stop(r, state, StoreStatus::TooLarge);
            }
            // A response the fallback buffered to a temporary file: read it back
            // (from the page cache, as nginx itself reads file buffers without aio).
            let at = body.len();
            body.resize(at + n, 0);
            // SAFETY: reads n bytes of the buffer's file into the n bytes just added.
            let read = unsafe { ngx_read_file(b.file, body[at..].as_mut_ptr(), n, b.file_pos) };
            if read != n as isize {
                return stop(r, state, StoreStatus::Failed);
            }
        }
        if b.last_buf() != 0 {
            return true;
        }
        cl = link.next;
    }
    false
}

/// Not storing after all (not cacheable, the body outgrew `rcache_store_max_size`, a file
/// could not be read): free what was copied, record why, and give a regeneration's win
/// back.
fn stop(r: &mut ngx_http_request_t, state: &mut StoreState, status: StoreStatus) -> bool {
    stop_after(r, state, status, status == StoreStatus::Failed)
}

/// [`stop`]; `failed`: the response is an error (a 5xx, a file that could not be read),
/// not a page that is not cacheable: a won regeneration or lock is given back rather
/// than the key marked hit-for-pass, so that the site stays up on the stale page.
fn stop_after(
    r: &mut ngx_http_request_t,
    state: &mut StoreState,
    status: StoreStatus,
    failed: bool,
) -> bool {
    state.phase = Phase::Done;
    state.page.body = Vec::new();
    client::set_status(r, status);
    // SAFETY: the rcache location's conf, live for the configuration.
    let lcf = unsafe { &*state.lcf };
    if status == StoreStatus::NotCacheable && !failed {
        if let Some(fc) = lcf.front() {
            // The miss memo: the next requests for the page skip memcached.
            // SAFETY: a front zone of this configuration.
            unsafe { front::remember_pass(fc, state.key(), lcf.hit_for_pass) };
        }
    }
    match state.page.replaces {
        // A hit-for-pass marker stays (the response is still not cacheable).
        _ if state.page.over_marker => {}
        // Won, but the response will never be the page: mark the key hit-for-pass.
        Some(cas) if !failed => client::mark_pass(lcf, state.key(), cas),
        // Won, but this response failed: give the win back.
        Some(_) => client::release(lcf, state.key()),
        None => {}
    }
    false
}

/// The request's log.
fn log(r: &ngx_http_request_t) -> *mut ngx_log_t {
    // SAFETY: a live request has a live connection.
    unsafe { (*r.connection).log }
}

/// `ngx_buf_in_memory()`.
fn buf_in_memory(b: &ngx_buf_t) -> bool {
    b.temporary() != 0 || b.memory() != 0 || b.mmap() != 0
}
