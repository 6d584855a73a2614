//! The example Django site (`examples/django-blog`) under gunicorn, on an ephemeral
//! 127.0.0.1 port, with its own sqlite database.
//!
//! ```ignore
//! let django = Django::builder().env("BLOG_CACHE_MODE", "nginx-stores").start();
//! let nginx = Nginx::builder().var("app", django.addr()) ...;
//! assert_eq!(django.requests().len(), 0);
//! ```
//!
//! * The Python is env `RCACHE_DJANGO_PYTHON`, else `<crate>/target/django-env/bin/python3`,
//!   the venv `scripts/django-env.sh` creates (Django 4.2, pymemcache, gunicorn). Without
//!   it, [`Django::builder`] panics saying so.
//! * Each instance gets a temp dir with a fresh database (`manage.py migrate` and
//!   `manage.py seed_blog`: three posts, three comments, the superuser [`ADMIN_USER`] /
//!   [`ADMIN_PASSWORD`]) and its logs; the project itself is read from the source tree
//!   (with `PYTHONDONTWRITEBYTECODE`, so nothing is written there). So instances run in
//!   parallel.
//! * Every request Django handles is appended to `requests.log` (the project's
//!   `BLOG_REQUEST_LOG`) before Django handles it: [`Django::requests`] is exact as soon as
//!   the response has arrived.
//! * gunicorn (2 sync workers, `--preload`, so a project that does not import fails at
//!   start) is stopped with SIGQUIT on [`Django::stop`] and on drop; its workers are
//!   killed by PID if they outlive their master.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::process::{
    children_of, cmdline, env_path, free_port, is_alive, kill, pid_listens_on, read_text, tail,
    wait_until, Proc, TempDir, POLL,
};

pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "rcache-test-password";

const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_GRACE: Duration = Duration::from_secs(5);
const WORKERS: usize = 2;

/// The venv's Python; panics with how to make it.
pub fn python() -> PathBuf {
    let path = env_path("RCACHE_DJANGO_PYTHON").unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/django-env/bin/python3")
    });
    assert!(
        path.is_file(),
        "no Python with Django at {}: run scripts/django-env.sh (creates target/django-env \
         with Django 4.2, pymemcache and gunicorn) or set RCACHE_DJANGO_PYTHON=/path/to/python3",
        path.display()
    );
    path
}

/// `<crate>/examples/django-blog`.
pub fn project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/django-blog")
}

/// One request as Django's request log has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DjangoRequest {
    pub method: String,
    /// Path and query string.
    pub target: String,
    /// The `X-Rcache-Status` request header nginx sent (`-` without one).
    pub rcache: String,
}

impl DjangoRequest {
    fn parse(line: &str) -> Option<DjangoRequest> {
        let (method, rest) = line.split_once(' ')?;
        let (target, rcache) = rest.rsplit_once(' ')?;
        Some(DjangoRequest {
            method: method.to_string(),
            target: target.to_string(),
            rcache: rcache.to_string(),
        })
    }
}

#[derive(Clone, Debug, Default)]
pub struct DjangoBuilder {
    env: Vec<(String, String)>,
    port: Option<u16>,
}

/// Why gunicorn did not start.
#[derive(Debug)]
pub enum StartError {
    /// The port was taken.
    AddrInUse,
    Other(String),
}

impl DjangoBuilder {
    /// An environment variable for Django (see `blogsite/settings.py`), e.g.
    /// `BLOG_CACHE_MODE`, `RCACHE_PURGE_URL`, `BLOG_MEMCACHED`, `BLOG_CACHE_SECONDS`.
    pub fn env(mut self, name: &str, value: impl std::fmt::Display) -> Self {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Listen on exactly this port (e.g. one nginx was configured with already); default:
    /// a free one, picked again if it is taken meanwhile.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Starts gunicorn; panics with its log if it does not come up.
    pub fn start(self) -> Django {
        for _ in 0..5 {
            match self.try_start() {
                Ok(django) => return django,
                Err(StartError::AddrInUse) if self.port.is_none() => continue,
                Err(StartError::AddrInUse) => {
                    panic!("django: port {:?} is in use", self.port)
                }
                Err(StartError::Other(msg)) => panic!("{msg}"),
            }
        }
        panic!("django: could not find a free port in 5 attempts")
    }

    /// Creates the database and starts gunicorn once, on `port` or a free port.
    pub fn try_start(&self) -> Result<Django, StartError> {
        let python = python();
        let dir = TempDir::new("django");
        let db = dir.path().join("db.sqlite3");
        let request_log = dir.path().join("requests.log");
        for args in [
            &["migrate", "--noinput", "-v", "0"][..],
            &[
                "seed_blog",
                "--admin-user",
                ADMIN_USER,
                "--admin-password",
                ADMIN_PASSWORD,
            ][..],
        ] {
            let out = Command::new(&python)
                .arg(project_dir().join("manage.py"))
                .args(args)
                .current_dir(project_dir())
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .env("BLOG_DB", &db)
                .env_remove("RCACHE_PURGE_URL")
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
            assert!(
                out.status.success(),
                "manage.py {args:?} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut django = Django {
            proc: None,
            port: self.port.unwrap_or_else(free_port),
            builder: self.clone(),
            db,
            request_log,
            workers: Vec::new(),
            dir,
        };
        django.spawn()?;
        Ok(django)
    }
}

pub struct Django {
    proc: Option<Proc>,
    port: u16,
    builder: DjangoBuilder,
    db: PathBuf,
    request_log: PathBuf,
    /// Worker PIDs seen while it ran (killed if they outlive the master).
    workers: Vec<u32>,
    dir: TempDir,
}

impl Django {
    pub fn builder() -> DjangoBuilder {
        python(); // fail early, with the message saying how to get it
        DjangoBuilder::default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("gunicorn.log")
    }

    /// gunicorn's log (its own lines, Django's errors, the access log).
    pub fn log(&self) -> String {
        read_text(&self.log_path())
    }

    /// Every request Django has handled so far, in order.
    pub fn requests(&self) -> Vec<DjangoRequest> {
        read_text(&self.request_log)
            .lines()
            .filter_map(DjangoRequest::parse)
            .collect()
    }

    /// Requests handled so far for `target` (path and query) with `method`.
    pub fn requests_for(&self, method: &str, target: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.target == target)
            .count()
    }

    fn spawn(&mut self) -> Result<(), StartError> {
        let log = self.log_path();
        let offset = super::process::file_len(&log);
        let mut cmd = Command::new(python());
        cmd.args(["-m", "gunicorn", "--chdir"])
            .arg(project_dir())
            .args(["--bind", &self.addr(), "--workers", &WORKERS.to_string()])
            .args([
                "--preload",
                "--graceful-timeout",
                "2",
                "--access-logfile",
                "-",
            ])
            .arg("blogsite.wsgi")
            .current_dir(project_dir())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .env("BLOG_DB", &self.db)
            .env("BLOG_REQUEST_LOG", &self.request_log);
        for (n, v) in &self.builder.env {
            cmd.env(n, v);
        }
        let mut proc = Proc::spawn("gunicorn", &mut cmd, &log);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = super::process::read_text_from(&log, offset);
            if text.contains("Connection in use") {
                proc.stop(libc::SIGKILL, STOP_GRACE);
                return Err(StartError::AddrInUse);
            }
            if let Some(status) = proc.try_exited() {
                return Err(StartError::Other(format!(
                    "gunicorn exited at start ({status}); log:\n{}",
                    tail(&text, 40)
                )));
            }
            let workers = children_of(proc.pid());
            if pid_listens_on(proc.pid(), self.port) && workers.len() == WORKERS {
                self.workers = workers;
                self.proc = Some(proc);
                return Ok(());
            }
            if Instant::now() >= deadline {
                proc.stop(libc::SIGKILL, STOP_GRACE);
                return Err(StartError::Other(format!(
                    "gunicorn did not listen on {} with {WORKERS} workers within \
                     {START_TIMEOUT:?}; log:\n{}",
                    self.addr(),
                    tail(&text, 40)
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.try_exited().is_none())
    }

    /// Stops gunicorn (SIGQUIT: at once, without waiting for requests) and its workers.
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            self.workers.extend(children_of(proc.pid()));
            proc.stop(libc::SIGQUIT, STOP_GRACE);
        }
        // Workers exit with their master; kill any that did not (checking that the PID
        // still is a gunicorn process).
        for pid in std::mem::take(&mut self.workers) {
            let ours = || is_alive(pid) && cmdline(pid).is_some_and(|c| c.contains("gunicorn"));
            if ours() && !wait_until(STOP_GRACE, || !ours()) {
                let _ = kill(pid, libc::SIGKILL);
            }
        }
    }

    /// Starts gunicorn again on the same port with the same database.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("gunicorn did not start again on {}: {e:?}", self.addr());
        }
    }
}

impl Drop for Django {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- gunicorn log {} (tail) ---\n{}",
                self.log_path().display(),
                tail(&self.log(), 30)
            );
        }
    }
}
