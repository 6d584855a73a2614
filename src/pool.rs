//! Idle memcached connections, kept per worker and per server.
//!
//! A connection whose last reply was read completely and cleanly is parked
//! here instead of being closed; the next request to the same server takes it
//! back (most recently used first, so surplus connections age out). While
//! parked, a connection is watched: anything memcached sends (it should send
//! nothing), a close, an error, the idle timeout, or nginx shutting down
//! (`c->close`) closes it and removes it from the pool — so a stale or
//! desynchronised connection is never handed to a request.

use core::ffi::c_void;
use core::ptr;

use ngx::ffi::*;

/// How long a parked connection may stay idle.
const IDLE_TIMEOUT: ngx_msec_t = 60_000;

/// Bounded LIFO of idle connections to one server.
#[derive(Debug, Default)]
pub struct Slots<C> {
    conns: Vec<C>,
}

impl<C: Copy + PartialEq> Slots<C> {
    pub const fn new() -> Self {
        Self { conns: Vec::new() }
    }

    /// The most recently parked connection.
    pub fn take(&mut self) -> Option<C> {
        self.conns.pop()
    }

    /// Parks `c` if fewer than `limit` are parked.
    pub fn put(&mut self, c: C, limit: usize) -> bool {
        if self.conns.len() >= limit {
            return false;
        }
        self.conns.push(c);
        true
    }

    /// Forgets `c` (it was closed while parked).
    pub fn remove(&mut self, c: C) -> bool {
        match self.conns.iter().position(|&x| x == c) {
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
        let c = self.server(addr)?.slots.take()?;
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
        Some(c)
    }

    /// Parks `c` (connected to `addr`) unless `limit` connections to that
    /// server are parked already. Returns whether it was parked; if not, the
    /// caller still owns `c` and closes it.
    ///
    /// # Safety
    /// `c` must be an open upstream connection that has finished a request
    /// cleanly; must run on the event loop thread of a worker.
    pub unsafe fn put(&mut self, c: *mut ngx_connection_t, addr: &[u8], limit: usize) -> bool {
        if limit == 0 {
            return false;
        }
        let server: *mut ServerIdle = match self.server(addr) {
            Some(s) => s,
            None => {
                self.servers.push(Box::new(ServerIdle {
                    addr: addr.to_vec(),
                    slots: Slots::new(),
                }));
                match self.servers.last_mut() {
                    Some(s) => &mut **s,
                    None => return false,
                }
            }
        };
        // SAFETY: server points into a Box owned by self; c is open.
        unsafe {
            if ngx_handle_read_event((*c).read, 0) != NGX_OK as ngx_int_t {
                return false;
            }
            if !(*server).slots.put(c, limit) {
                return false;
            }
            let cr = &mut *c;
            (*cr.read).set_delayed(0);
            ngx_add_timer(cr.read, IDLE_TIMEOUT);
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

/// A parked connection became readable, timed out, or nginx is shutting down.
unsafe extern "C" fn idle_read_handler(ev: *mut ngx_event_t) {
    // SAFETY: ev belongs to a parked connection whose data is its ServerIdle.
    unsafe {
        let c = (*ev).data as *mut ngx_connection_t;
        if (*c).close() == 0 && (*ev).timedout() == 0 {
            let mut byte = 0u8;
            let n = libc_recv((*c).fd, &mut byte);
            if n == -1 && ngx_socket_errno() == NGX_EAGAIN as ngx_err_t {
                // Nothing to read: a spurious wakeup; keep it.
                (*ev).set_ready(0);
                if ngx_handle_read_event(ev, 0) == NGX_OK as ngx_int_t {
                    return;
                }
            }
        }
        let server = (*c).data as *mut ServerIdle;
        (*server).slots.remove(c);
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
    fn slots_are_bounded_and_lifo() {
        let mut s = Slots::new();
        assert!(s.put(1, 2));
        assert!(s.put(2, 2));
        assert!(!s.put(3, 2), "over the limit");
        assert_eq!(s.conns.len(), 2);
        assert_eq!(s.take(), Some(2), "most recently parked first");
        assert_eq!(s.take(), Some(1));
        assert_eq!(s.take(), None);
        assert!(!s.put(4, 0), "limit 0 keeps nothing");
        assert!(s.conns.is_empty());
    }

    #[test]
    fn a_closed_connection_is_forgotten() {
        let mut s = Slots::new();
        for c in 1..=4 {
            assert!(s.put(c, 8));
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
