//! A scripted memcached stand-in, for faults a real memcached will not produce: replies
//! split at chosen points with delays, stalls, resets, early closes, garbage after a valid
//! reply. For everything else use the real [`crate::common::Memcached`].
//!
//! A behaviour is a closure called for every request line read (e.g. `get /page`), which
//! returns the [`Step`]s to perform; an optional `on_accept` closure scripts what happens
//! right after a connection is accepted (before anything is read). After the steps the
//! connection goes on reading the next request unless a step ended it.
//!
//! ```ignore
//! let fake = FakeMemcached::start(|req| {
//!     let reply = value_reply(&req.key().unwrap(), 0, b"hello");
//!     split(&reply, &[3, 10], Duration::from_millis(50)) // 3 writes, 50 ms apart
//! });
//! ```
//!
//! [`Blackhole`] is a port whose connects hang (for connect timeouts).

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::http::read_line;
use super::process::wait_until;
use super::server::{ConnCtx, Server};

/// One thing the fake does on a connection.
#[derive(Clone, Debug)]
pub enum Step {
    /// Write these bytes (one write call, TCP_NODELAY on).
    Write(Vec<u8>),
    /// Wait (ends early when the fake is dropped).
    Sleep(Duration),
    /// Hold the connection open and read nothing more, until the fake is dropped.
    Stall,
    /// Abort the connection: SO_LINGER 0 + close, so the peer gets an RST.
    Reset,
    /// Close the connection normally (FIN).
    Close,
}

impl Step {
    pub fn write(bytes: impl AsRef<[u8]>) -> Step {
        Step::Write(bytes.as_ref().to_vec())
    }
}

/// `VALUE <key> <flags> <len>\r\n<data>\r\nEND\r\n`
pub fn value_reply(key: &str, flags: u32, data: &[u8]) -> Vec<u8> {
    let mut out = format!("VALUE {key} {flags} {}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\nEND\r\n");
    out
}

/// A miss: `END\r\n`.
pub const MISS: &[u8] = b"END\r\n";

/// Writes `bytes` in pieces cut at the offsets in `cut_at` (ascending, within the bytes),
/// sleeping `delay` between pieces.
pub fn split(bytes: &[u8], cut_at: &[usize], delay: Duration) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut start = 0;
    for &cut in cut_at.iter().chain(std::iter::once(&bytes.len())) {
        assert!(
            cut >= start && cut <= bytes.len(),
            "split offsets must ascend within 0..={}: {cut_at:?}",
            bytes.len()
        );
        if start > 0 {
            steps.push(Step::Sleep(delay));
        }
        steps.push(Step::Write(bytes[start..cut].to_vec()));
        start = cut;
    }
    steps
}

/// Writes the first `n` bytes of `bytes`, then closes.
pub fn truncated(bytes: &[u8], n: usize) -> Vec<Step> {
    vec![
        Step::Write(bytes[..n.min(bytes.len())].to_vec()),
        Step::Close,
    ]
}

/// A request the fake read.
#[derive(Clone, Debug)]
pub struct Request {
    /// Connection index (accept order, 0-based).
    pub conn: usize,
    /// Request index on its connection (0-based).
    pub seq: usize,
    /// The command line without its CRLF, as raw bytes.
    pub line: Vec<u8>,
    /// The data block of a storage command (`set`, `add`, ..., `ms`), without its CRLF.
    pub data: Option<Vec<u8>>,
}

impl Request {
    /// The command line as (lossy) text.
    pub fn line_str(&self) -> String {
        String::from_utf8_lossy(&self.line).into_owned()
    }

    /// The command word: `get`, `gets`, `set`, `mg`, ...
    pub fn command(&self) -> String {
        self.line_str().split(' ').next().unwrap_or("").to_string()
    }

    /// The first key of the command (second word).
    pub fn key(&self) -> Option<String> {
        self.line_str().split(' ').nth(1).map(str::to_string)
    }
}

type OnRequest = dyn Fn(&Request) -> Vec<Step> + Send + Sync;
type OnAccept = dyn Fn(usize) -> Vec<Step> + Send + Sync;

/// Builder for a fake with an `on_accept` script as well.
pub struct FakeBuilder {
    on_accept: Option<Arc<OnAccept>>,
}

impl FakeBuilder {
    /// Steps to run right after accepting connection number `conn` (0-based), before
    /// reading anything; e.g. `vec![Step::Reset]` or `vec![Step::Stall]`.
    pub fn on_accept(mut self, f: impl Fn(usize) -> Vec<Step> + Send + Sync + 'static) -> Self {
        self.on_accept = Some(Arc::new(f));
        self
    }

    /// Starts the fake with `on_request` for each request line.
    pub fn start(
        self,
        on_request: impl Fn(&Request) -> Vec<Step> + Send + Sync + 'static,
    ) -> FakeMemcached {
        FakeMemcached::spawn(self.on_accept, Arc::new(on_request))
    }
}

pub struct FakeMemcached {
    log: Arc<Mutex<Vec<Request>>>,
    server: Server,
}

impl FakeMemcached {
    /// Starts a fake on 127.0.0.1:<ephemeral> answering each request with `on_request`.
    pub fn start(on_request: impl Fn(&Request) -> Vec<Step> + Send + Sync + 'static) -> Self {
        FakeMemcached::spawn(None, Arc::new(on_request))
    }

    pub fn builder() -> FakeBuilder {
        FakeBuilder { on_accept: None }
    }

    /// A well-behaved fake: every `get`/`gets` is a hit with `data` and `flags` (the key
    /// echoed back), `version` answers, anything else gets `ERROR`.
    pub fn hit(flags: u32, data: &[u8]) -> Self {
        let data = data.to_vec();
        FakeMemcached::start(move |req| match req.command().as_str() {
            "get" | "gets" => vec![Step::Write(value_reply(
                &req.key().unwrap_or_default(),
                flags,
                &data,
            ))],
            "version" => vec![Step::write("VERSION 1.6.18-fake\r\n")],
            _ => vec![Step::write("ERROR\r\n")],
        })
    }

    fn spawn(on_accept: Option<Arc<OnAccept>>, on_request: Arc<OnRequest>) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let conn_log = Arc::clone(&log);
        let server = Server::start(
            "fake-memcached",
            Arc::new(move |stream: TcpStream, ctx: &ConnCtx| {
                serve_connection(stream, ctx, on_accept.as_deref(), &*on_request, &conn_log)
            }),
        );
        FakeMemcached { log, server }
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.server.connections()
    }

    /// Connections whose handler is still running (open, stalled, sleeping).
    pub fn open_connections(&self) -> usize {
        self.server.open_connections()
    }

    /// Request lines read so far (lossy text, without CRLF), in order.
    pub fn requests(&self) -> Vec<String> {
        self.request_log().iter().map(Request::line_str).collect()
    }

    /// Every request read so far, with connection and raw bytes.
    pub fn request_log(&self) -> Vec<Request> {
        self.log.lock().expect("fake memcached log lock").clone()
    }

    /// Waits until at least `n` requests were read; panics after `timeout`.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<Request> {
        let ok = wait_until(timeout, || {
            self.log.lock().map(|l| l.len() >= n).unwrap_or(false)
        });
        let log = self.request_log();
        assert!(
            ok,
            "fake memcached: waited {timeout:?} for {n} requests, got {}: {:?}",
            log.len(),
            log.iter().map(Request::line_str).collect::<Vec<_>>()
        );
        log
    }
}

/// Storage commands carry a data block: `set <key> <flags> <exptime> <bytes> ...` (also
/// add/replace/append/prepend/cas) and the meta `ms <key> <datalen> ...`.
fn data_len(line: &[u8]) -> Option<usize> {
    let text = String::from_utf8_lossy(line);
    let words: Vec<&str> = text.split(' ').collect();
    match words.first().copied()? {
        "set" | "add" | "replace" | "append" | "prepend" | "cas" => words.get(4)?.parse().ok(),
        "ms" => words.get(2)?.parse().ok(),
        _ => None,
    }
}

fn set_reset_linger(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd owned by `stream`; option value points to a live `linger` of the
    // size passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt(SO_LINGER) failed: {}",
        std::io::Error::last_os_error()
    );
}

/// Runs `steps`; returns false if the connection is finished.
fn run_steps(stream: &mut TcpStream, ctx: &ConnCtx, steps: Vec<Step>) -> bool {
    for step in steps {
        match step {
            Step::Write(bytes) => {
                if stream.write_all(&bytes).is_err() {
                    return false;
                }
            }
            Step::Sleep(d) => {
                if !ctx.sleep(d) {
                    return false;
                }
            }
            Step::Stall => {
                ctx.stall();
                return false;
            }
            Step::Reset => {
                set_reset_linger(stream);
                return false; // the handler returns and every fd of the socket is closed
            }
            Step::Close => {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return false;
            }
        }
    }
    true
}

fn serve_connection(
    stream: TcpStream,
    ctx: &ConnCtx,
    on_accept: Option<&OnAccept>,
    on_request: &OnRequest,
    log: &Mutex<Vec<Request>>,
) {
    let _ = stream.set_nodelay(true);
    let mut writer = stream;
    if let Some(f) = on_accept {
        if !run_steps(&mut writer, ctx, f(ctx.id)) {
            return;
        }
    }
    let Ok(read_half) = writer.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut seq = 0;
    while !ctx.stopping() {
        let line = match read_line(&mut reader) {
            Ok(Some(line)) => line,
            _ => return,
        };
        let data = match data_len(&line) {
            Some(len) => {
                let mut block = vec![0u8; len + 2];
                if reader.read_exact(&mut block).is_err() {
                    return;
                }
                block.truncate(len);
                Some(block)
            }
            None => None,
        };
        let req = Request {
            conn: ctx.id,
            seq,
            line,
            data,
        };
        seq += 1;
        log.lock()
            .expect("fake memcached log lock")
            .push(req.clone());
        if req.line == b"quit" {
            return;
        }
        if !run_steps(&mut writer, ctx, on_request(&req)) {
            return;
        }
    }
}

/// A port on which TCP connects hang (SYNs dropped): a listener with a backlog of 0 that
/// never accepts, whose queue is pre-filled. Use it to exercise connect timeouts.
pub struct Blackhole {
    _listener: TcpListener,
    _filler: Vec<TcpStream>,
    port: u16,
}

impl Blackhole {
    pub fn start() -> Blackhole {
        Blackhole::start_on(0).expect("blackhole: bind 127.0.0.1:0")
    }

    /// A blackhole on 127.0.0.1:`port` (e.g. where a stopped memcached listened), or None
    /// if the port is in use.
    pub fn start_on(port: u16) -> Option<Blackhole> {
        let listener = TcpListener::bind(("127.0.0.1", port)).ok()?;
        // SAFETY: listen(2) on a socket we own; re-listening only changes the backlog.
        let rc = unsafe { libc::listen(listener.as_raw_fd(), 0) };
        assert_eq!(
            rc,
            0,
            "blackhole: listen(0) failed: {}",
            std::io::Error::last_os_error()
        );
        let addr = listener.local_addr().expect("blackhole: local_addr");
        let mut filler = Vec::new();
        for _ in 0..16 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => filler.push(s),
                Err(_) => {
                    // This connect hung: the queue is full and further SYNs are dropped.
                    return Some(Blackhole {
                        _listener: listener,
                        _filler: filler,
                        port: addr.port(),
                    });
                }
            }
        }
        panic!("blackhole: 16 connects to a backlog-0 listener all succeeded; cannot make connects hang here");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}
