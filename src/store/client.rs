//! Writing a captured page to memcached: `add <key> <flags> <exptime> <bytes>` — `add`,
//! not `set`, so that a page the application wrote while answering is never overwritten.
//!
//! The write runs on nginx's event loop, on the key's server (the same choice lookups
//! make) and on the same pooled connections, with rcache's connect/send/read timeouts. It
//! starts once the whole response has passed to the client, so the client never waits for
//! it. The request is kept open until memcached has answered, so that
//! `$rcache_store_status` in the access log says STORED or FAILED: a keep-alive client's
//! next request on the same connection waits for that answer (a fraction of a
//! millisecond; at worst the timeouts while memcached fails, after which nginx's
//! `max_fails` sends the key's stores nowhere until `fail_timeout` has passed).
//!
//! The write uses nginx's connections and events directly rather than the upstream
//! framework: that framework drives a request's response, and this request's response
//! is already the fallback's.

use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};

use ngx::core::Status;
use ngx::ffi::*;
use ngx::ngx_log_error;

use super::page::{self, PASS_FLAG, STORED_FLAG};
use super::policy;
use crate::conf::LocConf;
use crate::meta::{self, MetaParsed, MetaReply};
use crate::metrics::Counter;
use crate::metrics_conf;
use crate::pool::{self, addr_bytes};
use crate::protocol::{self, LineReply};
use crate::target::Target;
use crate::variables::{self, StoreStatus};

/// A page captured for memcached: what the fallback answered, and for how long
/// it may be kept.
#[derive(Default)]
pub struct Captured {
    pub status: u16,
    /// Freshness, seconds (memcached keeps the page `rcache_stale` longer).
    pub ttl: u32,
    pub headers: Vec<(&'static str, Vec<u8>)>,
    pub body: Vec<u8>,
    /// The CAS of the stale item this page replaces (a regeneration): written with
    /// `ms ... C<cas>`, so a page the app wrote meanwhile is kept. None: a MISS's page,
    /// written only if the key has none.
    pub replaces: Option<u64>,
    /// The item replaced is a hit-for-pass marker (not a win to give back).
    pub over_marker: bool,
}

/// One write in flight.
pub struct Job {
    /// The job's own pool: the job outlives the request if the client goes away.
    pool: *mut ngx_pool_t,
    peer: ngx_peer_connection_t,
    /// `add ...\r\n<value>\r\n`.
    command: Vec<u8>,
    sent: usize,
    reply: Vec<u8>,
    target: *mut Target,
    addr: Vec<u8>,
    keepalive: usize,
    send_timeout: ngx_msec_t,
    read_timeout: ngx_msec_t,
    connect_timeout: ngx_msec_t,
    /// The request kept open for `$rcache_store_status`; NULL once it is gone.
    request: *mut ngx_http_request_t,
    /// The job's entry in the request pool's cleanups, which tells the job
    /// when the request goes away (as `u->cleanup` tells an upstream).
    cleanup: *mut ngx_pool_cleanup_t,
    server: String,
    key: String,
}

/// Hands the page captured from `r` to memcached under `key` (escaped), with the
/// store settings of the rcache location `lcf`.
///
/// # Safety
/// `r` must be a live main request whose response has passed the body filter.
pub unsafe fn write(r: *mut ngx_http_request_t, lcf: &LocConf, key: &[u8], page: Captured) {
    // SAFETY: per the contract above.
    let req = unsafe { &mut *r };
    let Some(command) = add_command(lcf, key, &page) else {
        // rcache_max_size bounds the values rcache serves: a page over it would
        // never be a HIT.
        set_status(req, StoreStatus::TooLarge);
        if let (Some(cas), false) = (page.replaces, page.over_marker) {
            mark_pass(lcf, key, cas);
        }
        return;
    };
    drop(page);
    if !start(lcf, key, command, Some(req)) {
        set_status(req, StoreStatus::Failed);
    }
}

/// Records what became of `r`'s page (`$rcache_store_status`), and counts it, for the
/// outcomes decided before memcached is asked.
pub fn set_status(r: &mut ngx_http_request_t, status: StoreStatus) {
    variables::set_store(r, status);
    if let Some(zone) = metrics_conf::zone_of(r) {
        zone.count(Counter::store(status));
    }
}

/// A request that won the regeneration of `key` but will not store a page (the app's
/// answer is not cacheable, too large, or the client went away) gives the win back:
/// `md <key> I` marks the page stale again, so that the next request regenerates it while
/// the others keep getting the stale page. Does not hold any request.
pub fn release(lcf: &LocConf, key: &[u8]) {
    meta_delete(lcf, key, &meta::invalidate_args(None));
}

/// Sends `md <key><args>` about a page of `lcf`, holding no request.
fn meta_delete(lcf: &LocConf, key: &[u8], args: &[u8]) {
    if !meta_write_possible(lcf) {
        return;
    }
    let mut command = b"md ".to_vec();
    command.extend_from_slice(key);
    command.extend_from_slice(args);
    start(lcf, key, command, None);
}

/// The regeneration of `key` (the item `cas` names) has run longer than
/// `rcache_lock_age`: `md <key> I C<cas> T<stale>` marks the page stale again, so that the
/// next request regenerates it, and gives it another stale window meanwhile. Of several
/// requests that find it overdue at once, the first hands it on; the others' CAS no
/// longer matches.
pub fn take_over(lcf: &LocConf, key: &[u8], cas: u64) {
    meta_delete(lcf, key, &meta::take_over_args(cas, lcf.stale_secs()));
}

/// A request that won the regeneration or the lock of `key` got a response that is not
/// cacheable: mark the key (`rcache_hit_for_pass`) so that its requests go straight to the
/// app instead of waiting for a page that will not come; replaces the item `cas` names.
/// Without `rcache_hit_for_pass` (0), the win is given back instead.
pub fn mark_pass(lcf: &LocConf, key: &[u8], cas: u64) {
    let Ok(ttl @ 1..) = u64::try_from(lcf.hit_for_pass) else {
        return release(lcf, key);
    };
    if !meta_write_possible(lcf) {
        return;
    }
    let mut command = meta::set_command(key, 0, PASS_FLAG, ttl, Some(cas));
    command.extend_from_slice(protocol::CRLF);
    if start(lcf, key, command, None) {
        metrics_conf::count(Counter::HitForPassWritten);
    }
}

/// Whether a meta command about a page of `lcf` can be sent now (not while nginx shuts
/// down: a release or a marker is no reason to open a connection then).
fn meta_write_possible(lcf: &LocConf) -> bool {
    // SAFETY: nginx's shutdown flags, written by this thread.
    let exiting = unsafe { ngx_terminate != 0 || ngx_exiting != 0 };
    lcf.meta_now() && !exiting
}

/// Starts a job sending `command` about `key` to the key's server, holding `request`
/// (if any) until memcached has answered. False if it could not start.
fn start(
    lcf: &LocConf,
    key: &[u8],
    command: Vec<u8>,
    request: Option<&mut ngx_http_request_t>,
) -> bool {
    let target = lcf.target;
    // SAFETY: the target of lcf's upstream, live for the configuration.
    let Some(peer) = (unsafe { crate::balancer::store_peer(&*target, key) }) else {
        debug!(cycle_log(), "rcache: store: the key's server is down");
        return false;
    };

    // SAFETY: a pool of the job's own.
    let pool = unsafe { ngx_create_pool(1024, cycle_log()) };
    // SAFETY: NULL or a fresh pool; the Job is written in place before use.
    let job = unsafe { pool.as_mut() }.map_or(ptr::null_mut(), |pool| unsafe {
        ngx_palloc(pool, size_of::<Job>()) as *mut Job
    });
    let cleanup = match &request {
        // SAFETY: a cleanup entry in the live request's pool.
        Some(r) => unsafe { ngx_pool_cleanup_add(r.pool, 0) },
        None => ptr::null_mut(),
    };
    if job.is_null() || (request.is_some() && cleanup.is_null()) {
        if !pool.is_null() {
            // SAFETY: the pool just created, with nothing in it yet.
            unsafe { ngx_destroy_pool(pool) };
        }
        return false;
    }

    // SAFETY: a zeroed peer connection is nginx's "nothing set yet".
    let mut pc: ngx_peer_connection_t = unsafe { core::mem::zeroed() };
    pc.sockaddr = peer.sockaddr;
    pc.socklen = peer.socklen;
    pc.name = peer.name;
    pc.get = Some(get_chosen_peer);
    pc.log = cycle_log();
    pc.set_log_error(ngx_connection_log_error_e_NGX_ERROR_ERR);
    pc.tries = 1;
    let r = request.map_or(ptr::null_mut(), ptr::from_mut);
    let j = Job {
        pool,
        peer: pc,
        command,
        sent: 0,
        reply: Vec::with_capacity(64),
        target,
        // SAFETY: the balancer's address of the server.
        addr: unsafe { addr_bytes(peer.sockaddr, peer.socklen) }.to_vec(),
        keepalive: lcf.keepalive(),
        send_timeout: lcf.upstream.send_timeout,
        read_timeout: lcf.upstream.read_timeout,
        connect_timeout: lcf.upstream.connect_timeout,
        request: r,
        cleanup,
        // SAFETY: the peer's name lives with the upstream's configuration.
        server: String::from_utf8_lossy(unsafe { (*peer.name).as_bytes() }).into_owned(),
        key: String::from_utf8_lossy(key).into_owned(),
    };
    debug!(
        cycle_log(),
        "rcache: store: {} \"{}\" ({} bytes) on memcached {}",
        j.verb(),
        j.key,
        j.command.len(),
        j.server
    );
    // SAFETY: job is fresh memory for a Job in its own pool.
    unsafe { ptr::write(job, j) };
    // SAFETY: NULL, or the cleanup entry just added.
    if let Some(cleanup) = unsafe { cleanup.as_mut() } {
        cleanup.handler = Some(request_gone);
        cleanup.data = job.cast();
    }
    // Keep the request until memcached has answered (see the module doc).
    // SAFETY: NULL, or the live request; its main request.
    if let Some(r) = unsafe { r.as_mut() } {
        let main = unsafe { &mut *r.main };
        crate::bitfield::hold(main);
    }
    // SAFETY: the job just written, without a connection yet.
    unsafe { connect(job) };
    true
}

/// `add <key> <flags> <exptime> <bytes>\r\n<stored page>\r\n` (where stale pages are
/// on: `ms <key> <bytes> F<flags> T<exptime> C<cas>|ME`), the exptime being the page's
/// freshness plus `rcache_stale`; None when the stored page would be over
/// `rcache_max_size`.
fn add_command(lcf: &LocConf, key: &[u8], page: &Captured) -> Option<Vec<u8>> {
    let headers: Vec<(&[u8], &[u8])> = page
        .headers
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_slice()))
        .collect();
    let value_len = page::encoded_len(page.status, &headers, &page.body);
    if value_len > lcf.max_size {
        return None;
    }
    let exptime = policy::exptime(page.ttl.saturating_add(lcf.stale_secs()), ngx_time());
    let mut command = if lcf.meta_now() {
        meta::set_command(key, value_len, STORED_FLAG, exptime, page.replaces)
    } else {
        protocol::add_command(key, STORED_FLAG, exptime, value_len)
    };
    command.reserve_exact(value_len + 2);
    page::encode(page.status, &headers, &page.body, &mut command);
    command.extend_from_slice(protocol::CRLF);
    Some(command)
}

/// The request's pool is going away (the client closed): forget the request,
/// the write goes on.
unsafe extern "C" fn request_gone(data: *mut c_void) {
    // SAFETY: data is the job write() registered; it is in flight, since
    // finish() unregisters this cleanup before the job is freed.
    let job = unsafe { &mut *(data as *mut Job) };
    debug!(
        cycle_log(),
        "rcache: store: the request is gone, the write goes on"
    );
    job.request = ptr::null_mut();
    job.cleanup = ptr::null_mut();
}

/// `peer.get` of a store: the server is chosen already.
unsafe extern "C" fn get_chosen_peer(
    _pc: *mut ngx_peer_connection_t,
    _data: *mut c_void,
) -> ngx_int_t {
    Status::NGX_OK.into()
}

/// # Safety
/// `job` must be a job in flight without a connection.
unsafe fn connect(job: *mut Job) {
    // SAFETY: per the contract above.
    let j = unsafe { &mut *job };
    let log = cycle_log();
    // SAFETY: the target lives with the configuration; the pool runs in this worker.
    if let Some(c) = unsafe { (*j.target).idle.take(&j.addr, log) } {
        debug!(log, "rcache: store: using pooled connection {:p}", c);
        j.peer.connection = c;
        // SAFETY: c is the open connection just taken.
        unsafe { adopt(job, c) };
        return on_writable(job);
    }
    debug!(log, "rcache: store: connecting to memcached {}", j.server);
    // SAFETY: the target lives with the configuration.
    let target = unsafe { &*j.target };
    if let (true, Some(h)) = (target.counting, target.health_of(&j.addr)) {
        // Stores open connections to the server too (and park them in the same pool).
        h.stats().connections_opened.fetch_add(1, Ordering::Relaxed);
    }
    // SAFETY: a filled-in peer connection.
    let rc = Status(unsafe { ngx_event_connect_peer(&mut j.peer) });
    if rc != Status::NGX_OK && rc != Status::NGX_AGAIN {
        return finish(job, WriteResult::Failed("connect() failed".into()));
    }
    // SAFETY: nginx connected (or is connecting) and set the connection.
    let c = unsafe { &mut *j.peer.connection };
    if c.pool.is_null() {
        // Pooled connections have a pool (nginx's upstream gives its own one).
        // SAFETY: a pool for the connection, freed when it is closed.
        c.pool = unsafe { ngx_create_pool(128, log) };
        if c.pool.is_null() {
            return finish(job, WriteResult::Failed("out of memory".into()));
        }
    }
    // SAFETY: c is the job's open connection.
    unsafe { adopt(job, c) };
    if rc == Status::NGX_AGAIN {
        // SAFETY: the connection's write event.
        unsafe { ngx_add_timer(c.write, j.connect_timeout) };
        return;
    }
    on_writable(job);
}

/// Points the connection's events at the job.
///
/// # Safety
/// `c` must be the job's open connection.
unsafe fn adopt(job: *mut Job, c: *mut ngx_connection_t) {
    // SAFETY: per the contract above.
    let (c, rd, wr) = unsafe { (&mut *c, &mut *(*c).read, &mut *(*c).write) };
    c.data = job.cast();
    rd.handler = Some(on_read);
    wr.handler = Some(on_write);
    let log = cycle_log();
    c.log = log;
    rd.log = log;
    wr.log = log;
}

/// The job of an event on its connection.
///
/// # Safety
/// `ev` must be an event of a job's connection.
unsafe fn job_of(ev: *mut ngx_event_t) -> (*mut Job, &'static mut ngx_event_t) {
    // SAFETY: per the contract above: ev->data is the connection, c->data the job.
    unsafe {
        let c = (*ev).data as *mut ngx_connection_t;
        ((*c).data as *mut Job, &mut *ev)
    }
}

unsafe extern "C" fn on_write(ev: *mut ngx_event_t) {
    // SAFETY: nginx calls this for a job's connection.
    let (job, ev) = unsafe { job_of(ev) };
    if ev.timedout() != 0 {
        return finish(job, WriteResult::Failed("timed out".into()));
    }
    on_writable(job);
}

/// Sends what is left of the command, then waits for the reply.
fn on_writable(job: *mut Job) {
    // SAFETY: called for a job in flight with an open connection.
    let (j, c) = unsafe { (&mut *job, &mut *(*job).peer.connection) };
    // SAFETY: an open connection has its events.
    let (rd, wr) = unsafe { (&mut *c.read, &mut *c.write) };
    let Some(send) = c.send else {
        return finish(job, WriteResult::Failed("no send".into()));
    };
    while j.sent < j.command.len() {
        let rest = &j.command[j.sent..];
        // SAFETY: nginx's send on the open connection, from the job's buffer.
        let n = unsafe { send(c, rest.as_ptr().cast_mut(), rest.len()) };
        if n == Status::NGX_AGAIN.0 {
            // SAFETY: the connection's write event.
            if !Status(unsafe { ngx_handle_write_event(wr, 0) }).is_ok() {
                return finish(job, WriteResult::Failed("event error".into()));
            }
            if wr.timer_set() == 0 {
                // SAFETY: as above.
                unsafe { ngx_add_timer(wr, j.send_timeout) };
            }
            return;
        }
        if n <= 0 {
            return finish(job, WriteResult::Failed("send() failed".into()));
        }
        j.sent += n as usize;
    }
    // SAFETY: the connection's events.
    unsafe {
        if wr.timer_set() != 0 {
            ngx_del_timer(wr);
        }
        ngx_add_timer(rd, j.read_timeout);
    }
    // SAFETY: as above.
    if !Status(unsafe { ngx_handle_read_event(rd, 0) }).is_ok() {
        finish(job, WriteResult::Failed("event error".into()));
    }
}

unsafe extern "C" fn on_read(ev: *mut ngx_event_t) {
    // SAFETY: nginx calls this for a job's connection.
    let (job, ev) = unsafe { job_of(ev) };
    if ev.timedout() != 0 {
        return finish(job, WriteResult::Failed("timed out".into()));
    }
    // SAFETY: a job in flight with an open connection.
    let (j, c) = unsafe { (&mut *job, &mut *(*job).peer.connection) };
    if j.sent < j.command.len() {
        // Still sending: memcached should not answer yet.
        return;
    }
    let Some(recv) = c.recv else {
        return finish(job, WriteResult::Failed("no recv".into()));
    };
    let mut buf = [0u8; 512];
    loop {
        // SAFETY: nginx's recv on the open connection, into buf.
        let n = unsafe { recv(c, buf.as_mut_ptr(), buf.len()) };
        if n == Status::NGX_AGAIN.0 {
            // SAFETY: the connection's read event.
            if !Status(unsafe { ngx_handle_read_event(c.read, 0) }).is_ok() {
                finish(job, WriteResult::Failed("event error".into()));
            }
            return;
        }
        if n <= 0 {
            return finish(job, WriteResult::Failed("connection closed".into()));
        }
        j.reply.extend_from_slice(&buf[..n as usize]);
        let result = if j.command.starts_with(b"ms ") {
            meta_set_result(&j.reply)
        } else if j.command.starts_with(b"md ") {
            release_result(&j.reply)
        } else {
            add_result(&j.reply)
        };
        match result {
            Some(result) => return finish(job, result),
            None => continue,
        }
    }
}

/// How the reply to `add` ends the write; None until it is complete.
fn add_result(reply: &[u8]) -> Option<WriteResult> {
    Some(match protocol::parse_line_reply(reply) {
        Ok(None) => return None,
        Ok(Some(LineReply::Stored)) => WriteResult::Stored,
        // `add` found a value: the app wrote the page meanwhile.
        Ok(Some(LineReply::NotStored)) => WriteResult::Present,
        Ok(Some(_)) => WriteResult::Failed("memcached answered something else".into()),
        Err(err) if err.to_string().contains("too large") => WriteResult::TooLarge,
        Err(err) => WriteResult::Failed(err.to_string()),
    })
}

/// How the reply to `ms` ends the write; None until it is complete.
fn meta_set_result(reply: &[u8]) -> Option<WriteResult> {
    Some(match meta::parse_meta_reply(reply) {
        Ok(MetaParsed::NeedLine | MetaParsed::NeedValue { .. }) => return None,
        Ok(MetaParsed::Complete(MetaReply::Header(_))) => WriteResult::Stored,
        // Mode add found a value (the app wrote the page), or the CAS no longer matches
        // (the app wrote it during the regeneration), or the item is gone (purged).
        Ok(MetaParsed::Complete(MetaReply::NotStored | MetaReply::Exists | MetaReply::NoItem)) => {
            WriteResult::Present
        }
        Ok(MetaParsed::Complete(other)) => {
            WriteResult::Failed(format!("memcached answered {other:?}"))
        }
        Err(err) if err.to_string().contains("too large") => WriteResult::TooLarge,
        Err(err) => WriteResult::Failed(err.to_string()),
    })
}

/// How the reply to a release's `md ... I` ends it (`Stored`: done); None until complete.
fn release_result(reply: &[u8]) -> Option<WriteResult> {
    Some(match meta::parse_meta_reply(reply) {
        Ok(MetaParsed::NeedLine | MetaParsed::NeedValue { .. }) => return None,
        Ok(MetaParsed::Complete(MetaReply::Header(_) | MetaReply::NoItem)) => WriteResult::Stored,
        // A hand-over whose CAS no longer matches: another request handed it on first,
        // or the page was stored meanwhile.
        Ok(MetaParsed::Complete(MetaReply::Exists)) => WriteResult::Present,
        Ok(MetaParsed::Complete(other)) => {
            WriteResult::Failed(format!("memcached answered {other:?}"))
        }
        Err(err) => WriteResult::Failed(err.to_string()),
    })
}

/// How a write ended.
enum WriteResult {
    Stored,
    /// The key had a value already (`add` refused): left as it is.
    Present,
    /// memcached's item size limit.
    TooLarge,
    Failed(String),
}

/// Whether this worker's last store failed: failures are logged once, not per store,
/// until a store succeeds again.
static FAILING: AtomicBool = AtomicBool::new(false);

/// Ends the job: the connection back to the pool (or closed), the status recorded, the
/// request released, the job freed.
fn finish(job: *mut Job, result: WriteResult) {
    // SAFETY: called for a job in flight; it is freed at the end.
    let j = unsafe { &mut *job };
    // SAFETY: NULL or the job's open connection.
    if let Some(c) = unsafe { j.peer.connection.as_mut() } {
        // The reply was read whole for every result but a failure.
        let clean = !matches!(result, WriteResult::Failed(_));
        // SAFETY: nginx's shutdown flags, written by the same thread.
        let reusable = clean && unsafe { ngx_terminate == 0 && ngx_exiting == 0 };
        // SAFETY: the connection's events, its pool entry and its close.
        unsafe {
            for ev in [c.read, c.write] {
                if (*ev).timer_set() != 0 {
                    ngx_del_timer(ev);
                }
            }
            let target = &mut *j.target;
            let gauge = target.idle_gauge(target.health_of(&j.addr));
            if !reusable || !target.idle.put(c, &j.addr, j.keepalive, gauge) {
                pool::close(c);
            }
        }
        j.peer.connection = ptr::null_mut();
    }

    let log = cycle_log();
    let status = match &result {
        WriteResult::Stored => {
            FAILING.store(false, Ordering::Relaxed);
            if j.verb() == "take over" {
                ngx_log_error!(
                    NGX_LOG_INFO,
                    log,
                    "rcache: the regeneration of \"{}\" ran longer than rcache_lock_age: \
                     the next request regenerates it",
                    j.key
                );
            }
            StoreStatus::Stored
        }
        WriteResult::Present => StoreStatus::Present,
        WriteResult::TooLarge => {
            ngx_log_error!(
                NGX_LOG_INFO,
                log,
                "rcache: memcached \"{}\" refused key \"{}\" as too large for it",
                j.server,
                j.key
            );
            StoreStatus::TooLarge
        }
        WriteResult::Failed(why) => {
            if !FAILING.swap(true, Ordering::Relaxed) {
                ngx_log_error!(
                    NGX_LOG_ERR,
                    log,
                    "rcache: {} key \"{}\" on memcached \"{}\" failed: {} (further \
                     failures are not logged until a store succeeds)",
                    if j.command.starts_with(b"md ") {
                        "releasing the regeneration of"
                    } else {
                        "storing"
                    },
                    j.key,
                    j.server,
                    why
                );
            }
            StoreStatus::Failed
        }
    };
    debug!(log, "rcache: store of \"{}\": {:?}", j.key, status);
    // Counted here: the request may be gone by the time memcached answers.
    metrics_conf::count(Counter::store(status));

    // SAFETY: NULL, or the job's entry in the live request's cleanups.
    if let Some(cleanup) = unsafe { j.cleanup.as_mut() } {
        // The job is about to go: the request must not tell it anything.
        cleanup.handler = None;
    }
    // SAFETY: NULL, or the request kept open for this job.
    if let Some(r) = unsafe { j.request.as_mut() } {
        variables::set_store(r, status);
        // SAFETY: drops the reference write() took.
        unsafe { ngx_http_finalize_request(r, Status::NGX_DONE.into()) };
    }

    let pool = j.pool;
    // SAFETY: the job lives in its own pool, dropped once, here; nothing
    // refers to it any more.
    unsafe {
        ptr::drop_in_place(job);
        ngx_destroy_pool(pool);
    }
}

impl Job {
    /// What the job does, for the debug log.
    fn verb(&self) -> &'static str {
        match self.command.get(..3) {
            Some(b"md ") if self.command.windows(4).any(|w| w == b" I C") => "take over",
            Some(b"md ") => "release",
            Some(b"ms ") => "ms",
            _ => "add",
        }
    }
}

/// The log of the worker (a store outlives its request).
fn cycle_log() -> *mut ngx_log_t {
    // SAFETY: the cycle is live while the worker runs.
    unsafe { (*ngx_cycle).log }
}
