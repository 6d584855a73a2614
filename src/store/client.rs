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

use ngx::ffi::*;
use ngx::ngx_log_error;

use super::capture::StoreState;
use super::page::{self, STORED_FLAG};
use super::policy;
use crate::pool::{self, addr_bytes};
use crate::protocol::{self, LineReply};
use crate::target::Target;
use crate::variables::{self, StoreStatus};

/// One write in flight.
pub struct Job {
    /// The job's own pool: the job outlives the request if the client goes away.
    pool: *mut ngx_pool_t,
    peer: ngx_peer_connection_t,
    /// `set ...\r\n<value>\r\n`.
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
    state: *mut StoreState,
    server: String,
    key: String,
}

/// Hands the captured page of `r` to memcached.
///
/// # Safety
/// `r` must be a live main request whose response has passed the body filter;
/// `state` its store state.
pub unsafe fn store(r: *mut ngx_http_request_t, state: &mut StoreState) {
    // SAFETY: per the contract above; the job lives in a pool of its own.
    unsafe {
        let lcf = &*state.lcf;
        let log = (*ngx_cycle).log;
        let target = lcf.target;
        let Some(peer) = crate::balancer::store_peer((*target).uscf, state.key()) else {
            // The key's server is down: nothing to write to.
            variables::set_store(r, StoreStatus::Failed);
            return;
        };

        let headers: Vec<(&[u8], &[u8])> = state
            .headers
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_slice()))
            .collect();
        let value_len = page::encoded_len(state.status, &headers, &state.body);
        if value_len > lcf.max_size {
            // rcache_max_size bounds the values rcache serves: a page over it would
            // never be a HIT.
            state.body = Vec::new();
            variables::set_store(r, StoreStatus::TooLarge);
            return;
        }
        let exptime = policy::exptime(state.ttl, ngx_time());
        let mut command = protocol::add_command(state.key(), STORED_FLAG, exptime, value_len);
        command.reserve_exact(value_len + 2);
        page::encode(state.status, &headers, &state.body, &mut command);
        command.extend_from_slice(protocol::CRLF);
        state.body = Vec::new();
        state.headers = Vec::new();

        let pool = ngx_create_pool(1024, log);
        if pool.is_null() {
            variables::set_store(r, StoreStatus::Failed);
            return;
        }
        let job = ngx_pcalloc(pool, size_of::<Job>()) as *mut Job;
        if job.is_null() {
            ngx_destroy_pool(pool);
            variables::set_store(r, StoreStatus::Failed);
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
                state,
                server: String::from_utf8_lossy((*peer.name).as_bytes()).into_owned(),
                key: String::from_utf8_lossy(state.key()).into_owned(),
            },
        );
        // Keep the request until memcached has answered (see the module doc).
        let main = &mut *(*r).main;
        main.set_count(main.count() + 1);
        state.job = job;
        connect(job);
    }
}

/// The request is going away (client closed): forget it, the write goes on.
///
/// # Safety
/// `job` must be a job in flight.
pub unsafe fn detach(job: *mut Job) {
    // SAFETY: per the contract above.
    unsafe {
        (*job).request = ptr::null_mut();
        (*job).state = ptr::null_mut();
    }
}

/// `peer.get` of a store: the server is chosen already.
unsafe extern "C" fn get_chosen_peer(
    _pc: *mut ngx_peer_connection_t,
    _data: *mut c_void,
) -> ngx_int_t {
    NGX_OK as ngx_int_t
}

/// # Safety
/// `job` must be a job in flight without a connection.
unsafe fn connect(job: *mut Job) {
    // SAFETY: per the contract above.
    unsafe {
        let j = &mut *job;
        let log = (*ngx_cycle).log;
        if let Some(c) = (*j.target).idle.take(&j.addr, log) {
            j.peer.connection = c;
            adopt(job, c);
            send(job);
            return;
        }
        let rc = ngx_event_connect_peer(&mut j.peer);
        if rc != NGX_OK as ngx_int_t && rc != NGX_AGAIN as ngx_int_t {
            finish(job, Outcome::Failed("connect() failed".into()));
            return;
        }
        let c = j.peer.connection;
        if (*c).pool.is_null() {
            // Pooled connections have a pool (nginx's upstream gives its own one).
            (*c).pool = ngx_create_pool(128, log);
            if (*c).pool.is_null() {
                finish(job, Outcome::Failed("out of memory".into()));
                return;
            }
        }
        adopt(job, c);
        if rc == NGX_AGAIN as ngx_int_t {
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
            finish(job, Outcome::Failed("timed out".into()));
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
            finish(job, Outcome::Failed("no send".into()));
            return;
        };
        while j.sent < j.command.len() {
            let rest = &j.command[j.sent..];
            let n = send(c, rest.as_ptr().cast_mut(), rest.len());
            if n == NGX_AGAIN as isize {
                if ngx_handle_write_event((*c).write, 0) != NGX_OK as ngx_int_t {
                    finish(job, Outcome::Failed("event error".into()));
                    return;
                }
                if (*(*c).write).timer_set() == 0 {
                    ngx_add_timer((*c).write, j.send_timeout);
                }
                return;
            }
            if n <= 0 {
                finish(job, Outcome::Failed("send() failed".into()));
                return;
            }
            j.sent += n as usize;
        }
        if (*(*c).write).timer_set() != 0 {
            ngx_del_timer((*c).write);
        }
        ngx_add_timer((*c).read, j.read_timeout);
        if ngx_handle_read_event((*c).read, 0) != NGX_OK as ngx_int_t {
            finish(job, Outcome::Failed("event error".into()));
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
            finish(job, Outcome::Failed("timed out".into()));
            return;
        }
        if j.sent < j.command.len() {
            // Still sending: memcached should not answer yet.
            return;
        }
        let Some(recv) = (*c).recv else {
            finish(job, Outcome::Failed("no recv".into()));
            return;
        };
        let mut buf = [0u8; 512];
        loop {
            let n = recv(c, buf.as_mut_ptr(), buf.len());
            if n == NGX_AGAIN as isize {
                if ngx_handle_read_event((*c).read, 0) != NGX_OK as ngx_int_t {
                    finish(job, Outcome::Failed("event error".into()));
                }
                return;
            }
            if n <= 0 {
                finish(job, Outcome::Failed("connection closed".into()));
                return;
            }
            j.reply.extend_from_slice(&buf[..n as usize]);
            match protocol::parse_line_reply(&j.reply) {
                Ok(None) => continue,
                Ok(Some(LineReply::Stored)) => {
                    finish(job, Outcome::Stored);
                    return;
                }
                Ok(Some(LineReply::NotStored)) => {
                    // `add` found a value: the app wrote the page meanwhile.
                    finish(job, Outcome::Present);
                    return;
                }
                Ok(Some(_)) => {
                    finish(
                        job,
                        Outcome::Failed("memcached answered something else".into()),
                    );
                    return;
                }
                Err(err) if err.to_string().contains("too large") => {
                    finish(job, Outcome::TooLarge);
                    return;
                }
                Err(err) => {
                    finish(job, Outcome::Failed(err.to_string()));
                    return;
                }
            }
        }
    }
}

/// How a write ended.
enum Outcome {
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
unsafe fn finish(job: *mut Job, outcome: Outcome) {
    // SAFETY: per the contract above; the worker is single-threaded.
    unsafe {
        let j = &mut *job;
        let c = j.peer.connection;
        if !c.is_null() {
            // The reply was read whole for every outcome but a failure.
            let clean = !matches!(outcome, Outcome::Failed(_));
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
            Outcome::Stored => {
                FAILING = false;
                StoreStatus::Stored
            }
            Outcome::Present => StoreStatus::Present,
            Outcome::TooLarge => {
                ngx_log_error!(
                    NGX_LOG_INFO,
                    (*ngx_cycle).log,
                    "rcache: memcached \"{}\" refused key \"{}\" as too large for it",
                    j.server,
                    j.key
                );
                StoreStatus::TooLarge
            }
            Outcome::Failed(why) => {
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

        let r = j.request;
        if !r.is_null() {
            variables::set_store(r, status);
            if let Some(state) = j.state.as_mut() {
                state.job = ptr::null_mut();
            }
            ngx_http_finalize_request(r, NGX_DONE as ngx_int_t);
        }

        let pool = j.pool;
        ptr::drop_in_place(job);
        ngx_destroy_pool(pool);
    }
}
