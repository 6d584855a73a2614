//! An nginx master + workers on an ephemeral port, with its own prefix directory.
//!
//! ```ignore
//! let nginx = Nginx::builder()
//!     .var("mc", memcached.port())
//!     .http("server { listen 127.0.0.1:{port}; location / { rcache_pass 127.0.0.1:{mc}; } }")
//!     .start();
//! let resp = http::get(nginx.port(), "/page");
//! ```
//!
//! The generated nginx.conf (see [`NginxBuilder::render`]) sets every path nginx would
//! otherwise take from its compiled-in defaults (pid, lock, error log, temp paths), so the
//! vendored nginx and Debian's `/usr/sbin/nginx` behave the same. nginx always runs as
//! `nginx -p <prefix> -c <prefix>/nginx.conf -e <prefix>/error.log`.

use std::fmt::Display;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use super::process::{
    children_of, cmdline, env_path, file_len, free_port, is_alive, is_root, kill, pid_listens_on,
    read_text, read_text_from, tail, wait_until, Proc, TempDir, POLL,
};

const START_TIMEOUT: Duration = Duration::from_secs(15);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);
const QUIT_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_GRACE: Duration = Duration::from_secs(5);
const LOG_TAIL: usize = 30;

/// The nginx binary: env `RCACHE_NGINX`, else `$DEP_NGINX_BUILD_DIR/nginx` as seen when
/// this test crate was compiled (the vendored build). Panics if it does not exist.
pub fn nginx_binary() -> PathBuf {
    let path = match env_path("RCACHE_NGINX") {
        Some(p) => p,
        None => match option_env!("DEP_NGINX_BUILD_DIR") {
            Some(dir) => Path::new(dir).join("nginx"),
            None => panic!(
                "no nginx binary: set RCACHE_NGINX=/path/to/nginx, or build the tests with \
                 `--features vendored` so that DEP_NGINX_BUILD_DIR is known"
            ),
        },
    };
    assert!(
        path.is_file(),
        "nginx binary {} does not exist (RCACHE_NGINX / DEP_NGINX_BUILD_DIR)",
        path.display()
    );
    path
}

/// The rcache module: env `RCACHE_MODULE`, else the newer of `<test exe dir>/librcache.so`
/// (target/<profile>/deps/, rebuilt by `cargo test`) and `<test exe dir>/../librcache.so`
/// (target/<profile>/, refreshed only by `cargo build`). Panics if none exists.
pub fn module_path() -> PathBuf {
    if let Some(p) = env_path("RCACHE_MODULE") {
        assert!(p.is_file(), "RCACHE_MODULE={} does not exist", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe of the test binary");
    let deps = exe.parent().expect("test binary has a parent dir");
    let profile_dir = deps.parent().expect("deps dir has a parent dir");
    let candidates = [deps.join("librcache.so"), profile_dir.join("librcache.so")];
    candidates
        .iter()
        .filter_map(|p| Some((fs::metadata(p).ok()?.modified().ok()?, p)))
        .max_by_key(|(mtime, _)| *mtime)
        .map(|(_, p)| p.clone())
        .unwrap_or_else(|| {
            panic!(
                "rcache module not found at {} or {}: build it (`cargo build --release \
                 --features vendored`) or set RCACHE_MODULE=/path/to/librcache.so",
                candidates[0].display(),
                candidates[1].display()
            )
        })
}

/// Result of `nginx -t`.
#[derive(Clone, Debug)]
pub struct ConfigCheck {
    pub ok: bool,
    /// nginx's stderr followed by its stdout.
    pub output: String,
}

/// Result of a graceful [`Nginx::quit`].
#[derive(Clone, Debug)]
pub struct Shutdown {
    /// The master's exit status.
    pub status: ExitStatus,
    /// `[alert]` and `[emerg]` lines of the whole error log (e.g. a worker that crashed:
    /// "worker process 123 exited on signal 11").
    pub alerts: Vec<String>,
    /// True if nginx did not exit within the timeout and was killed.
    pub timed_out: bool,
}

impl Shutdown {
    /// Exited by itself, with status 0 and no alert/emerg in the error log.
    pub fn is_clean(&self) -> bool {
        !self.timed_out && self.status.success() && self.alerts.is_empty()
    }
}

/// One line of the `rcache` access log format:
/// `$request_method $request_uri $status $body_bytes_sent rcache=$rcache_status`
/// (`rcache=-` when the module is not loaded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessEntry {
    pub method: String,
    pub uri: String,
    pub status: u16,
    pub bytes: u64,
    pub rcache: String,
}

impl AccessEntry {
    /// Parses a line of the `rcache` format (the URI may contain spaces).
    pub fn parse(line: &str) -> Option<AccessEntry> {
        let (method, rest) = line.split_once(' ')?;
        let mut right = rest.rsplitn(4, ' ');
        let rcache = right.next()?.strip_prefix("rcache=")?;
        let bytes = right.next()?.parse().ok()?;
        let status = right.next()?.parse().ok()?;
        let uri = right.next()?;
        Some(AccessEntry {
            method: method.to_string(),
            uri: uri.to_string(),
            status,
            bytes,
            rcache: rcache.to_string(),
        })
    }
}

#[derive(Clone, Debug)]
pub struct NginxBuilder {
    http: String,
    main: String,
    vars: Vec<(String, String)>,
    workers: usize,
    with_module: bool,
    error_log_level: String,
}

const BUILTIN_VARS: [&str; 2] = ["port", "prefix"];

impl NginxBuilder {
    /// Appends `snippet` inside `http {}`. Placeholders: `{port}` (the port picked for
    /// this instance), `{prefix}` (its prefix dir) and any `.var()`.
    pub fn http(mut self, snippet: &str) -> Self {
        self.http.push_str(snippet);
        self.http.push('\n');
        self
    }

    /// Appends `snippet` to the main (top-level) context, e.g. `thread_pool ...;`.
    pub fn main(mut self, snippet: &str) -> Self {
        self.main.push_str(snippet);
        self.main.push('\n');
        self
    }

    /// Defines the placeholder `{name}` for the snippets.
    pub fn var(mut self, name: &str, value: impl Display) -> Self {
        assert!(
            !BUILTIN_VARS.contains(&name),
            "{{{name}}} is set by the fixture; pick another name"
        );
        self.vars.retain(|(n, _)| n != name);
        self.vars.push((name.to_string(), value.to_string()));
        self
    }

    /// `worker_processes` (default 1).
    pub fn workers(mut self, n: usize) -> Self {
        assert!(n >= 1, "worker_processes must be at least 1");
        self.workers = n;
        self
    }

    /// Whether to `load_module` rcache (default true).
    pub fn with_module(mut self, yes: bool) -> Self {
        self.with_module = yes;
        self
    }

    /// Level of the main `error_log` (default `info`).
    pub fn error_log_level(mut self, level: &str) -> Self {
        self.error_log_level = level.to_string();
        self
    }

    /// The nginx.conf this builder produces for `prefix` and `port`.
    pub fn render(&self, prefix: &Path, port: u16) -> String {
        let p = prefix.display();
        let module = if self.with_module {
            format!("load_module {};\n", module_path().display())
        } else {
            String::new()
        };
        let user = if is_root() { "user root;\n" } else { "" };
        let rcache_var = if self.with_module {
            "$rcache_status"
        } else {
            "-"
        };
        let conf = format!(
            "# generated by tests/common/nginx.rs\n\
             {module}\
             daemon off;\n\
             master_process on;\n\
             worker_processes {workers};\n\
             {user}\
             pid {p}/nginx.pid;\n\
             lock_file {p}/nginx.lock;\n\
             error_log {p}/error.log {level};\n\
             {main}\n\
             events {{ worker_connections 1024; }}\n\
             \n\
             http {{\n\
             log_format rcache '$request_method $request_uri $status $body_bytes_sent rcache={rcache_var}';\n\
             access_log {p}/access.log rcache;\n\
             client_body_temp_path {p}/client_body_temp;\n\
             proxy_temp_path {p}/proxy_temp;\n\
             fastcgi_temp_path {p}/fastcgi_temp;\n\
             uwsgi_temp_path {p}/uwsgi_temp;\n\
             scgi_temp_path {p}/scgi_temp;\n\
             \n\
             {http}\n\
             }}\n",
            workers = self.workers,
            level = self.error_log_level,
            main = self.main,
            http = self.http,
        );
        self.substitute(&conf, prefix, port)
    }

    fn substitute(&self, conf: &str, prefix: &Path, port: u16) -> String {
        let mut values: Vec<(&str, String)> = vec![
            ("port", port.to_string()),
            ("prefix", prefix.display().to_string()),
        ];
        values.extend(self.vars.iter().map(|(n, v)| (n.as_str(), v.clone())));
        let (out, unknown) = substitute_placeholders(conf, &values);
        assert!(
            unknown.is_empty(),
            "nginx config uses undefined placeholders {unknown:?}: define them with \
             .var(name, value)\n{out}"
        );
        out
    }

    fn write_conf(&self, prefix: &Path, port: u16) -> PathBuf {
        let conf = prefix.join("nginx.conf");
        fs::write(&conf, self.render(prefix, port))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
        conf
    }

    /// Runs `nginx -t` on the config (in a throw-away prefix).
    pub fn check_config(&self) -> ConfigCheck {
        let binary = nginx_binary();
        let dir = TempDir::new("nginx-t");
        let conf = self.write_conf(dir.path(), free_port());
        let out = Command::new(&binary)
            .arg("-t")
            .args(prefix_args(dir.path(), &conf))
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} -t: {e}", binary.display()));
        let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stdout));
        ConfigCheck {
            ok: out.status.success(),
            output,
        }
    }

    /// Starts nginx; panics (with the error log) if it does not come up.
    pub fn start(self) -> Nginx {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts nginx: picks a free port, writes the config, spawns the master, and waits
    /// until the master listens on the port (if the config uses `{port}`) and all workers
    /// run. Retries with a new port if the port was taken meanwhile. Err holds the reason
    /// and the log tails.
    pub fn try_start(self) -> Result<Nginx, String> {
        let binary = nginx_binary();
        for _attempt in 0..5 {
            let dir = TempDir::new("nginx");
            let port = free_port();
            let conf = self.write_conf(dir.path(), port);
            let stderr_log = dir.path().join("stderr.log");
            let mut cmd = Command::new(&binary);
            cmd.args(prefix_args(dir.path(), &conf));
            let proc = Proc::spawn("nginx", &mut cmd, &stderr_log);
            let mut nginx = Nginx {
                proc,
                port,
                builder: self.clone(),
                conf,
                quit: None,
                dir,
            };
            match nginx.wait_started() {
                Ok(()) => return Ok(nginx),
                Err(StartFailure::AddrInUse) => continue, // nginx is dropped = stopped
                Err(StartFailure::Other(msg)) => return Err(msg),
            }
        }
        Err("nginx: could not bind a free port in 5 attempts".to_string())
    }
}

/// `-p <prefix>/ -c <conf> -e <prefix>/error.log`
fn prefix_args(prefix: &Path, conf: &Path) -> Vec<String> {
    vec![
        "-p".into(),
        format!("{}/", prefix.display()),
        "-c".into(),
        conf.display().to_string(),
        "-e".into(),
        prefix.join("error.log").display().to_string(),
    ]
}

/// Replaces each `{identifier}` (a letter or `_`, then letters, digits, `_`) with its
/// value; returns the text and the placeholders that have no value. Left alone: regex
/// quantifiers such as `{2}` or `{1,3}`, nginx's own `${variable}` syntax, and blocks.
fn substitute_placeholders(conf: &str, values: &[(&str, String)]) -> (String, Vec<String>) {
    let mut out = String::with_capacity(conf.len());
    let mut unknown = Vec::new();
    let mut rest = conf;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let ident_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let ident = &after[..ident_len];
        let is_placeholder = !ident.is_empty()
            && !ident.starts_with(|c: char| c.is_ascii_digit())
            && after[ident_len..].starts_with('}')
            && !out.ends_with('$');
        if is_placeholder {
            match values.iter().find(|(n, _)| *n == ident) {
                Some((_, v)) => out.push_str(v),
                None => {
                    unknown.push(format!("{{{ident}}}"));
                    out.push_str(&rest[open..open + ident_len + 2]);
                }
            }
            rest = &after[ident_len + 1..];
        } else {
            out.push('{');
            rest = after;
        }
    }
    out.push_str(rest);
    (out, unknown)
}

enum StartFailure {
    AddrInUse,
    Other(String),
}

pub struct Nginx {
    proc: Proc,
    port: u16,
    builder: NginxBuilder,
    conf: PathBuf,
    quit: Option<Shutdown>,
    dir: TempDir,
}

impl Nginx {
    pub fn builder() -> NginxBuilder {
        NginxBuilder {
            http: String::new(),
            main: String::new(),
            vars: Vec::new(),
            workers: 1,
            with_module: true,
            error_log_level: "info".to_string(),
        }
    }

    fn wait_started(&mut self) -> Result<(), StartFailure> {
        let needs_port =
            self.builder.http.contains("{port}") || self.builder.main.contains("{port}");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = self.error_log();
            if log.contains("Address already in use") {
                return Err(StartFailure::AddrInUse); // drop stops it (no workers yet)
            }
            if let Some(status) = self.proc.try_exited() {
                return Err(StartFailure::Other(format!(
                    "nginx exited at start ({status})\n{}",
                    self.diagnostics()
                )));
            }
            let listening = !needs_port || pid_listens_on(self.pid(), self.port);
            if listening && self.worker_pids().len() == self.builder.workers {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StartFailure::Other(format!(
                    "nginx did not start within {START_TIMEOUT:?} (listening on {}: {listening}, \
                     workers: {:?})\n{}",
                    self.port,
                    self.worker_pids(),
                    self.diagnostics()
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Prefix, config and log tails, for failure messages.
    pub fn diagnostics(&self) -> String {
        let log = self.error_log();
        let hint = if log.contains("module") && log.contains("instead of") {
            "hint: the module was built for another nginx version; with RCACHE_NGINX set, \
             point RCACHE_MODULE at a build for that nginx \
             (scripts/build-for-installed-nginx.sh -> target/debian/release/librcache.so)\n"
        } else {
            ""
        };
        format!(
            "{hint}prefix: {}\n--- error.log (tail) ---\n{}\n--- stderr/stdout (tail) ---\n{}\n--- nginx.conf ---\n{}",
            self.prefix().display(),
            tail(&log, LOG_TAIL),
            tail(&read_text(&self.prefix().join("stderr.log")), LOG_TAIL),
            self.config_text()
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// The master's PID.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn prefix(&self) -> &Path {
        self.dir.path()
    }

    /// The nginx.conf in use.
    pub fn config_text(&self) -> String {
        read_text(&self.conf)
    }

    pub fn error_log(&self) -> String {
        read_text(&self.error_log_path())
    }

    pub fn error_log_path(&self) -> PathBuf {
        self.prefix().join("error.log")
    }

    /// Error log text written after byte `offset` (take it with [`Self::error_log_len`]).
    pub fn error_log_since(&self, offset: u64) -> String {
        read_text_from(&self.error_log_path(), offset)
    }

    pub fn error_log_len(&self) -> u64 {
        file_len(&self.error_log_path())
    }

    /// `[alert]` and `[emerg]` lines of the error log.
    pub fn alerts(&self) -> Vec<String> {
        alert_lines(&self.error_log())
    }

    /// The access log (format `rcache`, see [`AccessEntry`]).
    pub fn access_log(&self) -> String {
        read_text(&self.prefix().join("access.log"))
    }

    /// Access log lines parsed as [`AccessEntry`] (lines of other formats are skipped).
    pub fn access_entries(&self) -> Vec<AccessEntry> {
        self.access_log()
            .lines()
            .filter_map(AccessEntry::parse)
            .collect()
    }

    /// Waits until the access log has at least `n` lines (nginx logs a request after the
    /// response is sent, so a client can see the response first). Panics after `timeout`.
    pub fn wait_access_entries(&self, n: usize, timeout: Duration) -> Vec<AccessEntry> {
        let ok = wait_until(timeout, || self.access_log().lines().count() >= n);
        assert!(
            ok,
            "waited {timeout:?} for {n} access log lines; have:\n{}",
            self.access_log()
        );
        self.access_entries()
    }

    /// PIDs of the current (not shutting down) worker processes.
    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.pid())
            .into_iter()
            .filter(|&pid| {
                cmdline(pid).is_some_and(|c| {
                    c.starts_with("nginx: worker process") && !c.contains("shutting down")
                })
            })
            .collect()
    }

    /// Replaces the `http {}` snippet in nginx.conf (same port, prefix and vars). Call
    /// [`Self::reload`] to apply it.
    pub fn set_http(&mut self, snippet: &str) {
        self.builder.http = format!("{snippet}\n");
        self.builder.write_conf(self.dir.path(), self.port);
    }

    /// Sends SIGHUP and waits until a full set of new workers runs and every old worker
    /// has exited. Returns the new worker PIDs; panics (with the log) if nginx rejected
    /// the config or did not finish in time.
    pub fn reload(&mut self) -> Vec<u32> {
        self.try_reload().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Self::reload`], but Err(error log since the SIGHUP) if nginx rejects the new
    /// config (it then keeps running with the old one).
    pub fn try_reload(&mut self) -> Result<Vec<u32>, String> {
        let old = self.worker_pids();
        let offset = self.error_log_len();
        assert!(
            self.proc.signal(libc::SIGHUP),
            "nginx master is not running:\n{}",
            self.diagnostics()
        );
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        let new = loop {
            let since = self.error_log_since(offset);
            if since.contains("[emerg]") {
                return Err(format!("nginx rejected the reload:\n{since}"));
            }
            if self.proc.try_exited().is_some() {
                panic!("nginx master exited during reload\n{}", self.diagnostics());
            }
            let now = self.worker_pids();
            if now.len() == self.builder.workers && now.iter().all(|p| !old.contains(p)) {
                break now;
            }
            assert!(
                Instant::now() < deadline,
                "reload: no new workers within {RELOAD_TIMEOUT:?} (old {old:?}, now {now:?})\n{}",
                self.diagnostics()
            );
            std::thread::sleep(POLL);
        };
        let gone = wait_until(RELOAD_TIMEOUT, || old.iter().all(|&p| !is_alive(p)));
        assert!(
            gone,
            "reload: old workers {old:?} still alive after {RELOAD_TIMEOUT:?} (a request in \
             flight?)\n{}",
            self.diagnostics()
        );
        Ok(new)
    }

    /// Graceful stop (SIGQUIT): waits for the master to exit (SIGKILL after a timeout)
    /// and reports its status and the alert/emerg lines of the error log.
    pub fn quit(&mut self) -> Shutdown {
        if let Some(done) = &self.quit {
            return done.clone();
        }
        let family = self.family();
        let (status, timed_out) = self.proc.stop(libc::SIGQUIT, QUIT_TIMEOUT);
        kill_leftovers(&family);
        let done = Shutdown {
            status,
            alerts: self.alerts(),
            timed_out,
        };
        self.quit = Some(done.clone());
        done
    }

    /// All children of the master (workers, also those shutting down; cache processes).
    fn family(&self) -> Vec<u32> {
        children_of(self.pid())
    }
}

/// SIGKILLs processes of a stopped nginx that outlived their master (only those that
/// still look like nginx processes, in case a PID was reused).
fn kill_leftovers(pids: &[u32]) {
    for &pid in pids {
        if is_alive(pid) && cmdline(pid).is_some_and(|c| c.starts_with("nginx")) {
            let _ = kill(pid, libc::SIGKILL);
        }
    }
}

fn alert_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("[alert]") || l.contains("[emerg]"))
        .map(str::to_string)
        .collect()
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- nginx {} (test panicked) ---\n{}",
                self.port,
                self.diagnostics()
            );
        }
        if self.quit.is_none() {
            let family = self.family();
            // Fast shutdown: the master TERMs its workers and waits for them.
            self.proc.stop(libc::SIGTERM, STOP_GRACE);
            kill_leftovers(&family);
        }
    }
}
