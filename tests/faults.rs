//! memcached faults against the real module: every broken, slow, or out-of-step reply
//! sends the request to the fallback with `$rcache_status` = ERROR (502/504 without a
//! fallback, so `error_page` works), never a truncated 200 or a 5xx from nginx; the
//! broken connection is closed, never pooled; and the next request on the same worker is
//! answered correctly.
//!
//! The scripted [`FakeMemcached`] produces the faults a real memcached will not; a real
//! [`Memcached`] is used for restarts. Each test runs its own nginx with one worker, so
//! "the next request" really goes through the same worker and the same connection pool.
//!
//! The fake answers by key (`$uri`): keys under `/ok/` get a proper HIT with
//! [`good_value`]; any other key gets the fault named by its last path segment
//! ([`fault_steps`]), e.g. `/f/junk`, `/nofb/junk` (no fallback) or `/ep/junk` (no
//! fallback, `error_page 502 504 = @app`).

mod common;

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use common::http::{self, KeepAliveClient, Response};
use common::*;

/// `rcache_read_timeout` of the test servers.
const READ_TIMEOUT: Duration = Duration::from_millis(300);
/// `rcache_connect_timeout` of the test servers.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// How much later than its timeout an ERROR may arrive (a loaded 2-CPU box).
const MARGIN: Duration = Duration::from_millis(1500);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What the fake stores under a good key: it contains protocol lines on purpose.
fn good_value(key: &str) -> Vec<u8> {
    format!("<p>page {key}</p>\r\nEND\r\nVALUE {key} 0 3\r\nabc\r\nEND\r\n").into_bytes()
}

/// 40 000 bytes: larger than rcache's first 16 KiB read, so the reply buffer grows.
fn big_value() -> Vec<u8> {
    bytes(40_000, 7)
}

const SMALL: &[u8] = b"0123456789abcdef";

/// The steps of the fault named `kind`, for a `get` of `key`.
fn fault_steps(kind: &str, key: &str) -> Vec<Step> {
    let hit = value_reply(key, 0, SMALL);
    let with = |mut a: Vec<u8>, b: &[u8]| {
        a.extend_from_slice(b);
        a
    };
    match kind {
        "hit" => vec![Step::Write(value_reply(key, 0, &good_value(key)))],
        // Extra bytes after a complete reply, in the same write.
        "extra_hit" => vec![Step::Write(with(hit, b"END\r\n"))],
        "extra_miss" => vec![Step::write("END\r\nEND\r\n")],
        "extra_value" => vec![Step::Write(with(hit, &value_reply(key, 0, b"second")))],
        "extra_big" => vec![Step::Write(with(
            value_reply(key, 0, &big_value()),
            b"VALUE x 0 1\r\n",
        ))],
        // Garbage.
        "junk" => vec![Step::write(b"\x00\x01\x02\xff\xfe\x1b[31m junk\r\n")],
        "junk_close" => vec![
            Step::Write(bytes(100, 3).into_iter().filter(|&b| b != b'\n').collect()),
            Step::Close,
        ],
        "http" => vec![Step::write(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/html\r\n\r\nhi",
        )],
        "longline" => vec![Step::Write(vec![b'x'; 600])],
        "bare_lf" => vec![Step::Write(
            format!("VALUE {key} 0 3\nabc\r\nEND\r\n").into_bytes(),
        )],
        // memcached's own error replies.
        "server_error" => vec![Step::write("SERVER_ERROR out of memory storing object\r\n")],
        "error" => vec![Step::write("ERROR\r\n")],
        "client_error" => vec![Step::write("CLIENT_ERROR bad command line format\r\n")],
        // A value for another key.
        "wrong_key" => vec![Step::Write(value_reply("/other/key", 0, SMALL))],
        "prefix_key" => vec![Step::Write(value_reply(&format!("{key}x"), 0, SMALL))],
        // Connection failures.
        "reset_mid" => {
            let line = format!("VALUE {key} 0 {}\r\n", SMALL.len());
            vec![
                Step::Write(with(line.into_bytes(), &SMALL[..SMALL.len() / 2])),
                Step::Sleep(ms(30)),
                Step::Reset,
            ]
        }
        "close_mid" => truncated(&hit, hit.len() - 10),
        "reset_big_mid" => {
            let reply = value_reply(key, 0, &big_value());
            vec![
                Step::Write(reply[..30_000].to_vec()),
                Step::Sleep(ms(30)),
                Step::Reset,
            ]
        }
        "close_trailer" => truncated(&hit, hit.len() - 3),
        "reset_before" => vec![Step::Reset],
        "close_before" => vec![Step::Close],
        // Lengths that do not match.
        "short" => {
            let mut r = format!("VALUE {key} 0 100\r\n").into_bytes();
            r.extend_from_slice(b"0123456789\r\nEND\r\n");
            vec![Step::Write(r)]
        }
        "bad_trailer" => vec![Step::Write(
            format!("VALUE {key} 0 3\r\nabcde\r\nEND\r\n").into_bytes(),
        )],
        "wrong_trailer" => vec![Step::Write(
            format!("VALUE {key} 0 5\r\nabcdeXXEND\r\n").into_bytes(),
        )],
        // Slowness.
        "stall" => vec![Step::Stall],
        "drip" => {
            // Every gap is shorter than the read timeout, the whole reply is not.
            let reply = value_reply(key, 0, SMALL);
            let cuts: Vec<usize> = (1..12).map(|i| i * reply.len() / 12).collect();
            split(&reply, &cuts, ms(80))
        }
        _ => vec![Step::write(MISS)],
    }
}

/// Fault kinds that leave the fake holding the connection (it does not notice nginx's
/// close).
fn holds_connection(kind: &str) -> bool {
    kind == "stall"
}

/// A fake answering `/ok/...` keys with a HIT and every other key with its fault.
fn fault_fake() -> FakeMemcached {
    FakeMemcached::start(|req| {
        let key = req.key().unwrap_or_default();
        if req.command() != "get" {
            return vec![Step::write("ERROR\r\n")];
        }
        if key.starts_with("/ok/") {
            return vec![Step::Write(value_reply(&key, 0, &good_value(&key)))];
        }
        let kind = key.rsplit('/').next().unwrap_or("");
        fault_steps(kind, &key)
    })
}

/// The server block every test uses: `/` falls back to `@app`, `/nofb/` has no fallback,
/// `/ep/` has none either but catches 502/504 with `error_page`. Placeholders: `{mc}`
/// (the upstream), `{app}`, `{rt}` (read timeout).
const SERVER: &str = "
    server {
        listen 127.0.0.1:{port};
        add_header X-Rcache-Status $rcache_status always;
        rcache_connect_timeout 200ms;
        rcache_send_timeout 200ms;
        rcache_read_timeout {rt};
        location / { rcache_pass {mc}; rcache_fallback @app; }
        location /nofb/ { rcache_pass {mc}; }
        location /ep/ { rcache_pass {mc}; error_page 502 504 = @app; }
        location /small/ { rcache_pass {mc}; rcache_fallback @app; rcache_max_size 1k; }
        location /longkey/ { rcache_pass {mc}; rcache_fallback @app; rcache_key $arg_k; }
        location /post/ {
            rcache_pass {mc}; rcache_fallback @app; rcache_methods GET POST;
            client_max_body_size 10m;
        }
        location @app { proxy_pass http://127.0.0.1:{app}; }
    }";

struct Rig {
    nginx: Nginx,
    _app: App,
}

impl Rig {
    /// nginx (1 worker) passing to `mc` ("host:port"), with the echo app as fallback.
    fn start(mc: &str) -> Rig {
        Rig::start_with(mc, READ_TIMEOUT)
    }

    fn start_with(mc: &str, read_timeout: Duration) -> Rig {
        let app = App::start();
        // Each fault here must cost its own request only: the one server is never marked
        // down (`max_fails=0`), which it would be for 10 s after a failure with
        // `rcache_pass host:port` (tests/cluster.rs tests that).
        let nginx = Nginx::builder()
            .workers(1)
            .http(&format!("upstream faulty {{ server {mc} max_fails=0; }}"))
            .var("mc", "faulty")
            .var("app", app.port())
            .var("rt", format!("{}ms", read_timeout.as_millis()))
            .http(SERVER)
            .start();
        Rig { nginx, _app: app }
    }

    fn port(&self) -> u16 {
        self.nginx.port()
    }

    /// GET on a new connection; panics on a truncated or unreadable response.
    fn get(&self, path: &str) -> (Response, Duration) {
        let started = Instant::now();
        let r = http::try_request(self.port(), "GET", path, &[], None).unwrap_or_else(|e| {
            panic!(
                "GET {path}: no complete response ({e})\n{}",
                self.nginx.diagnostics()
            )
        });
        (r, started.elapsed())
    }

    /// Waits for the access log line of `path` and returns the last one.
    fn access_entry(&self, path: &str) -> AccessEntry {
        let mut found = None;
        wait_until(SECOND * 2, || {
            found = self
                .nginx
                .access_entries()
                .into_iter()
                .rev()
                .find(|e| e.uri == path);
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "no access log line for {path}:\n{}",
                self.nginx.access_log()
            )
        })
    }

    /// Asserts `r` is the app's echo of `GET path`, reached with `$rcache_status` = `status`.
    fn assert_fallback(&self, r: &Response, path: &str, status: &str) {
        assert_eq!(
            r.status,
            200,
            "GET {path}: expected the fallback's 200, got {} {:?}",
            r.status,
            r.text()
        );
        assert!(
            r.body.starts_with(b"app=1\n"),
            "GET {path}: expected the app's echo, got {:?}",
            r.text()
        );
        let echo = Echo::parse(&r.body);
        assert_eq!(echo.method(), "GET");
        assert_eq!(echo.uri(), path, "the app saw another URI");
        assert_eq!(
            r.header("x-rcache-status"),
            Some(status),
            "GET {path}: $rcache_status in the fallback"
        );
        let entry = self.access_entry(path);
        assert_eq!(
            (entry.status, entry.rcache.as_str()),
            (200, status),
            "access log of {path}"
        );
    }

    /// Asserts `GET path` is a HIT with exactly `value`.
    fn assert_hit(&self, path: &str, value: &[u8]) -> Response {
        let (r, _) = self.get(path);
        assert_hit_response(&r, path, value);
        r
    }

    /// Lines of the error log at alert, crit or emerg level.
    fn serious_log_lines(&self) -> Vec<String> {
        serious_lines(&self.nginx.error_log())
    }

    fn assert_no_serious_log_lines(&self) {
        let bad = self.serious_log_lines();
        assert!(
            bad.is_empty(),
            "alert/crit/emerg in the error log:\n{}",
            bad.join("\n")
        );
    }

    /// Waits until the error log written since `offset` contains every needle.
    fn assert_logged_since(&self, offset: u64, needles: &[&str]) {
        let mut since = String::new();
        let ok = wait_until(SECOND * 2, || {
            since = self.nginx.error_log_since(offset);
            needles.iter().all(|n| since.contains(n))
        });
        assert!(
            ok,
            "error log lacks {:?}; logged since the request:\n{since}",
            needles
                .iter()
                .filter(|n| !since.contains(*n))
                .collect::<Vec<_>>()
        );
    }
}

fn assert_hit_response(r: &Response, path: &str, value: &[u8]) {
    assert_eq!(
        r.status,
        200,
        "GET {path}: expected a HIT, got {} {:?}",
        r.status,
        r.text()
    );
    assert_eq!(
        r.header("x-rcache-status"),
        Some("HIT"),
        "GET {path}: {:?}",
        r.text()
    );
    assert!(
        r.body == value,
        "GET {path}: HIT body differs: got {} bytes {:?}, want {} bytes {:?}",
        r.body.len(),
        String::from_utf8_lossy(&r.body[..r.body.len().min(200)]),
        value.len(),
        String::from_utf8_lossy(&value[..value.len().min(200)])
    );
    assert_eq!(
        r.header("content-length"),
        Some(value.len().to_string().as_str())
    );
}

fn serious_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("[alert]") || l.contains("[crit]") || l.contains("[emerg]"))
        .map(str::to_string)
        .collect()
}

/// Connection numbers on which the fake received `get <key>` at or after log index `from`.
fn conns_of(fake: &FakeMemcached, from: usize, key: &str) -> BTreeSet<usize> {
    let line = format!("get {key}");
    fake.request_log()
        .iter()
        .skip(from)
        .filter(|r| r.line_str() == line)
        .map(|r| r.conn)
        .collect()
}

/// Requests a faulty `path` (the fault is its last segment) and checks the whole story:
///
/// * the client gets `expect`: the fallback's echo with ERROR (`Ok(())`), or the status
///   `Err(code)` with `$rcache_status` ERROR and no echo (no fallback);
/// * the error log has every needle;
/// * the connections that carried the fault are closed by nginx (not pooled);
/// * the next request, `/ok<path>`, is a correct HIT on a connection that never carried
///   the fault.
///
/// Returns how long the faulty request took.
fn check_fault(
    rig: &Rig,
    fake: &FakeMemcached,
    path: &str,
    expect: Result<(), u16>,
    needles: &[&str],
) -> Duration {
    let kind = path.rsplit('/').next().unwrap_or("");
    let log_from = fake.request_log().len();
    let offset = rig.nginx.error_log_len();
    let (r, took) = rig.get(path);
    match expect {
        Ok(()) => rig.assert_fallback(&r, path, "ERROR"),
        Err(code) => {
            assert_eq!(r.status, code, "GET {path}: {:?}", r.text());
            assert!(
                !r.body.starts_with(b"app=1"),
                "GET {path}: no fallback configured, yet the app answered"
            );
            assert_eq!(r.header("x-rcache-status"), Some("ERROR"), "GET {path}");
            let entry = rig.access_entry(path);
            assert_eq!((entry.status, entry.rcache.as_str()), (code, "ERROR"));
        }
    }
    let mut needles = needles.to_vec();
    let key_needle = format!("for key \"{path}\"");
    if needles.iter().any(|n| n.starts_with("rcache: ")) {
        needles.push(&key_needle);
    }
    rig.assert_logged_since(offset, &needles);

    let faulty = conns_of(fake, log_from, path);
    assert!(
        !faulty.is_empty(),
        "the fake never saw get {path}: {:?}",
        fake.requests()
    );
    if !holds_connection(kind) {
        // Sequential requests through one worker: at most one connection was parked
        // before, and the faulty request took it. Nothing may stay open.
        assert!(
            wait_until(SECOND * 2, || fake.open_connections() == 0),
            "GET {path}: nginx kept {} connection(s) to the fake open after the fault",
            fake.open_connections()
        );
    }

    let ok_path = format!("/ok{path}");
    let ok_from = fake.request_log().len();
    rig.assert_hit(&ok_path, &good_value(&ok_path));
    let ok_conns = conns_of(fake, ok_from, &ok_path);
    assert_eq!(ok_conns.len(), 1, "one get for {ok_path}");
    assert!(
        ok_conns.is_disjoint(&faulty),
        "{ok_path} was sent on connection {ok_conns:?}, which carried the fault of {path}: \
         a broken connection was reused"
    );
    took
}

/// Runs [`check_fault`] for `kind` with a fallback (twice: on a new connection, then on
/// the one pooled by the previous HIT), without one (`no_fallback` status), and with
/// `error_page 502 504 = @app`.
fn check_fault_everywhere(
    rig: &Rig,
    fake: &FakeMemcached,
    kind: &str,
    no_fallback: u16,
    needles: &[&str],
) -> Vec<Duration> {
    vec![
        check_fault(rig, fake, &format!("/f/{kind}"), Ok(()), needles),
        check_fault(rig, fake, &format!("/f2/{kind}"), Ok(()), needles),
        check_fault(
            rig,
            fake,
            &format!("/nofb/{kind}"),
            Err(no_fallback),
            needles,
        ),
        check_fault(rig, fake, &format!("/ep/{kind}"), Ok(()), needles),
    ]
}

#[test]
fn hit_split_at_every_byte_boundary_is_served_whole() {
    // "/split/NNN": the reply cut once, at byte NNN, with a pause between the pieces.
    let fake = FakeMemcached::start(|req| {
        let key = req.key().unwrap_or_default();
        let reply = value_reply(&key, 0, SMALL);
        if let Some(cut) = key.strip_prefix("/split/") {
            let cut: usize = cut.parse().expect("cut offset");
            return split(&reply, &[cut], ms(10));
        }
        if key == "/bytewise" {
            let mut steps = Vec::new();
            for b in reply {
                steps.push(Step::Write(vec![b]));
                steps.push(Step::Sleep(ms(3)));
            }
            return steps;
        }
        if let Some(len) = key.strip_prefix("/edge/") {
            let len: usize = len.parse().expect("value length");
            return vec![Step::Write(value_reply(&key, 0, &bytes(len, 9)))];
        }
        if let Some(cuts) = key.strip_prefix("/big/") {
            let reply = value_reply(&key, 0, &big_value());
            let cuts: Vec<usize> = cuts.split('-').map(|c| c.parse().expect("cut")).collect();
            return split(&reply, &cuts, ms(10));
        }
        vec![Step::write(MISS)]
    });
    let rig = Rig::start(&fake.addr().to_string());

    let reply_len = value_reply("/split/000", 0, SMALL).len();
    let mut client = KeepAliveClient::connect(rig.port()).expect("connect to nginx");
    for cut in 1..reply_len {
        let path = format!("/split/{cut:03}");
        let r = client.get(&path).expect("keep-alive GET");
        assert_hit_response(&r, &path, SMALL);
    }
    rig.assert_hit("/bytewise", SMALL);

    // A value larger than the first read: cuts in the header line, at the first read's
    // 16 KiB boundary, and inside "\r\nEND\r\n".
    let big = big_value();
    let line_len = format!("VALUE /big/00000 0 {}\r\n", big.len()).len();
    let big_len = line_len + big.len() + 7;
    let mut all = vec![
        3,
        line_len - 1,
        line_len,
        16_383,
        16_384,
        16_385,
        big_len - 7,
        big_len - 5,
        big_len - 1,
    ];
    for &cut in &all {
        let path = format!("/big/{cut:05}");
        let r = client.get(&path).expect("keep-alive GET");
        assert_hit_response(&r, &path, &big);
    }
    // All of those cuts in one reply (its key is longer, so the offsets land a little
    // earlier in it; they still ascend within it).
    all.dedup();
    let path = format!(
        "/big/{}",
        all.iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join("-")
    );
    let r = client.get(&path).expect("keep-alive GET");
    assert_hit_response(&r, &path, &big);

    // Values ending around the first read's 16 KiB, in one write: the reply fits the
    // first buffer, or the trailer or value straddles its end.
    let edge_line = "VALUE /edge/00000 0 00000\r\n".len();
    for reply_len in 16_370..16_400 {
        let len = reply_len - edge_line - 7;
        let path = format!("/edge/{len:05}");
        let r = client.get(&path).expect("keep-alive GET");
        assert_hit_response(&r, &path, &bytes(len, 9));
    }

    // Every reply was clean: one pooled connection carried all of them.
    assert_eq!(
        fake.connections(),
        1,
        "clean replies must leave the connection pooled and reused"
    );
    let entries = rig.nginx.wait_access_entries(reply_len + 40, SECOND);
    assert!(entries.iter().all(|e| e.rcache == "HIT" && e.status == 200));
    rig.assert_no_serious_log_lines();
}

#[test]
fn miss_split_at_every_byte_boundary_falls_back() {
    let fake = FakeMemcached::start(|req| {
        let key = req.key().unwrap_or_default();
        match key.strip_prefix("/msplit/") {
            Some(cut) => split(MISS, &[cut.parse().expect("cut")], ms(20)),
            None => vec![Step::Write(value_reply(&key, 0, &good_value(&key)))],
        }
    });
    let rig = Rig::start(&fake.addr().to_string());
    for cut in 1..MISS.len() {
        let path = format!("/msplit/{cut}");
        let (r, _) = rig.get(&path);
        rig.assert_fallback(&r, &path, "MISS");
        rig.assert_hit("/ok/after", &good_value("/ok/after"));
    }
    assert_eq!(fake.connections(), 1, "a clean MISS keeps the connection");
    rig.assert_no_serious_log_lines();
}

#[test]
fn extra_bytes_after_the_reply_in_the_same_read_are_an_error() {
    let fake = fault_fake();
    let mut rig = Rig::start(&fake.addr().to_string());
    let needle = "unexpected bytes after the reply";
    check_fault_everywhere(
        &rig,
        &fake,
        "extra_hit",
        502,
        &["rcache: memcached sent 5 unexpected bytes after the reply"],
    );
    check_fault_everywhere(
        &rig,
        &fake,
        "extra_miss",
        502,
        &["rcache: memcached sent 5 unexpected bytes after the reply"],
    );
    check_fault_everywhere(&rig, &fake, "extra_value", 502, &["rcache: ", needle]);
    check_fault_everywhere(&rig, &fake, "extra_big", 502, &["rcache: ", needle]);
    rig.assert_no_serious_log_lines();
    let shutdown = rig.nginx.quit();
    assert!(shutdown.is_clean(), "{shutdown:?}");
}

#[test]
fn extra_bytes_arriving_later_close_the_idle_connection() {
    // "/late/N": a complete HIT, then, 100 ms later in a separate write, an extra "END".
    // "/soon/N": the same without the pause: nginx may or may not read both at once.
    let fake = FakeMemcached::start(|req| {
        let key = req.key().unwrap_or_default();
        let reply = value_reply(&key, 0, &good_value(&key));
        if key.starts_with("/late/") {
            vec![Step::Write(reply), Step::Sleep(ms(100)), Step::write(MISS)]
        } else if key.starts_with("/late_miss/") {
            vec![Step::write(MISS), Step::Sleep(ms(100)), Step::write(MISS)]
        } else if key.starts_with("/soon/") {
            vec![Step::Write(reply), Step::write("END\r\nEND\r\n")]
        } else {
            vec![Step::Write(reply)]
        }
    });
    let rig = Rig::start(&fake.addr().to_string());

    for i in 0..3 {
        let path = format!("/late/{i}");
        let from = fake.request_log().len();
        let (r, took) = rig.get(&path);
        assert_hit_response(&r, &path, &good_value(&path));
        assert!(
            took < ms(100) + MARGIN,
            "the value was complete; nginx must not wait for more ({took:?})"
        );
        let late = conns_of(&fake, from, &path);
        // The extra bytes reach the parked connection: nginx must close it.
        assert!(
            wait_until(SECOND * 2, || fake.open_connections() == 0),
            "the pooled connection that received bytes after its reply was not closed"
        );
        let ok = format!("/ok/late/{i}");
        let ok_from = fake.request_log().len();
        rig.assert_hit(&ok, &good_value(&ok));
        assert!(conns_of(&fake, ok_from, &ok).is_disjoint(&late));
    }

    // The same after a MISS.
    for i in 0..2 {
        let path = format!("/late_miss/{i}");
        let from = fake.request_log().len();
        let (r, _) = rig.get(&path);
        rig.assert_fallback(&r, &path, "MISS");
        let late = conns_of(&fake, from, &path);
        assert!(
            wait_until(SECOND * 2, || fake.open_connections() == 0),
            "the pooled connection that received bytes after its MISS was not closed"
        );
        let ok = format!("/ok/late_miss/{i}");
        let ok_from = fake.request_log().len();
        rig.assert_hit(&ok, &good_value(&ok));
        assert!(conns_of(&fake, ok_from, &ok).is_disjoint(&late));
    }

    for i in 0..10 {
        let path = format!("/soon/{i}");
        let from = fake.request_log().len();
        let (r, _) = rig.get(&path);
        // Either read with the reply (ERROR) or after it, while parked (HIT, then closed).
        match r.header("x-rcache-status") {
            Some("HIT") => assert_hit_response(&r, &path, &good_value(&path)),
            _ => rig.assert_fallback(&r, &path, "ERROR"),
        }
        let soon = conns_of(&fake, from, &path);
        assert!(
            wait_until(SECOND * 2, || fake.open_connections() == 0),
            "a connection that received bytes after its reply was not closed"
        );
        let ok = format!("/ok/soon/{i}");
        let ok_from = fake.request_log().len();
        rig.assert_hit(&ok, &good_value(&ok));
        assert!(conns_of(&fake, ok_from, &ok).is_disjoint(&soon));
    }
    rig.assert_no_serious_log_lines();
}

#[test]
fn garbage_replies_are_errors() {
    let fake = fault_fake();
    let rig = Rig::start(&fake.addr().to_string());
    check_fault_everywhere(
        &rig,
        &fake,
        "junk",
        502,
        &[r#"rcache: memcached sent invalid reply "\x00\x01\x02\xff\xfe\x1b[31m junk""#],
    );
    check_fault_everywhere(
        &rig,
        &fake,
        "http",
        502,
        &[r#"rcache: memcached sent invalid reply "HTTP/1.1 200 OK""#],
    );
    // Detected by its length (the needle), not by waiting for a line end (a timeout
    // would log "upstream timed out" and answer 504).
    check_fault_everywhere(
        &rig,
        &fake,
        "longline",
        502,
        &["rcache: memcached sent a reply line longer than 512 bytes"],
    );
    check_fault_everywhere(
        &rig,
        &fake,
        "bare_lf",
        502,
        &["rcache: memcached sent invalid reply"],
    );
    check_fault_everywhere(&rig, &fake, "junk_close", 502, &["prematurely closed"]);
    rig.assert_no_serious_log_lines();
}

#[test]
fn memcached_error_replies_are_errors() {
    let fake = fault_fake();
    let mut rig = Rig::start(&fake.addr().to_string());
    check_fault_everywhere(
        &rig,
        &fake,
        "server_error",
        502,
        &[r#"rcache: memcached answered "SERVER_ERROR out of memory storing object""#],
    );
    check_fault_everywhere(
        &rig,
        &fake,
        "error",
        502,
        &[r#"rcache: memcached answered "ERROR""#],
    );
    check_fault_everywhere(
        &rig,
        &fake,
        "client_error",
        502,
        &[r#"rcache: memcached answered "CLIENT_ERROR bad command line format""#],
    );
    rig.assert_no_serious_log_lines();
    assert!(rig.nginx.quit().is_clean());
}

#[test]
fn a_value_for_another_key_is_an_error() {
    let fake = fault_fake();
    let rig = Rig::start(&fake.addr().to_string());
    check_fault_everywhere(
        &rig,
        &fake,
        "wrong_key",
        502,
        &[r#"rcache: memcached sent a value for another key: "VALUE /other/key 0 16""#],
    );
    check_fault_everywhere(
        &rig,
        &fake,
        "prefix_key",
        502,
        &["rcache: memcached sent a value for another key"],
    );
    rig.assert_no_serious_log_lines();
}

#[test]
fn reset_or_close_mid_reply_is_an_error_never_a_partial_body() {
    let fake = fault_fake();
    let rig = Rig::start(&fake.addr().to_string());
    for kind in ["reset_mid", "reset_big_mid", "reset_before"] {
        check_fault_everywhere(&rig, &fake, kind, 502, &["Connection reset by peer"]);
    }
    for kind in ["close_mid", "close_trailer", "close_before"] {
        check_fault_everywhere(
            &rig,
            &fake,
            kind,
            502,
            &["upstream prematurely closed connection"],
        );
    }
    rig.assert_no_serious_log_lines();
}

#[test]
fn a_value_shorter_than_announced_times_out() {
    let fake = fault_fake();
    let rig = Rig::start(&fake.addr().to_string());
    let took = check_fault_everywhere(&rig, &fake, "short", 504, &["upstream timed out"]);
    for t in took {
        assert!(
            t >= READ_TIMEOUT - ms(20) && t < READ_TIMEOUT + MARGIN,
            "ERROR after {t:?}, read timeout {READ_TIMEOUT:?}"
        );
    }
    rig.assert_no_serious_log_lines();
}

#[test]
fn a_value_longer_than_announced_is_an_error() {
    let fake = fault_fake();
    let rig = Rig::start(&fake.addr().to_string());
    // Claims 3 bytes, sends 5: bytes where "\r\nEND\r\n" belongs.
    check_fault_everywhere(&rig, &fake, "bad_trailer", 502, &["rcache: memcached sent"]);
    // The right length, but no "\r\nEND\r\n" after the value.
    check_fault_everywhere(
        &rig,
        &fake,
        "wrong_trailer",
        502,
        &["rcache: memcached sent a value not followed by END"],
    );
    rig.assert_no_serious_log_lines();
}

#[test]
fn a_stalled_memcached_times_out_once() {
    let fake = fault_fake();
    let mut rig = Rig::start(&fake.addr().to_string());
    let from = fake.request_log().len();
    let took = check_fault_everywhere(&rig, &fake, "stall", 504, &["upstream timed out"]);
    for t in &took {
        assert!(
            *t >= READ_TIMEOUT - ms(20) && *t < READ_TIMEOUT + MARGIN,
            "ERROR after {t:?}, read timeout {READ_TIMEOUT:?}"
        );
    }
    // A timeout is not retried, not even on a pooled connection (/f2/, /nofb/ and /ep/
    // each took the connection the previous /ok/ request parked): one get per request.
    for path in ["/f/stall", "/f2/stall", "/nofb/stall", "/ep/stall"] {
        assert_eq!(
            conns_of(&fake, from, path).len(),
            1,
            "{path}: a timed-out request was retried: {:?}",
            fake.requests()
        );
    }
    rig.assert_no_serious_log_lines();
    // Stalled connections were closed by nginx: the graceful quit has nothing left.
    let shutdown = rig.nginx.quit();
    assert!(shutdown.is_clean(), "{shutdown:?}");
}

#[test]
fn the_read_timeout_bounds_the_whole_reply() {
    let fake = fault_fake();
    let rig = Rig::start(&fake.addr().to_string());
    // The reply trickles in over ~900 ms, every gap 80 ms: a per-read timeout would
    // serve it, the whole-reply timeout must not.
    let took = check_fault_everywhere(&rig, &fake, "drip", 504, &["upstream timed out"]);
    for t in took {
        assert!(
            t >= READ_TIMEOUT - ms(20) && t < READ_TIMEOUT + MARGIN,
            "ERROR after {t:?}, read timeout {READ_TIMEOUT:?}"
        );
    }
    rig.assert_no_serious_log_lines();
}

/// A TCP port on 127.0.0.1 that refuses connections: bound (so nobody else gets it) but
/// not listening.
struct RefusingPort {
    _fd: OwnedFd,
    port: u16,
}

impl RefusingPort {
    fn new() -> RefusingPort {
        // SAFETY: plain socket calls on a descriptor we own; the address structs are
        // fully initialised and their sizes passed.
        unsafe {
            let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(raw);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_in).cast(),
                len,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let rc = libc::getsockname(
                fd.as_raw_fd(),
                (&mut addr as *mut libc::sockaddr_in).cast(),
                &mut len,
            );
            assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
            RefusingPort {
                _fd: fd,
                port: u16::from_be(addr.sin_port),
            }
        }
    }
}

#[test]
fn nothing_listening_falls_back() {
    let refusing = RefusingPort::new();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", refusing.port)).is_err(),
        "the port must refuse connections"
    );
    let mut rig = Rig::start(&format!("127.0.0.1:{}", refusing.port));
    for path in ["/f/refused", "/f/again", "/ep/refused"] {
        let offset = rig.nginx.error_log_len();
        let (r, took) = rig.get(path);
        rig.assert_fallback(&r, path, "ERROR");
        assert!(took < MARGIN, "{took:?}");
        rig.assert_logged_since(offset, &["connect() failed (111: Connection refused)"]);
    }
    let (r, _) = rig.get("/nofb/refused");
    assert_eq!(r.status, 502, "{:?}", r.text());
    assert_eq!(r.header("x-rcache-status"), Some("ERROR"));
    rig.assert_no_serious_log_lines();
    assert!(rig.nginx.quit().is_clean());
}

#[test]
fn a_connect_timeout_falls_back_within_the_connect_timeout() {
    let hole = Blackhole::start();
    // A long read timeout, so that only the connect timeout can explain a quick ERROR.
    let rig = Rig::start_with(&hole.addr(), SECOND * 5);
    for path in ["/f/hole", "/ep/hole"] {
        let offset = rig.nginx.error_log_len();
        let (r, took) = rig.get(path);
        rig.assert_fallback(&r, path, "ERROR");
        assert!(
            took >= CONNECT_TIMEOUT - ms(20) && took < CONNECT_TIMEOUT + MARGIN,
            "ERROR after {took:?}, connect timeout {CONNECT_TIMEOUT:?}"
        );
        rig.assert_logged_since(
            offset,
            &["upstream timed out", "while connecting to upstream"],
        );
    }
    let (r, took) = rig.get("/nofb/hole");
    assert_eq!(r.status, 504, "{:?}", r.text());
    assert_eq!(r.header("x-rcache-status"), Some("ERROR"));
    assert!(took < CONNECT_TIMEOUT + MARGIN, "{took:?}");
    rig.assert_no_serious_log_lines();
}

#[test]
fn a_pooled_connection_that_fails_is_retried_once_on_a_new_one() {
    // "/<how>/warm" is always answered; "/<how>/page" fails whenever it comes on a reused
    // connection (memcached restarted, or dropped the idle connection): "close" (FIN),
    // "reset" (RST), "half" (half a reply, then FIN) or "bighalf" (30 000 bytes of a
    // 40 000-byte value: past the first read, then FIN). "/twice/page" fails on every
    // connection.
    let page = |key: &str| {
        if key.starts_with("/bighalf/") {
            big_value()
        } else {
            good_value(key)
        }
    };
    let fake = FakeMemcached::start(move |req| {
        let key = req.key().unwrap_or_default();
        let reply = value_reply(&key, 0, &page(&key));
        let how = key.split('/').nth(1).unwrap_or("").to_string();
        let fails = key.ends_with("/page") && (req.seq > 0 || how == "twice");
        if !fails {
            return vec![Step::Write(reply)];
        }
        match how.as_str() {
            "close" => vec![Step::Close],
            "half" => truncated(&reply, 20),
            "bighalf" => truncated(&reply, 30_000),
            _ => vec![Step::Reset],
        }
    });
    let mut rig = Rig::start(&fake.addr().to_string());
    for how in ["close", "reset", "half", "bighalf"] {
        let warm = format!("/{how}/warm");
        rig.assert_hit(&warm, &page(&warm));
        // The parked connection fails: retried on a new one, the client sees a HIT.
        let path = format!("/{how}/page");
        let before = fake.connections();
        let offset = rig.nginx.error_log_len();
        rig.assert_hit(&path, &page(&path));
        let gets: Vec<_> = fake
            .request_log()
            .into_iter()
            .filter(|r| r.line_str() == format!("get {path}"))
            .map(|r| (r.conn, r.seq))
            .collect();
        assert_eq!(
            fake.connections(),
            before + 1,
            "{how}: one retry on one new connection: {gets:?}"
        );
        assert_eq!(gets.len(), 2, "{how}: {gets:?}");
        assert!(gets[0].1 > 0, "{how}: first try on the pooled connection");
        assert_eq!(gets[1], (before, 0), "{how}: the retry on a new connection");
        let since = rig.nginx.error_log_since(offset);
        assert!(serious_lines(&since).is_empty(), "{since}");
        if how == "reset" {
            // A failing pooled connection is worth an info line, not an error.
            assert!(
                since
                    .lines()
                    .any(|l| l.contains("[info]") && l.contains("Connection reset by peer")),
                "{since}"
            );
            assert!(!since.contains("[error]"), "{since}");
        }
    }
    let entries = rig.nginx.wait_access_entries(8, SECOND);
    assert!(entries.iter().all(|e| e.rcache == "HIT"), "{entries:?}");

    // The new connection fails too: no second retry, ERROR.
    rig.assert_hit("/twice/warm", &good_value("/twice/warm"));
    let before = fake.connections();
    let (r, _) = rig.get("/twice/page");
    rig.assert_fallback(&r, "/twice/page", "ERROR");
    assert_eq!(
        fake.connections(),
        before + 1,
        "exactly one retry: {:?}",
        fake.requests()
    );
    assert_eq!(conns_of(&fake, 0, "/twice/page").len(), 2);
    rig.assert_no_serious_log_lines();
    assert!(rig.nginx.quit().is_clean());
}

#[test]
fn a_restarted_memcached_gives_miss_then_hit_never_error() {
    let mut mc = Memcached::start();
    mc.set_raw(b"/r/page", b"before restart", 0, 0);
    let rig = Rig::start(&mc.addr());
    let mut client = KeepAliveClient::connect(rig.port()).expect("connect");
    for _ in 0..5 {
        let r = client.get("/r/page").expect("GET");
        assert_hit_response(&r, "/r/page", b"before restart");
    }
    assert!(
        wait_until(SECOND * 2, || mc.client_connections() == 1),
        "one pooled connection, not {}",
        mc.client_connections()
    );

    mc.restart();
    // The pooled connection is dead; the new memcached is empty.
    for i in 0..3 {
        let r = client.get("/r/page").expect("GET after restart");
        assert_eq!(r.status, 200, "{i}: {:?}", r.text());
        assert_eq!(
            r.header("x-rcache-status"),
            Some("MISS"),
            "request {i} after the restart: {:?}",
            r.text()
        );
        assert_eq!(Echo::parse(&r.body).uri(), "/r/page");
    }
    mc.set_raw(b"/r/page", b"after restart", 0, 0);
    let r = client.get("/r/page").expect("GET");
    assert_hit_response(&r, "/r/page", b"after restart");
    let entries = rig.nginx.wait_access_entries(9, SECOND);
    assert!(
        entries.iter().all(|e| e.rcache != "ERROR"),
        "{entries:?}\n{}",
        rig.nginx.error_log()
    );
    // Restart after restart: each time the pooled connection is dead.
    for round in 0..3 {
        mc.restart();
        mc.set_raw(b"/r/page", format!("round {round}").as_bytes(), 0, 0);
        let r = client.get("/r/page").expect("GET");
        assert_hit_response(&r, "/r/page", format!("round {round}").as_bytes());
    }
    rig.assert_no_serious_log_lines();
}

#[test]
fn unservable_values_are_misses_and_a_half_read_connection_is_closed() {
    // Too large for /small/ (rcache_max_size 1k) and flags that are no page: MISS. When
    // the verdict comes from the header line alone ("..._split": the value follows
    // later), the value is never read and the connection must be closed; when the whole
    // reply came in one read, keeping it is fine. Either way the next request is right.
    let fake = FakeMemcached::start(|req| {
        let key = req.key().unwrap_or_default();
        let kind = if key.starts_with("/ok/") {
            "ok"
        } else {
            key.rsplit('/').next().unwrap_or("")
        };
        let reply = match kind.trim_end_matches("_split") {
            "large" => value_reply(&key, 0, &bytes(2000, 5)),
            "pickle" => value_reply(&key, 1, b"(dp0\n."),
            "int" => value_reply(&key, 2, b"42"),
            "text" => value_reply(&key, 16, "h\u{e9}llo".as_bytes()),
            _ => value_reply(&key, 0, &good_value(&key)),
        };
        if kind.ends_with("_split") {
            let line_len = reply.iter().position(|&b| b == b'\n').unwrap_or(0) + 1;
            split(&reply, &[line_len], ms(50))
        } else {
            vec![Step::Write(reply)]
        }
    });
    let rig = Rig::start(&fake.addr().to_string());
    for (path, needle) in [
        ("/small/large_split", "more than rcache_max_size 1024: MISS"),
        ("/f/pickle_split", "has flags 1, not a page: MISS"),
        ("/f/int_split", "has flags 2, not a page: MISS"),
        ("/small/large", "more than rcache_max_size 1024: MISS"),
        ("/f/pickle", "has flags 1, not a page: MISS"),
    ] {
        let offset = rig.nginx.error_log_len();
        let from = fake.request_log().len();
        let (r, took) = rig.get(path);
        rig.assert_fallback(&r, path, "MISS");
        rig.assert_logged_since(offset, &["[info]", needle]);
        let used = conns_of(&fake, from, path);
        if path.ends_with("_split") {
            assert!(
                took < ms(50) + MARGIN,
                "{path}: waited for the value ({took:?})"
            );
            assert!(
                wait_until(SECOND * 2, || fake.open_connections() == 0),
                "{path}: the connection with an unread value was kept"
            );
        }
        let ok = format!("/ok{path}");
        let ok_from = fake.request_log().len();
        rig.assert_hit(&ok, &good_value(&ok));
        if path.ends_with("_split") {
            assert!(conns_of(&fake, ok_from, &ok).is_disjoint(&used));
        }
    }
    // Flags 16 (pymemcache's str) are a page.
    rig.assert_hit("/f/text", "h\u{e9}llo".as_bytes());
    rig.assert_hit("/f/text_split", "h\u{e9}llo".as_bytes());
    rig.assert_no_serious_log_lines();
}

#[test]
fn unusable_keys_make_no_round_trip() {
    let fake = fault_fake();
    let rig = Rig::start(&fake.addr().to_string());
    // rcache_key $arg_k ($arg_ is not decoded; rcache escapes "%" as "%25"): missing,
    // empty, 251 bytes, and 253 bytes once escaped.
    let long = "k".repeat(251);
    let escaped_long = format!("{}%41", "k".repeat(248));
    for target in [
        "/longkey/x".to_string(),
        "/longkey/x?k=".to_string(),
        format!("/longkey/x?k={long}"),
        format!("/longkey/x?k={escaped_long}"),
    ] {
        let (r, _) = rig.get(&target);
        rig.assert_fallback(&r, &target, "MISS");
    }
    // Exactly 250 bytes, also once escaped, are a key.
    for fits in ["k".repeat(250), format!("{}%41", "k".repeat(245))] {
        let target = format!("/longkey/x?k={fits}");
        let (r, _) = rig.get(&target);
        rig.assert_fallback(&r, &target, "MISS");
    }
    let seen = fake.wait_requests(2, SECOND);
    assert_eq!(
        fake.requests(),
        vec![
            format!("get {}", "k".repeat(250)),
            format!("get {}%2541", "k".repeat(245)),
        ],
        "only the 250-byte keys may reach memcached: {seen:?}"
    );
    rig.assert_no_serious_log_lines();
}

#[test]
fn a_client_abort_during_the_lookup_does_not_pool_a_half_read_connection() {
    // "/slow/N": the reply comes 400 ms late (the read timeout is 1 s); the client gives
    // up after 50 ms. nginx must close the memcached connection with the reply still
    // owed, not park it: the next request would read that late reply.
    let fake = FakeMemcached::start(|req| {
        let key = req.key().unwrap_or_default();
        let reply = value_reply(&key, 0, &good_value(&key));
        if key.starts_with("/slow/") {
            vec![Step::Sleep(ms(400)), Step::Write(reply)]
        } else {
            vec![Step::Write(reply)]
        }
    });
    let rig = Rig::start_with(&fake.addr().to_string(), SECOND);
    for i in 0..3 {
        let path = format!("/slow/{i}");
        let from = fake.request_log().len();
        {
            use std::io::Write as _;
            let mut s = std::net::TcpStream::connect(("127.0.0.1", rig.port())).expect("connect");
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
            fake.wait_requests(from + 1, SECOND);
            std::thread::sleep(ms(50));
        } // closed: the client is gone
        let entry = rig.access_entry(&path);
        assert_eq!(entry.status, 499, "{entry:?}");
        let slow = conns_of(&fake, from, &path);
        let ok = format!("/ok/slow/{i}");
        let ok_from = fake.request_log().len();
        rig.assert_hit(&ok, &good_value(&ok));
        assert!(
            conns_of(&fake, ok_from, &ok).is_disjoint(&slow),
            "the connection still owing the reply of {path} was reused"
        );
    }
    // After the late replies went nowhere, requests are still right.
    std::thread::sleep(ms(450));
    for i in 0..3 {
        let ok = format!("/ok/later/{i}");
        rig.assert_hit(&ok, &good_value(&ok));
    }
    rig.assert_no_serious_log_lines();
}

#[test]
fn a_stale_pooled_connection_taken_before_its_close_is_seen_is_retried() {
    // The request is already waiting when memcached restarts: nginx handles it before it
    // handles the close of its pooled connection, sends the get on the dead connection,
    // and must retry on a new one: MISS (the new memcached is empty), not ERROR.
    use std::io::{BufReader, Write as _};
    let mut mc = Memcached::start();
    mc.set_raw(b"/r/page", b"cached", 0, 0);
    let rig = Rig::start(&mc.addr());
    let stream = std::net::TcpStream::connect(("127.0.0.1", rig.port())).expect("connect");
    stream.set_read_timeout(Some(SECOND * 10)).expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    let request = b"GET /r/page HTTP/1.1\r\nHost: x\r\n\r\n";
    for round in 0..3 {
        writer.write_all(request).expect("send");
        let (r, _) = http::read_response(&mut reader, false).expect("response");
        assert_hit_response(&r, "/r/page", b"cached");
        // (memcached may still count the fixture's `set` connection for a moment)
        assert!(
            wait_until(SECOND * 2, || mc.client_connections() == 1),
            "one pooled connection, not {}",
            mc.client_connections()
        );

        let offset = rig.nginx.error_log_len();
        let frozen = Frozen::pids(rig.nginx.worker_pids());
        writer.write_all(request).expect("send");
        mc.restart();
        drop(frozen);
        let (r, _) = http::read_response(&mut reader, false).expect("response");
        assert_eq!(
            r.header("x-rcache-status"),
            Some("MISS"),
            "round {round}: {} {:?}\n{}",
            r.status,
            r.text(),
            rig.nginx.error_log_since(offset)
        );
        assert_eq!(r.status, 200);
        assert_eq!(Echo::parse(&r.body).uri(), "/r/page");
        // The stale connection really was used (and failed) before the retry.
        let since = rig.nginx.error_log_since(offset);
        assert!(
            since.contains("prematurely closed") || since.contains("reset by peer"),
            "round {round}: the pooled connection was not tried:\n{since}"
        );
        assert!(serious_lines(&since).is_empty(), "{since}");
        mc.set_raw(b"/r/page", b"cached", 0, 0);
    }
    let entries = rig.nginx.wait_access_entries(6, SECOND);
    assert!(entries.iter().all(|e| e.rcache != "ERROR"), "{entries:?}");
    rig.assert_no_serious_log_lines();
}

#[test]
fn a_pooled_connection_failure_that_the_retry_repairs_logs_one_line_at_most() {
    // The retry on a new connection makes a dead pooled connection (memcached restarted
    // or dropped it) invisible to the client. rcache lowers socket errors on reused
    // connections to info (a reset); nginx's own "upstream prematurely closed
    // connection" (a FIN) it logs at error whatever rcache asks: one line, and no more,
    // per repaired request (README, "Errors").
    let fake = FakeMemcached::start(|req| {
        let key = req.key().unwrap_or_default();
        let reply = value_reply(&key, 0, &good_value(&key));
        if !key.ends_with("/page") || req.seq == 0 {
            return vec![Step::Write(reply)];
        }
        match key.split('/').nth(1).unwrap_or("") {
            "close" => vec![Step::Close],
            "half" => truncated(&reply, 20),
            _ => vec![Step::Reset],
        }
    });
    let rig = Rig::start(&fake.addr().to_string());
    for how in ["reset", "close", "half"] {
        let warm = format!("/{how}/warm");
        rig.assert_hit(&warm, &good_value(&warm));
        let path = format!("/{how}/page");
        let offset = rig.nginx.error_log_len();
        rig.assert_hit(&path, &good_value(&path));
        assert_eq!(conns_of(&fake, 0, &path).len(), 2, "{how}: retried");
        let since = rig.nginx.error_log_since(offset);
        let errors: Vec<&str> = since.lines().filter(|l| l.contains("[error]")).collect();
        match how {
            "reset" => {
                assert!(errors.is_empty(), "{how}: {errors:?}");
                assert!(
                    since.contains("[info]") && since.contains("Connection reset by peer"),
                    "{how}: the reset is logged at info: {since}"
                );
            }
            _ => {
                assert_eq!(errors.len(), 1, "{how}: {errors:?}");
                assert!(
                    errors[0].contains("upstream prematurely closed connection"),
                    "{how}: {errors:?}"
                );
            }
        }
    }
    rig.assert_no_serious_log_lines();
}

#[test]
fn a_request_body_reaches_the_fallback_intact_after_any_error() {
    // rcache_methods GET POST: a POST is looked up, and on ERROR the fallback must get
    // the method and the whole body (200 KiB: spooled to a temp file), also after a
    // timeout and with a chunked body.
    let fake = fault_fake();
    let rig = Rig::start(&fake.addr().to_string());
    let body = bytes(200 * 1024, 99);
    for kind in [
        "reset_mid",
        "close_before",
        "junk",
        "extra_hit",
        "stall",
        "short",
    ] {
        let path = format!("/post/{kind}");
        let from = fake.request_log().len();
        let r = http::request(rig.port(), "POST", &path, &[], Some(&body));
        assert_eq!(r.status, 200, "POST {path}: {:?}", r.text());
        assert_eq!(r.header("x-rcache-status"), Some("ERROR"), "POST {path}");
        let echo = Echo::parse(&r.body);
        assert_eq!(
            (echo.method(), echo.uri(), echo.body_len(), echo.body_sha()),
            (
                "POST",
                path.as_str(),
                body.len(),
                sha256_hex(&body).as_str()
            ),
            "POST {path}: what the fallback received"
        );
        let faulty = conns_of(&fake, from, &path);
        let ok = format!("/ok{path}");
        let ok_from = fake.request_log().len();
        rig.assert_hit(&ok, &good_value(&ok));
        assert!(conns_of(&fake, ok_from, &ok).is_disjoint(&faulty));
    }
    let small = b"field=value&other=1".to_vec();
    let r = http::request(
        rig.port(),
        "POST",
        "/post/junk?q=1",
        &[("Transfer-Encoding", "chunked")],
        Some(&http::chunked(&small, 4)),
    );
    assert_eq!(r.header("x-rcache-status"), Some("ERROR"));
    let echo = Echo::parse(&r.body);
    assert_eq!(
        (echo.method(), echo.uri(), echo.body_sha()),
        ("POST", "/post/junk?q=1", sha256_hex(&small).as_str())
    );
    // A POST whose value is cached is a HIT (the body is discarded).
    let r = http::request(rig.port(), "POST", "/post/hit", &[], Some(&body));
    assert_hit_response(&r, "/post/hit", &good_value("/post/hit"));
    rig.assert_no_serious_log_lines();
}
