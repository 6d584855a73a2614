//! The miss memo: where a front cache is on, a page whose response was not cacheable is
//! remembered in the front zone (for its ttl, at most `rcache_hit_for_pass`), and its
//! next requests go straight to the fallback (`$rcache_status` PASS, `$rcache_front`
//! PASS) without asking memcached.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::http;
use common::*;

/// The app: `Cache-Control: no-store` until `cacheable` is set, `max-age=60` after;
/// `/error` is a 500; every body says which render it is.
fn app(cacheable: Arc<AtomicBool>) -> App {
    let renders = std::sync::atomic::AtomicUsize::new(0);
    App::start_with(move |req| {
        let n = renders.fetch_add(1, Ordering::SeqCst) + 1;
        if req.target.starts_with("/error") {
            return AppResponse::new(500, "broken");
        }
        let r = AppResponse::new(200, format!("render {n} of {}", req.target));
        if cacheable.load(Ordering::SeqCst) {
            r.header("Cache-Control", "max-age=60")
        } else {
            r.header("Cache-Control", "no-store")
        }
    })
}

fn nginx(mc: &Memcached, app: &App, location: &str) -> Nginx {
    Nginx::builder()
        .var("mc", mc.port())
        .var("app", app.port())
        .http(
            &"rcache_front_zone front:1m;
             server {
                 listen 127.0.0.1:{port};
                 add_header X-Front $rcache_front always;
                 add_header X-Rcache-Status $rcache_status always;
                 add_header X-Store $rcache_store_status always;
                 location / {
                     rcache_pass 127.0.0.1:{mc};
                     rcache_fallback @app;
                     rcache_store on;
                     rcache_purge;
                     {location}
                 }
                 location @app { proxy_pass http://127.0.0.1:{app}; }
             }"
            .replace("{location}", location),
        )
        .start()
}

fn statuses(r: &http::Response) -> (Option<&str>, Option<&str>) {
    (r.header("x-front"), r.header("x-rcache-status"))
}

#[test]
fn a_page_that_was_not_cacheable_skips_memcached_until_the_memo_expires() {
    let mc = Memcached::start();
    let cacheable = Arc::new(AtomicBool::new(false));
    let app = app(Arc::clone(&cacheable));
    let nginx = nginx(&mc, &app, "rcache_front front ttl=1s;");
    let port = nginx.port();

    let first = http::get(port, "/dyn");
    assert_eq!(statuses(&first), (Some("MISS"), Some("MISS")));
    assert_eq!(first.header("x-store"), Some("NOT_CACHEABLE"));
    let gets = mc.cmd_get();
    for i in 2..=4 {
        let r = http::get(port, "/dyn");
        assert_eq!(statuses(&r), (Some("PASS"), Some("PASS")));
        assert_eq!(r.text(), format!("render {i} of /dyn"), "the app answers");
    }
    assert_eq!(mc.cmd_get(), gets, "memcached was not asked");
    assert_eq!(app.requests(), 4);

    // The page becomes cacheable: once the memo has expired it is stored, then a HIT.
    cacheable.store(true, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(1100));
    let r = http::get(port, "/dyn");
    assert_eq!(statuses(&r), (Some("MISS"), Some("MISS")));
    assert!(
        wait_until(SECOND * 2, || mc.get_raw("/dyn").is_some()),
        "stored once the memo expired"
    );
    let hit = http::get(port, "/dyn");
    assert_eq!(statuses(&hit), (Some("MISS"), Some("HIT")));
    assert_eq!(hit.text(), "render 5 of /dyn");
    let front = http::get(port, "/dyn");
    assert_eq!(statuses(&front), (Some("HIT"), Some("HIT")));
    assert_eq!(app.requests(), 5);
}

#[test]
fn a_purge_clears_the_memo() {
    let mc = Memcached::start();
    let cacheable = Arc::new(AtomicBool::new(false));
    let app = app(Arc::clone(&cacheable));
    let nginx = nginx(&mc, &app, "rcache_front front ttl=60s;");
    let port = nginx.port();
    http::get(port, "/dyn");
    assert_eq!(statuses(&http::get(port, "/dyn")).0, Some("PASS"));

    cacheable.store(true, Ordering::SeqCst);
    let purge = http::request(port, "PURGE", "/dyn", &[], None);
    assert_eq!(purge.status, 404, "memcached had nothing under the key");
    let r = http::get(port, "/dyn");
    assert_eq!(statuses(&r), (Some("MISS"), Some("MISS")));
    assert!(
        wait_until(SECOND * 2, || mc.get_raw("/dyn").is_some()),
        "stored: the memo was gone"
    );
}

#[test]
fn only_responses_that_are_not_cacheable_are_remembered() {
    let mc = Memcached::start();
    let app = app(Arc::new(AtomicBool::new(false)));
    let nginx = nginx(&mc, &app, "rcache_front front ttl=60s;");
    let port = nginx.port();

    // A server error is a failure, not a page that is not cacheable.
    assert_eq!(http::get(port, "/error").status, 500);
    assert_eq!(statuses(&http::get(port, "/error")).0, Some("MISS"));
    // Refused for the request's sake (a query string, a HEAD), not the page's.
    let r = http::get(port, "/dyn?x=1");
    assert_eq!(r.header("x-store"), Some("NOT_CACHEABLE"));
    http::request(port, "HEAD", "/dyn", &[], None);
    assert_eq!(statuses(&http::get(port, "/dyn")).0, Some("MISS"));
    // Now the page itself said no-store.
    assert_eq!(statuses(&http::get(port, "/dyn")).0, Some("PASS"));
}

#[test]
fn rcache_hit_for_pass_0_remembers_nothing() {
    let mc = Memcached::start();
    let app = app(Arc::new(AtomicBool::new(false)));
    let nginx = nginx(
        &mc,
        &app,
        "rcache_front front ttl=60s; rcache_hit_for_pass 0;",
    );
    for _ in 0..3 {
        let r = http::get(nginx.port(), "/dyn");
        assert_eq!(statuses(&r), (Some("MISS"), Some("MISS")));
    }
}

#[test]
fn a_marker_another_nginx_wrote_is_remembered_too() {
    // Two nginx servers, one memcached, rcache_lock: the first one's render writes the
    // hit-for-pass marker; the second finds it (PASS from memcached) and remembers it.
    let mc = Memcached::start();
    let app = app(Arc::new(AtomicBool::new(false)));
    let conf = "rcache_front front ttl=60s; rcache_lock on;";
    let a = nginx(&mc, &app, conf);
    let b = nginx(&mc, &app, conf);

    let r = http::get(a.port(), "/dyn");
    assert_eq!(statuses(&r), (Some("MISS"), Some("MISS")));
    assert!(
        wait_until(SECOND * 2, || mc
            .get_raw("/dyn")
            .is_some_and(|(v, f)| v.is_empty() && f == 1 << 25)),
        "the marker is in memcached"
    );
    let gets = mc.cmd_get();
    let r = http::get(b.port(), "/dyn");
    assert_eq!(statuses(&r), (Some("MISS"), Some("PASS")));
    assert_eq!(mc.cmd_get(), gets + 1);
    let r = http::get(b.port(), "/dyn");
    assert_eq!(statuses(&r), (Some("PASS"), Some("PASS")));
    assert_eq!(mc.cmd_get(), gets + 1, "the second one skipped memcached");
}
