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
//! Once the reply is complete (or broken), the exchange ends in an
//! [`Outcome`]: rcache finishes the upstream — which releases the connection
//! to the pool at once, before the client is written to — and hands the
//! outcome to `respond.rs`, which answers the HIT or redirects to the fallback.

use core::ffi::c_void;
use core::ptr;
use core::slice;

use ngx::core::Status;
use ngx::ffi::*;
use ngx::http::{HTTPStatus, HttpModuleLocationConf};
use ngx::{ngx_log_error, ngx_string};

use crate::conf::PURGE_SOFT;
use crate::key;
use crate::lookup::{Command, Head, Lookup};
use crate::meta::{self, MetaFlags, MetaParsed, MetaReply};
use crate::outcome::{Failure, Outcome, Verdict};
use crate::protocol::{self, LineReply, Parsed, ProtocolError, ValueHeader};
use crate::read_size;
use crate::respond;
use crate::store;
use crate::store::page::PASS_FLAG;
use crate::value::{self, Value};
use crate::HttpRcacheModule;

/// Prepares the lookup of `raw_key` (unescaped; `escaped_len` bytes once
/// escaped, at most 250): builds the command — `get <key>`, or `mg <key> ...` where
/// stale pages are on; `delete <key>` to purge, `md <key> I ...` to purge softly — and
/// makes it the request's [`Lookup`]. Returns the escaped key.
pub fn prepare<'a>(
    r: &mut ngx_http_request_t,
    raw_key: &[u8],
    escaped_len: usize,
    purge: bool,
) -> Option<&'a [u8]> {
    let lcf = HttpRcacheModule::location_conf(r)?;
    let meta = lcf.meta_now();
    let stale = (lcf.stale_secs() > 0).then_some(lcf.stale_secs());
    // Only a request whose response can become the new page takes the win: a HEAD,
    // or a query string rcache_store would not store, would use it up for nothing. (Wins
    // exist only in the meta protocol: classic lookups skip the test.)
    let may_regenerate =
        meta && !purge && (lcf.store != 1 || store::capture::refusal(r, lcf).is_none());
    let (command, prefix, suffix) = if purge {
        if lcf.purge == PURGE_SOFT && meta {
            (
                Command::Invalidate,
                &b"md "[..],
                meta::invalidate_args(stale),
            )
        } else {
            (
                Command::Delete,
                protocol::DELETE,
                meta::Args::new(protocol::CRLF),
            )
        }
    } else if meta {
        let get = meta::Get {
            recache: stale.filter(|_| may_regenerate),
            vivify: (lcf.lock == 1 && may_regenerate).then(|| lcf.lock_age_secs()),
        };
        (Command::MetaGet, &b"mg "[..], meta::get_args(get))
    } else {
        (Command::Get, protocol::GET, meta::Args::new(protocol::CRLF))
    };
    let pool = r.pool;
    let len = prefix.len() + escaped_len + suffix.len();
    // SAFETY: allocations from the request's pool.
    let (b, cl, lookup) = unsafe {
        (
            ngx_create_temp_buf(pool, len),
            ngx_alloc_chain_link(pool),
            ngx_palloc(pool, size_of::<Lookup>()) as *mut Lookup,
        )
    };
    if b.is_null() || cl.is_null() || lookup.is_null() {
        return None;
    }
    // SAFETY: b is a fresh temporary buffer of len bytes, cl a fresh link,
    // lookup fresh memory for a Lookup; all live as long as the request.
    unsafe {
        let out = slice::from_raw_parts_mut((*b).start, len);
        let (cmd, rest) = out.split_at_mut(prefix.len());
        cmd.copy_from_slice(prefix);
        let (key, tail) = rest.split_at_mut(escaped_len);
        key::write_escaped(raw_key, key);
        tail.copy_from_slice(&suffix);
        (*b).last = (*b).start.add(len);
        (*cl).buf = b;
        (*cl).next = ptr::null_mut();
        let mut new = Lookup::new(cl, key, command, restart);
        new.may_regenerate = may_regenerate;
        ptr::write(lookup, new);
    }
    Lookup::set(r, lookup);
    Lookup::of(r).map(|l| l.key())
}

/// Asks memcached again for the key of a request that waited for another request's
/// page (`rcache_lock`): the same command, on a new upstream.
///
/// # Safety
/// `r` must be a live request whose previous lookup has finished, holding a reference.
pub unsafe fn restart(r: *mut ngx_http_request_t) -> Status {
    // SAFETY: per the contract above.
    if let Some(lookup) = Lookup::of(unsafe { &*r }) {
        lookup.head.set(None);
        lookup.malformed.set(false);
        lookup.meta_flags.set(MetaFlags::default());
        // The command was sent: rewind its buffer (as nginx does for a retry).
        // SAFETY: the lookup's one-buffer chain, in the request's pool.
        unsafe {
            let b = (*lookup.request).buf;
            (*b).pos = (*b).start;
        }
    }
    // SAFETY: as start().
    unsafe { start(r) }
}

/// Asks memcached for the key [`prepare`]d. Returns what the content handler
/// returns.
///
/// # Safety
/// `r` must be the request in its content phase, after [`prepare`].
pub unsafe fn start(r: *mut ngx_http_request_t) -> Status {
    // SAFETY: per the contract above; nginx's upstream module only reads the
    // upstream part of the location conf it is given.
    let Some(lcf) = HttpRcacheModule::location_conf_mut(unsafe { &*r }) else {
        return HTTPStatus::INTERNAL_SERVER_ERROR.into();
    };
    // SAFETY: r is a live request; the upstream is allocated in its pool.
    if !Status(unsafe { ngx_http_upstream_create(r) }).is_ok() {
        return HTTPStatus::INTERNAL_SERVER_ERROR.into();
    }
    // SAFETY: the upstream just created.
    let (req, u) = unsafe { (&mut *r, &mut *(*r).upstream) };
    u.schema = ngx_string!("memcached://");
    u.output.tag = ptr::from_ref(crate::module()).cast_mut().cast();
    u.conf = &mut lcf.upstream;
    u.create_request = Some(create_request);
    u.reinit_request = Some(reinit_request);
    u.process_header = Some(process_header);
    u.abort_request = Some(abort_request);
    u.finalize_request = Some(finalize_request);

    // A request body is read before the lookup, so that whoever answers
    // — rcache on a HIT, the fallback on a MISS — finds it intact.
    let h = &req.headers_in;
    if h.content_length_n > 0 || h.chunked() != 0 {
        debug!(log(req), "rcache: reading the request body first");
        // SAFETY: nginx reads the body, then calls ngx_http_upstream_init.
        let rc = unsafe { ngx_http_read_client_request_body(r, Some(ngx_http_upstream_init)) };
        if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
            return Status(rc);
        }
        return Status::NGX_DONE;
    }

    // SAFETY: the main request of a live request.
    let main = unsafe { &mut *req.main };
    crate::bitfield::hold(main);
    // SAFETY: the upstream is set up; nginx takes the request from here.
    unsafe { ngx_http_upstream_init(r) };
    Status::NGX_DONE
}

unsafe extern "C" fn create_request(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls this with a live request that has its upstream.
    let r = unsafe { &mut *r };
    let Some(lookup) = Lookup::of(r) else {
        return Status::NGX_ERROR.into();
    };
    debug!(
        log(r),
        "rcache: {} \"{}\"",
        lookup.command.name(),
        String::from_utf8_lossy(lookup.key())
    );
    // SAFETY: as above.
    unsafe { (*r.upstream).request_bufs = lookup.request };
    Status::NGX_OK.into()
}

/// Before a retry on another connection; nginx then rewinds the request and
/// reply buffers itself. A value half read into a second buffer is dropped:
/// the retry reads into the first buffer again, from its start.
unsafe extern "C" fn reinit_request(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls this with a live request and its upstream.
    let (r, u) = unsafe { (&*r, &mut *(*r).upstream) };
    if let Some(head) = Lookup::of(r).and_then(|l| l.head.take()) {
        debug!(log(r), "rcache: retry: the value read so far is dropped");
        u.buffer.start = head.buffer_start;
        u.buffer.end = head.buffer_end;
    }
    Status::NGX_OK.into()
}

unsafe extern "C" fn abort_request(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls this with a live request.
    debug!(unsafe { log(&*r) }, "rcache: lookup aborted");
}

unsafe extern "C" fn finalize_request(r: *mut ngx_http_request_t, rc: ngx_int_t) {
    // SAFETY: nginx calls this with a live request.
    debug!(unsafe { log(&*r) }, "rcache: upstream finalized: {}", rc);
}

/// Called with everything received so far (from `u->buffer.pos`).
unsafe extern "C" fn process_header(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls this with a live request whose upstream buffer
    // holds the bytes received.
    let (req, u) = unsafe { (&*r, &mut *(*r).upstream) };
    let Some(lookup) = Lookup::of(req) else {
        return Status::NGX_ERROR.into();
    };
    let outcome = match lookup.command {
        Command::Get => get_reply(req, u, lookup),
        Command::Delete => purge_reply(req, u, lookup),
        Command::MetaGet => meta_get_reply(req, u, lookup),
        Command::Invalidate => invalidate_reply(req, u, lookup),
    };
    match outcome {
        None => Status::NGX_AGAIN.into(),
        // SAFETY: an rcache request in its upstream's process_header.
        Some(outcome) => unsafe { finish(r, outcome) }.into(),
    }
}

/// The reply to a `get`: its outcome once it is complete (or broken), None
/// while more is to come.
fn get_reply<'a>(
    r: &ngx_http_request_t,
    u: &mut ngx_http_upstream_t,
    lookup: &Lookup,
) -> Option<Outcome<'a>> {
    if let Some(head) = lookup.head.get() {
        let rest = rest_of_value(r, u, lookup, head, protocol::TRAILER)?;
        return Some(rest.map_or_else(|o| o, |v| Outcome::Hit(v, head.header.flags)));
    }
    let received = received_bytes(u);

    match protocol::parse_reply(received, lookup.key()) {
        Ok(Parsed::NeedLine) => None,

        Ok(Parsed::NeedValue { header, reply_len }) => {
            let (first, received) = (u.buffer.start, received.len());
            if let Some(not_served) =
                read_rest(r, u, lookup, header, reply_len, protocol::TRAILER.len())
            {
                return Some(not_served);
            }
            let room = if u.buffer.start == first {
                "the first read holds it"
            } else {
                "reading the rest into a second buffer"
            };
            debug!(
                log(r),
                "rcache: value of {} bytes, {} received: {}", header.len, received, room
            );
            None
        }

        Ok(Parsed::Miss) => {
            debug!(log(r), "rcache: memcached has no value for the key");
            record_status(u, NGX_HTTP_NOT_FOUND);
            u.set_keepalive(1);
            Some(Outcome::Absent)
        }

        Ok(Parsed::Hit(header)) => {
            record_status(u, NGX_HTTP_OK);
            u.set_keepalive(1);
            size_first_reads(u, received.len());
            Some(match servable(r, &header, lookup.key()) {
                Err(verdict) => Outcome::NotServed(verdict),
                Ok(()) => Outcome::Hit(Value::whole(&received[header.value_range()]), header.flags),
            })
        }

        Err(err) => Some(invalid_reply(r, u, lookup, err)),
    }
}

/// A value reply whose value has not all arrived: checks that it is servable and makes
/// room for the rest (`trailer_len` bytes follow the value). None: read on; otherwise
/// why it is not served (the value is not read, so the connection is not reused).
fn read_rest<'a>(
    r: &ngx_http_request_t,
    u: &mut ngx_http_upstream_t,
    lookup: &Lookup,
    header: ValueHeader,
    reply_len: usize,
    trailer_len: usize,
) -> Option<Outcome<'a>> {
    record_status(u, NGX_HTTP_OK);
    if let Err(verdict) = servable(r, &header, lookup.key()) {
        return Some(Outcome::NotServed(verdict));
    }
    // SAFETY: start..end of the upstream's read buffer.
    if unsafe { u.buffer.end.offset_from(u.buffer.start) } as usize <= reply_len {
        size_first_reads(u, reply_len);
    }
    if !make_room(
        r.pool,
        &mut u.buffer,
        lookup,
        header,
        reply_len,
        trailer_len,
    ) {
        return Some(Outcome::NotServed(Verdict::Error(Failure::Error)));
    }
    None
}

/// Tells the location's first read what a reply of `reply_len` bytes needed (one more,
/// so that anything sent after the reply shows up as trailing data).
fn size_first_reads(u: &mut ngx_http_upstream_t, reply_len: usize) {
    // SAFETY: u->conf is the location's upstream conf (set in `start`), in this worker's
    // memory; nginx reads buffer_size only when it allocates a lookup's first buffer.
    if let Some(conf) = unsafe { u.conf.as_mut() } {
        conf.buffer_size = read_size::next(conf.buffer_size, reply_len + 1);
    }
}

/// The rest of a value read into a second buffer, followed by `trailer`: the whole
/// value once it is here (None while more is to come), or the ERROR a broken rest is.
fn rest_of_value<'a>(
    r: &ngx_http_request_t,
    u: &mut ngx_http_upstream_t,
    lookup: &Lookup,
    head: Head,
    trailer: &[u8],
) -> Option<Result<Value<'a>, Outcome<'a>>> {
    let received = received_bytes(u);
    let missing = head.header.len - head.len;
    match protocol::parse_value_rest(received, missing, trailer) {
        Ok(false) => None,
        Ok(true) => {
            u.set_keepalive(1);
            Some(Ok(Value::split(head.value(), &received[..missing])))
        }
        Err(err) => Some(Err(invalid_reply(r, u, lookup, err))),
    }
}

/// A reply that is no valid answer to the `get`: logged, and an ERROR.
fn invalid_reply<'a>(
    r: &ngx_http_request_t,
    u: &mut ngx_http_upstream_t,
    lookup: &Lookup,
    err: ProtocolError,
) -> Outcome<'a> {
    record_status(u, NGX_HTTP_BAD_GATEWAY);
    lookup.malformed.set(true);
    ngx_log_error!(
        NGX_LOG_ERR,
        log(r),
        "rcache: {} for key \"{}\" while reading response from upstream",
        err,
        String::from_utf8_lossy(lookup.key())
    );
    Outcome::NotServed(Verdict::Error(Failure::Protocol))
}

/// The reply to a purge's `delete`: its outcome, or None while more is to come.
fn purge_reply<'a>(
    r: &ngx_http_request_t,
    u: &mut ngx_http_upstream_t,
    lookup: &Lookup,
) -> Option<Outcome<'a>> {
    let key = String::from_utf8_lossy(lookup.key());
    let problem = match protocol::parse_line_reply(received_bytes(u)) {
        Ok(None) => return None,
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
            return Some(Outcome::Purged(Ok(deleted)));
        }
        Ok(Some(other)) => format!("memcached answered {other:?} to delete of key \"{key}\""),
        Err(err) => format!("{err} for key \"{key}\" while purging"),
    };
    record_status(u, NGX_HTTP_BAD_GATEWAY);
    ngx_log_error!(NGX_LOG_ERR, log(r), "rcache: {}", problem);
    Some(Outcome::Purged(Err(Failure::Protocol)))
}

/// The reply to an `mg`: its outcome once it is complete (or broken), None while
/// more is to come. The return flags say whether the page is fresh (HIT), whether this
/// request won the right to regenerate it (`W`: EXPIRED), or another request is at it
/// (`Z`, `X`: UPDATING, the page served meanwhile).
fn meta_get_reply<'a>(
    r: &ngx_http_request_t,
    u: &mut ngx_http_upstream_t,
    lookup: &Lookup,
) -> Option<Outcome<'a>> {
    if let Some(head) = lookup.head.get() {
        let rest = rest_of_value(r, u, lookup, head, protocol::CRLF)?;
        return Some(rest.map_or_else(|o| o, |v| meta_outcome(r, v, lookup.meta_flags.get())));
    }
    let received = received_bytes(u);
    match meta::parse_meta_reply(received) {
        Ok(MetaParsed::NeedLine) => None,

        Ok(MetaParsed::NeedValue {
            flags,
            line_len,
            len,
            reply_len,
        }) => {
            lookup.meta_flags.set(flags);
            let header = value_header(flags, line_len, len);
            read_rest(r, u, lookup, header, reply_len, protocol::CRLF.len())
        }

        Ok(MetaParsed::Complete(MetaReply::NotFound)) => {
            debug!(log(r), "rcache: memcached has no value for the key");
            record_status(u, NGX_HTTP_NOT_FOUND);
            u.set_keepalive(1);
            Some(Outcome::Absent)
        }

        Ok(MetaParsed::Complete(MetaReply::Value {
            flags,
            line_len,
            len,
        })) => {
            record_status(u, NGX_HTTP_OK);
            u.set_keepalive(1);
            if len == 0 && flags.client_flags == Some(PASS_FLAG) {
                debug!(
                    log(r),
                    "rcache: hit-for-pass marker: straight to the fallback"
                );
                return Some(Outcome::Pass {
                    cas: flags.cas.unwrap_or(0),
                });
            }
            let header = value_header(flags, line_len, len);
            size_first_reads(u, received.len());
            Some(match servable(r, &header, lookup.key()) {
                Err(verdict) => Outcome::NotServed(verdict),
                Ok(()) => meta_outcome(r, Value::whole(&received[header.value_range()]), flags),
            })
        }

        Ok(MetaParsed::Complete(other)) => Some(invalid_reply(
            r,
            u,
            lookup,
            ProtocolError::Malformed(format!("{other:?} to mg")),
        )),

        Err(ProtocolError::ErrorReply(line)) => Some(no_meta_protocol(r, u, lookup, &line)),

        Err(err) => Some(invalid_reply(r, u, lookup, err)),
    }
}

/// The `VALUE`-style header of an `mg` reply, for the size and flag checks.
fn value_header(flags: MetaFlags, line_len: usize, len: usize) -> ValueHeader {
    ValueHeader {
        flags: flags.client_flags.unwrap_or(0),
        len,
        line_len,
    }
}

/// What an `mg` reply's flags make of its value.
fn meta_outcome<'a>(r: &ngx_http_request_t, value: Value<'a>, flags: MetaFlags) -> Outcome<'a> {
    let client_flags = flags.client_flags.unwrap_or(0);
    debug!(
        log(r),
        "rcache: mg: {} bytes, ttl {:?}{}{}{}",
        value.len(),
        flags.ttl,
        if flags.win {
            ", won the regeneration"
        } else {
            ""
        },
        if flags.won_already {
            ", being regenerated"
        } else {
            ""
        },
        if flags.stale { ", stale" } else { "" }
    );
    // An empty value with flags 0 that someone won is a lock's placeholder (`mg ... N`),
    // never a page.
    let placeholder = value.len() == 0 && client_flags == 0 && (flags.win || flags.won_already);
    if placeholder && flags.win {
        Outcome::LockWon {
            cas: flags.cas.unwrap_or(0),
        }
    } else if placeholder {
        Outcome::Wait
    } else if flags.win {
        Outcome::Expired {
            value,
            flags: client_flags,
            cas: flags.cas.unwrap_or(0),
        }
    } else if flags.won_already || flags.stale {
        let overdue = HttpRcacheModule::location_conf(r)
            .filter(|lcf| meta::regeneration_overdue(&flags, lcf.stale_secs(), lcf.lock_age_secs()))
            .map(|_| flags.cas.unwrap_or(0));
        Outcome::Updating {
            value,
            flags: client_flags,
            overdue,
        }
    } else {
        Outcome::Hit(value, client_flags)
    }
}

/// The reply to a soft purge's `md ... I`.
fn invalidate_reply<'a>(
    r: &ngx_http_request_t,
    u: &mut ngx_http_upstream_t,
    lookup: &Lookup,
) -> Option<Outcome<'a>> {
    let problem = match meta::parse_meta_reply(received_bytes(u)) {
        Ok(MetaParsed::NeedLine | MetaParsed::NeedValue { .. }) => return None,
        Ok(MetaParsed::Complete(reply @ (MetaReply::Header(_) | MetaReply::NoItem))) => {
            u.set_keepalive(1);
            let marked = matches!(reply, MetaReply::Header(_));
            record_status(
                u,
                if marked {
                    NGX_HTTP_OK
                } else {
                    NGX_HTTP_NOT_FOUND
                },
            );
            return Some(Outcome::Purged(Ok(marked)));
        }
        Err(ProtocolError::ErrorReply(line)) => {
            no_meta_protocol(r, u, lookup, &line);
            return Some(Outcome::Purged(Err(Failure::Protocol)));
        }
        Ok(MetaParsed::Complete(other)) => format!("memcached answered {other:?} to md"),
        Err(err) => format!("{err}"),
    };
    record_status(u, NGX_HTTP_BAD_GATEWAY);
    ngx_log_error!(
        NGX_LOG_ERR,
        log(r),
        "rcache: {} while marking key \"{}\" stale",
        problem,
        String::from_utf8_lossy(lookup.key())
    );
    Some(Outcome::Purged(Err(Failure::Protocol)))
}

/// memcached answered `ERROR` (or `CLIENT_ERROR`) to a meta command: it does not speak
/// the meta protocol. Said once per worker; from now on this upstream gets the classic
/// commands (no stale pages). This request is an ERROR.
fn no_meta_protocol<'a>(
    r: &ngx_http_request_t,
    u: &mut ngx_http_upstream_t,
    lookup: &Lookup,
    line: &str,
) -> Outcome<'a> {
    record_status(u, NGX_HTTP_BAD_GATEWAY);
    // An error line leaves the connection in step with its commands.
    u.set_keepalive(1);
    if let Some(target) = HttpRcacheModule::location_conf(r).and_then(|lcf| {
        // SAFETY: the location's target lives as long as the configuration.
        unsafe { lcf.target.as_ref() }
    }) {
        if !target.classic_only.replace(true) {
            ngx_log_error!(
                NGX_LOG_ERR,
                log(r),
                "rcache: memcached answered \"{}\" to the meta command for key \"{}\": it \
                 does not speak the meta protocol (memcached 1.6 does); this worker uses \
                 get and delete for it from now on, without stale pages",
                line,
                String::from_utf8_lossy(lookup.key())
            );
        }
    }
    Outcome::NotServed(Verdict::Error(Failure::Protocol))
}

/// What has been received into the reply buffer (that is not consumed yet).
fn received_bytes<'a>(u: &ngx_http_upstream_t) -> &'a [u8] {
    let b = &u.buffer;
    // SAFETY: nginx keeps pos..last of the reply buffer (in r->pool) filled.
    unsafe { slice::from_raw_parts(b.pos, b.last.offset_from(b.pos) as usize) }
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
/// `info`).
fn servable(r: &ngx_http_request_t, header: &ValueHeader, key: &[u8]) -> Result<(), Verdict> {
    let Some(lcf) = HttpRcacheModule::location_conf(r) else {
        return Err(Verdict::Error(Failure::Error));
    };
    let why = if header.len > lcf.max_size {
        format!(
            "is {} bytes, more than rcache_max_size {}",
            header.len, lcf.max_size
        )
    } else if !value::is_page(header.flags, lcf.gzip_mask()) {
        format!("has flags {}, not a page", header.flags)
    } else {
        return Ok(());
    };
    ngx_log_error!(
        NGX_LOG_INFO,
        log(r),
        "rcache: value of key \"{}\" {}: MISS",
        String::from_utf8_lossy(key),
        why
    );
    Err(Verdict::Miss)
}

/// Makes room for the rest of a value reply of `reply_len` bytes (the value is
/// followed by `trailer_len` bytes: `\r\nEND\r\n` after `get`, `\r\n` after `mg`),
/// plus one byte so that anything sent after the reply shows up as trailing data.
///
/// When the first read buffer `b` is too small, the value bytes it holds stay
/// there (the lookup's [`Head`]) and a second buffer from `pool` takes the
/// rest; only if the first read already ended inside `\r\nEND\r\n` are its
/// bytes copied into one buffer for the whole reply (the trailer must be
/// checked whole).
fn make_room(
    pool: *mut ngx_pool_t,
    b: &mut ngx_buf_t,
    lookup: &Lookup,
    header: ValueHeader,
    reply_len: usize,
    trailer_len: usize,
) -> bool {
    // SAFETY: start..end, pos..last of the upstream's read buffer.
    let (capacity, received) = unsafe {
        (
            b.end.offset_from(b.start) as usize,
            b.last.offset_from(b.pos) as usize,
        )
    };
    if capacity > reply_len {
        return true;
    }
    let value_received = received - header.line_len;
    let one_buffer = value_received > header.len;
    let size = if one_buffer {
        // Part of the trailer came with the first read: one buffer for all.
        reply_len + 1
    } else {
        header.len - value_received + trailer_len + 1
    };
    // SAFETY: a buffer from the request's pool.
    let start = unsafe { ngx_palloc(pool, size) as *mut u8 };
    if start.is_null() {
        return false;
    }
    if one_buffer {
        // SAFETY: received bytes fit the new buffer (size > reply_len >= received);
        // ngx_pfree frees only large blocks, which a 16k buffer is.
        unsafe {
            ptr::copy_nonoverlapping(b.pos, start, received);
            ngx_pfree(pool, b.start.cast());
        }
    } else {
        lookup.head.set(Some(Head {
            header,
            // SAFETY: the value starts after the header line, inside pos..last.
            value: unsafe { b.pos.add(header.line_len) },
            len: value_received,
            buffer_start: b.start,
            buffer_end: b.end,
        }));
    }
    let kept = if one_buffer { received } else { 0 };
    b.start = start;
    b.pos = start;
    // SAFETY: both within the new buffer of size bytes.
    unsafe {
        b.last = start.add(kept);
        b.end = start.add(size);
    }
    true
}

/// Nothing could be looked up: no server left, or memcached failed.
///
/// # Safety
/// `r` must be an rcache request inside nginx's upstream connect path (a
/// balancer `get`); the caller must then return `NGX_ERROR`.
pub unsafe fn give_up(r: *mut ngx_http_request_t, failure: Failure) {
    // SAFETY: forwarded contract.
    unsafe {
        debug!(log(&*r), "rcache: giving up on memcached: {:?}", failure);
        let outcome = match Lookup::of(&*r) {
            Some(l) if l.command.is_purge() => Outcome::Purged(Err(failure)),
            _ => Outcome::NotServed(Verdict::Error(failure)),
        };
        finish(r, outcome);
    }
}

/// Ends the upstream part of `r` and has `respond.rs` answer the outcome.
/// Returns `NGX_ERROR`, which the caller — an upstream callback — passes back
/// to nginx.
///
/// nginx then finalizes the upstream "again": it sees it is already finished
/// and only drops one request reference (`ngx_http_finalize_request(r,
/// NGX_DONE)`), which is why one reference is taken here first.
///
/// # Safety
/// `r` must be an rcache request whose upstream has not been finalized, and
/// nginx must not use the upstream connection after this returns.
unsafe fn finish(r: *mut ngx_http_request_t, outcome: Outcome) -> Status {
    // SAFETY: see above; the value slice points into r->pool memory, which
    // outlives the upstream.
    unsafe {
        let main = &mut *(*r).main;
        // For the NGX_DONE nginx will finalize with after we return.
        crate::bitfield::hold(main);
        finish_upstream(r);
        let rc = respond::answer(r, outcome);
        ngx_http_finalize_request(r, rc.into());
    }
    Status::NGX_ERROR
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
            crate::bitfield::hold(main);
            handler(r.cast::<c_void>());
        }
    }
}

/// The request's log.
fn log(r: &ngx_http_request_t) -> *mut ngx_log_t {
    // SAFETY: a live request has a live connection.
    unsafe { (*r.connection).log }
}
