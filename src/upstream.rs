//! The memcached exchange, on nginx's upstream framework.
//!
//! nginx connects (through the balancer and rcache's pool, see `peer.rs`),
//! sends `get <key>`, and reads with rcache's timeouts; `process_header` is
//! fed everything received so far and reads the *whole* reply before deciding
//! anything. As soon as the reply says the key is stored, room is made for the
//! entire reply (bounded by `rcache_max_size`), so a large page is read in a
//! few big `recv`s instead of buffer-size pieces, and no header is sent to the
//! client before every byte of the value is here. The room is a second buffer
//! for the rest of the reply: the value bytes of the first read stay where they
//! are (a [`Value`] in two pieces) rather than being copied into a bigger one.
//!
//! Once the reply is complete (or broken), rcache takes the request over from
//! the upstream module: it finishes the upstream — which releases the
//! connection to the pool at once, before the client is written to — and then
//! answers the HIT itself or redirects to the fallback (`handler.rs`).

use core::ffi::c_void;
use core::ptr;
use core::slice;

use ngx::ffi::*;
use ngx::{ngx_log_error, ngx_string};

use crate::handler::{self, Verdict};
use crate::protocol::{self, LineReply, Parsed, ProtocolError, ValueHeader};
use crate::value::Value;

/// Why memcached could not be used for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Connection refused or reset, premature close.
    Error,
    /// Connect, send or read timeout.
    Timeout,
    /// The balancer has no live server.
    NoLiveServers,
    /// A reply that is not a valid answer to our `get`.
    Protocol,
}

impl Failure {
    /// The status nginx's upstream module would have used (for locations
    /// without a fallback, so that `error_page` works as with stock nginx).
    pub fn status(self) -> ngx_int_t {
        match self {
            Failure::Timeout => NGX_HTTP_GATEWAY_TIME_OUT as ngx_int_t,
            _ => NGX_HTTP_BAD_GATEWAY as ngx_int_t,
        }
    }
}

/// Per-request state of a lookup.
#[derive(Clone, Copy)]
struct Lookup {
    /// `get <key>\r\n`.
    request: *mut ngx_chain_t,
    /// The escaped key, inside `request`.
    key: *const u8,
    key_len: usize,
    /// `delete` (a `PURGE` request) rather than `get`.
    purge: bool,
    /// Set while the rest of a large value is read into a second buffer.
    head: Option<Head>,
}

/// The first read of a value larger than it: where the value's first bytes
/// are, and the buffer that holds them (given back to nginx on a retry).
#[derive(Clone, Copy)]
struct Head {
    header: ValueHeader,
    value: *const u8,
    len: usize,
    buffer_start: *mut u8,
    buffer_end: *mut u8,
}

impl Head {
    fn value(&self) -> &[u8] {
        // SAFETY: value points into the first read buffer, in r->pool.
        unsafe { slice::from_raw_parts(self.value, self.len) }
    }
}

impl Lookup {
    fn key(&self) -> &[u8] {
        // SAFETY: key points into the request buffer, which lives in r->pool.
        unsafe { slice::from_raw_parts(self.key, self.key_len) }
    }
}

/// Prepares the lookup of `raw_key` (unescaped; `escaped_len` bytes once
/// escaped, at most 250): builds `get <key>\r\n` (`delete <key>\r\n` to purge)
/// and keeps it in the request's context. Returns the escaped key.
///
/// # Safety
/// `r` must be the request in its content phase.
pub unsafe fn prepare<'a>(
    r: *mut ngx_http_request_t,
    raw_key: &[u8],
    escaped_len: usize,
    purge: bool,
) -> Option<&'a [u8]> {
    // SAFETY: r is a live request; everything allocated comes from its pool.
    unsafe {
        let lookup = build_request(r, raw_key, escaped_len, purge)?;
        *(*r).ctx.add(crate::module().ctx_index) = lookup.cast();
        Some((*lookup).key())
    }
}

/// Asks memcached for the key [`prepare`]d. Returns what the content handler
/// returns.
///
/// # Safety
/// `r` must be the request in its content phase, after [`prepare`].
pub unsafe fn start(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: r is a live request; everything allocated comes from its pool.
    unsafe {
        if ngx_http_upstream_create(r) != NGX_OK as ngx_int_t {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        }
        let u = &mut *(*r).upstream;
        u.schema = ngx_string!("memcached://");
        u.output.tag = ptr::from_ref(crate::module()).cast_mut().cast();
        u.conf = &mut crate::loc_conf_mut(r).upstream;
        u.create_request = Some(create_request);
        u.reinit_request = Some(reinit_request);
        u.process_header = Some(process_header);
        u.abort_request = Some(abort_request);
        u.finalize_request = Some(finalize_request);

        // A request body is read before the lookup, so that whoever answers
        // — rcache on a HIT, the fallback on a MISS — finds it intact.
        if has_body(r) {
            let rc = ngx_http_read_client_request_body(r, Some(ngx_http_upstream_init));
            if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
                return rc;
            }
            return NGX_DONE as ngx_int_t;
        }

        let main = &mut *(*r).main;
        main.set_count(main.count() + 1);
        ngx_http_upstream_init(r);
        NGX_DONE as ngx_int_t
    }
}

/// Whether `u` is an rcache lookup.
///
/// # Safety
/// `u` must be a live upstream.
pub unsafe fn is_rcache(u: *const ngx_http_upstream_t) -> bool {
    // SAFETY: reading a field of a live upstream.
    unsafe { ptr::eq((*u).output.tag.cast::<ngx_module_t>(), crate::module()) }
}

/// # Safety
/// `r` must be a live request.
unsafe fn has_body(r: *const ngx_http_request_t) -> bool {
    // SAFETY: reading request headers.
    unsafe {
        let h = &(*r).headers_in;
        h.content_length_n > 0 || h.chunked() != 0
    }
}

/// Builds `get <key>\r\n` (or `delete <key>\r\n`) in one buffer and the lookup
/// state pointing at it.
///
/// # Safety
/// `r` must be a live request.
unsafe fn build_request(
    r: *mut ngx_http_request_t,
    raw_key: &[u8],
    escaped_len: usize,
    purge: bool,
) -> Option<*mut Lookup> {
    // SAFETY: all memory comes from r->pool and is written before use.
    unsafe {
        let pool = (*r).pool;
        let command = if purge {
            protocol::DELETE
        } else {
            protocol::GET
        };
        let len = command.len() + escaped_len + protocol::CRLF.len();
        let b = ngx_create_temp_buf(pool, len);
        let cl = ngx_alloc_chain_link(pool);
        let lookup = ngx_palloc(pool, size_of::<Lookup>()) as *mut Lookup;
        if b.is_null() || cl.is_null() || lookup.is_null() {
            return None;
        }
        let out = slice::from_raw_parts_mut((*b).start, len);
        let (cmd, rest) = out.split_at_mut(command.len());
        cmd.copy_from_slice(command);
        let (key, crlf) = rest.split_at_mut(escaped_len);
        crate::key::write_escaped(raw_key, key);
        crlf.copy_from_slice(protocol::CRLF);
        (*b).last = (*b).start.add(len);

        (*cl).buf = b;
        (*cl).next = ptr::null_mut();
        ptr::write(
            lookup,
            Lookup {
                request: cl,
                key: (*b).start.add(command.len()),
                key_len: escaped_len,
                purge,
                head: None,
            },
        );
        Some(lookup)
    }
}

unsafe extern "C" fn create_request(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: the lookup ctx was set by start() before the upstream began.
    unsafe {
        let Some(lookup) = lookup(r) else {
            return NGX_ERROR as ngx_int_t;
        };
        (*(*r).upstream).request_bufs = lookup.request;
    }
    NGX_OK as ngx_int_t
}

/// Before a retry on another connection; nginx then rewinds the request and
/// reply buffers itself. A value half read into a second buffer is dropped:
/// the retry reads into the first buffer again, from its start.
unsafe extern "C" fn reinit_request(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls this with a live request and its upstream.
    unsafe {
        if let Some(lookup) = lookup_mut(r) {
            if let Some(head) = lookup.head.take() {
                let b = &mut (*(*r).upstream).buffer;
                b.start = head.buffer_start;
                b.end = head.buffer_end;
            }
        }
    }
    NGX_OK as ngx_int_t
}

unsafe extern "C" fn abort_request(_r: *mut ngx_http_request_t) {}

unsafe extern "C" fn finalize_request(_r: *mut ngx_http_request_t, _rc: ngx_int_t) {}

/// Called with everything received so far (from `u->buffer.pos`).
unsafe extern "C" fn process_header(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls this with a live request whose upstream buffer
    // holds the bytes received; the lookup ctx was set by start().
    unsafe {
        let Some(&lookup) = lookup(r) else {
            return NGX_ERROR as ngx_int_t;
        };
        let u = &mut *(*r).upstream;
        if lookup.purge {
            return purge_reply(r, &lookup);
        }
        let received = received_bytes(u);
        if let Some(head) = lookup.head {
            let missing = head.header.len - head.len;
            return match protocol::parse_value_rest(received, missing) {
                Ok(false) => NGX_AGAIN as ngx_int_t,
                Ok(true) => {
                    u.set_keepalive(1);
                    let value = Value::split(head.value(), &received[..missing]);
                    take_over(r, Outcome::Hit(value, head.header.flags))
                }
                Err(err) => invalid_reply(r, &lookup, err),
            };
        }

        match protocol::parse_reply(received, lookup.key()) {
            Ok(Parsed::NeedLine) => NGX_AGAIN as ngx_int_t,

            Ok(Parsed::NeedValue { header, reply_len }) => {
                record_status(u, NGX_HTTP_OK);
                if let Err(verdict) = servable(r, &header, lookup.key()) {
                    // The value is not read: the connection is not reusable.
                    return take_over(r, Outcome::NotServed(verdict));
                }
                if !make_room(r, header, reply_len) {
                    return take_over(r, Outcome::NotServed(Verdict::Error(Failure::Error)));
                }
                NGX_AGAIN as ngx_int_t
            }

            Ok(Parsed::Miss) => {
                record_status(u, NGX_HTTP_NOT_FOUND);
                u.set_keepalive(1);
                take_over(r, Outcome::Absent)
            }

            Ok(Parsed::Hit(header)) => {
                record_status(u, NGX_HTTP_OK);
                u.set_keepalive(1);
                match servable(r, &header, lookup.key()) {
                    Err(verdict) => take_over(r, Outcome::NotServed(verdict)),
                    Ok(()) => {
                        let value = Value::whole(&received[header.value_range()]);
                        take_over(r, Outcome::Hit(value, header.flags))
                    }
                }
            }

            Err(err) => invalid_reply(r, &lookup, err),
        }
    }
}

/// A reply that is no valid answer to the `get`: logged, and an ERROR.
///
/// # Safety
/// As `process_header`.
unsafe fn invalid_reply(
    r: *mut ngx_http_request_t,
    lookup: &Lookup,
    err: ProtocolError,
) -> ngx_int_t {
    // SAFETY: forwarded contract.
    unsafe {
        record_status(&mut *(*r).upstream, NGX_HTTP_BAD_GATEWAY);
        ngx_log_error!(
            NGX_LOG_ERR,
            (*(*r).connection).log,
            "rcache: {} for key \"{}\" while reading response from upstream",
            err,
            String::from_utf8_lossy(lookup.key())
        );
        take_over(r, Outcome::NotServed(Verdict::Error(Failure::Protocol)))
    }
}

/// The reply to a purge's `delete`.
///
/// # Safety
/// `r` must be an rcache purge request in its upstream.
unsafe fn purge_reply(r: *mut ngx_http_request_t, lookup: &Lookup) -> ngx_int_t {
    // SAFETY: as process_header.
    unsafe {
        let u = &mut *(*r).upstream;
        let key = String::from_utf8_lossy(lookup.key());
        let problem = match protocol::parse_line_reply(received_bytes(u)) {
            Ok(None) => return NGX_AGAIN as ngx_int_t,
            Ok(Some(reply @ (LineReply::Deleted | LineReply::NotFound))) => {
                u.set_keepalive(1);
                let deleted = reply == LineReply::Deleted;
                record_status(
                    u,
                    if deleted {
                        NGX_HTTP_OK
                    } else {
                        NGX_HTTP_NOT_FOUND
                    },
                );
                return take_over(r, Outcome::Purged(Ok(deleted)));
            }
            Ok(Some(other)) => format!("memcached answered {other:?} to delete of key \"{key}\""),
            Err(err) => format!("{err} for key \"{key}\" while purging"),
        };
        record_status(u, NGX_HTTP_BAD_GATEWAY);
        ngx_log_error!(NGX_LOG_ERR, (*(*r).connection).log, "rcache: {}", problem);
        take_over(r, Outcome::Purged(Err(Failure::Protocol)))
    }
}

/// What has been received into the reply buffer (that is not consumed yet).
///
/// # Safety
/// `u` must be a live upstream whose buffer holds `pos..last`.
unsafe fn received_bytes<'a>(u: &ngx_http_upstream_t) -> &'a [u8] {
    // SAFETY: per the contract above; the buffer lives in r->pool.
    unsafe {
        slice::from_raw_parts(
            u.buffer.pos,
            u.buffer.last.offset_from(u.buffer.pos) as usize,
        )
    }
}

/// What memcached answered, for `$upstream_status` (as stock `memcached_pass`
/// records it: 200 found, 404 not found, 502 invalid).
fn record_status(u: &mut ngx_http_upstream_t, status: u32) {
    // SAFETY: u->state is NULL or the state of the current attempt.
    if let Some(state) = unsafe { u.state.as_mut() } {
        state.status = status as ngx_uint_t;
    }
}

/// Whether a stored value can be served as a page; if not, why (logged at
/// `info`, as SPEC.md asks).
///
/// # Safety
/// `r` must be a live rcache request.
unsafe fn servable(
    r: *mut ngx_http_request_t,
    header: &ValueHeader,
    key: &[u8],
) -> Result<(), Verdict> {
    // SAFETY: reading the location conf and logging on a live request.
    unsafe {
        let lcf = crate::loc_conf(r);
        let log = (*(*r).connection).log;
        if header.len > lcf.max_size {
            ngx_log_error!(
                NGX_LOG_INFO,
                log,
                "rcache: value of key \"{}\" is {} bytes, more than rcache_max_size {}: MISS",
                String::from_utf8_lossy(key),
                header.len,
                lcf.max_size
            );
            return Err(Verdict::Miss);
        }
        if !handler::page_flags(header.flags, lcf.gzip_mask()) {
            ngx_log_error!(
                NGX_LOG_INFO,
                log,
                "rcache: value of key \"{}\" has flags {}, not a page: MISS",
                String::from_utf8_lossy(key),
                header.flags
            );
            return Err(Verdict::Miss);
        }
    }
    Ok(())
}

/// Makes room for the rest of a value reply of `reply_len` bytes, plus one
/// byte so that anything sent after END shows up as trailing data.
///
/// When the first read buffer is too small, the value bytes it holds stay
/// there (the lookup's [`Head`]) and a second buffer takes the rest; only if
/// the first read already ended inside `\r\nEND\r\n` are its bytes copied
/// into one buffer for the whole reply (the trailer must be checked whole).
///
/// # Safety
/// `r` must be a live rcache lookup with its upstream buffer.
unsafe fn make_room(r: *mut ngx_http_request_t, header: ValueHeader, reply_len: usize) -> bool {
    // SAFETY: the new buffer comes from r->pool; the first one stays
    // allocated (it holds the value's head) until the request ends.
    unsafe {
        let Some(lookup) = lookup_mut(r) else {
            return false;
        };
        let b = &mut (*(*r).upstream).buffer;
        let capacity = b.end.offset_from(b.start) as usize;
        if capacity > reply_len {
            return true;
        }
        let received = b.last.offset_from(b.pos) as usize;
        let value_received = received - header.line_len;
        if value_received > header.len {
            // Part of the trailer came with the first read: one buffer for all.
            let size = reply_len + 1;
            let start = ngx_palloc((*r).pool, size) as *mut u8;
            if start.is_null() {
                return false;
            }
            ptr::copy_nonoverlapping(b.pos, start, received);
            // ngx_pfree frees only large blocks, which a 16k buffer is.
            ngx_pfree((*r).pool, b.start.cast());
            b.start = start;
            b.pos = start;
            b.last = start.add(received);
            b.end = start.add(size);
            return true;
        }
        let size = header.len - value_received + protocol::TRAILER.len() + 1;
        let start = ngx_palloc((*r).pool, size) as *mut u8;
        if start.is_null() {
            return false;
        }
        lookup.head = Some(Head {
            header,
            value: b.pos.add(header.line_len),
            len: value_received,
            buffer_start: b.start,
            buffer_end: b.end,
        });
        b.start = start;
        b.pos = start;
        b.last = start;
        b.end = start.add(size);
        true
    }
}

/// How a lookup ends.
enum Outcome<'a> {
    Hit(Value<'a>, u32),
    /// memcached has no value for the key: a MISS that `rcache_store` may fill.
    Absent,
    NotServed(Verdict),
    /// A purge: deleted or not there, or why memcached could not be asked.
    Purged(Result<bool, Failure>),
}

/// Nothing could be looked up: no server left, or memcached failed.
///
/// # Safety
/// `r` must be an rcache request inside nginx's upstream connect path (a
/// balancer `get`); the caller must then return `NGX_ERROR`.
pub unsafe fn give_up(r: *mut ngx_http_request_t, failure: Failure) {
    // SAFETY: forwarded contract.
    unsafe {
        let outcome = match lookup(r) {
            Some(l) if l.purge => Outcome::Purged(Err(failure)),
            _ => Outcome::NotServed(Verdict::Error(failure)),
        };
        take_over(r, outcome);
    }
}

/// Ends the upstream part of `r` and answers it (HIT) or redirects it
/// (MISS/ERROR). Returns `NGX_ERROR`, which the caller — an upstream
/// callback — passes back to nginx.
///
/// nginx then finalizes the upstream "again": it sees it is already finished
/// and only drops one request reference (`ngx_http_finalize_request(r,
/// NGX_DONE)`), which is why one reference is taken here first.
///
/// # Safety
/// `r` must be an rcache request whose upstream has not been finalized, and
/// nginx must not use the upstream connection after this returns.
unsafe fn take_over(r: *mut ngx_http_request_t, outcome: Outcome) -> ngx_int_t {
    // SAFETY: see above; the value slice points into r->pool memory, which
    // outlives the upstream.
    unsafe {
        let main = &mut *(*r).main;
        // For the NGX_DONE nginx will finalize with after we return.
        main.set_count(main.count() + 1);
        finish_upstream(r);

        let rc = match outcome {
            Outcome::Hit(value, flags) => {
                keep_in_front(r, value, flags);
                handler::serve_hit(r, value, flags)
            }
            Outcome::Absent => {
                if let Some(l) = lookup(r) {
                    crate::store::capture::prepare(r, l.key());
                }
                handler::fall_back(r, Verdict::Miss)
            }
            Outcome::NotServed(verdict) => handler::fall_back(r, verdict),
            Outcome::Purged(result) => handler::answer_purge(r, result),
        };
        ngx_http_finalize_request(r, rc);
    }
    NGX_ERROR as ngx_int_t
}

/// Keeps a page fetched from memcached in the location's front cache, if any.
///
/// # Safety
/// `r` must be an rcache request with its lookup context.
unsafe fn keep_in_front(r: *mut ngx_http_request_t, value: Value, flags: u32) {
    // SAFETY: the location conf and lookup context belong to r.
    unsafe {
        let lcf = crate::loc_conf(r);
        if let (Some(fc), Some(lookup)) = (lcf.front.as_ref(), lookup(r)) {
            crate::front::store(fc.zone, lookup.key(), value, flags, fc.ttl, fc.max_item);
        }
    }
}

/// Finishes the upstream the way `ngx_http_upstream_create()` finishes a
/// previous one: one extra reference, then the upstream's cleanup handler,
/// which frees the peer (parking the connection when it is reusable), closes
/// it otherwise, and drops that reference.
///
/// # Safety
/// `r` must have an upstream with its cleanup still registered.
unsafe fn finish_upstream(r: *mut ngx_http_request_t) {
    // SAFETY: u->cleanup points at the handler field of the cleanup entry
    // nginx registered with data = r.
    unsafe {
        let cleanup = (*(*r).upstream).cleanup;
        if cleanup.is_null() {
            return;
        }
        if let Some(handler) = *cleanup {
            let main = &mut *(*r).main;
            main.set_count(main.count() + 1);
            handler(r.cast::<c_void>());
        }
    }
}

/// The escaped key an rcache request looks up (for the balancer).
///
/// # Safety
/// `r` must be a live request.
pub unsafe fn lookup_key<'a>(r: *mut ngx_http_request_t) -> Option<&'a [u8]> {
    // SAFETY: forwarded contract.
    unsafe { lookup(r).map(|l| l.key()) }
}

/// # Safety
/// `r` must be a live request.
unsafe fn lookup<'a>(r: *mut ngx_http_request_t) -> Option<&'a Lookup> {
    // SAFETY: the ctx slot holds NULL or the Lookup set by start().
    unsafe { (*(*r).ctx.add(crate::module().ctx_index) as *const Lookup).as_ref() }
}

/// # Safety
/// `r` must be a live request; no other reference to its lookup may be held.
unsafe fn lookup_mut<'a>(r: *mut ngx_http_request_t) -> Option<&'a mut Lookup> {
    // SAFETY: as lookup().
    unsafe { (*(*r).ctx.add(crate::module().ctx_index) as *mut Lookup).as_mut() }
}
