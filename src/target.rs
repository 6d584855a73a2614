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
use core::sync::atomic::AtomicI64;

use ngx::ffi::*;
use ngx::http::HttpModuleServerConf;

use crate::health::Rule;
use crate::health_zone::{ServerHealth, Table};
use crate::pool::{addr_bytes, IdlePool};
use crate::HttpRcacheModule;

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
    /// The health of each of the upstream's servers, in the order of its `server` lines
    /// (`health_zone.rs`; set when shared memory is ready).
    pub health: Vec<ServerHealth>,
    /// `rcache_metrics_zone` is set: count lookups, failures, connections, idle ones.
    pub counting: bool,
    /// See [`Target::has_one_server`] and [`Target::has_own_rule`]; set with `health`.
    one_server: bool,
    own_rule: bool,
}

impl Target {
    /// The `max_fails` / `fail_timeout` rcache applies to server `p` of this upstream: its
    /// own, or for `rcache_pass host:port` (which has no `server` line to set them: nginx
    /// leaves them 0) nginx's defaults, 1 and 10 s.
    pub fn rule(&self, p: &ngx_http_upstream_rr_peer_t) -> Rule {
        // SAFETY: the upstream lives as long as the configuration; implicit upstreams
        // (`rcache_pass host:port`) have no srv_conf.
        let implicit = unsafe { (*self.uscf).srv_conf.is_null() };
        if implicit && p.max_fails == 0 {
            return Rule {
                max_fails: IMPLICIT_MAX_FAILS,
                fail_timeout: IMPLICIT_FAIL_TIMEOUT,
            };
        }
        Rule {
            max_fails: p.max_fails,
            fail_timeout: p.fail_timeout,
        }
    }

    /// Whether rcache marks this upstream's servers down itself (`health.rs`): when it has
    /// one server (nginx's balancers never do), and with `rcache_hash` (whose balancer is
    /// rcache's). Other balancers over several servers keep nginx's own rule.
    pub fn has_own_rule(&self) -> bool {
        self.own_rule
    }

    /// Whether the upstream has exactly one server (no second one, no backup).
    pub fn has_one_server(&self) -> bool {
        self.one_server
    }

    /// What [`Target::has_one_server`] answers, from the upstream's peers (fixed once the
    /// configuration is).
    fn count_one_server(&self) -> bool {
        // SAFETY: every balancer rcache composes with keeps nginx's round-robin peers in
        // peer.data (in the upstream's zone, if it has one); their count is fixed.
        unsafe {
            let peers = (*self.uscf).peer.data as *const ngx_http_upstream_rr_peers_t;
            peers
                .as_ref()
                .is_some_and(|p| p.number == 1 && p.next.is_null())
        }
    }

    /// Whether the upstream balances with `rcache_hash`.
    fn uses_rcache_hash(&self) -> bool {
        // SAFETY: the upstream lives as long as the configuration; implicit upstreams
        // have no srv_conf.
        unsafe {
            !(*self.uscf).srv_conf.is_null()
                && HttpRcacheModule::server_conf(&*self.uscf).is_some_and(|h| h.is_used())
        }
    }

    /// The health of the server at `addr` (sockaddr bytes, as a balancer chose it).
    pub fn health_of(&self, addr: &[u8]) -> Option<&ServerHealth> {
        self.health.iter().find(|h| h.addr() == addr)
    }

    /// The idle-connection gauge the pool keeps for server `health` (NULL when nothing is
    /// counted).
    pub fn idle_gauge(&self, health: Option<&ServerHealth>) -> *const AtomicI64 {
        match health {
            Some(h) if self.counting => ptr::from_ref(&h.stats().idle),
            _ => ptr::null(),
        }
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
    /// Whether the servers' counters run (`rcache_metrics_zone`), for every target.
    pub counting: bool,
}

impl Targets {
    /// An empty list in `pool`.
    ///
    /// # Safety
    /// `pool` must be the configuration's pool.
    pub unsafe fn new(pool: *mut ngx_pool_t) -> Option<Targets> {
        // SAFETY: per the contract above.
        let list = unsafe { ngx_array_create(pool, 4, size_of::<*mut Target>()) };
        (!list.is_null()).then_some(Targets {
            list,
            counting: false,
        })
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
                    health: Vec::new(),
                    counting: false,
                    one_server: false,
                    own_rule: false,
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

/// `health_zone::OnReady` for a configuration's [`Targets`] (`data`): gives each server of
/// each upstream its health entry, in the order of the `server` lines.
///
/// # Safety
/// `data` must be the configuration's `Targets`, complete (after postconfiguration).
pub unsafe fn attach_health(data: *const c_void, table: &mut Table) -> bool {
    // SAFETY: per the contract above; each upstream's round-robin peers are built.
    unsafe {
        let targets = &*(data as *const Targets);
        for t in targets.iter() {
            let uscf = (*t).uscf;
            let Some(peers) = ((*uscf).peer.data as *const ngx_http_upstream_rr_peers_t).as_ref()
            else {
                continue;
            };
            let host = (*uscf).host.as_bytes();
            let mut slots = Vec::with_capacity(peers.number);
            let mut p = peers.peer;
            while let Some(peer) = p.as_ref() {
                let addr = addr_bytes(peer.sockaddr, peer.socklen);
                let name = peer.name.to_string();
                let Some(slot) = table.server(host, &name, addr, (*t).rule(peer)) else {
                    return false;
                };
                slots.push(slot);
                p = peer.next;
            }
            (*t).health = slots;
            (*t).counting = targets.counting;
            (*t).one_server = (*t).count_one_server();
            (*t).own_rule = (*t).one_server || (*t).uses_rcache_hash();
        }
    }
    true
}

/// The configuration's pool is going away: free what its [`Target`] holds.
unsafe extern "C" fn drop_target(data: *mut c_void) {
    // SAFETY: the Target for_upstream wrote into this cleanup's data, dropped once, here.
    unsafe { ptr::drop_in_place(data as *mut Target) };
}
