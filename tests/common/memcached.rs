//! A real memcached (Debian's 1.6.18 here) on an ephemeral port.
//!
//! Started as `memcached -l 127.0.0.1 -p <port> -U 0 -t 1 -c 4096 [-u root]` (`-u root`
//! only when running as root, where memcached demands `-u`), plus any extra arguments
//! (e.g. `-I 8m` for items above the default 1 MiB limit). Binary: env `RCACHE_MEMCACHED`
//! or `memcached` from PATH.
//!
//! The fixture keeps one persistent connection of its own for `stats` (so that reading
//! counters opens no new connections): `total_connections` deltas between two reads are
//! exactly the connections others opened, and `curr_connections` always includes this one
//! connection (see [`Memcached::client_connections`]).

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::process::{file_len, free_port, read_text, read_text_from, tail, Proc, TempDir, POLL};

const START_TIMEOUT: Duration = Duration::from_secs(10);
const STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// A value carrying explicit memcached flags, for the `memcache` crate.
///
/// The crate's own value types (`&[u8]`, `&str`, `String`, numbers) always store flags 0;
/// its `ToMemcacheValue` trait is public, though, and `get_flags` is what it puts in the
/// `set` command, so this wrapper is all it takes to store e.g. flags 16 (pymemcache's
/// UTF-8 text) or a gzip bit.
pub struct Flagged<'a> {
    pub bytes: &'a [u8],
    pub flags: u32,
}

impl<W: Write> memcache::ToMemcacheValue<W> for Flagged<'_> {
    fn get_flags(&self) -> u32 {
        self.flags
    }

    fn get_length(&self) -> usize {
        self.bytes.len()
    }

    fn write_to(&self, stream: &mut W) -> io::Result<()> {
        stream.write_all(self.bytes)
    }
}

enum StartError {
    AddrInUse,
}

pub struct Memcached {
    host: IpAddr,
    proc: Option<Proc>,
    port: u16,
    extra_args: Vec<String>,
    log: PathBuf,
    stats_conn: Mutex<Option<BufReader<TcpStream>>>,
    paused: AtomicBool,
    dir: TempDir,
}

fn memcached_binary() -> String {
    super::process::env_path("RCACHE_MEMCACHED")
        .map_or_else(|| "memcached".into(), |p| p.display().to_string())
}

impl Memcached {
    /// Starts memcached on a free port and waits until it answers `stats`.
    pub fn start() -> Memcached {
        Memcached::start_with_args(&[])
    }

    /// Like [`Memcached::start`] with extra command-line arguments, e.g. `&["-I", "8m"]`.
    pub fn start_with_args(extra: &[&str]) -> Memcached {
        let dir = TempDir::new("memcached");
        let log = dir.path().join("memcached.log");
        let mut mc = Memcached {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            proc: None,
            port: 0,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            log,
            stats_conn: Mutex::new(None),
            paused: AtomicBool::new(false),
            dir,
        };
        for _ in 0..8 {
            let port = free_port();
            match mc.spawn_on(port) {
                Ok(()) => return mc,
                Err(StartError::AddrInUse) => continue, // lost the port race: new port
            }
        }
        panic!(
            "memcached: could not find a free port in 8 attempts; log:\n{}",
            tail(&read_text(&mc.log), 20)
        );
    }

    /// Starts memcached listening on `host`:`port` exactly (e.g. another loopback address
    /// on memcached's default port 11211, or `::1`), or None if that address is in use.
    pub fn start_at(host: IpAddr, port: u16) -> Option<Memcached> {
        let dir = TempDir::new("memcached");
        let log = dir.path().join("memcached.log");
        let mut mc = Memcached {
            host,
            proc: None,
            port: 0,
            extra_args: Vec::new(),
            log,
            stats_conn: Mutex::new(None),
            paused: AtomicBool::new(false),
            dir,
        };
        match mc.spawn_on(port) {
            Ok(()) => Some(mc),
            Err(StartError::AddrInUse) => None,
        }
    }

    fn spawn_on(&mut self, port: u16) -> Result<(), StartError> {
        let log_offset = file_len(&self.log);
        let mut cmd = Command::new(memcached_binary());
        cmd.args([
            "-l",
            &self.host.to_string(),
            "-p",
            &port.to_string(),
            "-U",
            "0",
            "-t",
            "1",
        ])
        .args(["-c", "4096"]);
        if super::process::is_root() {
            cmd.args(["-u", "root"]);
        }
        cmd.args(&self.extra_args);
        let mut proc = Proc::spawn("memcached", &mut cmd, &self.log);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = proc.try_exited() {
                let log = read_text_from(&self.log, log_offset);
                if log.contains("Address already in use") {
                    return Err(StartError::AddrInUse);
                }
                panic!(
                    "memcached {:?} exited at start ({status}); log:\n{}",
                    cmd,
                    tail(&log, 20)
                );
            }
            // Ready when the process on this port is ours: memcached reports its pid.
            if let Ok(conn) = TcpStream::connect((self.host, port)) {
                let _ = conn.set_read_timeout(Some(STATS_TIMEOUT));
                let _ = conn.set_write_timeout(Some(STATS_TIMEOUT));
                let mut conn = BufReader::new(conn);
                if let Ok(stats) = stats_over(&mut conn) {
                    if stats.get("pid").map(String::as_str) == Some(&proc.pid().to_string()) {
                        self.port = port;
                        self.proc = Some(proc);
                        *self.stats_conn.lock().expect("stats lock") = Some(conn);
                        self.paused.store(false, Ordering::SeqCst);
                        return Ok(());
                    }
                    // Someone else's server holds the port; ours will fail to bind.
                    proc.wait_exit(START_TIMEOUT);
                    return Err(StartError::AddrInUse);
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "memcached {:?} did not answer on port {port} within {START_TIMEOUT:?}; log:\n{}",
                    cmd,
                    tail(&read_text_from(&self.log, log_offset), 20)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// "127.0.0.1:<port>" (the host it listens on; "[::1]:<port>" for IPv6), as written in
    /// nginx configs.
    pub fn addr(&self) -> String {
        self.socket_addr().to_string()
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from((self.host, self.port))
    }

    /// PID of the running memcached (panics if stopped).
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("memcached is not running").pid()
    }

    /// A fresh `memcache` crate client (ASCII protocol, like pymemcache and Django; 5 s
    /// timeout). Each call opens its own pool of one connection.
    pub fn client(&self) -> memcache::Client {
        let url = format!("memcache://{}?protocol=ascii&timeout=5", self.socket_addr());
        memcache::Client::connect(url.as_str())
            .unwrap_or_else(|e| panic!("memcache client for {url}: {e}"))
    }

    /// Stores `value` under `key` with `flags` and `exptime` (seconds; 0 = never).
    ///
    /// Goes through the `memcache` crate (with [`Flagged`]) whenever it can. The crate
    /// takes keys as `&str`, so a key that is not UTF-8 (nginx's `$uri` is percent-decoded
    /// and can hold any byte) is written with a raw ASCII `set` instead. Keys that the ASCII
    /// protocol cannot carry (space, control bytes, over 250 bytes) panic: nginx could
    /// never ask for them.
    pub fn set_raw(&self, key: &[u8], value: &[u8], flags: u32, exptime: u32) {
        assert!(
            !key.is_empty() && key.len() <= 250 && key.iter().all(|&b| b > 0x20 && b != 0x7f),
            "set_raw: {key:?} is not a valid memcached ASCII key (1..=250 bytes, no space or control bytes)"
        );
        match std::str::from_utf8(key) {
            Ok(k) => self
                .client()
                .set(
                    k,
                    Flagged {
                        bytes: value,
                        flags,
                    },
                    exptime,
                )
                .unwrap_or_else(|e| panic!("memcache set {k:?} ({} bytes): {e}", value.len())),
            Err(_) => self.raw_set(key, value, flags, exptime),
        }
    }

    fn raw_set(&self, key: &[u8], value: &[u8], flags: u32, exptime: u32) {
        let what = format!("raw set {:?}", String::from_utf8_lossy(key));
        let mut s = TcpStream::connect(self.socket_addr())
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        s.set_read_timeout(Some(STATS_TIMEOUT))
            .expect("set_read_timeout");
        let mut cmd = b"set ".to_vec();
        cmd.extend_from_slice(key);
        cmd.extend_from_slice(format!(" {flags} {exptime} {}\r\n", value.len()).as_bytes());
        cmd.extend_from_slice(value);
        cmd.extend_from_slice(b"\r\n");
        s.write_all(&cmd)
            .unwrap_or_else(|e| panic!("{what}: write: {e}"));
        let mut reply = String::new();
        BufReader::new(s)
            .read_line(&mut reply)
            .unwrap_or_else(|e| panic!("{what}: read: {e}"));
        assert_eq!(reply, "STORED\r\n", "{what}: unexpected reply");
    }

    /// Reads `key` back with its flags (via the crate; UTF-8 keys only).
    pub fn get_raw(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.client()
            .get::<(Vec<u8>, u32)>(key)
            .unwrap_or_else(|e| panic!("memcache get {key:?}: {e}"))
    }

    /// The remaining time to live of `key` in seconds, from the meta command `mg <key> t`
    /// (over a new connection): `Some(-1)` for an item that never expires, `None` if the
    /// key is absent.
    pub fn ttl(&self, key: &str) -> Option<i64> {
        let what = format!("mg {key:?} t on {}", self.addr());
        let mut s = TcpStream::connect(self.socket_addr())
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        s.set_read_timeout(Some(STATS_TIMEOUT))
            .expect("set_read_timeout");
        s.write_all(format!("mg {key} t\r\n").as_bytes())
            .unwrap_or_else(|e| panic!("{what}: write: {e}"));
        let mut reply = String::new();
        BufReader::new(s)
            .read_line(&mut reply)
            .unwrap_or_else(|e| panic!("{what}: read: {e}"));
        let reply = reply.trim_end();
        if reply == "EN" {
            return None;
        }
        // "HD t<secs>" (no value asked for), or "VA <len> t<secs>" with the value after it.
        let ttl = reply
            .split(' ')
            .find_map(|w| w.strip_prefix('t'))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{what}: unexpected reply {reply:?}"));
        Some(ttl)
    }

    /// Looks up every key of `keys` (raw bytes, as the writer sent them: UTF-8 for a `str`
    /// key) with pipelined `get`s over one new connection; returns each key's value and
    /// flags, or None. For finding where a client put its keys; counts as one connection
    /// in [`Memcached::total_connections`].
    pub fn get_multi(&self, keys: &[&[u8]]) -> Vec<Option<(Vec<u8>, u32)>> {
        const BATCH: usize = 200;
        let what = format!("get_multi on {}", self.addr());
        let s = TcpStream::connect(self.socket_addr())
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        s.set_read_timeout(Some(STATS_TIMEOUT))
            .expect("set_read_timeout");
        let mut conn = BufReader::new(s);
        let mut out = Vec::with_capacity(keys.len());
        for batch in keys.chunks(BATCH) {
            let mut cmds = Vec::new();
            for key in batch {
                assert!(
                    !key.is_empty()
                        && key.len() <= 250
                        && key.iter().all(|&b| b > 0x20 && b != 0x7f),
                    "get_multi: {key:?} is not a valid memcached ASCII key"
                );
                cmds.extend_from_slice(b"get ");
                cmds.extend_from_slice(key);
                cmds.extend_from_slice(b"\r\n");
            }
            conn.get_mut()
                .write_all(&cmds)
                .unwrap_or_else(|e| panic!("{what}: write: {e}"));
            for key in batch {
                out.push(read_get_reply(&mut conn, key).unwrap_or_else(|e| {
                    panic!("{what}: reply for {:?}: {e}", String::from_utf8_lossy(key))
                }));
            }
        }
        out
    }

    /// `stats` as a map (over the fixture's persistent connection; reconnects once if it
    /// broke, e.g. after a restart). Panics if memcached does not answer (paused?).
    pub fn stats(&self) -> HashMap<String, String> {
        let mut guard = self.stats_conn.lock().expect("stats lock");
        for attempt in 0..2 {
            if guard.is_none() {
                match TcpStream::connect(self.socket_addr()) {
                    Ok(s) => {
                        let _ = s.set_read_timeout(Some(STATS_TIMEOUT));
                        let _ = s.set_write_timeout(Some(STATS_TIMEOUT));
                        *guard = Some(BufReader::new(s));
                    }
                    Err(e) => panic!("memcached stats: connect to {}: {e}", self.addr()),
                }
            }
            let conn = guard.as_mut().expect("stats connection was just set");
            match stats_over(conn) {
                Ok(stats) => return stats,
                Err(e) => {
                    *guard = None;
                    if attempt == 1 || self.paused.load(Ordering::SeqCst) {
                        panic!(
                            "memcached stats on {} failed: {e} (paused: {})",
                            self.addr(),
                            self.paused.load(Ordering::SeqCst)
                        );
                    }
                }
            }
        }
        unreachable!("stats loop returns or panics")
    }

    fn stat_u64(&self, name: &str) -> u64 {
        let stats = self.stats();
        stats
            .get(name)
            .unwrap_or_else(|| panic!("memcached stats has no {name:?}"))
            .parse()
            .unwrap_or_else(|e| panic!("memcached stat {name:?} is not a number: {e}"))
    }

    /// Connections memcached accepted since it started (its listener counts as one, as do
    /// the fixture's stats connection and each `client()`). Compare deltas.
    pub fn total_connections(&self) -> u64 {
        self.stat_u64("total_connections")
    }

    /// Open connections, including the fixture's own stats connection.
    pub fn curr_connections(&self) -> u64 {
        self.stat_u64("curr_connections")
    }

    /// Open connections other than the fixture's stats connection (e.g. nginx's pool,
    /// plus any live `client()`).
    pub fn client_connections(&self) -> u64 {
        self.curr_connections().saturating_sub(1)
    }

    /// Number of `get` keys requested (`cmd_get`).
    pub fn cmd_get(&self) -> u64 {
        self.stat_u64("cmd_get")
    }

    /// memcached's own stdout/stderr.
    pub fn log(&self) -> String {
        read_text(&self.log)
    }

    /// The fixture's temp dir.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Freezes memcached (SIGSTOP) and waits until it is stopped: connects still
    /// complete in the kernel, nothing is answered. Do not call `stats` while paused.
    pub fn pause(&self) {
        let pid = self.pid();
        super::process::kill(pid, libc::SIGSTOP)
            .unwrap_or_else(|e| panic!("SIGSTOP memcached {pid}: {e}"));
        assert!(
            super::process::wait_until(Duration::from_secs(5), || super::process::is_stopped(pid)),
            "memcached {pid} did not stop"
        );
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Undoes [`Memcached::pause`] (SIGCONT).
    pub fn resume(&self) {
        let pid = self.pid();
        super::process::kill(pid, libc::SIGCONT)
            .unwrap_or_else(|e| panic!("SIGCONT memcached {pid}: {e}"));
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Stops memcached and reaps it; its port is then closed (connects are refused) until
    /// [`Memcached::restart`]. Uses SIGKILL: memcached acts on SIGTERM only at its next
    /// once-a-second clock tick (measured: ~0.85 s per stop), and it has no state that a
    /// graceful exit would save.
    pub fn stop(&mut self) {
        *self.stats_conn.lock().expect("stats lock") = None;
        if let Some(mut p) = self.proc.take() {
            p.stop(libc::SIGKILL, Duration::from_secs(5));
        }
        self.paused.store(false, Ordering::SeqCst);
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        match self.proc.as_mut() {
            Some(p) => p.try_exited().is_none(),
            None => false,
        }
    }

    /// Stops (if running) and starts again on the same port: all data is gone, all
    /// connections to the old process are closed.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn_on(port) {
                Ok(()) => return,
                Err(StartError::AddrInUse) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(StartError::AddrInUse) => {
                    panic!("memcached restart: port {port} stayed in use for {START_TIMEOUT:?}")
                }
            }
        }
    }
}

/// Reads the reply to `get <key>`: `END`, or one `VALUE` block for `key` and `END`.
fn read_get_reply(
    conn: &mut BufReader<TcpStream>,
    key: &[u8],
) -> io::Result<Option<(Vec<u8>, u32)>> {
    let bad = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
    let mut line = Vec::new();
    conn.read_until(b'\n', &mut line)?;
    if line == b"END\r\n" {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&line).into_owned();
    let mut head = b"VALUE ".to_vec();
    head.extend_from_slice(key);
    head.push(b' ');
    let rest = line
        .strip_prefix(head.as_slice())
        .and_then(|r| r.strip_suffix(b"\r\n"))
        .ok_or_else(|| bad(format!("unexpected line {text:?}")))?;
    let rest = String::from_utf8_lossy(rest);
    let mut words = rest.split(' ');
    let flags: u32 = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| bad(format!("bad flags in {text:?}")))?;
    let len: usize = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| bad(format!("bad length in {text:?}")))?;
    let mut data = vec![0; len + 2];
    conn.read_exact(&mut data)?;
    if !data.ends_with(b"\r\n") {
        return Err(bad(format!("value of {text:?} not followed by CRLF")));
    }
    data.truncate(len);
    let mut end = Vec::new();
    conn.read_until(b'\n', &mut end)?;
    if end != b"END\r\n" {
        return Err(bad(format!(
            "no END after {text:?}: {:?}",
            String::from_utf8_lossy(&end)
        )));
    }
    Ok(Some((data, flags)))
}

/// Sends `stats` and reads `STAT name value` lines up to `END`.
fn stats_over(conn: &mut BufReader<TcpStream>) -> io::Result<HashMap<String, String>> {
    conn.get_mut().write_all(b"stats\r\n")?;
    let mut stats = HashMap::new();
    loop {
        let mut line = String::new();
        if conn.by_ref().take(64 * 1024).read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF in stats"));
        }
        let line = line.trim_end();
        if line == "END" {
            return Ok(stats);
        }
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("STAT"), Some(name), Some(value)) => {
                stats.insert(name.to_string(), value.to_string());
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected stats line {line:?}"),
                ))
            }
        }
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        if let Ok(mut g) = self.stats_conn.lock() {
            *g = None;
        }
        if let Some(mut p) = self.proc.take() {
            // SIGKILL also ends a paused (SIGSTOPped) memcached. See `stop` for why not TERM.
            p.stop(libc::SIGKILL, Duration::from_secs(5));
        }
    }
}
