//! Idle memcached connections, kept per worker and per server.
//!
//! A connection whose last reply was read completely and cleanly is parked
//! here instead of being closed; the next request to the same server takes it
//! back (most recently used first). While parked, a connection is watched:
//! anything memcached sends (it should send nothing), a close, an error, or
//! nginx shutting down (`c->close`) closes it and removes it from the pool — so
//! a stale or desynchronised connection is never handed to a request.
//!
//! `rcache_keepalive N` is how many idle connections stay open at rest. Under
//! load a worker may have more lookups in flight than N; closing the surplus
//! the moment each lookup ends would mean connecting again for the next batch
//! of requests, every time (stock nginx's `keepalive` behaves so). Instead a
//! connection parked beyond N is closed only if it stays idle for 10 s:
//! connections follow the load up, and come back down to N soon after it.
//! (With 1 s, the benchmark still saw up to 0.0015 new connections per request
//! at 200 clients: bursts of lookups in flight more than a second apart.)

use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicI64, Ordering};

use ngx::core::Status;
use ngx::ffi::*;

/// How long one of the first N parked connections may stay idle.
const IDLE_TIMEOUT: ngx_msec_t = 60_000;

/// How long a connection beyond N may stay idle.
const SURPLUS_IDLE_TIMEOUT: ngx_msec_t = 10_000;

/// LIFO of idle connections to one server, with when each was parked.
#[derive(Debug, Default)]
pub struct Slots<C> {
    conns: Vec<(C, ngx_msec_t)>,
}

impl<C: Copy + PartialEq> Slots<C> {
    pub const fn new() -> Self {
        Self { conns: Vec::new() }
    }

    /// How many connections are parked.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// The most recently parked connection.
    pub fn take(&mut self) -> Option<C> {
        self.conns.pop().map(|(c, _)| c)
    }

    /// Parks `c` at time `now`; returns how long it may stay idle: long while at
    /// most `keep` are parked, short beyond that.
    pub fn put(&mut self, c: C, now: ngx_msec_t, keep: usize) -> ngx_msec_t {
        self.conns.push((c, now));
        if self.conns.len() <= keep {
            IDLE_TIMEOUT
        } else {
            SURPLUS_IDLE_TIMEOUT
        }
    }

    /// A parked connection's idle timer fired at `now`: `None` if it must be
    /// closed (idle for the full timeout, or more than `keep` are parked),
    /// else how much longer it may stay.
    pub fn on_timeout(&self, c: C, now: ngx_msec_t, keep: usize) -> Option<ngx_msec_t> {
        let &(_, parked) = self.conns.iter().find(|(x, _)| *x == c)?;
        let idle = now.wrapping_sub(parked);
        if idle >= IDLE_TIMEOUT || self.conns.len() > keep {
            return None;
        }
        Some(IDLE_TIMEOUT - idle)
    }

    /// Forgets `c` (it was closed while parked).
    pub fn remove(&mut self, c: C) -> bool {
        match self.conns.iter().position(|&(x, _)| x == c) {
            Some(i) => {
                self.conns.swap_remove(i);
                true
            }
            None => false,
        }
    }
}

/// The idle connections to one server address.
pub struct ServerIdle {
    addr: Vec<u8>,
    slots: Slots<*mut ngx_connection_t>,
    /// `rcache_keepalive` of the request that parked a connection last.
    keep: usize,
    /// The server's idle-connection gauge for `rcache_metrics` (all workers), or NULL.
    gauge: *const AtomicI64,
}

impl ServerIdle {
    fn count(&self, delta: i64) {
        // SAFETY: NULL, or a gauge in shared memory mapped for the process's lifetime.
        if let Some(g) = unsafe { self.gauge.as_ref() } {
            g.fetch_add(delta, Ordering::Relaxed);
        }
    }
}

/// All idle connections of one upstream in this worker.
#[derive(Default)]
pub struct IdlePool {
    /// Boxed so that a parked connection can point at its server's entry
    /// (`c->data`) while more servers are added.
    #[allow(clippy::vec_box)]
    servers: Vec<Box<ServerIdle>>,
}

impl IdlePool {
    pub const fn new() -> Self {
        Self {
            servers: Vec::new(),
        }
    }

    fn server(&mut self, addr: &[u8]) -> Option<&mut ServerIdle> {
        self.servers
            .iter_mut()
            .find(|s| s.addr == addr)
            .map(|s| &mut **s)
    }

    /// Takes an idle connection to `addr` and makes it ready for a request
    /// that logs to `log`.
    ///
    /// # Safety
    /// Must run in a worker, on the event loop thread.
    pub unsafe fn take(
        &mut self,
        addr: &[u8],
        log: *mut ngx_log_t,
    ) -> Option<*mut ngx_connection_t> {
        let server = self.server(addr)?;
        let c = server.slots.take()?;
        server.count(-1);
        // SAFETY: parked connections are open and owned by the pool.
        unsafe {
            let cr = &mut *c;
            cr.set_idle(0);
            cr.sent = 0;
            // A pooled connection that fails is retried on a new one (see
            // peer.rs): its error is not worth more than an info line.
            cr.set_log_error(ngx_connection_log_error_e_NGX_ERROR_INFO);
            cr.data = ptr::null_mut();
            cr.log = log;
            (*cr.read).log = log;
            (*cr.write).log = log;
            (*cr.pool).log = log;
            if (*cr.read).timer_set() != 0 {
                ngx_del_timer(cr.read);
            }
        }
        debug!(log, "rcache: pool: take idle connection {:p}", c);
        Some(c)
    }

    /// Parks `c` (connected to `addr`), keeping `keep` idle at rest. Returns
    /// whether it was parked; if not (`keep` is 0, or the event could not be
    /// armed), the caller still owns `c` and closes it.
    ///
    /// # Safety
    /// `c` must be an open upstream connection that has finished a request
    /// cleanly; must run on the event loop thread of a worker.
    /// `gauge` (NULL or the server's idle-connection gauge) follows the count.
    pub unsafe fn put(
        &mut self,
        c: *mut ngx_connection_t,
        addr: &[u8],
        keep: usize,
        gauge: *const AtomicI64,
    ) -> bool {
        if keep == 0 {
            return false;
        }
        let server: *mut ServerIdle = match self.server(addr) {
            Some(s) => s,
            None => {
                self.servers.push(Box::new(ServerIdle {
                    addr: addr.to_vec(),
                    slots: Slots::new(),
                    keep,
                    gauge,
                }));
                match self.servers.last_mut() {
                    Some(s) => &mut **s,
                    None => return false,
                }
            }
        };
        // SAFETY: server points into a Box owned by self; c is open.
        unsafe {
            if ngx_handle_read_event((*c).read, 0) != Status::NGX_OK.0 {
                return false;
            }
            (*server).keep = keep;
            let timeout = (*server).slots.put(c, ngx_current_msec, keep);
            (*server).count(1);
            debug!(
                (*c).log,
                "rcache: pool: park connection {:p} ({} idle, keep {}, close after {} ms idle)",
                c,
                (*server).slots.len(),
                keep,
                timeout
            );
            let cr = &mut *c;
            (*cr.read).set_delayed(0);
            ngx_add_timer(cr.read, timeout);
            if (*cr.write).timer_set() != 0 {
                ngx_del_timer(cr.write);
            }
            (*cr.write).handler = Some(idle_write_handler);
            (*cr.read).handler = Some(idle_read_handler);
            cr.data = server.cast::<c_void>();
            cr.set_idle(1);
            let log = (*ngx_cycle).log;
            cr.log = log;
            (*cr.read).log = log;
            (*cr.write).log = log;
            (*cr.pool).log = log;

            // Bytes may already be waiting (sent right after the reply):
            // check now rather than on the next event.
            if (*cr.read).ready() != 0 {
                idle_read_handler(cr.read);
            }
        }
        true
    }
}

/// A parked connection became readable, its idle timer fired, or nginx is
/// shutting down.
unsafe extern "C" fn idle_read_handler(ev: *mut ngx_event_t) {
    // SAFETY: ev belongs to a parked connection whose data is its ServerIdle.
    unsafe {
        let c = (*ev).data as *mut ngx_connection_t;
        let server = &mut *((*c).data as *mut ServerIdle);
        if (*c).close() == 0 {
            if (*ev).timedout() != 0 {
                if let Some(rest) = server.slots.on_timeout(c, ngx_current_msec, server.keep) {
                    // One of the N kept at rest: not idle for long enough yet.
                    (*ev).set_timedout(0);
                    ngx_add_timer(ev, rest);
                    return;
                }
            } else {
                let mut byte = 0u8;
                let n = libc_recv((*c).fd, &mut byte);
                if n == -1 && ngx_socket_errno() == NGX_EAGAIN as ngx_err_t {
                    // Nothing to read: a spurious wakeup; keep it.
                    (*ev).set_ready(0);
                    if ngx_handle_read_event(ev, 0) == Status::NGX_OK.0 {
                        return;
                    }
                }
            }
        }
        debug!(
            (*c).log,
            "rcache: pool: close idle connection {:p} ({})",
            c,
            if (*c).close() != 0 {
                "nginx is shutting down"
            } else if (*ev).timedout() != 0 {
                "idle timeout"
            } else {
                "memcached closed it or sent data"
            }
        );
        if server.slots.remove(c) {
            server.count(-1);
        }
        close(c);
    }
}

unsafe extern "C" fn idle_write_handler(_ev: *mut ngx_event_t) {}

/// Peeks one byte without consuming it.
///
/// # Safety
/// `fd` must be an open socket.
unsafe fn libc_recv(fd: ngx_socket_t, byte: &mut u8) -> isize {
    // SAFETY: one byte of valid memory; MSG_PEEK leaves the data queued.
    unsafe { recv(fd, ptr::from_mut(byte).cast(), 1, MSG_PEEK as _) }
}

/// Closes an upstream connection and frees its pool.
///
/// # Safety
/// `c` must be an open upstream connection nobody else refers to.
pub unsafe fn close(c: *mut ngx_connection_t) {
    // SAFETY: upstream connections get their own pool from nginx's upstream
    // module; closing releases the fd and the connection slot.
    unsafe {
        if !(*c).pool.is_null() {
            ngx_destroy_pool((*c).pool);
        }
        ngx_close_connection(c);
    }
}

/// A socket address as bytes, for comparing peers.
///
/// # Safety
/// `sa` must point to `len` readable bytes.
pub unsafe fn addr_bytes<'a>(sa: *const sockaddr, len: socklen_t) -> &'a [u8] {
    // SAFETY: per the contract above.
    unsafe { core::slice::from_raw_parts(sa.cast::<u8>(), len as usize) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifo_with_long_timeouts_up_to_keep_and_short_ones_beyond() {
        let mut s = Slots::new();
        assert_eq!(s.put(1, 0, 2), IDLE_TIMEOUT);
        assert_eq!(s.put(2, 0, 2), IDLE_TIMEOUT);
        assert_eq!(s.put(3, 0, 2), SURPLUS_IDLE_TIMEOUT, "beyond keep: short");
        assert_eq!(s.take(), Some(3), "most recently parked first");
        assert_eq!(s.take(), Some(2));
        assert_eq!(s.take(), Some(1));
        assert_eq!(s.take(), None);
    }

    #[test]
    fn surplus_connections_close_when_their_short_timer_fires() {
        let mut s = Slots::new();
        for c in 1..=4 {
            s.put(c, 1000, 2);
        }
        // 4 parked, keep 2: any timer that fires closes its connection ...
        assert_eq!(s.on_timeout(4, 2000, 2), None);
        s.remove(4);
        assert_eq!(s.on_timeout(3, 2000, 2), None);
        s.remove(3);
        // ... until only 2 are left: those stay, for the rest of the long timeout.
        assert_eq!(s.on_timeout(2, 2000, 2), Some(IDLE_TIMEOUT - 1000));
        // Idle for the whole long timeout: closed even within keep.
        assert_eq!(s.on_timeout(1, 1000 + IDLE_TIMEOUT, 2), None);
        // Unknown connections are not ours to keep.
        assert_eq!(s.on_timeout(9, 2000, 2), None);
    }

    #[test]
    fn a_closed_connection_is_forgotten() {
        let mut s = Slots::new();
        for c in 1..=4 {
            s.put(c, 0, 8);
        }
        assert!(s.remove(2));
        assert!(!s.remove(2));
        let mut rest = vec![];
        while let Some(c) = s.take() {
            rest.push(c);
        }
        rest.sort();
        assert_eq!(rest, vec![1, 3, 4]);
    }
}
