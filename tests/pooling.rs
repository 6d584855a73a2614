//! Connection pooling against a real memcached: however rcache is pointed at memcached
//! (`host:port`, an `upstream {}` block without `keepalive`, `unix:`), memcached sees at
//! most workers × `rcache_keepalive` connections over any number of requests; the pool
//! caps idle connections, not concurrent ones; reloads, graceful quits, restarts and
//! a frozen memcached neither leak connections nor turn into errors.
//!
//! memcached's `total_connections` counter is read through the fixture's own persistent
//! stats connection, so reading it opens no connection; deltas count nginx's connects.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::http::{self, LoadResult, Response};
use common::process::{env_path, is_root, Proc, TempDir};
use common::*;

/// rcache's default `rcache_keepalive`.
const DEFAULT_KEEPALIVE: u64 = 64;

/// The cached page: 4 KiB of binary bytes, with an "END" line inside for good measure.
fn page() -> Vec<u8> {
    let mut v = bytes(4096, 42);
    v[1000..1007].copy_from_slice(b"\r\nEND\r\n");
    v
}

/// A server block: `/` passes to `pass` (with `extra` directives) and falls back to the
/// app; `$rcache_status` is in `X-Rcache-Status`.
fn server(pass: &str, extra: &str) -> String {
    format!(
        "server {{
            listen 127.0.0.1:{{port}};
            add_header X-Rcache-Status $rcache_status always;
            location / {{ rcache_pass {pass}; rcache_fallback @app; {extra} }}
            location @app {{ proxy_pass http://127.0.0.1:{{app}}; }}
        }}"
    )
}

fn is_hit(r: &Response, value: &[u8]) -> bool {
    r.status == 200 && r.header("x-rcache-status") == Some("HIT") && r.body == value
}

fn is_fallback(r: &Response, status: &str) -> bool {
    r.status == 200 && r.header("x-rcache-status") == Some(status) && r.body.starts_with(b"app=1\n")
}

fn assert_all_ok(what: &str, result: &LoadResult, total: usize) {
    assert!(
        result.all_ok() && result.count(200) == total,
        "{what}: not every one of {total} requests was right: {result:?}"
    );
}

fn serious_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("[alert]") || l.contains("[crit]") || l.contains("[emerg]"))
        .map(str::to_string)
        .collect()
}

fn assert_no_serious_log_lines(nginx: &Nginx) {
    let bad = serious_lines(&nginx.error_log());
    assert!(bad.is_empty(), "alert/crit/emerg:\n{}", bad.join("\n"));
}

/// 10 000 HITs over 50 keep-alive clients through 2 workers; returns memcached's
/// `total_connections` growth, measured with `total_connections`.
fn reuse_bound(what: &str, nginx: &Nginx, total_connections: &dyn Fn() -> u64) -> u64 {
    const REQUESTS: usize = 10_000;
    const CLIENTS: usize = 50;
    const WORKERS: u64 = 2;
    let value = page();
    let before = total_connections();
    let result = http::load_with(nginx.port(), "GET", "/page", &[], REQUESTS, CLIENTS, |r| {
        is_hit(r, &value)
    });
    let delta = total_connections() - before;
    println!(
        "{what}: {REQUESTS} HITs over {CLIENTS} clients, 2 workers: memcached \
         total_connections +{delta} (bound {}), {:.0} req/s",
        WORKERS * DEFAULT_KEEPALIVE,
        result.rate()
    );
    assert_all_ok(what, &result, REQUESTS);
    assert!(
        delta <= WORKERS * DEFAULT_KEEPALIVE,
        "{what}: memcached saw {delta} new connections for {REQUESTS} requests; the pool \
         allows at most {} (2 workers x rcache_keepalive 64)",
        WORKERS * DEFAULT_KEEPALIVE
    );
    let entries = nginx.wait_access_entries(REQUESTS, SECOND * 5);
    assert!(entries.iter().all(|e| e.rcache == "HIT"));
    assert_no_serious_log_lines(nginx);
    delta
}

#[test]
fn reuse_bound_rcache_pass_host_port() {
    let mc = Memcached::start();
    mc.set_raw(b"/page", &page(), 0, 0);
    let app = App::start();
    let nginx = Nginx::builder()
        .workers(2)
        .var("mc", mc.port())
        .var("app", app.port())
        .http(&server("127.0.0.1:{mc}", ""))
        .start();
    reuse_bound("rcache_pass 127.0.0.1:port", &nginx, &|| {
        mc.total_connections()
    });
    assert!(mc.client_connections() <= 2 * DEFAULT_KEEPALIVE);
    assert_eq!(app.requests(), 0, "no request reached the fallback");
}

#[test]
fn reuse_bound_upstream_block_without_keepalive() {
    let mc = Memcached::start();
    mc.set_raw(b"/page", &page(), 0, 0);
    let app = App::start();
    let nginx = Nginx::builder()
        .workers(2)
        .var("mc", mc.port())
        .var("app", app.port())
        .http("upstream mc { server 127.0.0.1:{mc}; }")
        .http(&server("mc", ""))
        .start();
    reuse_bound("upstream mc {} without keepalive", &nginx, &|| {
        mc.total_connections()
    });
    assert!(mc.client_connections() <= 2 * DEFAULT_KEEPALIVE);
    assert_eq!(app.requests(), 0, "no request reached the fallback");
}

/// memcached listening on a unix socket only (`-s <path> -a 0777`; this disables TCP,
/// which the [`Memcached`] fixture needs, hence this small stand-in).
struct UnixMemcached {
    proc: Proc,
    path: PathBuf,
    stats: Mutex<BufReader<UnixStream>>,
    _dir: TempDir,
}

impl UnixMemcached {
    fn start() -> UnixMemcached {
        let dir = TempDir::new("memcached-unix");
        let path = dir.path().join("mc.sock");
        let log = dir.path().join("memcached.log");
        let binary = env_path("RCACHE_MEMCACHED").unwrap_or_else(|| "memcached".into());
        let mut cmd = Command::new(binary);
        cmd.arg("-s")
            .arg(&path)
            .args(["-a", "0777", "-U", "0", "-t", "1", "-c", "4096"]);
        if is_root() {
            cmd.args(["-u", "root"]);
        }
        let mut proc = Proc::spawn("memcached-unix", &mut cmd, &log);
        let mut stats = None;
        let up = wait_until(SECOND * 10, || {
            assert!(
                proc.try_exited().is_none(),
                "memcached -s exited: {}",
                common::process::read_text(&log)
            );
            stats = UnixStream::connect(&path).ok();
            stats.is_some()
        });
        assert!(up, "memcached did not listen on {}", path.display());
        let stats = stats.expect("connected");
        stats
            .set_read_timeout(Some(SECOND * 5))
            .expect("set_read_timeout");
        UnixMemcached {
            proc,
            path,
            stats: Mutex::new(BufReader::new(stats)),
            _dir: dir,
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// `set` over a connection of its own.
    fn set(&self, key: &str, value: &[u8]) {
        let mut s = UnixStream::connect(&self.path).expect("connect to memcached socket");
        s.set_read_timeout(Some(SECOND * 5)).expect("timeout");
        let mut cmd = format!("set {key} 0 0 {}\r\n", value.len()).into_bytes();
        cmd.extend_from_slice(value);
        cmd.extend_from_slice(b"\r\n");
        s.write_all(&cmd).expect("write set");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("read reply");
        assert_eq!(line, "STORED\r\n");
    }

    fn stat(&self, name: &str) -> u64 {
        let mut conn = self.stats.lock().expect("stats lock");
        conn.get_mut().write_all(b"stats\r\n").expect("write stats");
        let mut found = None;
        loop {
            let mut line = String::new();
            assert!(conn.read_line(&mut line).expect("read stats") > 0, "EOF");
            let line = line.trim_end();
            if line == "END" {
                break;
            }
            let mut words = line.split(' ');
            if words.nth(1) == Some(name) {
                found = words.next().and_then(|v| v.parse().ok());
            }
        }
        found.unwrap_or_else(|| panic!("no stat {name}"))
    }

    fn total_connections(&self) -> u64 {
        self.stat("total_connections")
    }

    /// Open connections other than the stats one.
    fn client_connections(&self) -> u64 {
        self.stat("curr_connections") - 1
    }
}

impl Drop for UnixMemcached {
    fn drop(&mut self) {
        self.proc.stop(libc::SIGKILL, SECOND * 5);
    }
}

#[test]
fn reuse_bound_unix_socket() {
    let mc = UnixMemcached::start();
    mc.set("/page", &page());
    let app = App::start();
    let nginx = Nginx::builder()
        .workers(2)
        .var("sock", mc.path().display())
        .var("app", app.port())
        .http(&server("unix:{sock}", ""))
        .start();
    reuse_bound("rcache_pass unix:/path", &nginx, &|| mc.total_connections());
    assert!(mc.client_connections() <= 2 * DEFAULT_KEEPALIVE);
    assert_eq!(app.requests(), 0, "no request reached the fallback");
}

#[test]
fn keepalive_0_connects_per_request() {
    const REQUESTS: usize = 300;
    let mc = Memcached::start();
    mc.set_raw(b"/page", &page(), 0, 0);
    let app = App::start();
    let nginx = Nginx::builder()
        .workers(2)
        .var("mc", mc.port())
        .var("app", app.port())
        .http(&server("127.0.0.1:{mc}", "rcache_keepalive 0;"))
        .start();
    let value = page();
    let before = mc.total_connections();
    let result = http::load_with(nginx.port(), "GET", "/page", &[], REQUESTS, 5, |r| {
        is_hit(r, &value)
    });
    let delta = mc.total_connections() - before;
    println!("rcache_keepalive 0: {REQUESTS} requests, total_connections +{delta}");
    assert_all_ok("rcache_keepalive 0", &result, REQUESTS);
    assert_eq!(
        delta, REQUESTS as u64,
        "rcache_keepalive 0: one connection per request"
    );
    assert!(
        wait_until(SECOND * 2, || mc.client_connections() == 0),
        "rcache_keepalive 0 keeps no idle connection: {} open",
        mc.client_connections()
    );
    assert_no_serious_log_lines(&nginx);
}

#[test]
fn keepalive_is_the_idle_count_at_rest_not_a_cap_under_load() {
    // rcache_keepalive 2 with 20 concurrent clients: a worker has up to 20 lookups in
    // flight. Connections follow the load up (they are not closed and reopened for every
    // batch of requests, as nginx's own keepalive does beyond its limit) and come back
    // down to 2 idle per worker about 10 s after the load (the surplus's idle timeout).
    const REQUESTS: usize = 3000;
    let mc = Memcached::start();
    mc.set_raw(b"/page", &page(), 0, 0);
    let app = App::start();
    let nginx = Nginx::builder()
        .workers(2)
        .var("mc", mc.port())
        .var("app", app.port())
        .http(&server("127.0.0.1:{mc}", "rcache_keepalive 2;"))
        .start();
    let value = page();
    let before = mc.total_connections();
    let result = http::load_with(nginx.port(), "GET", "/page", &[], REQUESTS, 20, |r| {
        is_hit(r, &value)
    });
    let delta = mc.total_connections() - before;
    println!("rcache_keepalive 2, 20 clients: {REQUESTS} requests, total_connections +{delta}");
    assert_all_ok("rcache_keepalive 2", &result, REQUESTS);
    assert!(
        delta > 2 * 2,
        "20 concurrent clients need more than 2 workers x 2 connections at once ({delta})"
    );
    assert!(
        delta <= 2 * 20,
        "connections follow the concurrency (at most 20 per worker), not the request \
         count: +{delta} for {REQUESTS} requests"
    );
    // The surplus outlives a short lull (it closes after 10 s idle, not at once) ...
    std::thread::sleep(SECOND * 3);
    let lull = mc.client_connections();
    assert!(
        lull > 2 * 2,
        "3 s after the load, the surplus must still be open: {lull} connections"
    );
    // ... and once the load is over for good, each worker keeps at most 2 idle connections.
    let mut open = 0;
    assert!(
        wait_until(SECOND * 13, || {
            open = mc.client_connections();
            open <= 2 * 2
        }),
        "{open} idle connections stay open; rcache_keepalive 2 x 2 workers allows 4"
    );
    assert!(open >= 1, "some connection was kept");
    assert_no_serious_log_lines(&nginx);
}

#[test]
fn two_hundred_clients_do_not_make_connections_churn() {
    // The default rcache_keepalive (64) is below the 200 lookups one worker can have in
    // flight: the surplus stays open while the load lasts, so new connections stay far
    // below one per thousand requests.
    const REQUESTS: usize = 20_000;
    let mc = Memcached::start();
    mc.set_raw(b"/page", &page(), 0, 0);
    let app = App::start();
    let nginx = Nginx::builder()
        .workers(1)
        .main("worker_rlimit_nofile 4096;")
        .var("mc", mc.port())
        .var("app", app.port())
        .http(&server("127.0.0.1:{mc}", ""))
        .start();
    let value = page();
    let before = mc.total_connections();
    let result = http::load_with(nginx.port(), "GET", "/page", &[], REQUESTS, 200, |r| {
        is_hit(r, &value)
    });
    let delta = mc.total_connections() - before;
    println!("default config, 200 clients: {REQUESTS} requests, total_connections +{delta}");
    assert_all_ok("200 clients", &result, REQUESTS);
    assert!(
        delta <= 220,
        "+{delta} memcached connections for {REQUESTS} requests over 200 clients \
         (the load needs about 200 at once)"
    );
    assert_no_serious_log_lines(&nginx);
}

#[test]
fn keepalive_is_per_server() {
    // Round robin over two servers, one worker, one idle connection per server: a pool
    // shared by the servers would thrash; per server, each keeps its one connection.
    let a = Memcached::start();
    let b = Memcached::start();
    for mc in [&a, &b] {
        mc.set_raw(b"/page", &page(), 0, 0);
    }
    let app = App::start();
    let nginx = Nginx::builder()
        .workers(1)
        .var("a", a.port())
        .var("b", b.port())
        .var("app", app.port())
        .http("upstream two { server 127.0.0.1:{a}; server 127.0.0.1:{b}; }")
        .http(&server("two", "rcache_keepalive 1;"))
        .start();
    let (a0, b0) = (a.total_connections(), b.total_connections());
    let (ga, gb) = (a.cmd_get(), b.cmd_get());
    let value = page();
    for _ in 0..40 {
        let r = http::get(nginx.port(), "/page");
        assert!(
            is_hit(&r, &value),
            "{} {:?}",
            r.status,
            r.header("x-rcache-status")
        );
    }
    assert_eq!(a.cmd_get() - ga + b.cmd_get() - gb, 40);
    assert!(
        a.cmd_get() > ga && b.cmd_get() > gb,
        "both servers were used"
    );
    assert_eq!(
        (a.total_connections() - a0, b.total_connections() - b0),
        (1, 1),
        "one connection per server, reused"
    );
    assert_no_serious_log_lines(&nginx);
}

#[test]
fn graceful_quit_closes_pooled_connections() {
    let mc = Memcached::start();
    mc.set_raw(b"/page", &page(), 0, 0);
    let app = App::start();
    let mut nginx = Nginx::builder()
        .workers(2)
        .var("mc", mc.port())
        .var("app", app.port())
        .http(&server("127.0.0.1:{mc}", ""))
        .start();
    let value = page();
    let result = http::load_with(nginx.port(), "GET", "/page", &[], 1000, 20, |r| {
        is_hit(r, &value)
    });
    assert_all_ok("warm-up", &result, 1000);
    let pooled = mc.client_connections();
    assert!(pooled >= 2, "idle pooled connections before quit: {pooled}");

    let started = Instant::now();
    let shutdown = nginx.quit();
    assert!(shutdown.is_clean(), "{shutdown:?}\n{}", nginx.error_log());
    assert!(
        started.elapsed() < SECOND * 5,
        "graceful quit waited for idle pooled connections ({:?})",
        started.elapsed()
    );
    assert_no_serious_log_lines(&nginx);
    assert!(
        !nginx.error_log().contains("open socket"),
        "{}",
        nginx.error_log()
    );
    assert!(
        wait_until(SECOND * 2, || mc.client_connections() == 0),
        "{} connections to memcached left after nginx quit",
        mc.client_connections()
    );
}

#[test]
fn reload_under_load_keeps_answering_hits() {
    let mc = Memcached::start();
    mc.set_raw(b"/page", &page(), 0, 0);
    let app = App::start();
    let mut nginx = Nginx::builder()
        .workers(2)
        .var("mc", mc.port())
        .var("app", app.port())
        .http(&server("127.0.0.1:{mc}", ""))
        .start();
    let value = page();
    let warm = http::load_with(nginx.port(), "GET", "/page", &[], 500, 20, |r| {
        is_hit(r, &value)
    });
    assert_all_ok("warm-up", &warm, 500);
    assert!(mc.client_connections() >= 1);

    // Background clients on fresh connections (a keep-alive connection that an old
    // worker closes between two requests is HTTP's own race, not rcache's).
    let stop = AtomicBool::new(false);
    let done = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::<String>::new());
    let port = nginx.port();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    match http::try_request(port, "GET", "/page", &[], None) {
                        Ok(r) if is_hit(&r, &value) => {
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => failures.lock().expect("lock").push(format!(
                            "{} {:?} {:?}",
                            r.status,
                            r.header("x-rcache-status"),
                            String::from_utf8_lossy(&r.body[..r.body.len().min(100)])
                        )),
                        Err(e) => failures.lock().expect("lock").push(format!("I/O: {e}")),
                    }
                }
            });
        }
        let wait_for = |n: usize| {
            let target = done.load(Ordering::SeqCst) + n;
            assert!(
                wait_until(SECOND * 10, || done.load(Ordering::SeqCst) >= target),
                "background load stalled"
            );
        };
        wait_for(100);
        for round in 0..2 {
            nginx.set_http(&server("127.0.0.1:{mc}", &format!("set $round {round};")));
            nginx.reload();
            wait_for(100);
        }
        stop.store(true, Ordering::SeqCst);
    });
    let failures = failures.into_inner().expect("lock");
    println!(
        "reload under load: {} HITs, {} failures",
        done.load(Ordering::SeqCst),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed requests during reloads, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_no_serious_log_lines(&nginx);
    // The old workers closed their pooled connections when they exited.
    let pids = nginx.worker_pids();
    assert_eq!(pids.len(), 2);
    assert!(mc.client_connections() <= 2 * DEFAULT_KEEPALIVE);
    let shutdown = nginx.quit();
    assert!(shutdown.is_clean(), "{shutdown:?}");
    assert!(wait_until(SECOND * 2, || mc.client_connections() == 0));
}

#[test]
fn memcached_restart_is_a_miss_not_an_error() {
    let mut mc = Memcached::start();
    mc.set_raw(b"/page", &page(), 0, 0);
    let app = App::start();
    let nginx = Nginx::builder()
        .workers(2)
        .var("mc", mc.port())
        .var("app", app.port())
        .http(&server("127.0.0.1:{mc}", ""))
        .start();
    let value = page();
    let warm = http::load_with(nginx.port(), "GET", "/page", &[], 1000, 20, |r| {
        is_hit(r, &value)
    });
    assert_all_ok("warm-up", &warm, 1000);
    let pooled = mc.client_connections();
    assert!(pooled >= 2, "pooled connections: {pooled}");

    mc.restart();
    // Every pooled connection is dead, the new memcached is empty: MISS, never ERROR.
    let after = http::load_with(nginx.port(), "GET", "/page", &[], 500, 20, |r| {
        is_fallback(r, "MISS")
    });
    assert_all_ok("after restart", &after, 500);

    mc.set_raw(b"/page", &value, 0, 0);
    let hits = http::load_with(nginx.port(), "GET", "/page", &[], 500, 20, |r| {
        is_hit(r, &value)
    });
    assert_all_ok("after re-setting the value", &hits, 500);
    let entries = nginx.wait_access_entries(2000, SECOND * 5);
    let errors = entries.iter().filter(|e| e.rcache == "ERROR").count();
    assert_eq!(errors, 0, "ERROR after a memcached restart");
    assert_no_serious_log_lines(&nginx);
}

#[test]
fn frozen_memcached_falls_back_within_the_read_timeout() {
    const READ_TIMEOUT: Duration = Duration::from_millis(300);
    let mc = Memcached::start();
    mc.set_raw(b"/page", &page(), 0, 0);
    let app = App::start();
    let mut nginx = Nginx::builder()
        .workers(2)
        .var("mc", mc.port())
        .var("app", app.port())
        // Every request must meet the frozen server (rather than finding it marked down
        // after the first timeout, tests/cluster.rs): max_fails=0.
        .http("upstream frozen { server 127.0.0.1:{mc} max_fails=0; }")
        .http(&server(
            "frozen",
            "rcache_read_timeout 300ms; rcache_connect_timeout 200ms;",
        ))
        .start();
    let value = page();
    let warm = http::load_with(nginx.port(), "GET", "/page", &[], 300, 10, |r| {
        is_hit(r, &value)
    });
    assert_all_ok("warm-up", &warm, 300);

    mc.pause();
    assert!(
        wait_until(SECOND * 5, || is_stopped(mc.pid())),
        "memcached did not stop"
    );
    // Pooled and new connections alike: the request is sent, nothing comes back.
    for i in 0..3 {
        let started = Instant::now();
        let r = http::get(nginx.port(), "/page");
        let took = started.elapsed();
        assert!(
            is_fallback(&r, "ERROR"),
            "request {i} to a frozen memcached: {} {:?}",
            r.status,
            r.header("x-rcache-status")
        );
        assert!(
            took >= READ_TIMEOUT - Duration::from_millis(20)
                && took < READ_TIMEOUT + Duration::from_millis(1500),
            "ERROR after {took:?}, read timeout {READ_TIMEOUT:?}"
        );
    }
    let started = Instant::now();
    let frozen = http::load_with(nginx.port(), "GET", "/page", &[], 40, 10, |r| {
        is_fallback(r, "ERROR")
    });
    let took = started.elapsed();
    mc.resume();
    assert_all_ok("while memcached is frozen", &frozen, 40);
    // 40 requests, 10 at a time: about 4 rounds of one read timeout each (no retry).
    assert!(
        took >= READ_TIMEOUT * 4 - Duration::from_millis(50)
            && took < READ_TIMEOUT * 4 + SECOND * 3,
        "40 requests to a frozen memcached took {took:?}"
    );

    let after = http::load_with(nginx.port(), "GET", "/page", &[], 500, 10, |r| {
        is_hit(r, &value)
    });
    assert_all_ok("after resume", &after, 500);
    assert_no_serious_log_lines(&nginx);
    assert!(nginx.error_log().contains("upstream timed out"));
    assert!(nginx.quit().is_clean());
}

#[test]
fn memcached_dropping_idle_connections_under_load_is_never_an_error() {
    // A memcached that closes each connection a few ms after answering (like an idle
    // timeout, or a restart, racing the pool): pooled connections die all the time,
    // some of them just as a request takes them. That request is retried on a new
    // connection; no client may see an ERROR.
    const REQUESTS: usize = 3000;
    let value = page();
    let v = value.clone();
    let fake = FakeMemcached::start(move |req| {
        let key = req.key().unwrap_or_default();
        let mut steps = vec![Step::Write(fake_value_reply(&key, &v))];
        match req.conn % 4 {
            0 => steps.push(Step::Close),
            1 => steps.extend([Step::Sleep(Duration::from_millis(1)), Step::Close]),
            2 => steps.extend([Step::Sleep(Duration::from_millis(3)), Step::Reset]),
            _ => {} // stays open: pooled for good
        }
        steps
    });
    let app = App::start();
    let nginx = Nginx::builder()
        .workers(2)
        .var("mc", fake.port())
        .var("app", app.port())
        .http(&server("127.0.0.1:{mc}", ""))
        .start();
    let result = http::load_with(nginx.port(), "GET", "/page", &[], REQUESTS, 20, |r| {
        is_hit(r, &value)
    });
    // A get sent on a connection the fake already closed is not in the fake's log;
    // nginx's log has one line per pooled connection found dead in use.
    let log = nginx.error_log();
    let dead = log
        .lines()
        .filter(|l| l.contains("prematurely closed") || l.contains("reset by peer"))
        .count();
    println!(
        "dropping memcached: {REQUESTS} requests, {} connections, {} gets seen, {dead} \
         requests took a dead pooled connection",
        fake.connections(),
        fake.requests().len(),
    );
    assert_all_ok("memcached dropping idle connections", &result, REQUESTS);
    assert_eq!(app.requests(), 0, "nothing fell back");
    assert_no_serious_log_lines(&nginx);
}

fn fake_value_reply(key: &str, value: &[u8]) -> Vec<u8> {
    value_reply(key, 0, value)
}

#[test]
fn restart_with_requests_already_waiting_on_every_worker_is_a_miss() {
    // 20 keep-alive clients over 2 workers fill both workers' pools. With the workers
    // frozen, every client sends its next request, then memcached restarts: when the
    // workers wake up they see the requests before the closes of their pooled
    // connections, so requests take dead connections. Each must be retried: MISS.
    const CLIENTS: usize = 20;
    let mut mc = Memcached::start();
    let value = page();
    mc.set_raw(b"/page", &value, 0, 0);
    let app = App::start();
    let nginx = Nginx::builder()
        .workers(2)
        .var("mc", mc.port())
        .var("app", app.port())
        .http(&server("127.0.0.1:{mc}", ""))
        .start();
    let request = b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let s = std::net::TcpStream::connect(("127.0.0.1", nginx.port())).expect("connect");
            s.set_read_timeout(Some(SECOND * 10)).expect("timeout");
            (BufReader::new(s.try_clone().expect("clone")), s)
        })
        .collect();
    // Warm up concurrently, so that both workers pool several connections.
    std::thread::scope(|scope| {
        for (reader, writer) in clients.iter_mut() {
            scope.spawn(|| {
                for _ in 0..20 {
                    writer.write_all(request).expect("send");
                    let (r, _) = http::read_response(reader, false).expect("response");
                    assert!(is_hit(&r, &value));
                }
            });
        }
    });
    let pooled = mc.client_connections();
    assert!(pooled >= 2, "pooled connections: {pooled}");

    let offset = nginx.error_log_len();
    let frozen = Frozen::pids(nginx.worker_pids());
    for (_, writer) in clients.iter_mut() {
        writer.write_all(request).expect("send");
    }
    mc.restart();
    drop(frozen);
    let mut statuses = Vec::new();
    for (reader, _) in clients.iter_mut() {
        let (r, _) = http::read_response(reader, false).expect("response");
        statuses.push(if is_fallback(&r, "MISS") {
            "MISS".to_string()
        } else {
            format!("{} {:?}", r.status, r.header("x-rcache-status"))
        });
    }
    let since = nginx.error_log_since(offset);
    let stale = since
        .lines()
        .filter(|l| l.contains("prematurely closed") || l.contains("reset by peer"))
        .count();
    println!(
        "restart with {CLIENTS} waiting requests, {pooled} pooled: {stale} took a dead connection"
    );
    assert!(
        statuses.iter().all(|s| s == "MISS"),
        "after the restart: {statuses:?}\n{since}"
    );
    assert!(
        stale >= 1,
        "no request took a dead pooled connection:\n{since}"
    );
    assert_no_serious_log_lines(&nginx);
}
