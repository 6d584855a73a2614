//! A small threaded TCP server with a clean shutdown, shared by [`crate::common::App`] and
//! [`crate::common::FakeMemcached`].
//!
//! One thread accepts; each connection gets its own thread running the handler. On drop
//! the server sets a stop flag, wakes the accept thread with a self-connection, shuts down
//! every open connection (unblocking handlers stuck in `read`), and joins all threads.
//! Handlers that wait on purpose (delays, stalls) must use [`ConnCtx::sleep`] /
//! [`ConnCtx::stall`] so that they notice the stop flag.

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Per-connection context handed to a handler.
pub struct ConnCtx {
    /// 0-based index of this connection in accept order.
    pub id: usize,
    shared: Arc<Shared>,
}

impl ConnCtx {
    /// True once the server is shutting down.
    pub fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Sleeps for `d` unless the server stops first. Returns false if it is stopping.
    pub fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        while !self.stopping() {
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            thread::sleep((deadline - now).min(Duration::from_millis(20)));
        }
        false
    }

    /// Blocks until the server stops (holding whatever the caller holds, e.g. a socket).
    pub fn stall(&self) {
        while !self.stopping() {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

type Handler = dyn Fn(TcpStream, &ConnCtx) + Send + Sync;

struct Shared {
    stop: AtomicBool,
    accepted: AtomicUsize,
    /// Clones of open connections, so that drop can shut them down.
    open: Mutex<HashMap<usize, TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

pub struct Server {
    name: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds 127.0.0.1:0 and serves every connection with `handler` on its own thread.
    /// The listener stays bound for the server's lifetime, so its port is race-free.
    pub fn start(name: &str, handler: Arc<Handler>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("{name}: cannot bind 127.0.0.1:0: {e}"));
        Self::serve(name, listener, handler)
    }

    /// Serves an already-bound listener.
    pub fn serve(name: &str, listener: TcpListener, handler: Arc<Handler>) -> Server {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{name}: local_addr failed: {e}"));
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            open: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let thread_name = format!("{name}-accept");
        let accept_thread = thread::Builder::new()
            .name(thread_name)
            .spawn(move || accept_loop(listener, accept_shared, handler))
            .unwrap_or_else(|e| panic!("{name}: cannot spawn accept thread: {e}"));
        Server {
            name: name.to_string(),
            addr,
            shared,
            accept_thread: Some(accept_thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Number of connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Number of connections currently open (handler still running).
    pub fn open_connections(&self) -> usize {
        self.shared.open.lock().map(|m| m.len()).unwrap_or(0)
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, handler: Arc<Handler>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(_) => {
                thread::sleep(Duration::from_millis(10)); // e.g. EMFILE: back off
                continue;
            }
        };
        let id = shared.accepted.fetch_add(1, Ordering::SeqCst);
        if let Ok(clone) = stream.try_clone() {
            if let Ok(mut open) = shared.open.lock() {
                open.insert(id, clone);
            }
        }
        let ctx = ConnCtx {
            id,
            shared: Arc::clone(&shared),
        };
        let handler = Arc::clone(&handler);
        let spawned = thread::Builder::new()
            .name(format!("conn-{id}"))
            .spawn(move || {
                handler(stream, &ctx);
                // Close our clone too, so the socket really closes now.
                if let Ok(mut open) = ctx.shared.open.lock() {
                    open.remove(&ctx.id);
                }
            });
        match spawned {
            Ok(handle) => {
                if let Ok(mut threads) = shared.threads.lock() {
                    threads.push(handle);
                }
            }
            Err(_) => {
                if let Ok(mut open) = shared.open.lock() {
                    open.remove(&id);
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept(); it sees the stop flag and returns.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept_thread.take() {
            if t.join().is_err() {
                eprintln!("{}: accept thread panicked", self.name);
            }
        }
        if let Ok(open) = self.shared.open.lock() {
            for s in open.values() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        let threads = match self.shared.threads.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => Vec::new(),
        };
        for t in threads {
            if t.join().is_err() {
                eprintln!("{}: a connection handler panicked", self.name);
            }
        }
    }
}
