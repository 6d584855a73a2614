//! The `rcache_hash` balancer: nginx's round-robin peers (with their `weight`, `down`,
//! `max_fails`, `fail_timeout`, `max_conns`), but the server is the one the key belongs
//! to, never another.
//!
//! A key has one home. If that server is down (marked `down`, or failed `max_fails` times
//! within `fail_timeout`), the request goes to the fallback at once, without a connect:
//! looking the key up elsewhere could serve a copy written while the home server was away
//! and never invalidated since (clients that remap dead servers write there; their
//! deletes later go home), and a stale page is worse than a render by the app.
//!
//! Requests that are not rcache lookups (`memcached_pass` or `proxy_pass` to the same
//! upstream) are balanced round robin.

use core::ffi::{c_char, c_void};
use core::ptr;

use ngx::core::{Status, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::*;
use ngx::http::{HttpModuleLocationConf, HttpModuleServerConf};
use ngx::ngx_log_error;

use super::peers::{nth_peer, with_peer, with_peer_mut, PeerLock, PeersLock};
use super::ring::{Algorithm, Ring};
use super::servers::ServerName;
use crate::conf;
use crate::lookup::{self, Lookup};
use crate::target::Target;
use crate::HttpRcacheModule;

/// This module's configuration of an `upstream {}` block.
#[repr(C)]
pub struct HashConf {
    /// `rcache_hash`; None: the upstream's own balancer.
    algorithm: Option<Algorithm>,
    ring: *const Ring,
}

impl HashConf {
    /// Whether the upstream balances with `rcache_hash`.
    pub fn is_used(&self) -> bool {
        self.algorithm.is_some()
    }
}

/// # Safety
/// `cf` must be valid during configuration.
pub unsafe extern "C" fn create_srv_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: allocated from the configuration pool and fully written.
    unsafe {
        let conf = ngx_palloc((*cf).pool, size_of::<HashConf>()) as *mut HashConf;
        if conf.is_null() {
            return ptr::null_mut();
        }
        ptr::write(
            conf,
            HashConf {
                algorithm: None,
                ring: ptr::null(),
            },
        );
        conf.cast()
    }
}

/// `rcache_hash rendezvous | ketama [weighted] | modula;` in `upstream {}`.
///
/// # Safety
/// Called by nginx while parsing an `upstream {}` block; `conf` is our srv conf.
pub unsafe extern "C" fn set_hash(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: per the contract above.
    let (cf, hcf) = unsafe { (&mut *cf, &mut *(conf as *mut HashConf)) };
    if hcf.algorithm.is_some() {
        return conf::is_duplicate();
    }
    let words: Vec<&[u8]> = conf::args(cf)[1..].iter().map(|a| a.as_bytes()).collect();
    let Some(algorithm) = Algorithm::parse(&words) else {
        let words: Vec<_> = words.iter().map(|w| String::from_utf8_lossy(w)).collect();
        return conf::conf_error(
            cf,
            format_args!(
                "invalid value \"{}\" in the \"rcache_hash\" directive, it must be \
                 \"rendezvous\", \"ketama\", \"ketama weighted\" or \"modula\"",
                words.join(" ")
            ),
        );
    };
    hcf.algorithm = Some(algorithm);

    let Some(uscf) = conf::upstream_block_mut(cf) else {
        return NGX_CONF_ERROR;
    };
    if uscf.peer.init_upstream.is_some() {
        let cf: *mut ngx_conf_t = cf;
        ngx::ngx_conf_log_error!(NGX_LOG_WARN, cf, "load balancing method redefined");
    }
    uscf.peer.init_upstream = Some(init_hash_upstream);
    // No `backup`: a key has one home server.
    uscf.flags = (NGX_HTTP_UPSTREAM_CREATE
        | NGX_HTTP_UPSTREAM_WEIGHT
        | NGX_HTTP_UPSTREAM_MAX_CONNS
        | NGX_HTTP_UPSTREAM_MAX_FAILS
        | NGX_HTTP_UPSTREAM_FAIL_TIMEOUT
        | NGX_HTTP_UPSTREAM_DOWN) as ngx_uint_t;
    NGX_CONF_OK
}

/// Builds the round-robin peers, then the ring over their server names.
unsafe extern "C" fn init_hash_upstream(
    cf: *mut ngx_conf_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: nginx calls this with the upstream's conf while finishing http{}.
    if !conf::ok(unsafe { ngx_http_upstream_init_round_robin(cf, us) }) {
        return Status::NGX_ERROR.into();
    }
    // SAFETY: as above.
    let (cf, us) = unsafe { (&mut *cf, &mut *us) };
    let Some(hcf) = HttpRcacheModule::server_conf_mut(us) else {
        return Status::NGX_ERROR.into();
    };
    let Some(algorithm) = hcf.algorithm else {
        return Status::NGX_ERROR.into();
    };
    let servers = match hashed_servers(us) {
        Ok(servers) => servers,
        Err(what) => {
            // SAFETY: the NUL-terminated name of the file the upstream block is in.
            let file = unsafe { core::ffi::CStr::from_ptr(us.file_name.cast()) };
            ngx_log_error!(
                NGX_LOG_EMERG,
                cf.log,
                "rcache_hash: {} in upstream \"{}\" in {}:{}",
                what,
                us.host,
                String::from_utf8_lossy(file.to_bytes()),
                us.line
            );
            return Status::NGX_ERROR.into();
        }
    };

    let ring = Box::into_raw(Box::new(Ring::new(algorithm, &servers)));
    // SAFETY: a cleanup entry of the configuration's pool.
    let Some(cln) = (unsafe { ngx_pool_cleanup_add(cf.pool, 0).as_mut() }) else {
        // SAFETY: the box just leaked, not shared.
        drop(unsafe { Box::from_raw(ring) });
        return Status::NGX_ERROR.into();
    };
    cln.handler = Some(drop_ring);
    cln.data = ring.cast();
    hcf.ring = ring;
    us.peer.init = Some(init_hash_peer);
    Status::NGX_OK.into()
}

/// The upstream's servers, names and weights in the order of the `server` lines, as the
/// client libraries number them; or why `rcache_hash` cannot place keys on them.
fn hashed_servers(us: &ngx_http_upstream_srv_conf_t) -> Result<Vec<(ServerName, u32)>, String> {
    // SAFETY: init_round_robin has built the peers of this upstream.
    let peers = unsafe { &*(us.peer.data as *const ngx_http_upstream_rr_peers_t) };
    if !peers.next.is_null() {
        return Err("backup servers are not supported".into());
    }

    // One address per `server` line, each line once: a key has one home.
    // SAFETY: the upstream's `server` lines, an array of ngx_http_upstream_server_t.
    let lines = unsafe { (*us.servers).as_slice::<ngx_http_upstream_server_t>() };
    for (i, line) in lines.iter().enumerate() {
        let text = String::from_utf8_lossy(line.name.as_bytes());
        if line.naddrs > 1 {
            return Err(format!(
                "server \"{text}\" resolves to {} addresses, a key needs one server",
                line.naddrs
            ));
        }
        if lines[..i]
            .iter()
            .any(|l| l.name.as_bytes() == line.name.as_bytes())
        {
            return Err(format!("server \"{text}\" is listed twice"));
        }
    }

    let mut servers = Vec::new();
    let mut peer = peers.peer;
    // SAFETY: a NULL-terminated list of the upstream's peers.
    while let Some(p) = unsafe { peer.as_ref() } {
        let text = p.server.as_bytes();
        match ServerName::parse(text) {
            Ok(name) => servers.push((name, p.weight as u32)),
            Err(e) => {
                return Err(format!(
                    "server \"{}\" {}",
                    String::from_utf8_lossy(text),
                    e
                ))
            }
        }
        peer = p.next;
    }
    Ok(servers)
}

/// Frees a ring with the configuration that built it.
unsafe extern "C" fn drop_ring(data: *mut c_void) {
    // SAFETY: data is the Box<Ring> leaked by init_upstream, freed once, here.
    unsafe { drop(Box::from_raw(data as *mut Ring)) }
}

/// Per-request state: the round-robin state first, as nginx's round-robin functions
/// expect to find it at `peer.data`.
#[repr(C)]
struct HashPeerData {
    rrp: ngx_http_upstream_rr_peer_data_t,
    request: *mut ngx_http_request_t,
    ring: *const Ring,
    /// Where the servers' health is (`health_zone.rs`).
    target: *const Target,
}

unsafe extern "C" fn init_hash_peer(
    r: *mut ngx_http_request_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: nginx calls peer.init with a live request and this upstream's conf.
    unsafe {
        let hp = ngx_pcalloc((*r).pool, size_of::<HashPeerData>()) as *mut HashPeerData;
        if hp.is_null() {
            return Status::NGX_ERROR.into();
        }
        let u = &mut *(*r).upstream;
        u.peer.data = ptr::addr_of_mut!((*hp).rrp).cast();
        if !conf::ok(ngx_http_upstream_init_round_robin_peer(r, us)) {
            return Status::NGX_ERROR.into();
        }
        if !lookup::is_rcache(u) {
            return Status::NGX_OK.into();
        }
        let Some(hcf) = HttpRcacheModule::server_conf(&*us) else {
            return Status::NGX_ERROR.into();
        };
        let Some(lcf) = HttpRcacheModule::location_conf(&*r) else {
            return Status::NGX_ERROR.into();
        };
        (*hp).request = r;
        (*hp).ring = hcf.ring;
        (*hp).target = lcf.target;
        u.peer.get = Some(get_hash_peer);
        u.peer.free = Some(free_hash_peer);
        // One server holds the key: one try (rcache's peer layer adds the retry on a
        // new connection after a stale pooled one).
        u.peer.tries = 1;
    }
    Status::NGX_OK.into()
}

unsafe extern "C" fn get_hash_peer(pc: *mut ngx_peer_connection_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: data is this request's HashPeerData, pc its peer connection.
    let (hp, pc) = unsafe { (&mut *(data as *mut HashPeerData), &mut *pc) };
    // SAFETY: the request this peer data was made for, still live.
    let Some(key) = Lookup::of(unsafe { &*hp.request }).map(|l| l.key()) else {
        return Status::NGX_ERROR.into();
    };
    // SAFETY: the ring lives with the configuration.
    let Some(index) = (unsafe { (*hp.ring).pick(key) }) else {
        return Status::NGX_BUSY.into();
    };
    let peers = hp.rrp.peers;
    // SAFETY: the upstream's peers, locked as nginx's round-robin code locks them.
    let _peers_lock = unsafe { PeersLock::read(peers) };
    // SAFETY: locked for reading above.
    let Some(peer) = (unsafe { nth_peer(peers, index) }) else {
        return Status::NGX_BUSY.into();
    };
    // SAFETY: a peer of these peers, locked for writing while it is changed.
    let (_peer_lock, p) = unsafe { (PeerLock::new(peers, peer), &mut *peer) };
    if p.down != 0 || (p.max_conns != 0 && p.conns >= p.max_conns) {
        debug!(
            pc.log,
            "rcache_hash: key's server {} is marked down or busy", p.name
        );
        return Status::NGX_BUSY.into();
    }
    // rcache's rule (`health.rs`); a server alone in its upstream has been admitted by
    // rcache's peer layer already.
    // SAFETY: the peers, locked for reading above.
    let single = unsafe { (*peers).number == 1 };
    // SAFETY: the target lives as long as the configuration.
    let target = unsafe { &*hp.target };
    let health = target.health.get(index);
    if !single && !health.is_none_or(|h| h.admit(ngx_time())) {
        debug!(pc.log, "rcache_hash: key's server {} is down", p.name);
        return Status::NGX_BUSY.into();
    }
    debug!(
        pc.log,
        "rcache_hash: key's server is {} (#{})", p.name, index
    );

    hp.rrp.current = peer;
    #[cfg(ngx_rr_peer_refs)]
    {
        p.refs += 1;
    }
    pc.sockaddr = p.sockaddr;
    pc.socklen = p.socklen;
    pc.name = &mut p.name;
    pc.set_cached(0);
    pc.connection = ptr::null_mut();
    p.conns += 1;
    Status::NGX_OK.into()
}

unsafe extern "C" fn free_hash_peer(
    pc: *mut ngx_peer_connection_t,
    data: *mut c_void,
    state: ngx_uint_t,
) {
    // SAFETY: data is this request's HashPeerData.
    let hp = unsafe { &mut *(data as *mut HashPeerData) };
    // rrp.current is the peer get_hash_peer chose (free only follows a successful get).
    let peer = hp.rrp.current;
    if peer.is_null() {
        return;
    }
    let peers = hp.rrp.peers;
    // rcache keeps the server's health itself (`peer.rs` records this attempt there):
    // nginx's round-robin free only gives the connection back. Its own failure counts
    // (which other users of the upstream, such as memcached_pass, go by) stay as they
    // were, and it logs nothing.
    // SAFETY (this and with_peer_mut below): peer belongs to peers.
    let before = unsafe { with_peer(peers, peer, |p| (p.fails, p.accessed, p.checked)) };
    let state = state & !(NGX_PEER_FAILED as ngx_uint_t);
    // SAFETY: nginx's round-robin free, on its own data (the head of ours).
    unsafe { ngx_http_upstream_free_round_robin_peer(pc, ptr::addr_of_mut!(hp.rrp).cast(), state) };
    // SAFETY: as above.
    unsafe { with_peer_mut(peers, peer, |p| (p.fails, p.accessed, p.checked) = before) };
}

/// Where a store of `key` goes (`rcache_store`), outside any request's balancing.
pub struct StorePeer {
    pub sockaddr: *mut sockaddr,
    pub socklen: socklen_t,
    pub name: *mut ngx_str_t,
}

/// The server to store `key` on: with `rcache_hash`, the key's home (the server lookups
/// ask); otherwise the first server of the upstream. `None` when that server is down.
///
/// # Safety
/// `target` must be an upstream rcache passes to, in a worker.
pub unsafe fn store_peer(target: &Target, key: &[u8]) -> Option<StorePeer> {
    let uscf = target.uscf;
    // SAFETY: every balancer rcache composes with keeps nginx's round-robin peers in
    // peer.data; they are locked as the round-robin code locks them.
    unsafe {
        let peers = (*uscf).peer.data as *mut ngx_http_upstream_rr_peers_t;
        if peers.is_null() {
            return None;
        }
        // Implicit upstreams (`rcache_pass host:port`) have no srv_conf.
        let ring = HttpRcacheModule::server_conf(&*uscf).and_then(|hcf| hcf.ring.as_ref());
        let index = match ring {
            Some(ring) => ring.pick(key)?,
            None => 0,
        };
        let _peers_lock = PeersLock::read(peers);
        let peer = nth_peer(peers, index)?;
        let _peer_lock = PeerLock::new(peers, peer);
        let p = &mut *peer;
        let now = ngx_time();
        let down = if target.has_own_rule() {
            target.health.get(index).is_some_and(|h| h.is_down(now))
        } else {
            recently_failed(p, now)
        };
        if p.down != 0 || down {
            return None;
        }
        Some(StorePeer {
            sockaddr: p.sockaddr,
            socklen: p.socklen,
            name: &mut p.name,
        })
    }
}

fn is_marked_down(p: &ngx_http_upstream_rr_peer_t) -> bool {
    p.max_fails != 0 && p.fails >= p.max_fails
}

fn recently_failed(p: &ngx_http_upstream_rr_peer_t, now: time_t) -> bool {
    is_marked_down(p) && now - p.checked <= p.fail_timeout
}
