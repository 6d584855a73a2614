//! The upstreams rcache passes to.
//!
//! `rcache_pass` accepts an address or an `upstream {}` name; either way nginx
//! gives us an `ngx_http_upstream_srv_conf_t` whose balancer (round robin,
//! `hash`, `rcache_hash`, ...) the upstream module sets up. rcache keeps one
//! [`Target`] per such upstream: its idle connections (`pool.rs`) and the
//! balancer's own per-request init, which `peer.rs` wraps.

use core::cell::Cell;
use core::ffi::c_void;
use core::ptr;

use ngx::ffi::*;

use crate::health::{Episode, PeerState};
use crate::pool::IdlePool;

/// One upstream used by `rcache_pass`; shared by all locations passing to it.
pub struct Target {
    pub uscf: *mut ngx_http_upstream_srv_conf_t,
    /// The balancer's own per-request init, called first by rcache's.
    pub balancer_init_peer: ngx_http_upstream_init_peer_pt,
    /// Idle connections of this worker, per server.
    pub idle: IdlePool,
    /// This worker saw the upstream answer `ERROR` to a meta command: it does not
    /// speak the meta protocol (older memcached, some proxies), so lookups use the
    /// classic commands until the next reload.
    pub classic_only: Cell<bool>,
    /// This worker's view of the down episode of the upstream's server, when it has only
    /// one (`health.rs`).
    pub episode: Cell<Episode>,
}

impl Target {
    /// `state` of the upstream's lone server, with the `max_fails` / `fail_timeout` rcache
    /// applies: the server's own, or for `rcache_pass host:port` (which has no `server`
    /// line to set them: nginx leaves them 0) nginx's defaults, 1 and 10 s.
    pub fn rule(&self, mut state: PeerState) -> PeerState {
        // SAFETY: the upstream lives as long as the configuration; implicit upstreams
        // (`rcache_pass host:port`) have no srv_conf.
        let implicit = unsafe { (*self.uscf).srv_conf.is_null() };
        if implicit && state.max_fails == 0 {
            state.max_fails = IMPLICIT_MAX_FAILS;
            state.fail_timeout = IMPLICIT_FAIL_TIMEOUT;
        }
        state
    }
}

/// `rcache_pass host:port`: a server is down after this many failures ...
pub const IMPLICIT_MAX_FAILS: ngx_uint_t = 1;
/// ... for this many seconds.
pub const IMPLICIT_FAIL_TIMEOUT: time_t = 10;

/// Every upstream of the configuration that `rcache_pass` uses.
#[repr(C)]
pub struct Targets {
    /// `*mut Target`s, in the configuration's pool.
    list: *mut ngx_array_t,
}

impl Targets {
    /// An empty list in `pool`.
    ///
    /// # Safety
    /// `pool` must be the configuration's pool.
    pub unsafe fn new(pool: *mut ngx_pool_t) -> Option<Targets> {
        // SAFETY: per the contract above.
        let list = unsafe { ngx_array_create(pool, 4, size_of::<*mut Target>()) };
        (!list.is_null()).then_some(Targets { list })
    }

    /// The targets, in the order `rcache_pass` named them first.
    pub fn iter(&self) -> impl Iterator<Item = *mut Target> + '_ {
        // SAFETY: list is an ngx_array_t of *mut Target built at config time.
        unsafe { (*self.list).as_slice::<*mut Target>() }
            .iter()
            .copied()
    }

    /// The target of `uscf`, if `rcache_pass` uses it.
    pub fn find(&self, uscf: *const ngx_http_upstream_srv_conf_t) -> Option<*mut Target> {
        // SAFETY: every target is live for the configuration's lifetime.
        self.iter().find(|&t| ptr::eq(unsafe { (*t).uscf }, uscf))
    }

    /// The target of `uscf`, created on first use.
    ///
    /// # Safety
    /// `pool` must be the configuration's pool.
    pub unsafe fn for_upstream(
        &mut self,
        pool: *mut ngx_pool_t,
        uscf: *mut ngx_http_upstream_srv_conf_t,
    ) -> Option<*mut Target> {
        if let Some(t) = self.find(uscf) {
            return Some(t);
        }
        // SAFETY: allocated from the configuration pool and written before use; dropped
        // by the pool's cleanup, when the configuration goes away.
        unsafe {
            let cln = ngx_pool_cleanup_add(pool, size_of::<Target>());
            if cln.is_null() {
                return None;
            }
            let t = (*cln).data as *mut Target;
            // Target holds Vecs (a worker's idle connections, per server): dropped with
            // the configuration's pool, at reload in the master and at a worker's exit.
            (*cln).handler = Some(drop_target);
            ptr::write(
                t,
                Target {
                    uscf,
                    balancer_init_peer: None,
                    idle: IdlePool::new(),
                    classic_only: Cell::new(false),
                    episode: Cell::new(Episode::default()),
                },
            );
            let slot = ngx_array_push(self.list) as *mut *mut Target;
            if slot.is_null() {
                return None;
            }
            *slot = t;
            Some(t)
        }
    }
}

/// The configuration's pool is going away: free what its [`Target`] holds.
unsafe extern "C" fn drop_target(data: *mut c_void) {
    // SAFETY: the Target for_upstream wrote into this cleanup's data, dropped once, here.
    unsafe { ptr::drop_in_place(data as *mut Target) };
}
