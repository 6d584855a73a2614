//! rcache's debug log tells the story of a request: with nginx built `--with-debug` and
//! `error_log ... debug`, every decision (the command sent, the pooled connection taken or
//! the new one opened, the reply, HIT / MISS / ERROR and where the request went, each
//! pool park, each store step) is an `rcache:` line, in the order it happened.
//!
//! nginx's debug log exists only in a `--with-debug` build, and the module's debug lines
//! are compiled in only when built against one, so these tests are `#[ignore]`d in the
//! usual stages: `scripts/test.sh`'s `debug` stage builds both that way (in
//! `target/debug-nginx`) and runs them with `--ignored`. Each checks first that the nginx
//! it runs was built `--with-debug`, so they cannot pass against a build without it.

mod common;

use std::process::Command;

use common::nginx::nginx_binary;
use common::*;

fn assert_debug_build() {
    let out = Command::new(nginx_binary())
        .arg("-V")
        .output()
        .expect("nginx -V");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("--with-debug"),
        "{} was not built --with-debug:\n{text}",
        nginx_binary().display()
    );
}

/// The `rcache:` lines of the debug log written since `offset`, without nginx's prefix.
fn rcache_lines(nginx: &Nginx, offset: u64) -> Vec<String> {
    nginx
        .error_log_since(offset)
        .lines()
        .filter_map(|l| l.find("rcache").map(|at| l[at..].to_string()))
        .collect()
}

/// Asserts that `expected` appear in `lines` in this order (each a substring of a line).
fn assert_story(lines: &[String], expected: &[&str]) {
    let mut next = 0;
    for want in expected {
        match lines[next..].iter().position(|l| l.contains(want)) {
            Some(at) => next += at + 1,
            None => panic!(
                "debug log lacks {want:?} (after line {next}); the rcache lines were:\n{}",
                lines.join("\n")
            ),
        }
    }
}

fn site(mc: &Memcached, app: &App, dead_port: u16) -> Nginx {
    Nginx::builder()
        .var("mc", mc.port())
        .var("app", app.port())
        .var("dead", dead_port)
        .error_log_level("debug")
        .http(
            "server {
                 listen 127.0.0.1:{port};
                 location / {
                     rcache_pass 127.0.0.1:{mc};
                     rcache_fallback @app;
                     rcache_store on;
                     rcache_bypass $cookie_sessionid;
                 }
                 location /down/ {
                     rcache_pass 127.0.0.1:{dead};
                     rcache_fallback @app;
                 }
                 location @app {
                     proxy_pass http://127.0.0.1:{app};
                 }
             }",
        )
        .start()
}

#[test]
#[ignore = "needs nginx and the module built --with-debug: scripts/test.sh, debug stage"]
fn a_hit_a_miss_with_its_store_a_bypass_and_an_error_tell_their_story() {
    assert_debug_build();
    let mc = Memcached::start();
    let app = App::start_with(|_| {
        AppResponse::new(200, "rendered").header("Cache-Control", "max-age=60")
    });
    let dead = free_port();
    let nginx = site(&mc, &app, dead);
    mc.set_raw(b"/hit", b"hello", 0, 0);

    // A HIT on a new connection, then one on the pooled connection.
    let at = nginx.error_log_len();
    assert_eq!(http::get(nginx.port(), "/hit").text(), "hello");
    assert_eq!(http::get(nginx.port(), "/hit").text(), "hello");
    assert!(wait_until(SECOND, || rcache_lines(&nginx, at)
        .iter()
        .filter(|l| l.contains("HIT:"))
        .count()
        == 2));
    let port = mc.port();
    assert_story(
        &rcache_lines(&nginx, at),
        &[
            "rcache: get \"/hit\"",
            &format!("rcache: memcached 127.0.0.1:{port}: no idle connection, connecting"),
            "rcache: pool: park connection",
            "parked in the pool",
            "rcache: HIT: 5 bytes, status 200",
            "rcache: get \"/hit\"",
            "rcache: pool: take idle connection",
            &format!("rcache: memcached 127.0.0.1:{port}: using pooled connection"),
            "parked in the pool",
            "rcache: HIT: 5 bytes, status 200",
        ],
    );

    // A MISS: to the fallback, its response captured and stored.
    let at = nginx.error_log_len();
    assert_eq!(http::get(nginx.port(), "/new").text(), "rendered");
    assert!(wait_until(10 * SECOND, || mc.get_raw("/new").is_some()));
    assert!(wait_until(SECOND, || rcache_lines(&nginx, at)
        .iter()
        .any(|l| l.contains("store of"))));
    assert_story(
        &rcache_lines(&nginx, at),
        &[
            "rcache: get \"/new\"",
            "rcache: memcached has no value for the key",
            "rcache: store: MISS, capturing the fallback's response",
            "rcache: MISS (Miss): to the fallback \"@app\"",
            "rcache: store: cacheable for 60s, capturing the body",
            "rcache: store: add \"/new\"",
            "rcache: store: using pooled connection",
            "rcache: store of \"/new\": Stored",
        ],
    );

    // A BYPASS, decided without asking memcached.
    let at = nginx.error_log_len();
    let r = http::request(
        nginx.port(),
        "GET",
        "/hit",
        &[("Cookie", "sessionid=1")],
        None,
    );
    assert_eq!(r.text(), "rendered");
    assert_story(
        &rcache_lines(&nginx, at),
        &[
            "rcache: an rcache_bypass value is set",
            "rcache: BYPASS (Bypass): to the fallback \"@app\"",
        ],
    );

    // An ERROR: nothing listens on the dead port.
    let at = nginx.error_log_len();
    assert_eq!(http::get(nginx.port(), "/down/page").text(), "rendered");
    assert_story(
        &rcache_lines(&nginx, at),
        &[
            "rcache: get \"/down/page\"",
            &format!("rcache: memcached 127.0.0.1:{dead}: no idle connection, connecting"),
            "rcache: memcached attempt failed (Error)",
            "rcache: no memcached server left to try: Error",
            "rcache: giving up on memcached: Error",
            "rcache: ERROR (Error(Error)): to the fallback \"@app\"",
        ],
    );
}

#[test]
#[ignore = "needs nginx and the module built --with-debug: scripts/test.sh, debug stage"]
fn a_locations_large_pages_arrive_in_one_read_after_the_first() {
    assert_debug_build();
    let mc = Memcached::start();
    let app = App::start_with(|_| AppResponse::new(200, "rendered"));
    let nginx = site(&mc, &app, free_port());
    let page = vec![b'x'; 100 * 1024];
    mc.set_raw(b"/big", &page, 0, 0);
    mc.set_raw(b"/small", b"small", 0, 0);

    let reads_the_rest = |path: &str| {
        let at = nginx.error_log_len();
        let body = http::get(nginx.port(), path).body;
        assert!(wait_until(SECOND, || rcache_lines(&nginx, at)
            .iter()
            .any(|l| l.contains("HIT:"))));
        let rest = rcache_lines(&nginx, at)
            .iter()
            .any(|l| l.contains("reading the rest into a second buffer"));
        (body.len(), rest)
    };
    // The first 100 KiB page outgrows the 16 KiB first read; the location's first read
    // then holds its pages whole, also after a small page.
    let big = page.len();
    assert_eq!(reads_the_rest("/big"), (big, true));
    assert_eq!(reads_the_rest("/big"), (big, false));
    assert_eq!(reads_the_rest("/small"), (5, false));
    assert_eq!(reads_the_rest("/big"), (big, false));
}
