//! Process, port and temp-dir plumbing shared by the fixtures.
//!
//! Every process a fixture starts is owned by a [`Proc`]: it is signalled only while it is
//! still our un-reaped child (so its PID cannot have been reused), and it is always killed
//! and reaped on drop.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often readiness polls look again.
pub const POLL: Duration = Duration::from_millis(10);

/// Asks the kernel for a currently free TCP port on 127.0.0.1.
///
/// The port is free only until someone else binds it: callers that start a server on it
/// must retry with a fresh port when the server reports "Address already in use".
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to pick a free port");
    listener
        .local_addr()
        .expect("local_addr of the port-picking listener")
        .port()
}

/// Polls `cond` every [`POLL`] until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}

/// Socket inodes of LISTEN sockets on 127.0.0.1:`port` or 0.0.0.0:`port`.
fn listening_inodes(port: u16) -> Vec<u64> {
    let Ok(table) = fs::read_to_string("/proc/net/tcp") else {
        return Vec::new();
    };
    let want = [
        format!("0100007F:{port:04X}"),
        format!("00000000:{port:04X}"),
    ];
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (cols.get(1)?, cols.get(3)?, cols.get(9)?);
            if *state == "0A" && want.iter().any(|w| w == local) {
                inode.parse().ok()
            } else {
                None
            }
        })
        .collect()
}

/// True if process `pid` holds a LISTEN socket on 127.0.0.1:`port` (or 0.0.0.0:`port`).
/// Reads /proc only, so the check opens no connection that would show up in the server's
/// logs or counters, and cannot be fooled by another process listening on that port.
pub fn pid_listens_on(pid: u32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        })
        .any(|inode| inodes.contains(&inode))
}

/// The environment variable `name` as a path; unset and empty both mean None.
pub fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Sends `sig` to `pid`.
pub fn kill(pid: u32, sig: i32) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The parent PID and state letter of `pid`, from `/proc/<pid>/stat`.
fn stat_of(pid: u32) -> Option<(u32, char)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ..."; comm may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

/// True if `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    matches!(stat_of(pid), Some((_, state)) if state != 'Z')
}

/// PIDs of the live (non-zombie) children of `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(
            |&pid| matches!(stat_of(pid), Some((ppid, state)) if ppid == parent && state != 'Z'),
        )
        .collect();
    pids.sort_unstable();
    pids
}

/// `/proc/<pid>/cmdline` with NULs turned into spaces (nginx rewrites it to its process
/// title, e.g. `nginx: worker process`).
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text: String = String::from_utf8_lossy(&raw).replace('\0', " ");
    Some(text.trim().to_string())
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Reads a file as (lossy) text; a missing file reads as "".
pub fn read_text(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    }
}

/// Reads `path` from byte `offset` on (for "what was logged since" checks).
pub fn read_text_from(path: &Path, offset: u64) -> String {
    let mut out = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut out);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Current size of a file (0 if missing).
pub fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// True when the process runs as root (nginx then needs `user root;` for its workers to
/// write temp files into our root-owned prefix; memcached needs `-u`).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A unique directory under `$TMPDIR/rcache-tests/`, removed on drop unless the
/// environment variable `RCACHE_KEEP_TMP` is set.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/rcache-tests/<kind>-<pid>-<n>-<nanos>`.
    pub fn new(kind: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let root = std::env::temp_dir().join("rcache-tests");
        fs::create_dir_all(&root)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
        loop {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = root.join(format!("{kind}-{}-{n}-{nanos}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => return TempDir { path },
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create temp dir {}: {e}", path.display()),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if env_path("RCACHE_KEEP_TMP").is_some() {
            eprintln!("RCACHE_KEEP_TMP: keeping {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A child process we own: killed (SIGKILL) and reaped on drop if still running.
pub struct Proc {
    child: Child,
    name: String,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with stdin from /dev/null and stdout+stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Proc {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{name}: cannot open {}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("{name}: cannot dup log fd: {e}"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot spawn {cmd:?}: {e}"));
        Proc {
            child,
            name: name.to_string(),
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited (reaping it), else None.
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            match self.child.try_wait() {
                Ok(status) => self.status = status,
                Err(e) => panic!("{}: try_wait failed: {e}", self.name),
            }
        }
        self.status
    }

    /// Sends `sig` if the process has not exited (and so has not been reaped: the PID
    /// still belongs to it). Returns false if it had already exited.
    pub fn signal(&mut self, sig: i32) -> bool {
        if self.try_exited().is_some() {
            return false;
        }
        kill(self.pid(), sig).is_ok()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(timeout, || self.try_exited().is_some());
        self.status
    }

    /// Sends `sig`, waits up to `grace`, then SIGKILLs; always reaps.
    /// Returns the exit status and whether the SIGKILL was needed.
    pub fn stop(&mut self, sig: i32, grace: Duration) -> (ExitStatus, bool) {
        if let Some(status) = self.try_exited() {
            return (status, false);
        }
        self.signal(libc::SIGCONT); // a stopped process would not act on `sig`
        self.signal(sig);
        if let Some(status) = self.wait_exit(grace) {
            return (status, false);
        }
        self.signal(libc::SIGKILL);
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("{}: wait after SIGKILL failed: {e}", self.name));
        self.status = Some(status);
        (status, true)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // No panicking here: this may run while a test is already unwinding.
        if self.status.is_none() && !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// True once every thread of `pid` is stopped (state `T` in `/proc/<pid>/task/*/stat`):
/// SIGSTOP takes effect asynchronously, after `kill` returned.
pub fn is_stopped(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|task| {
        fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            stat.rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .is_some_and(|state| state == "T")
        })
    })
}

/// Stops processes (SIGSTOP, waiting until they are stopped) until dropped (SIGCONT):
/// freezing nginx workers makes events pile up and be handled in one batch, in the order
/// they happened.
pub struct Frozen(Vec<u32>);

impl Frozen {
    pub fn pids(pids: Vec<u32>) -> Frozen {
        for &pid in &pids {
            kill(pid, libc::SIGSTOP).expect("SIGSTOP");
        }
        let stopped = wait_until(Duration::from_secs(5), || {
            pids.iter().all(|&p| is_stopped(p))
        });
        let frozen = Frozen(pids);
        assert!(stopped, "{:?} did not stop", frozen.0);
        frozen
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let _ = kill(pid, libc::SIGCONT);
        }
    }
}
