//! The shared-memory front cache (`rcache_front_zone`, `rcache_front`): pages fetched from
//! memcached are served from the zone for `ttl`, by every worker, with a bounded size.

mod common;

use std::time::Duration;

use common::http::{self, KeepAliveClient};
use common::*;

struct Site {
    mc: Memcached,
    _app: App,
    nginx: Nginx,
}

/// nginx with a front zone of `zone` and `location / { rcache_pass; <location> }`, the
/// fallback `@app`, and `X-Front: $rcache_front` on every answer.
fn site(zone: &str, location: &str, workers: usize) -> Site {
    let mc = Memcached::start();
    let app = App::start();
    let nginx = Nginx::builder()
        .workers(workers)
        .var("mc", mc.port())
        .var("app", app.port())
        .http(
            &"rcache_front_zone front:{zone};
             server {
                 listen 127.0.0.1:{port};
                 add_header X-Front $rcache_front always;
                 add_header X-Rcache-Status $rcache_status always;
                 location / {
                     rcache_pass 127.0.0.1:{mc};
                     rcache_fallback @app;
                     {location}
                 }
                 location @app { proxy_pass http://127.0.0.1:{app}; }
             }"
            .replace("{zone}", zone)
            .replace("{location}", location),
        )
        .start();
    Site {
        mc,
        _app: app,
        nginx,
    }
}

fn front_of(r: &http::Response) -> Option<&str> {
    r.header("x-front")
}

#[test]
fn a_page_fetched_once_is_served_from_the_front_cache() {
    let s = site("1m", "rcache_front front ttl=60s;", 1);
    let page = bytes(10 * 1024, 1);
    s.mc.set_raw(b"/p", &page, 0, 0);
    let gets = s.mc.cmd_get();

    let first = http::get(s.nginx.port(), "/p");
    assert_eq!(first.body, page);
    assert_eq!(front_of(&first), Some("MISS"));
    assert_eq!(first.header("x-rcache-status"), Some("HIT"));

    for _ in 0..5 {
        let r = http::get(s.nginx.port(), "/p");
        assert!(r.body == page, "front cache page differs");
        assert_eq!(front_of(&r), Some("HIT"));
        assert_eq!(r.header("x-rcache-status"), Some("HIT"));
        assert_eq!(r.header("content-length"), Some("10240"));
    }
    assert_eq!(s.mc.cmd_get(), gets + 1, "memcached was asked once");

    let head = http::request(s.nginx.port(), "HEAD", "/p", &[], None);
    assert_eq!(head.header("content-length"), Some("10240"));
    assert!(head.body.is_empty());
    assert_eq!(front_of(&head), Some("HIT"));
}

#[test]
fn changes_and_deletes_in_memcached_are_seen_within_the_ttl() {
    let s = site("1m", "rcache_front front ttl=500ms;", 1);
    s.mc.set_raw(b"/p", b"old", 0, 0);
    assert_eq!(http::get(s.nginx.port(), "/p").body, b"old");

    s.mc.set_raw(b"/p", b"new", 0, 0);
    assert_eq!(
        http::get(s.nginx.port(), "/p").body,
        b"old",
        "within the ttl"
    );
    assert!(
        wait_until(SECOND * 2, || http::get(s.nginx.port(), "/p").body
            == b"new"),
        "the new value within the ttl"
    );

    s.mc.client().delete("/p").unwrap();
    assert!(
        wait_until(SECOND * 2, || {
            http::get(s.nginx.port(), "/p").header("x-rcache-status") == Some("MISS")
        }),
        "a deleted page is a MISS after the ttl"
    );
    // Expired: at most ttl (plus a request's timing) after the change.
    let started = std::time::Instant::now();
    s.mc.set_raw(b"/p", b"again", 0, 0);
    http::get(s.nginx.port(), "/p");
    assert!(wait_until(SECOND * 2, || http::get(s.nginx.port(), "/p")
        .body
        == b"again"));
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[test]
fn a_small_zone_evicts_the_least_recently_used_pages_and_never_fails() {
    // 64 KiB: room for a handful of 8 KiB pages.
    let s = site("64k", "rcache_front front ttl=60s;", 1);
    let pages: Vec<Vec<u8>> = (0..40).map(|i| bytes(8 * 1024, i)).collect();
    for (i, page) in pages.iter().enumerate() {
        s.mc.set_raw(format!("/p{i}").as_bytes(), page, 0, 0);
    }
    let mut c = KeepAliveClient::connect(s.nginx.port()).unwrap();
    for (i, page) in pages.iter().enumerate() {
        let r = c.get(&format!("/p{i}")).unwrap();
        assert!(r.body == *page, "/p{i}");
        assert_eq!(r.status, 200);
    }
    // The most recent pages are in the zone, the oldest were evicted.
    let recent = c.get("/p39").unwrap();
    assert_eq!(front_of(&recent), Some("HIT"));
    let oldest = c.get("/p0").unwrap();
    assert_eq!(front_of(&oldest), Some("MISS"));
    assert!(oldest.body == pages[0]);
    // /p0 is now the most recently used; /p39 was used before it: both kept.
    assert_eq!(front_of(&c.get("/p0").unwrap()), Some("HIT"));
    let log = s.nginx.error_log();
    assert!(!log.contains("[crit]") && !log.contains("[alert]"), "{log}");
    assert!(
        !log.contains("no memory"),
        "a full zone is not an error: {log}"
    );
}

#[test]
fn pages_over_max_item_are_not_kept() {
    let s = site("1m", "rcache_front front ttl=60s max_item=1k;", 1);
    s.mc.set_raw(b"/small", &bytes(1024, 1), 0, 0);
    s.mc.set_raw(b"/large", &bytes(1025, 2), 0, 0);
    for _ in 0..2 {
        http::get(s.nginx.port(), "/small");
        http::get(s.nginx.port(), "/large");
    }
    assert_eq!(front_of(&http::get(s.nginx.port(), "/small")), Some("HIT"));
    let large = http::get(s.nginx.port(), "/large");
    assert_eq!(large.body, bytes(1025, 2));
    assert_eq!(front_of(&large), Some("MISS"));
}

#[test]
fn bypassed_requests_never_touch_the_front_cache() {
    let s = site(
        "1m",
        "rcache_front front ttl=60s; rcache_bypass $cookie_sessionid;",
        1,
    );
    s.mc.set_raw(b"/p", b"cached", 0, 0);
    let logged_in = http::request(
        s.nginx.port(),
        "GET",
        "/p",
        &[("Cookie", "sessionid=1")],
        None,
    );
    Echo::parse(&logged_in.body);
    assert_eq!(logged_in.header("x-rcache-status"), Some("BYPASS"));
    assert_eq!(front_of(&logged_in), None);
    // The bypass did not fill it: the first anonymous request still asks memcached.
    assert_eq!(front_of(&http::get(s.nginx.port(), "/p")), Some("MISS"));
    // And a filled front cache is not served to a logged-in visitor.
    assert_eq!(front_of(&http::get(s.nginx.port(), "/p")), Some("HIT"));
    let logged_in = http::request(
        s.nginx.port(),
        "GET",
        "/p",
        &[("Cookie", "sessionid=1")],
        None,
    );
    assert_eq!(logged_in.header("x-rcache-status"), Some("BYPASS"));
    Echo::parse(&logged_in.body);
}

#[test]
fn gzip_pages_from_the_front_cache_follow_accept_encoding() {
    let s = site("1m", "rcache_front front ttl=60s; rcache_gzip_flag 2;", 1);
    let page = b"<p>compressed</p>".repeat(100);
    let gz = gzip(&page);
    s.mc.set_raw(b"/gz", &gz, 2, 0);
    let accept = [("Accept-Encoding", "gzip")];
    let first = http::request(s.nginx.port(), "GET", "/gz", &accept, None);
    assert_eq!(first.body, gz);
    let compressed = http::request(s.nginx.port(), "GET", "/gz", &accept, None);
    assert_eq!(front_of(&compressed), Some("HIT"));
    assert_eq!(compressed.header("content-encoding"), Some("gzip"));
    assert!(compressed.body == gz);
    let plain = http::get(s.nginx.port(), "/gz");
    assert_eq!(front_of(&plain), Some("HIT"));
    assert_eq!(plain.header("content-encoding"), None);
    assert!(plain.body == page);
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"));
}

#[test]
fn every_worker_serves_what_one_worker_fetched() {
    let s = site("1m", "rcache_front front ttl=60s;", 2);
    let page = bytes(4096, 7);
    s.mc.set_raw(b"/shared", &page, 0, 0);
    assert_eq!(http::get(s.nginx.port(), "/shared").body, page);
    let gets = s.mc.cmd_get();
    let result = http::load_with(s.nginx.port(), "GET", "/shared", &[], 2000, 16, |r| {
        r.status == 200 && r.body == page && r.header("x-front") == Some("HIT")
    });
    assert!(
        result.all_ok(),
        "every answer a front cache HIT with the page: {result:?}"
    );
    assert_eq!(s.mc.cmd_get(), gets, "no worker asked memcached again");
    assert!(result.connections >= 16, "{result:?}");
}

#[test]
fn the_front_cache_survives_a_reload_under_load() {
    let mut s = site("1m", "rcache_front front ttl=60s;", 2);
    let page = bytes(4096, 9);
    s.mc.set_raw(b"/p", &page, 0, 0);
    assert_eq!(http::get(s.nginx.port(), "/p").body, page);
    let gets = s.mc.cmd_get();
    let port = s.nginx.port();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match http::try_request(port, "GET", "/p", &[], None) {
                        Ok(r) if r.status == 200 && r.body == page => {}
                        other => failures.lock().unwrap().push(format!("{other:?}")),
                    }
                }
            });
        }
        s.nginx.reload();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    assert!(
        failures.lock().unwrap().is_empty(),
        "{:?}",
        failures.lock().unwrap()
    );
    // The new workers found the page in the zone kept across the reload.
    assert_eq!(front_of(&http::get(port, "/p")), Some("HIT"));
    assert_eq!(s.mc.cmd_get(), gets, "memcached was not asked again");
    assert!(s.nginx.alerts().is_empty(), "{:?}", s.nginx.alerts());
}

#[test]
fn rcache_front_off_disables_an_inherited_front_cache() {
    let mc = Memcached::start();
    let nginx = Nginx::builder()
        .var("mc", mc.port())
        .http(
            "rcache_front_zone front:1m;
             rcache_front front ttl=60s;
             server {
                 listen 127.0.0.1:{port};
                 add_header X-Front $rcache_front always;
                 location /on/ { rcache_pass 127.0.0.1:{mc}; }
                 location /off/ { rcache_pass 127.0.0.1:{mc}; rcache_front off; }
             }",
        )
        .start();
    mc.set_raw(b"/on/p", b"x", 0, 0);
    mc.set_raw(b"/off/p", b"x", 0, 0);
    for _ in 0..2 {
        http::get(nginx.port(), "/on/p");
        http::get(nginx.port(), "/off/p");
    }
    assert_eq!(front_of(&http::get(nginx.port(), "/on/p")), Some("HIT"));
    assert_eq!(front_of(&http::get(nginx.port(), "/off/p")), None);
}

fn check(http_block: &str) -> ConfigCheck {
    Nginx::builder()
        .http(&format!(
            "{http_block}\nserver {{ listen 127.0.0.1:{{port}}; location / {{ rcache_pass 127.0.0.1:11211; }} }}"
        ))
        .check_config()
}

#[test]
fn configuration_errors_name_the_directive() {
    for (conf, expect) in [
        (
            "rcache_front nowhere ttl=1s;",
            "\"rcache_front\" uses zone \"nowhere\", which no \"rcache_front_zone\" defines",
        ),
        ("rcache_front_zone front;", "rcache_front_zone"),
        ("rcache_front_zone front:lots;", "rcache_front_zone"),
        ("rcache_front_zone :1m;", "rcache_front_zone"),
        ("rcache_front_zone front:8k;", "too small"),
        (
            "rcache_front_zone front:1m; rcache_front_zone front:1m;",
            "duplicate zone \"front\"",
        ),
        (
            "rcache_front_zone front:1m; rcache_front front;",
            "\"rcache_front\" directive needs a ttl= parameter",
        ),
        (
            "rcache_front_zone front:1m; rcache_front front ttl=abc;",
            "invalid parameter \"ttl=abc\" in the \"rcache_front\" directive",
        ),
        (
            "rcache_front_zone front:1m; rcache_front front ttl=1s max_item=x;",
            "invalid parameter \"max_item=x\"",
        ),
        (
            "rcache_front_zone front:1m; rcache_front front ttl=1s color=red;",
            "invalid parameter \"color=red\"",
        ),
        (
            "rcache_front_zone front:1m; rcache_front front ttl=1s; rcache_front front ttl=2s;",
            "\"rcache_front\" directive is duplicate",
        ),
        (
            "server { listen 127.0.0.1:1; rcache_front_zone front:1m; }",
            "\"rcache_front_zone\" directive is not allowed here",
        ),
    ] {
        let c = check(conf);
        assert!(!c.ok, "{conf}: accepted\n{}", c.output);
        assert!(c.output.contains(expect), "{conf}: {}", c.output);
    }
    let ok = check("rcache_front_zone front:1m; rcache_front front ttl=10s max_item=64k;");
    assert!(ok.ok, "{}", ok.output);
}
