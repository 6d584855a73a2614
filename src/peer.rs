//! rcache's layer over an upstream's balancer, per request — as nginx's
//! keepalive module wraps a balancer.
//!
//! At postconfiguration [`wrap_balancers`] puts [`init_pooled_peer`] in front
//! of every rcache upstream's own per-request init (the upstream module has
//! run each balancer's `init_upstream` by then, so `peer.init` is final). For
//! rcache requests only, it then puts `get`/`free` of its own in front of the
//! balancer's:
//!
//! * `get` hands out an idle pooled connection to the server the balancer
//!   chose, if there is one (no connect, no handshake);
//! * `free` parks a connection that finished cleanly, and notes failures;
//! * when the balancer has no server left to try (all tried, or none alive),
//!   `get` is where the request leaves memcached for the fallback. nginx's
//!   upstream module calls `get` again after every failure (rcache's
//!   `next_upstream` lets it), so this one place sees connect errors,
//!   timeouts and resets alike — and memcached trouble never turns into the
//!   upstream module's own 502/504 page.
//!
//! So every rcache request gets pooled connections and rcache's failure
//! handling whatever balancer the upstream uses — also for `rcache_pass
//! host:port`, which has no `upstream {}` block where a `keepalive` line
//! could go.

use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::Ordering;

use ngx::core::Status;
use ngx::ffi::*;
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf};
use ngx::ngx_log_error;

use crate::health_zone::{FailureKind, ServerHealth};
use crate::lookup;
use crate::outcome::Failure;
use crate::pool::addr_bytes;
use crate::target::{Target, Targets};
use crate::upstream;
use crate::variables;
use crate::HttpRcacheModule;

/// Postconfiguration: wrap the per-request peer init of every rcache upstream.
pub fn wrap_balancers(targets: &Targets) {
    for t in targets.iter() {
        // SAFETY: targets and their upstreams live as long as the configuration.
        unsafe {
            let uscf = (*t).uscf;
            (*t).balancer_init_peer = (*uscf).peer.init;
            (*uscf).peer.init = Some(init_pooled_peer);
        }
    }
}

/// Per-request state of the wrapper.
#[derive(Clone, Copy)]
struct PeerData {
    request: *mut ngx_http_request_t,
    target: *mut Target,
    keepalive: usize,
    balancer_get: ngx_event_get_peer_pt,
    balancer_free: ngx_event_free_peer_pt,
    balancer_data: *mut c_void,
    /// The balancer has no server left; the next `get` gives up.
    exhausted: bool,
    /// A pooled connection failed: memcached may have restarted, leaving
    /// every pooled connection to it stale. Try once more, on a new one.
    fresh_only: bool,
    /// What the last failed attempt ran into.
    failure: Failure,
    /// When this attempt started: `ngx_current_msec` (for `$rcache_lookup_time`) and, when
    /// `rcache_metrics` counts, the precise clock (for the lookup-time histogram).
    started_msec: ngx_msec_t,
    /// Microseconds on the monotonic clock, 0 when not timing.
    started_us: u64,
    /// The health of the server this attempt went to (`get` finds it, `free` records).
    health: *const ServerHealth,
}

/// `peer.init` of every upstream rcache passes to.
unsafe extern "C" fn init_pooled_peer(
    r: *mut ngx_http_request_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: nginx calls peer.init with a live request that has an upstream,
    // and the upstream conf this wrapper was installed on.
    let (req, u) = unsafe { (&*r, &mut *(*r).upstream) };
    let ours = lookup::is_rcache(u);
    let (target, keepalive) = if ours {
        match HttpRcacheModule::location_conf(req) {
            Some(lcf) => (lcf.target, lcf.keepalive()),
            None => return Status::NGX_ERROR.into(),
        }
    } else {
        // The same upstream may also serve memcached_pass or proxy_pass.
        match HttpRcacheModule::main_conf(req).and_then(|mcf| mcf.targets.find(us)) {
            Some(t) => (t, 0),
            None => return Status::NGX_ERROR.into(),
        }
    };
    // SAFETY: targets live as long as the configuration.
    let Some(balancer_init) = (unsafe { (*target).balancer_init_peer }) else {
        return Status::NGX_ERROR.into();
    };
    // SAFETY: the balancer's own init, with the arguments nginx gave us.
    let rc = unsafe { balancer_init(r, us) };
    if !Status(rc).is_ok() || !ours {
        return rc;
    }

    // SAFETY: memory from the request's pool, fully written.
    let pd = unsafe { ngx_palloc(req.pool, size_of::<PeerData>()) as *mut PeerData };
    if pd.is_null() {
        return Status::NGX_ERROR.into();
    }
    let peer = &mut u.peer;
    // SAFETY: pd is fresh memory for a PeerData.
    unsafe {
        ptr::write(
            pd,
            PeerData {
                request: r,
                target,
                keepalive,
                balancer_get: peer.get,
                balancer_free: peer.free,
                balancer_data: peer.data,
                exhausted: false,
                fresh_only: false,
                failure: Failure::Error,
                started_msec: 0,
                started_us: 0,
                health: ptr::null(),
            },
        )
    };
    peer.data = pd.cast();
    peer.get = Some(get_pooled_peer);
    peer.free = Some(free_pooled_peer);
    Status::NGX_OK.into()
}

unsafe extern "C" fn get_pooled_peer(
    pc: *mut ngx_peer_connection_t,
    data: *mut c_void,
) -> ngx_int_t {
    // SAFETY: data is the PeerData init_pooled_peer installed for this
    // request; pc is its peer connection.
    let (pd, pc) = unsafe { (&mut *(data as *mut PeerData), &mut *pc) };
    if pd.exhausted {
        debug!(
            pc.log,
            "rcache: no memcached server left to try: {:?}", pd.failure
        );
        // SAFETY: inside the upstream's connect path; we return NGX_ERROR.
        unsafe { upstream::give_up(pd.request, pd.failure) };
        return Status::NGX_ERROR.into();
    }
    // SAFETY: targets live as long as the configuration.
    let target = unsafe { &*pd.target };
    if target.has_one_server() {
        // nginx never marks an upstream's only server down: rcache does (`health.rs`).
        let admitted = target.health.first().is_none_or(|h| h.admit(ngx_time()));
        if !admitted {
            debug!(
                pc.log,
                "rcache: the upstream's only memcached server is down: to the fallback"
            );
            // SAFETY: inside the upstream's connect path; we return NGX_ERROR.
            unsafe { upstream::give_up(pd.request, Failure::NoLiveServers) };
            return Status::NGX_ERROR.into();
        }
    }
    let Some(balancer_get) = pd.balancer_get else {
        return Status::NGX_ERROR.into();
    };
    // SAFETY: the balancer's own get, with its own data.
    let rc = unsafe { balancer_get(pc, pd.balancer_data) };
    if rc == Status::NGX_BUSY.0 {
        // The server is down: said once when it went down (by nginx's balancer or
        // rcache_hash), not again for every request while it is.
        // SAFETY: targets and their upstreams live as long as the configuration.
        let host = unsafe { &(*(*pd.target).uscf).host };
        ngx_log_error!(
            NGX_LOG_INFO,
            pc.log,
            "rcache: no live memcached server for this key in upstream \"{}\"",
            host
        );
        // SAFETY: as above.
        unsafe { upstream::give_up(pd.request, Failure::NoLiveServers) };
        return Status::NGX_ERROR.into();
    }
    if rc != Status::NGX_OK.0 {
        return rc;
    }
    // SAFETY: the balancer set the server's address.
    let name = unsafe { &*pc.name };
    // SAFETY: as above.
    let addr = unsafe { addr_bytes(pc.sockaddr, pc.socklen) };
    // SAFETY: nginx's cached time, read in the worker that updates it.
    pd.started_msec = unsafe { ngx_current_msec };
    let health = target.health_of(addr);
    pd.health = health.map_or(ptr::null(), ptr::from_ref);
    pd.started_us = if target.counting && health.is_some() {
        monotonic_us()
    } else {
        0
    };
    if target.has_own_rule() && health.is_some_and(|h| h.marks_down()) {
        // A failure is said once per episode, when it marks the server down
        // (`health_zone.rs`), not in nginx's own line for each request that met it.
        pc.set_log_error(ngx_connection_log_error_e_NGX_ERROR_INFO);
    }
    let count_connect = || {
        if let (true, Some(h)) = (target.counting, health) {
            h.stats().connections_opened.fetch_add(1, Ordering::Relaxed);
        }
    };
    if pd.fresh_only {
        debug!(
            pc.log,
            "rcache: memcached {}: retry on a new connection", name
        );
        count_connect();
        return Status::NGX_OK.into();
    }
    // SAFETY: the address the balancer chose; the pool runs in this worker.
    let idle = unsafe { (*pd.target).idle.take(addr, pc.log) };
    match idle {
        Some(c) => {
            debug!(
                pc.log,
                "rcache: memcached {}: using pooled connection {:p}", name, c
            );
            pc.connection = c;
            pc.set_cached(1);
            Status::NGX_DONE.into()
        }
        None => {
            debug!(
                pc.log,
                "rcache: memcached {}: no idle connection, connecting", name
            );
            count_connect();
            Status::NGX_OK.into()
        }
    }
}

unsafe extern "C" fn free_pooled_peer(
    pc: *mut ngx_peer_connection_t,
    data: *mut c_void,
    state: ngx_uint_t,
) {
    // SAFETY: data is the PeerData init_pooled_peer installed for this
    // request; pc->connection, when set, is its memcached connection.
    let (pd, pc) = unsafe { (&mut *(data as *mut PeerData), &mut *pc) };
    let c = pc.connection;
    let failed = state & NGX_PEER_FAILED as ngx_uint_t != 0;
    let mut retry_fresh = false;
    // A reply that was no valid answer ended the exchange as if it went well (rcache
    // finished the upstream itself): it is a failure of the server all the same.
    // SAFETY: the request this peer data was made for, still live.
    let malformed =
        !failed && lookup::Lookup::of(unsafe { &*pd.request }).is_some_and(|l| l.malformed.get());
    if malformed {
        pd.failure = Failure::Protocol;
    }
    let state = if malformed {
        state | NGX_PEER_FAILED as ngx_uint_t
    } else {
        state
    };

    if failed {
        // SAFETY: c is NULL or this request's open connection.
        let timed_out = unsafe { c.as_ref() }.is_some_and(|c| {
            // SAFETY: an open connection has its events.
            unsafe { (*c.read).timedout() != 0 || (*c.write).timedout() != 0 }
        });
        pd.failure = if timed_out {
            Failure::Timeout
        } else {
            Failure::Error
        };
        // Once per request, and never after a timeout: a stalled server
        // must cost one timeout, not two.
        retry_fresh = pc.cached() != 0 && !timed_out && !pd.fresh_only;
        pd.fresh_only |= retry_fresh;
        debug!(
            pc.log,
            "rcache: memcached attempt failed ({:?}){}",
            pd.failure,
            if retry_fresh {
                ", the connection was pooled: retrying"
            } else {
                ""
            }
        );
    } else if !c.is_null() {
        // SAFETY: the request's upstream uses c.
        let reusable = unsafe { reusable(pd.request, c) };
        // SAFETY: c is open and finished; the pool runs in this worker.
        // SAFETY: targets live as long as the configuration; this worker's only.
        let target = unsafe { &mut *pd.target };
        // SAFETY: the address the balancer chose.
        let addr = unsafe { addr_bytes(pc.sockaddr, pc.socklen) };
        // SAFETY: NULL or a health entry of the target, set by get for this attempt.
        let gauge = target.idle_gauge(unsafe { pd.health.as_ref() });
        // SAFETY: c is open and finished; the pool runs in this worker.
        let parked = reusable && unsafe { target.idle.put(c, addr, pd.keepalive, gauge) };
        if parked {
            pc.connection = ptr::null_mut();
        }
        debug!(
            pc.log,
            "rcache: memcached connection {:p} {}",
            c,
            if parked {
                "parked in the pool"
            } else {
                "not reusable: closed"
            }
        );
    }

    if let Some(balancer_free) = pd.balancer_free {
        // A stale pooled connection says nothing about the server: it must not
        // count against max_fails (NGX_PEER_NEXT: neither failed nor answered).
        let state = if retry_fresh {
            (state & !(NGX_PEER_FAILED as ngx_uint_t)) | NGX_PEER_NEXT as ngx_uint_t
        } else {
            state
        };
        // SAFETY: the balancer's own free, with its own data.
        unsafe { balancer_free(pc, pd.balancer_data, state) };
    }

    // SAFETY: targets live as long as the configuration.
    let target = unsafe { &*pd.target };
    // SAFETY: the request this peer data was made for, still live.
    let r = unsafe { &mut *pd.request };
    // SAFETY: nginx's cached time, read in the worker that updates it.
    let took_ms = unsafe { ngx_current_msec }.wrapping_sub(pd.started_msec);
    if let Some(lookup) = lookup::Lookup::of(r) {
        lookup.time_ms.set(lookup.time_ms.get() + took_ms);
        variables::set_lookup_time(r, lookup.time_ms.get());
    }
    // SAFETY: NULL or a health entry of the target, set by get for this attempt.
    if let Some(health) = unsafe { pd.health.as_ref() } {
        // A stale pooled connection, retried on a new one, says nothing about the
        // server.
        let failed = (failed && !retry_fresh) || malformed;
        if pd.started_us != 0 && !retry_fresh {
            let us = monotonic_us().saturating_sub(pd.started_us);
            let kind = failed.then(|| failure_kind(r, pd.failure));
            health.stats().lookup(us, kind);
        }
        if target.has_own_rule() {
            health.record_and_say(failed, pd.failure, pc.log);
        }
    }

    if failed && pc.tries == 0 {
        // Make nginx call get_pooled_peer once more: for the retry on a new
        // connection, or to move the request on to the fallback.
        pc.tries = 1;
        pd.exhausted = !retry_fresh;
    }
}

/// The monotonic clock in microseconds (for the lookup-time histogram: nginx's own clock
/// has milliseconds). One vDSO call, cheaper than `std::time::Instant` and its arithmetic.
fn monotonic_us() -> u64 {
    let mut ts = timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { clock_gettime(CLOCK_MONOTONIC as _, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000)
        .wrapping_add(ts.tv_nsec as u64 / 1000)
        .max(1)
}

/// What kind of failure ended an attempt of `r`, for the counters.
fn failure_kind(r: &ngx_http_request_t, failure: Failure) -> FailureKind {
    match failure {
        Failure::Timeout => FailureKind::Timeout,
        Failure::Protocol => FailureKind::Malformed,
        _ => {
            // SAFETY: an rcache request's upstream, with the state of this attempt.
            let connected = unsafe {
                r.upstream
                    .as_ref()
                    .and_then(|u| u.state.as_ref())
                    .is_some_and(|st| st.connect_time != ngx_msec_t::MAX)
            };
            if connected {
                FailureKind::Reset
            } else {
                FailureKind::Refused
            }
        }
    }
}

/// Whether `c` may carry another request: the last reply was consumed
/// completely (`u->keepalive`, set by rcache's reply parser only then), the
/// whole request was sent, and no error or timeout happened on it.
///
/// # Safety
/// `r` must have an upstream whose connection is `c`.
unsafe fn reusable(r: *mut ngx_http_request_t, c: *mut ngx_connection_t) -> bool {
    // SAFETY: per the contract above.
    unsafe {
        let u = &*(*r).upstream;
        let (rd, wr) = (&*(*c).read, &*(*c).write);
        u.keepalive() != 0
            && u.request_body_sent() != 0
            && rd.eof() == 0
            && rd.error() == 0
            && rd.timedout() == 0
            && wr.error() == 0
            && wr.timedout() == 0
            && ngx_terminate == 0
            && ngx_exiting == 0
    }
}
