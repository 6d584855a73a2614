//! nginx's round-robin peers, read and changed under the locks its round-robin code takes
//! (peers in a shared-memory `zone` are shared by the workers and locked; others are per
//! worker): used by `rcache_hash` and by rcache's own down/up rule for one-server upstreams
//! (`health.rs`).

use ngx::ffi::*;

/// The `index`-th peer, in the order of the `server` lines.
///
/// # Safety
/// `peers` must be locked for reading.
pub unsafe fn nth_peer(
    peers: *mut ngx_http_upstream_rr_peers_t,
    index: usize,
) -> Option<*mut ngx_http_upstream_rr_peer_t> {
    // SAFETY: the peer list is a NULL-terminated linked list.
    unsafe {
        let mut peer = (*peers).peer;
        for _ in 0..index {
            if peer.is_null() {
                return None;
            }
            peer = (*peer).next;
        }
        (!peer.is_null()).then_some(peer)
    }
}

/// Runs `f` on `peer` under the locks nginx's round-robin code uses.
///
/// # Safety
/// `peer` must belong to `peers`.
pub unsafe fn with_peer<T>(
    peers: *mut ngx_http_upstream_rr_peers_t,
    peer: *mut ngx_http_upstream_rr_peer_t,
    f: impl FnOnce(&ngx_http_upstream_rr_peer_t) -> T,
) -> T {
    // SAFETY: per the contract above.
    unsafe {
        let _peers_lock = PeersLock::read(peers);
        let _peer_lock = PeerLock::new(peers, peer);
        f(&*peer)
    }
}

/// Runs `f` on `peer`, to change it, under the round-robin locks.
///
/// # Safety
/// `peer` must belong to `peers`.
pub unsafe fn with_peer_mut<T>(
    peers: *mut ngx_http_upstream_rr_peers_t,
    peer: *mut ngx_http_upstream_rr_peer_t,
    f: impl FnOnce(&mut ngx_http_upstream_rr_peer_t) -> T,
) -> T {
    // SAFETY: per the contract above.
    unsafe {
        let _peers_lock = PeersLock::read(peers);
        let _peer_lock = PeerLock::new(peers, peer);
        f(&mut *peer)
    }
}

/// `ngx_http_upstream_rr_peers_rlock`/`unlock`: peers in a shared memory `zone` are
/// shared by the workers and locked; others are per worker and are not.
pub struct PeersLock(*mut ngx_http_upstream_rr_peers_t);

impl PeersLock {
    /// # Safety
    /// `peers` must be valid for the lock's lifetime.
    pub unsafe fn read(peers: *mut ngx_http_upstream_rr_peers_t) -> PeersLock {
        #[cfg(ngx_feature = "http_upstream_zone")]
        // SAFETY: per the contract above.
        unsafe {
            if !(*peers).shpool.is_null() {
                ngx_rwlock_rlock(&mut (*peers).rwlock);
            }
        }
        PeersLock(peers)
    }
}

impl Drop for PeersLock {
    fn drop(&mut self) {
        #[cfg(ngx_feature = "http_upstream_zone")]
        // SAFETY: the lock was taken in read() on the same peers.
        unsafe {
            if !(*self.0).shpool.is_null() {
                ngx_rwlock_unlock(&mut (*self.0).rwlock);
            }
        }
    }
}

/// `ngx_http_upstream_rr_peer_lock`/`unlock`.
pub struct PeerLock(
    *mut ngx_http_upstream_rr_peers_t,
    *mut ngx_http_upstream_rr_peer_t,
);

impl PeerLock {
    /// # Safety
    /// `peer` must belong to `peers`, both valid for the lock's lifetime.
    pub unsafe fn new(
        peers: *mut ngx_http_upstream_rr_peers_t,
        peer: *mut ngx_http_upstream_rr_peer_t,
    ) -> PeerLock {
        #[cfg(ngx_feature = "http_upstream_zone")]
        // SAFETY: per the contract above.
        unsafe {
            if !(*peers).shpool.is_null() {
                ngx_rwlock_wlock(&mut (*peer).lock);
            }
        }
        PeerLock(peers, peer)
    }
}

impl Drop for PeerLock {
    fn drop(&mut self) {
        #[cfg(ngx_feature = "http_upstream_zone")]
        // SAFETY: the lock was taken in new() on the same peer.
        unsafe {
            if !(*self.0).shpool.is_null() {
                ngx_rwlock_unlock(&mut (*self.1).lock);
            }
        }
    }
}
