//! rcache's layer over an upstream's balancer, per request.
//!
//! `init_peer` runs the balancer's own init, then, for rcache requests only,
//! puts `get`/`free` of its own in front of the balancer's:
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

use core::ffi::c_void;
use core::ptr;

use ngx::ffi::*;
use ngx::ngx_log_error;

use crate::pool::addr_bytes;
use crate::target::{self, Target};
use crate::upstream::{self, Failure};

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
}

/// `peer.init` of every upstream rcache passes to.
pub unsafe extern "C" fn init_peer(
    r: *mut ngx_http_request_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: nginx calls peer.init with a live request that has an upstream,
    // and the upstream conf this wrapper was installed on.
    unsafe {
        let u = (*r).upstream;
        let ours = upstream::is_rcache(u);
        let target = if ours {
            crate::loc_conf(r).target
        } else {
            // The same upstream may also serve memcached_pass or proxy_pass.
            match target::find(crate::main_conf(r), us) {
                Some(t) => t,
                None => return NGX_ERROR as ngx_int_t,
            }
        };
        let Some(balancer_init) = (*target).original_init_peer else {
            return NGX_ERROR as ngx_int_t;
        };
        let rc = balancer_init(r, us);
        if rc != NGX_OK as ngx_int_t || !ours {
            return rc;
        }

        let pd = ngx_palloc((*r).pool, size_of::<PeerData>()) as *mut PeerData;
        if pd.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        let peer = &mut (*u).peer;
        ptr::write(
            pd,
            PeerData {
                request: r,
                target,
                keepalive: crate::loc_conf(r).keepalive(),
                balancer_get: peer.get,
                balancer_free: peer.free,
                balancer_data: peer.data,
                exhausted: false,
                fresh_only: false,
                failure: Failure::Error,
            },
        );
        peer.data = pd.cast();
        peer.get = Some(get_peer);
        peer.free = Some(free_peer);
        NGX_OK as ngx_int_t
    }
}

unsafe extern "C" fn get_peer(pc: *mut ngx_peer_connection_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: data is the PeerData installed by init_peer for this request.
    unsafe {
        let pd = &mut *(data as *mut PeerData);
        if pd.exhausted {
            upstream::give_up(pd.request, pd.failure);
            return NGX_ERROR as ngx_int_t;
        }
        let Some(balancer_get) = pd.balancer_get else {
            return NGX_ERROR as ngx_int_t;
        };
        let rc = balancer_get(pc, pd.balancer_data);
        if rc == NGX_BUSY as ngx_int_t {
            // The server is down: said once when it went down (by nginx's balancer or
            // rcache_hash), not again for every request while it is.
            ngx_log_error!(
                NGX_LOG_INFO,
                (*pc).log,
                "rcache: no live memcached server for this key in upstream \"{}\"",
                (*(*pd.target).uscf).host
            );
            upstream::give_up(pd.request, Failure::NoLiveServers);
            return NGX_ERROR as ngx_int_t;
        }
        if rc != NGX_OK as ngx_int_t {
            return rc;
        }
        let addr = addr_bytes((*pc).sockaddr, (*pc).socklen);
        if pd.fresh_only {
            return NGX_OK as ngx_int_t;
        }
        if let Some(c) = (*pd.target).idle.take(addr, (*pc).log) {
            (*pc).connection = c;
            (*pc).set_cached(1);
            return NGX_DONE as ngx_int_t;
        }
        NGX_OK as ngx_int_t
    }
}

unsafe extern "C" fn free_peer(
    pc: *mut ngx_peer_connection_t,
    data: *mut c_void,
    state: ngx_uint_t,
) {
    // SAFETY: data is the PeerData installed by init_peer for this request;
    // pc->connection, when set, is this request's memcached connection.
    unsafe {
        let pd = &mut *(data as *mut PeerData);
        let c = (*pc).connection;
        let failed = state & NGX_PEER_FAILED as ngx_uint_t != 0;
        let mut retry_fresh = false;

        if failed {
            let timed_out =
                !c.is_null() && ((*(*c).read).timedout() != 0 || (*(*c).write).timedout() != 0);
            pd.failure = if timed_out {
                Failure::Timeout
            } else {
                Failure::Error
            };
            // Once per request, and never after a timeout: a stalled server
            // must cost one timeout, not two.
            retry_fresh = (*pc).cached() != 0 && !timed_out && !pd.fresh_only;
            pd.fresh_only |= retry_fresh;
        } else if !c.is_null() && reusable(pd.request, c) {
            let addr = addr_bytes((*pc).sockaddr, (*pc).socklen);
            if (*pd.target).idle.put(c, addr, pd.keepalive) {
                (*pc).connection = ptr::null_mut();
            }
        }

        if let Some(balancer_free) = pd.balancer_free {
            // A stale pooled connection says nothing about the server: it must not
            // count against max_fails (NGX_PEER_NEXT: neither failed nor answered).
            let state = if retry_fresh {
                (state & !(NGX_PEER_FAILED as ngx_uint_t)) | NGX_PEER_NEXT as ngx_uint_t
            } else {
                state
            };
            balancer_free(pc, pd.balancer_data, state);
        }

        if failed && (*pc).tries == 0 {
            // Make nginx call get_peer once more: for the retry on a new
            // connection, or to move the request on to the fallback.
            (*pc).tries = 1;
            pd.exhausted = !retry_fresh;
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
