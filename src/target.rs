//! The upstreams rcache passes to, and how rcache hooks into them.
//!
//! `rcache_pass` accepts an address or an `upstream {}` name; either way nginx
//! gives us an `ngx_http_upstream_srv_conf_t` whose balancer (round robin,
//! `hash`, ...) is set up by the upstream module. After that (in
//! postconfiguration) rcache wraps the upstream's per-request `peer.init`, the
//! way nginx's keepalive module wraps a balancer, so that every rcache request
//! gets pooled connections and rcache's failure handling whatever balancer the
//! upstream uses — also for `rcache_pass host:port`, which has no `upstream {}`
//! block where a `keepalive` line could go.

use core::ptr;

use ngx::ffi::*;

use crate::conf::MainConf;
use crate::pool::IdlePool;

/// One upstream used by `rcache_pass`; shared by all locations passing to it.
pub struct Target {
    pub uscf: *mut ngx_http_upstream_srv_conf_t,
    /// The balancer's own per-request init, called first by rcache's.
    pub original_init_peer: ngx_http_upstream_init_peer_pt,
    /// Idle connections of this worker, per server.
    pub idle: IdlePool,
}

impl Target {
    /// The target for `uscf`, created on first use.
    ///
    /// # Safety
    /// `cf` must be the configuration being parsed inside `http {}`.
    pub unsafe fn for_upstream(
        cf: *mut ngx_conf_t,
        uscf: *mut ngx_http_upstream_srv_conf_t,
    ) -> Option<*mut Target> {
        // SAFETY: while parsing http{}, cf->ctx is the http conf ctx and our
        // main conf was created by create_main_conf.
        unsafe {
            let mcf = main_conf_of(cf)?;
            if let Some(t) = find(mcf, uscf) {
                return Some(t);
            }
            let t = ngx_palloc((*cf).pool, size_of::<Target>()) as *mut Target;
            if t.is_null() {
                return None;
            }
            // Target holds Vecs: it is written in place and never dropped. In
            // the master no Vec ever allocates (no requests run there), so
            // discarding the pool on reload leaks nothing.
            ptr::write(
                t,
                Target {
                    uscf,
                    original_init_peer: None,
                    idle: IdlePool::new(),
                },
            );
            let slot = ngx_array_push((*mcf).targets) as *mut *mut Target;
            if slot.is_null() {
                return None;
            }
            *slot = t;
            Some(t)
        }
    }
}

/// The target registered for `uscf`, if any.
///
/// # Safety
/// `mcf` must be this module's main conf.
pub unsafe fn find(
    mcf: *const MainConf,
    uscf: *const ngx_http_upstream_srv_conf_t,
) -> Option<*mut Target> {
    // SAFETY: targets is an ngx_array_t of *mut Target built at config time.
    unsafe {
        (*(*mcf).targets)
            .as_slice::<*mut Target>()
            .iter()
            .copied()
            .find(|&t| ptr::eq((*t).uscf, uscf))
    }
}

/// Postconfiguration: wrap the per-request peer init of every rcache
/// upstream. The upstream module has run each balancer's `init_upstream` by
/// now (in its init_main_conf), so `peer.init` is final.
///
/// # Safety
/// `cf` must be the configuration being finished.
pub unsafe fn wrap_peer_init(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: as for Target::for_upstream.
    unsafe {
        let Some(mcf) = main_conf_of(cf) else {
            return NGX_ERROR as ngx_int_t;
        };
        for &t in (*(*mcf).targets).as_slice::<*mut Target>() {
            let uscf = (*t).uscf;
            (*t).original_init_peer = (*uscf).peer.init;
            (*uscf).peer.init = Some(crate::peer::init_peer);
        }
    }
    NGX_OK as ngx_int_t
}

/// # Safety
/// `cf` must be inside `http {}`.
unsafe fn main_conf_of(cf: *mut ngx_conf_t) -> Option<*mut MainConf> {
    // SAFETY: cf->ctx is an ngx_http_conf_ctx_t inside http{}.
    unsafe {
        let ctx = (*cf).ctx as *mut ngx_http_conf_ctx_t;
        let mcf = *(*ctx).main_conf.add(crate::module().ctx_index);
        (!mcf.is_null()).then_some(mcf.cast())
    }
}
