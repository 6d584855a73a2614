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

use ngx::core::Status;
use ngx::ffi::*;
use ngx::ngx_log_error;

use super::page::{self, STORED_FLAG};
use super::policy;
use crate::conf::LocConf;
use crate::pool::{self, addr_bytes};
use crate::protocol::{self, LineReply};
use crate::target::Target;
use crate::variables::{self, StoreStatus};

/// A page captured for memcached: what the fallback answered, and for how long
/// it may be kept.
#[derive(Default)]
pub struct Captured {
    pub status: u16,
    pub ttl: u32,
    pub headers: Vec<(&'static str, Vec<u8>)>,
    pub body: Vec<u8>,
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
    // SAFETY: per the contract above; the job lives in a pool of its own.
    unsafe {
        let req = &mut *r;
        let log = (*ngx_cycle).log;
        let target = lcf.target;
        let Some(peer) = crate::balancer::store_peer((*target).uscf, key) else {
            debug!(log, "rcache: store: the key's server is down");
            variables::set_store(req, StoreStatus::Failed);
            return;
        };

        let headers: Vec<(&[u8], &[u8])> = page
            .headers
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_slice()))
            .collect();
        let value_len = page::encoded_len(page.status, &headers, &page.body);
        if value_len > lcf.max_size {
            // rcache_max_size bounds the values rcache serves: a page over it would
            // never be a HIT.
            variables::set_store(req, StoreStatus::TooLarge);
            return;
        }
        let exptime = policy::exptime(page.ttl, ngx_time());
        let mut command = protocol::add_command(key, STORED_FLAG, exptime, value_len);
        command.reserve_exact(value_len + 2);
        page::encode(page.status, &headers, &page.body, &mut command);
        command.extend_from_slice(protocol::CRLF);
        drop(headers);
        drop(page);

        let pool = ngx_create_pool(1024, log);
        if pool.is_null() {
            variables::set_store(req, StoreStatus::Failed);
            return;
        }
        let job = ngx_pcalloc(pool, size_of::<Job>()) as *mut Job;
        let cleanup = ngx_pool_cleanup_add(req.pool, 0);
        if job.is_null() || cleanup.is_null() {
            ngx_destroy_pool(pool);
            variables::set_store(req, StoreStatus::Failed);
            return;
        }
        let mut pc: ngx_peer_connection_t = core::mem::zeroed();
        pc.sockaddr = peer.sockaddr;
        pc.socklen = peer.socklen;
        pc.name = peer.name;
        pc.get = Some(get_chosen_peer);
        pc.log = log;
        pc.set_log_error(ngx_connection_log_error_e_NGX_ERROR_ERR);
        pc.tries = 1;
        ptr::write(
            job,
            Job {
                pool,
                peer: pc,
                command,
                sent: 0,
                reply: Vec::with_capacity(64),
                target,
                addr: addr_bytes(peer.sockaddr, peer.socklen).to_vec(),
                keepalive: lcf.keepalive(),
                send_timeout: lcf.upstream.send_timeout,
                read_timeout: lcf.upstream.read_timeout,
                connect_timeout: lcf.upstream.connect_timeout,
                request: r,
                cleanup,
                server: String::from_utf8_lossy((*peer.name).as_bytes()).into_owned(),
                key: String::from_utf8_lossy(key).into_owned(),
            },
        );
        (*cleanup).handler = Some(request_gone);
        (*cleanup).data = job.cast();
        debug!(
            log,
            "rcache: store: add \"{}\" ({} bytes, exptime {}) on memcached {}",
            (*job).key,
            value_len,
            exptime,
            (*job).server
        );
        // Keep the request until memcached has answered (see the module doc).
        let main = &mut *req.main;
        main.set_count(main.count() + 1);
        connect(job);
    }
}

/// The request's pool is going away (the client closed): forget the request,
/// the write goes on.
unsafe extern "C" fn request_gone(data: *mut c_void) {
    // SAFETY: data is the job write() registered; it is in flight, since
    // finish() unregisters this cleanup before the job is freed.
    unsafe {
        let job = &mut *(data as *mut Job);
        debug!(
            (*ngx_cycle).log,
            "rcache: store: the request is gone, the write goes on"
        );
        job.request = ptr::null_mut();
        job.cleanup = ptr::null_mut();
    }
}

/// `peer.get` of a store: the server is chosen already.
unsafe extern "C" fn get_chosen_peer(
    _pc: *mut ngx_peer_connection_t,
    _data: *mut c_void,
) -> ngx_int_t {
    Status::NGX_OK.0
}

/// # Safety
/// `job` must be a job in flight without a connection.
unsafe fn connect(job: *mut Job) {
    // SAFETY: per the contract above.
    unsafe {
        let j = &mut *job;
        let log = (*ngx_cycle).log;
        if let Some(c) = (*j.target).idle.take(&j.addr, log) {
            debug!(log, "rcache: store: using pooled connection {:p}", c);
            j.peer.connection = c;
            adopt(job, c);
            send(job);
            return;
        }
        debug!(log, "rcache: store: connecting to memcached {}", j.server);
        let rc = ngx_event_connect_peer(&mut j.peer);
        if rc != Status::NGX_OK.0 && rc != Status::NGX_AGAIN.0 {
            finish(job, WriteResult::Failed("connect() failed".into()));
            return;
        }
        let c = j.peer.connection;
        if (*c).pool.is_null() {
            // Pooled connections have a pool (nginx's upstream gives its own one).
            (*c).pool = ngx_create_pool(128, log);
            if (*c).pool.is_null() {
                finish(job, WriteResult::Failed("out of memory".into()));
                return;
            }
        }
        adopt(job, c);
        if rc == Status::NGX_AGAIN.0 {
            ngx_add_timer((*c).write, j.connect_timeout);
            return;
        }
        send(job);
    }
}

/// Points the connection's events at the job.
///
/// # Safety
/// `c` must be the job's open connection.
unsafe fn adopt(job: *mut Job, c: *mut ngx_connection_t) {
    // SAFETY: per the contract above.
    unsafe {
        (*c).data = job.cast();
        (*(*c).read).handler = Some(on_read);
        (*(*c).write).handler = Some(on_write);
        let log = (*ngx_cycle).log;
        (*c).log = log;
        (*(*c).read).log = log;
        (*(*c).write).log = log;
    }
}

unsafe extern "C" fn on_write(ev: *mut ngx_event_t) {
    // SAFETY: the event belongs to a job's connection.
    unsafe {
        let c = (*ev).data as *mut ngx_connection_t;
        let job = (*c).data as *mut Job;
        if (*ev).timedout() != 0 {
            finish(job, WriteResult::Failed("timed out".into()));
            return;
        }
        send(job);
    }
}

/// Sends what is left of the command, then waits for the reply.
///
/// # Safety
/// `job` must have a connection.
unsafe fn send(job: *mut Job) {
    // SAFETY: per the contract above.
    unsafe {
        let j = &mut *job;
        let c = j.peer.connection;
        let Some(send) = (*c).send else {
            finish(job, WriteResult::Failed("no send".into()));
            return;
        };
        while j.sent < j.command.len() {
            let rest = &j.command[j.sent..];
            let n = send(c, rest.as_ptr().cast_mut(), rest.len());
            if n == Status::NGX_AGAIN.0 {
                if ngx_handle_write_event((*c).write, 0) != Status::NGX_OK.0 {
                    finish(job, WriteResult::Failed("event error".into()));
                    return;
                }
                if (*(*c).write).timer_set() == 0 {
                    ngx_add_timer((*c).write, j.send_timeout);
                }
                return;
            }
            if n <= 0 {
                finish(job, WriteResult::Failed("send() failed".into()));
                return;
            }
            j.sent += n as usize;
        }
        if (*(*c).write).timer_set() != 0 {
            ngx_del_timer((*c).write);
        }
        ngx_add_timer((*c).read, j.read_timeout);
        if ngx_handle_read_event((*c).read, 0) != Status::NGX_OK.0 {
            finish(job, WriteResult::Failed("event error".into()));
        }
    }
}

unsafe extern "C" fn on_read(ev: *mut ngx_event_t) {
    // SAFETY: the event belongs to a job's connection.
    unsafe {
        let c = (*ev).data as *mut ngx_connection_t;
        let job = (*c).data as *mut Job;
        let j = &mut *job;
        if (*ev).timedout() != 0 {
            finish(job, WriteResult::Failed("timed out".into()));
            return;
        }
        if j.sent < j.command.len() {
            // Still sending: memcached should not answer yet.
            return;
        }
        let Some(recv) = (*c).recv else {
            finish(job, WriteResult::Failed("no recv".into()));
            return;
        };
        let mut buf = [0u8; 512];
        loop {
            let n = recv(c, buf.as_mut_ptr(), buf.len());
            if n == Status::NGX_AGAIN.0 {
                if ngx_handle_read_event((*c).read, 0) != Status::NGX_OK.0 {
                    finish(job, WriteResult::Failed("event error".into()));
                }
                return;
            }
            if n <= 0 {
                finish(job, WriteResult::Failed("connection closed".into()));
                return;
            }
            j.reply.extend_from_slice(&buf[..n as usize]);
            match protocol::parse_line_reply(&j.reply) {
                Ok(None) => continue,
                Ok(Some(LineReply::Stored)) => {
                    finish(job, WriteResult::Stored);
                    return;
                }
                Ok(Some(LineReply::NotStored)) => {
                    // `add` found a value: the app wrote the page meanwhile.
                    finish(job, WriteResult::Present);
                    return;
                }
                Ok(Some(_)) => {
                    finish(
                        job,
                        WriteResult::Failed("memcached answered something else".into()),
                    );
                    return;
                }
                Err(err) if err.to_string().contains("too large") => {
                    finish(job, WriteResult::TooLarge);
                    return;
                }
                Err(err) => {
                    finish(job, WriteResult::Failed(err.to_string()));
                    return;
                }
            }
        }
    }
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
static mut FAILING: bool = false;

/// Ends the job: the connection back to the pool (or closed), the status recorded, the
/// request released, the job freed.
///
/// # Safety
/// `job` must be a job in flight; it is freed.
unsafe fn finish(job: *mut Job, outcome: WriteResult) {
    // SAFETY: per the contract above; the worker is single-threaded.
    unsafe {
        let j = &mut *job;
        let c = j.peer.connection;
        if !c.is_null() {
            // The reply was read whole for every outcome but a failure.
            let clean = !matches!(outcome, WriteResult::Failed(_));
            let reusable = clean && ngx_terminate == 0 && ngx_exiting == 0;
            for ev in [(*c).read, (*c).write] {
                if (*ev).timer_set() != 0 {
                    ngx_del_timer(ev);
                }
            }
            if !reusable || !(*j.target).idle.put(c, &j.addr, j.keepalive) {
                pool::close(c);
            }
            j.peer.connection = ptr::null_mut();
        }

        let status = match &outcome {
            WriteResult::Stored => {
                FAILING = false;
                StoreStatus::Stored
            }
            WriteResult::Present => StoreStatus::Present,
            WriteResult::TooLarge => {
                ngx_log_error!(
                    NGX_LOG_INFO,
                    (*ngx_cycle).log,
                    "rcache: memcached \"{}\" refused key \"{}\" as too large for it",
                    j.server,
                    j.key
                );
                StoreStatus::TooLarge
            }
            WriteResult::Failed(why) => {
                if !FAILING {
                    FAILING = true;
                    ngx_log_error!(
                        NGX_LOG_ERR,
                        (*ngx_cycle).log,
                        "rcache: storing key \"{}\" on memcached \"{}\" failed: {} (further \
                         failures are not logged until a store succeeds)",
                        j.key,
                        j.server,
                        why
                    );
                }
                StoreStatus::Failed
            }
        };

        debug!(
            (*ngx_cycle).log,
            "rcache: store of \"{}\": {:?}", j.key, status
        );
        if let Some(cleanup) = j.cleanup.as_mut() {
            // The job is about to go: the request must not tell it anything.
            cleanup.handler = None;
        }
        if let Some(r) = j.request.as_mut() {
            variables::set_store(r, status);
            ngx_http_finalize_request(r, Status::NGX_DONE.into());
        }

        let pool = j.pool;
        ptr::drop_in_place(job);
        ngx_destroy_pool(pool);
    }
}
