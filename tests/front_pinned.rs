//! Large front-cache pages are sent straight from the shared zone, pinned while a response
//! sends them: whatever happens to the entry meanwhile (evicted, replaced, expired), the
//! response that is sending it arrives whole, and every pin is released — when the
//! response ends, when the client goes away, across a reload, and when a worker dies.
//!
//! The slow client below reads a few bytes and then nothing: nginx (`sndbuf=8k`) can only
//! hand the kernel part of a 1 MiB page, so the response stays in flight, pinned
//! (`rcache_front_pinned` says so), for as long as the test wants.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use common::http;
use common::*;

const PAGE: usize = 1024 * 1024;

struct Site {
    mc: Memcached,
    nginx: Nginx,
}

/// A 4 MiB front zone (room for three 1 MiB pages), pages up to 2 MiB, `rcache_purge`,
/// the metrics at /metrics.
fn site(ttl: &str) -> Site {
    let mc = Memcached::start_with_args(&["-I", "4m"]);
    let nginx = Nginx::builder()
        .var("mc", mc.port())
        .http(
            &"rcache_front_zone front:4m;
             rcache_metrics_zone metrics:1m;
             server {
                 listen 127.0.0.1:{port} sndbuf=8k;
                 add_header X-Front $rcache_front always;
                 location / {
                     rcache_pass 127.0.0.1:{mc};
                     rcache_front front ttl={ttl} max_item=2m;
                     rcache_purge;
                 }
                 location = /metrics { rcache_metrics; }
             }"
            .replace("{ttl}", ttl),
        )
        .start();
    Site { mc, nginx }
}

impl Site {
    /// A gauge or counter of the front zone, from /metrics.
    fn front_metric(&self, name: &str) -> u64 {
        let text = http::get(self.nginx.port(), "/metrics").text();
        let prefix = format!("{name}{{zone=\"front\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn pinned(&self) -> u64 {
        self.front_metric("rcache_front_pinned")
    }

    fn wait_pinned(&self, n: u64) {
        assert!(
            wait_until(SECOND * 5, || self.pinned() == n),
            "rcache_front_pinned is {}, not {n}\n{}",
            self.pinned(),
            self.nginx.diagnostics()
        );
    }

    /// Puts `page` in memcached under `key` and has the front cache keep it (a front MISS
    /// that fetched it, then a front HIT).
    fn cached(&self, key: &str, page: &[u8]) {
        self.mc.set_raw(key.as_bytes(), page, 0, 0);
        let first = http::get(self.nginx.port(), key);
        assert!(first.body == page, "{key}: the page from memcached differs");
        let again = http::get(self.nginx.port(), key);
        assert_eq!(again.header("x-front"), Some("HIT"), "{key} is kept");
        assert!(again.body == page, "{key}: the front cache page differs");
    }
}

/// A GET that has read the response's head and stops reading there.
struct SlowClient {
    reader: BufReader<TcpStream>,
    head: Vec<(String, String)>,
}

impl SlowClient {
    fn start(port: u16, target: &str) -> SlowClient {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(SECOND * 10))
            .expect("read timeout");
        write!(
            stream,
            "GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .expect("write request");
        let mut reader = BufReader::with_capacity(1024, stream);
        let status = http::read_line(&mut reader).expect("status").expect("line");
        assert!(status.starts_with(b"HTTP/1.1 200"), "{:?}", status);
        let head = http::read_headers(&mut reader).expect("headers");
        SlowClient { reader, head }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Reads the rest of the body (nginx closes after it).
    fn finish(mut self) -> Vec<u8> {
        let mut body = Vec::new();
        self.reader.read_to_end(&mut body).expect("body");
        body
    }
}

#[test]
fn a_page_evicted_while_it_is_sent_arrives_whole() {
    let s = site("60s");
    let page = bytes(PAGE, 1);
    s.cached("/big", &page);
    assert_eq!(s.pinned(), 0);

    let slow = SlowClient::start(s.nginx.port(), "/big");
    assert_eq!(slow.header("x-front"), Some("HIT"));
    s.wait_pinned(1);

    // Six other 1 MiB pages through a zone with room for three: /big is evicted, and its
    // memory would be handed out again if the pin did not hold it.
    let evictions = s.front_metric("rcache_front_evictions_total");
    for i in 0..6 {
        s.cached(&format!("/other{i}"), &bytes(PAGE, 100 + i));
    }
    assert!(s.front_metric("rcache_front_evictions_total") >= evictions + 4);
    let r = http::get(s.nginx.port(), "/big");
    assert_eq!(r.header("x-front"), Some("MISS"), "/big was evicted");

    let body = slow.finish();
    assert_eq!(body.len(), PAGE);
    assert!(body == page, "the page sent while it was evicted changed");
    s.wait_pinned(0);
    let used = s.front_metric("rcache_front_used_bytes");
    assert!(used <= 4 * 1024 * 1024, "used {used}");
}

#[test]
fn a_page_replaced_or_purged_while_it_is_sent_arrives_whole() {
    let s = site("1s");
    let old = bytes(PAGE, 2);
    let new = bytes(PAGE, 3);
    s.cached("/p", &old);

    let replaced = SlowClient::start(s.nginx.port(), "/p");
    let purged = SlowClient::start(s.nginx.port(), "/p");
    s.wait_pinned(2);

    // Replaced: the entry expires, the next request fetches the new page and keeps it
    // in place of the old one.
    s.mc.set_raw(b"/p", &new, 0, 0);
    assert!(
        wait_until(SECOND * 3, || http::get(s.nginx.port(), "/p").body == new),
        "the new page is served"
    );
    assert_eq!(
        http::get(s.nginx.port(), "/p").header("x-front"),
        Some("HIT")
    );
    // Purged: gone from memcached and the zone.
    let purge = http::request(s.nginx.port(), "PURGE", "/p", &[], None);
    assert_eq!(purge.status, 200);
    assert_eq!(http::get(s.nginx.port(), "/p").status, 404);
    assert_eq!(
        s.pinned(),
        2,
        "the two slow responses still hold the old page"
    );
    // Fill the zone: memory the old page's entry had would be written over now if the
    // pins did not hold it.
    for i in 0..4 {
        s.cached(&format!("/other{i}"), &bytes(PAGE, 200 + i));
    }

    assert!(
        replaced.finish() == old,
        "the replaced page changed while sent"
    );
    assert!(purged.finish() == old, "the purged page changed while sent");
    s.wait_pinned(0);
}

#[test]
fn a_client_that_goes_away_mid_send_releases_its_pin() {
    let s = site("60s");
    let page = bytes(PAGE, 4);
    s.cached("/p", &page);
    for _ in 0..3 {
        let slow = SlowClient::start(s.nginx.port(), "/p");
        drop(slow);
    }
    s.wait_pinned(0);

    // A pin left behind would keep the page's memory after its eviction.
    let baseline = s.front_metric("rcache_front_used_bytes");
    assert!(baseline >= PAGE as u64);
    let purge = http::request(s.nginx.port(), "PURGE", "/p", &[], None);
    assert_eq!(purge.status, 200);
    assert!(
        s.front_metric("rcache_front_used_bytes") < baseline - PAGE as u64 + 4096,
        "the purged page's memory is freed"
    );
}

#[test]
fn head_and_ranges_of_a_pinned_page() {
    let s = site("60s");
    let page = bytes(PAGE, 5);
    s.cached("/p", &page);
    let port = s.nginx.port();

    let head = http::request(port, "HEAD", "/p", &[], None);
    assert_eq!(head.header("x-front"), Some("HIT"));
    assert_eq!(head.header("content-length"), Some("1048576"));
    assert!(head.body.is_empty());

    let one = http::request(port, "GET", "/p", &[("Range", "bytes=1000-1999")], None);
    assert_eq!(one.status, 206);
    assert_eq!(one.header("x-front"), Some("HIT"));
    assert!(one.body == page[1000..2000]);
    let tail = http::request(port, "GET", "/p", &[("Range", "bytes=-10")], None);
    assert!(tail.body == page[PAGE - 10..]);

    let multi = http::request(
        port,
        "GET",
        "/p",
        &[("Range", "bytes=0-9,500000-500009")],
        None,
    );
    assert_eq!(multi.status, 206);
    let ctype = multi.header("content-type").unwrap_or_default().to_string();
    assert!(ctype.starts_with("multipart/byteranges"), "{ctype}");
    let body = &multi.body;
    let find = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(find(&page[0..10]) && find(&page[500_000..500_010]));
    assert!(find(b"Content-Range: bytes 500000-500009/1048576"));

    s.wait_pinned(0);
}

#[test]
fn a_reload_while_a_page_is_sent_finishes_it_and_leaves_no_pin() {
    let mut s = site("60s");
    let page = bytes(PAGE, 6);
    s.cached("/p", &page);
    let slow = SlowClient::start(s.nginx.port(), "/p");
    s.wait_pinned(1);

    // The old worker finishes the response once the client reads on; reload() returns
    // when it has exited.
    let reader = thread::spawn(move || {
        thread::sleep(Duration::from_millis(1500));
        slow.finish()
    });
    s.nginx.reload();
    let body = reader.join().expect("reader");
    assert!(body == page, "the page sent across the reload changed");
    s.wait_pinned(0);
    // The zone, and the page in it, survived the reload.
    let r = http::get(s.nginx.port(), "/p");
    assert_eq!(r.header("x-front"), Some("HIT"));
    assert!(r.body == page);
}

#[test]
fn a_worker_killed_mid_send_leaves_no_pin_behind() {
    let s = site("60s");
    let page = bytes(PAGE, 7);
    s.cached("/p", &page);
    let old_workers = s.nginx.worker_pids();
    let slow = SlowClient::start(s.nginx.port(), "/p");
    s.wait_pinned(1);

    for pid in &old_workers {
        // SAFETY: signalling a worker of the nginx this test started.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    drop(slow);
    assert!(
        wait_until(SECOND * 5, || {
            let now = s.nginx.worker_pids();
            !now.is_empty() && now.iter().all(|p| !old_workers.contains(p))
        }),
        "the master starts a new worker"
    );
    // The new worker released the dead one's pin as it started, and said so.
    s.wait_pinned(0);
    assert!(
        s.nginx
            .error_log()
            .contains("released 1 page(s) pinned by a worker"),
        "{}",
        s.nginx.error_log()
    );
    let r = http::get(s.nginx.port(), "/p");
    assert_eq!(r.header("x-front"), Some("HIT"));
    assert!(r.body == page);
}

#[test]
fn small_pages_are_copied_and_hold_no_pin() {
    let s = site("60s");
    let page = bytes(4 * 1024, 8);
    s.cached("/small", &page);
    // The slow client gets the whole small page into its socket buffer at once; what
    // matters is that no pin is taken for it.
    let mut stream = TcpStream::connect(("127.0.0.1", s.nginx.port())).expect("connect");
    write!(stream, "GET /small HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("status");
    assert!(line.starts_with("HTTP/1.1 200"));
    assert_eq!(s.pinned(), 0);
}

#[test]
fn a_response_the_charset_filter_recodes_does_not_change_the_shared_page() {
    // nginx's charset filter rewrites a single-byte recoding in place; the body's buffers
    // are marked read-only (memory, not temporary), so the copy filter hands it a copy and
    // the page in the zone stays as it is.
    let mc = Memcached::start();
    let nginx = Nginx::builder()
        .var("mc", mc.port())
        .http(
            "rcache_front_zone front:4m;
             charset_map from-a to-b { 41 42; }
             server {
                 listen 127.0.0.1:{port};
                 add_header X-Front $rcache_front always;
                 rcache_front front ttl=60s;
                 location / { rcache_pass 127.0.0.1:{mc}; }
                 location /recoded/ {
                     rcache_pass 127.0.0.1:{mc};
                     rcache_key /p;
                     default_type text/html;
                     source_charset from-a;
                     charset to-b;
                 }
             }",
        )
        .start();
    let page = vec![b'A'; 64 * 1024];
    mc.set_raw(b"/p", &page, 0, 0);
    assert!(http::get(nginx.port(), "/p").body == page);
    for _ in 0..3 {
        let r = http::get(nginx.port(), "/recoded/x");
        assert_eq!(r.header("x-front"), Some("HIT"));
        assert!(r.body.iter().all(|&b| b == b'B'), "recoded to B");
        let plain = http::get(nginx.port(), "/p");
        assert_eq!(plain.header("x-front"), Some("HIT"));
        assert!(plain.body == page, "the page in the zone was rewritten");
    }
}
