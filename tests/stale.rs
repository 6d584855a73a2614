//! Stale pages and one regenerator (`rcache_stale`, `rcache_purge soft`) against a real
//! nginx, a real memcached and a slow app: when a hot page expires or is soft-purged,
//! exactly one request goes to the app (`EXPIRED`) while the others are served the page
//! they would have had (`UPDATING`) — across concurrent clients and across two nginx
//! servers sharing the memcached, because the win is memcached's (`mg ... R<stale>`,
//! `md ... I`), not a per-host lock.
//!
//! Also: a page the app writes itself with a TTL enters the window in its last
//! `rcache_stale`; the regenerated page never overwrites one the app wrote meanwhile
//! (CAS); without `rcache_fallback` an expired page is served as `STALE`; a server that
//! answers `ERROR` to `mg` still yields pages (classic `get`, one log line); bad values
//! fail `nginx -t` naming the directive.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::*;

/// How long the app takes to render a page: long enough that every concurrent request
/// arrives while the first one is still at the app.
const RENDER: Duration = Duration::from_millis(300);

/// An app that counts its renders and answers `render <n>` with `Cache-Control:
/// max-age=<max_age>` after [`RENDER`].
fn slow_app(max_age: u32) -> (App, Arc<AtomicUsize>) {
    let renders = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&renders);
    let app = App::start_with(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        thread::sleep(RENDER);
        AppResponse::new(200, format!("render {n}"))
            .header("Cache-Control", &format!("max-age={max_age}"))
    });
    (app, renders)
}

/// nginx with the stale-pages location: store on (unless `extra` says `rcache_store
/// off;`), `rcache_stale 30s`, soft purge, MISS and EXPIRED to `@app`. `extra` goes into
/// the location.
fn site(mc: &Memcached, app: &App, extra: &str) -> Nginx {
    Nginx::builder()
        .var("mc", mc.port())
        .var("app", app.port())
        .http(
            &"server {
                 listen 127.0.0.1:{port};
                 location / {
                     rcache_pass 127.0.0.1:{mc};
                     rcache_fallback @app;
                     {store}
                     rcache_stale 30s;
                     rcache_purge soft;
                     {extra}
                 }
                 location @app {
                     proxy_pass http://127.0.0.1:{app};
                 }
             }"
            .replace(
                "{store}",
                if extra.contains("rcache_store") {
                    ""
                } else {
                    "rcache_store on;"
                },
            )
            .replace("{extra}", extra),
        )
        .start()
}

/// `n` clients at once on `path` of each port in turn; every answer must be a whole 200.
/// Returns the bodies.
fn herd(ports: &[u16], path: &str, n: usize) -> Vec<String> {
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let port = ports[i % ports.len()];
            let path = path.to_string();
            thread::spawn(move || {
                barrier.wait();
                let r = http::get(port, &path);
                assert_eq!(r.status, 200, "{path} on {port}: {}", r.text());
                r.text()
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect()
}

/// The `$rcache_status` of the access log entries from `from` on, counted.
fn statuses(nginx: &Nginx, from: usize, n: usize) -> Vec<String> {
    let entries = nginx.wait_access_entries(from + n, 10 * SECOND);
    entries[from..].iter().map(|e| e.rcache.clone()).collect()
}

fn count(statuses: &[String], which: &str) -> usize {
    statuses.iter().filter(|s| *s == which).count()
}

/// Waits until memcached holds `key` with a body containing `want` (the store is done).
fn wait_stored(mc: &Memcached, key: &str, want: &str) {
    let stored = wait_until(10 * SECOND, || {
        mc.get_raw(key)
            .is_some_and(|(v, _)| String::from_utf8_lossy(&v).contains(want))
    });
    assert!(
        stored,
        "{key} was not stored with {want:?}: {:?}",
        mc.get_raw(key)
    );
}

/// Waits until memcached's TTL of `key` is below `below` seconds (past freshness).
fn wait_ttl_below(mc: &Memcached, key: &str, below: i64) {
    let past = wait_until(10 * SECOND, || {
        mc.ttl(key).is_some_and(|t| t >= 0 && t < below)
    });
    assert!(
        past,
        "{key}: ttl {:?} never went below {below}",
        mc.ttl(key)
    );
}

#[test]
fn an_expired_hot_page_is_rendered_once_while_the_others_get_it() {
    let mc = Memcached::start();
    let (app, renders) = slow_app(1);
    let nginx = site(&mc, &app, "");

    assert_eq!(http::get(nginx.port(), "/hot").text(), "render 1");
    wait_stored(&mc, "/hot", "render 1");
    // Stored for freshness (1 s) + rcache_stale (30 s).
    let ttl = mc.ttl("/hot").unwrap();
    assert!((29..=31).contains(&ttl), "ttl {ttl}");
    wait_ttl_below(&mc, "/hot", 30);

    let before = nginx.access_entries().len();
    let bodies = herd(&[nginx.port()], "/hot", 20);
    assert_eq!(
        renders.load(Ordering::SeqCst),
        2,
        "one render for the expiry"
    );
    for body in &bodies {
        assert!(body == "render 1" || body == "render 2", "{body}");
    }
    let got = statuses(&nginx, before, 20);
    assert_eq!(count(&got, "EXPIRED"), 1, "{got:?}");
    assert_eq!(count(&got, "UPDATING") + count(&got, "HIT"), 19, "{got:?}");
    assert!(
        count(&got, "UPDATING") >= 10,
        "most arrive during the render: {got:?}"
    );

    // The regenerated page replaced the stale one: fresh again.
    wait_stored(&mc, "/hot", "render 2");
    let r = http::get(nginx.port(), "/hot");
    assert_eq!(r.text(), "render 2");
    assert_eq!(statuses(&nginx, before + 20, 1), ["HIT"]);
    assert_eq!(renders.load(Ordering::SeqCst), 2);
}

#[test]
fn a_soft_purge_is_rendered_once_while_the_others_get_the_stale_page() {
    let mc = Memcached::start();
    let (app, renders) = slow_app(300);
    let nginx = site(&mc, &app, "");
    assert_eq!(http::get(nginx.port(), "/post").text(), "render 1");
    wait_stored(&mc, "/post", "render 1");

    let purge = http::request(nginx.port(), "PURGE", "/post", &[], None);
    assert_eq!(purge.status, 200, "{}", purge.text());
    // Still there, marked stale.
    assert!(mc.get_raw("/post").is_some(), "a soft purge keeps the page");

    let before = nginx.access_entries().len();
    let bodies = herd(&[nginx.port()], "/post", 20);
    assert_eq!(
        renders.load(Ordering::SeqCst),
        2,
        "one render for the purge"
    );
    assert!(
        bodies.iter().all(|b| b == "render 1" || b == "render 2"),
        "{bodies:?}"
    );
    let got = statuses(&nginx, before, 20);
    assert_eq!(count(&got, "EXPIRED"), 1, "{got:?}");
    assert_eq!(count(&got, "MISS"), 0, "{got:?}");
    wait_stored(&mc, "/post", "render 2");

    // A purge of a key memcached does not have: 404, as for a hard purge.
    let purge = http::request(nginx.port(), "PURGE", "/never", &[], None);
    assert_eq!(purge.status, 404);
}

#[test]
fn two_nginx_servers_sharing_memcached_render_once_per_expiry() {
    let mc = Memcached::start();
    let (app, renders) = slow_app(1);
    let a = site(&mc, &app, "");
    let b = site(&mc, &app, "");
    assert_eq!(http::get(a.port(), "/front").text(), "render 1");
    wait_stored(&mc, "/front", "render 1");
    assert_eq!(
        http::get(b.port(), "/front").text(),
        "render 1",
        "b gets a's page"
    );
    wait_ttl_below(&mc, "/front", 30);

    let (before_a, before_b) = (a.access_entries().len(), b.access_entries().len());
    let bodies = herd(&[a.port(), b.port()], "/front", 20);
    assert_eq!(
        renders.load(Ordering::SeqCst),
        2,
        "one render across both servers"
    );
    assert!(
        bodies.iter().all(|b| b.starts_with("render ")),
        "{bodies:?}"
    );
    let mut got = statuses(&a, before_a, 10);
    got.extend(statuses(&b, before_b, 10));
    assert_eq!(count(&got, "EXPIRED"), 1, "{got:?}");
}

#[test]
fn a_page_the_app_writes_itself_is_refreshed_in_the_last_stale_seconds_of_its_ttl() {
    let mc = Memcached::start();
    let renders = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&renders);
    let mc_addr = mc.socket_addr();
    // The 2009 setup: the app writes its pages itself (plain set, 35 s), rcache_store off.
    let app = App::start_with(move |req| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        thread::sleep(RENDER);
        let body = format!("own {n}");
        let client = memcache::Client::connect(format!("memcache://{mc_addr}?protocol=ascii"))
            .expect("app's memcached client");
        client
            .set(&req.target, body.as_str(), 35)
            .expect("app's set");
        AppResponse::new(200, body)
    });
    let nginx = site(&mc, &app, "rcache_store off;");
    mc.set_raw(b"/own", b"own 0", 0, 32);
    wait_ttl_below(&mc, "/own", 30);

    let before = nginx.access_entries().len();
    let bodies = herd(&[nginx.port()], "/own", 12);
    assert_eq!(
        renders.load(Ordering::SeqCst),
        1,
        "one render in the stale window"
    );
    assert!(
        bodies.iter().all(|b| b == "own 0" || b == "own 1"),
        "{bodies:?}"
    );
    let got = statuses(&nginx, before, 12);
    assert_eq!(count(&got, "EXPIRED"), 1, "{got:?}");
    assert_eq!(http::get(nginx.port(), "/own").text(), "own 1");
}

#[test]
fn the_regenerated_page_never_overwrites_a_page_the_app_wrote_meanwhile() {
    let mc = Memcached::start();
    let renders = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&renders);
    let mc_addr = mc.socket_addr();
    let app = App::start_with(move |req| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        if n == 2 {
            // While regenerating, the app stores the page under the key itself.
            let client = memcache::Client::connect(format!("memcache://{mc_addr}?protocol=ascii"))
                .expect("app's memcached client");
            client
                .set(&req.target, "written by the app", 300)
                .expect("app's set");
        }
        AppResponse::new(200, format!("render {n}")).header("Cache-Control", "max-age=1")
    });
    let nginx = site(&mc, &app, "");
    assert_eq!(http::get(nginx.port(), "/w").text(), "render 1");
    wait_stored(&mc, "/w", "render 1");
    wait_ttl_below(&mc, "/w", 30);

    assert_eq!(
        http::get(nginx.port(), "/w").text(),
        "render 2",
        "the winner's render"
    );
    // nginx logs the request once its store is over.
    let entries = nginx.wait_access_entries(2, 10 * SECOND);
    assert_eq!(entries[1].rcache, "EXPIRED");
    // The winner's store found another item than the one it regenerated: kept.
    assert_eq!(mc.get_raw("/w").unwrap().0, b"written by the app");
    assert_eq!(renders.load(Ordering::SeqCst), 2);
}

#[test]
fn without_a_fallback_an_expired_page_is_served_stale() {
    let mc = Memcached::start();
    let nginx = Nginx::builder()
        .var("mc", mc.port())
        .http(
            "server {
                 listen 127.0.0.1:{port};
                 location / { rcache_pass 127.0.0.1:{mc}; rcache_stale 30s; }
             }",
        )
        .start();
    mc.set_raw(b"/old", b"old page", 0, 31);
    wait_ttl_below(&mc, "/old", 30);
    for _ in 0..2 {
        assert_eq!(http::get(nginx.port(), "/old").text(), "old page");
    }
    let got = statuses(&nginx, 0, 2);
    assert_eq!(got, ["STALE", "UPDATING"]);
}

#[test]
fn a_server_without_the_meta_protocol_still_serves_pages() {
    let fake = FakeMemcached::start(|req| match req.command().as_str() {
        "mg" => vec![Step::write("ERROR\r\n")],
        "get" => vec![Step::write(value_reply(&req.key().unwrap(), 0, b"classic"))],
        _ => vec![Step::write("ERROR\r\n")],
    });
    let app = App::start();
    let nginx = Nginx::builder()
        .var("mc", fake.port())
        .var("app", app.port())
        .http(
            "server {
                 listen 127.0.0.1:{port};
                 location / {
                     rcache_pass 127.0.0.1:{mc};
                     rcache_fallback @app;
                     rcache_stale 30s;
                 }
                 location @app { proxy_pass http://127.0.0.1:{app}; }
             }",
        )
        .start();
    let first = http::get(nginx.port(), "/a");
    assert_eq!(first.status, 200, "the first request goes to the app");
    for path in ["/a", "/b", "/c"] {
        assert_eq!(http::get(nginx.port(), path).text(), "classic");
    }
    let got = statuses(&nginx, 0, 4);
    assert_eq!(got, ["ERROR", "HIT", "HIT", "HIT"]);
    let log = nginx.error_log();
    let said = log.matches("does not speak the meta protocol").count();
    assert_eq!(said, 1, "one line for the episode:\n{log}");
}

#[test]
fn bad_values_fail_nginx_t_naming_the_directive() {
    for (line, want) in [
        (
            "rcache_stale soon;",
            "\"rcache_stale\" directive invalid value",
        ),
        (
            "rcache_purge sometimes;",
            "invalid value \"sometimes\" in the \"rcache_purge\" directive",
        ),
        (
            "rcache_stale 10s; rcache_stale 20s;",
            "\"rcache_stale\" directive is duplicate",
        ),
    ] {
        let check = Nginx::builder()
            .http(&format!(
                "server {{ listen 127.0.0.1:{{port}};
                   location / {{ rcache_pass 127.0.0.1:1; {line} }} }}"
            ))
            .check_config();
        assert!(!check.ok, "{line} passed nginx -t");
        assert!(check.output.contains(want), "{line}: {}", check.output);
    }
    let check = Nginx::builder()
        .http(
            "server { listen 127.0.0.1:{port};
               location / { rcache_pass 127.0.0.1:1; rcache_stale 1m; rcache_purge hard;
                            rcache_lock on; rcache_lock_timeout 2s; rcache_lock_age 10s;
                            rcache_hit_for_pass 1m; }
               location /s/ { rcache_pass 127.0.0.1:1; rcache_purge soft; } }",
        )
        .check_config();
    assert!(check.ok, "{}", check.output);
}

#[test]
fn large_pages_are_served_whole_when_hit_and_when_stale() {
    let mc = Memcached::start_with_args(&["-I", "2m"]);
    let (app, renders) = slow_app(60);
    let nginx = site(&mc, &app, "rcache_store off;");
    // Larger than the first 16 KiB read: the rest goes into a second buffer.
    let page = bytes(300 * 1024, 3);
    mc.set_raw(b"/big", &page, 0, 300);
    let r = http::get(nginx.port(), "/big");
    assert_eq!(r.body, page, "HIT byte-exact");

    mc.set_raw(b"/big", &page, 0, 31);
    wait_ttl_below(&mc, "/big", 30);
    let before = nginx.access_entries().len();
    let barrier = Arc::new(Barrier::new(6));
    let port = nginx.port();
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                http::get(port, "/big")
            })
        })
        .collect();
    let mut stale = 0;
    for t in threads {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200);
        if r.body == page {
            stale += 1;
        } else {
            assert_eq!(r.text(), "render 1", "the one regeneration");
        }
    }
    assert_eq!(renders.load(Ordering::SeqCst), 1);
    assert_eq!(stale, 5, "the others got the whole stale page");
    let got = statuses(&nginx, before, 6);
    assert_eq!(count(&got, "EXPIRED"), 1, "{got:?}");
    assert_eq!(count(&got, "UPDATING"), 5, "{got:?}");
}

#[test]
fn meta_replies_split_anywhere_or_broken_are_handled_like_classic_ones() {
    let reply = b"VA 11 f0 t100 c7\r\nhello world\r\n".to_vec();
    let cuts: Vec<Vec<usize>> = vec![vec![1], vec![3, 17], vec![18], vec![20, 29], vec![30]];
    for cut in cuts {
        let script = split(&reply, &cut, Duration::from_millis(20));
        let fake = FakeMemcached::start(move |req| {
            assert_eq!(req.command(), "mg", "{}", req.line_str());
            script.clone()
        });
        let app = App::start();
        let nginx = Nginx::builder()
            .var("mc", fake.port())
            .var("app", app.port())
            .http(
                "server { listen 127.0.0.1:{port};
                   location / { rcache_pass 127.0.0.1:{mc}; rcache_fallback @app; rcache_stale 10s; }
                   location @app { proxy_pass http://127.0.0.1:{app}; } }",
            )
            .start();
        assert_eq!(
            http::get(nginx.port(), "/k").text(),
            "hello world",
            "cut at {cut:?}"
        );
        assert!(
            fake.requests()[0].ends_with("v f t c R10"),
            "{:?}",
            fake.requests()
        );
    }

    for broken in [
        &b"VA 11 f0 t100\r\nhello\r\n"[..], // short value, then the connection stalls
        b"VA 5 f0 t100 c1\r\nhelloXX",      // no CRLF after the value
        b"VA 5 f0 t100 c1 Q\r\nhello\r\n",  // an unknown flag
        b"HD\r\n",                          // no value for mg ... v
        b"VA 5 f0\r\nhello\r\nEN\r\n",      // a second reply nobody asked for
    ] {
        let broken = broken.to_vec();
        let fake = FakeMemcached::start(move |_| vec![Step::write(&broken)]);
        let app = App::start();
        let nginx = Nginx::builder()
            .var("mc", fake.port())
            .var("app", app.port())
            .http(
                "server { listen 127.0.0.1:{port};
                   location / { rcache_pass 127.0.0.1:{mc}; rcache_fallback @app;
                                rcache_stale 10s; rcache_read_timeout 300ms; }
                   location @app { proxy_pass http://127.0.0.1:{app}; } }",
            )
            .start();
        let r = http::get(nginx.port(), "/k");
        assert_eq!(r.status, 200);
        assert!(r.text().contains("app=1"), "to the app: {}", r.text());
        assert_eq!(statuses(&nginx, 0, 1), ["ERROR"]);
    }
}

/// Asks for `path` until the answer is `want` (at most 5 s): the stale page is served
/// (UPDATING) until the win given back reaches memcached, then one request regenerates.
/// Returns how many requests it took.
fn until_regenerated(port: u16, path: &str, stale: &str, want: &str) -> usize {
    for n in 1..=50 {
        let body = http::get(port, path).text();
        if body == want {
            return n;
        }
        assert_eq!(body, stale, "meanwhile the stale page");
        thread::sleep(Duration::from_millis(100));
    }
    panic!("{path} was not regenerated within 5 s: the win was not given back");
}

#[test]
fn a_regeneration_that_is_not_stored_gives_the_win_back() {
    let mc = Memcached::start();
    let renders = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&renders);
    let app = App::start_with(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        if n == 2 {
            return AppResponse::new(500, "the app failed");
        }
        AppResponse::new(200, format!("render {n}")).header("Cache-Control", "max-age=1")
    });
    let nginx = site(&mc, &app, "");
    assert_eq!(http::get(nginx.port(), "/flaky").text(), "render 1");
    wait_stored(&mc, "/flaky", "render 1");
    wait_ttl_below(&mc, "/flaky", 30);

    // The winner's render fails: its client gets the stale page instead of the app's
    // error (STALE), and the win is given back (the page is marked stale again, nobody
    // holds it).
    let r = http::get(nginx.port(), "/flaky");
    assert_eq!((r.status, r.text().as_str()), (200, "render 1"));
    // So another request regenerates, and its page is stored.
    let n = until_regenerated(nginx.port(), "/flaky", "render 1", "render 3");
    wait_stored(&mc, "/flaky", "render 3");
    assert_eq!(http::get(nginx.port(), "/flaky").text(), "render 3");
    let got = statuses(&nginx, 0, 3 + n);
    assert_eq!(got[..2], ["MISS", "STALE"]);
    assert_eq!(got[1 + n], "EXPIRED", "{got:?}");
    assert_eq!(count(&got, "UPDATING"), n - 1, "{got:?}");
    assert_eq!(got[2 + n], "HIT");
    assert_eq!(renders.load(Ordering::SeqCst), 3);
}

#[test]
fn a_winner_whose_client_goes_away_gives_the_win_back() {
    let mc = Memcached::start();
    let renders = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&renders);
    let app = App::start_with(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        if n == 2 {
            thread::sleep(Duration::from_millis(800));
        }
        AppResponse::new(200, format!("render {n}")).header("Cache-Control", "max-age=1")
    });
    let nginx = site(&mc, &app, "");
    assert_eq!(http::get(nginx.port(), "/gone").text(), "render 1");
    wait_stored(&mc, "/gone", "render 1");
    wait_ttl_below(&mc, "/gone", 30);

    // The winner's client hangs up while the app renders.
    let got = http::send_raw(
        nginx.port(),
        b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_millis(200),
    )
    .unwrap_or_default();
    assert!(
        got.is_empty(),
        "no answer yet: {:?}",
        String::from_utf8_lossy(&got)
    );
    until_regenerated(nginx.port(), "/gone", "render 1", "render 3");
    wait_stored(&mc, "/gone", "render 3");
}

/// `n` clients at once on `path`; returns (status, body, seconds) of each.
fn timed_herd(port: u16, path: &str, n: usize) -> Vec<(u16, String, f64)> {
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            let path = path.to_string();
            thread::spawn(move || {
                barrier.wait();
                let t0 = std::time::Instant::now();
                let r = http::get(port, &path);
                (r.status, r.text(), t0.elapsed().as_secs_f64())
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("client"))
        .collect()
}

#[test]
fn with_rcache_lock_a_cold_page_is_rendered_once_and_the_waiters_get_it_at_once() {
    let mc = Memcached::start();
    let (app, renders) = slow_app(60);
    let nginx = site(&mc, &app, "rcache_lock on;");
    let got = timed_herd(nginx.port(), "/cold", 20);
    assert_eq!(
        renders.load(Ordering::SeqCst),
        1,
        "one render for the cold page"
    );
    for (status, body, secs) in &got {
        assert_eq!((*status, body.as_str()), (200, "render 1"));
        // One render (0.3 s) plus at most one 50 ms pause, with room for a busy machine;
        // not a 500 ms poll.
        assert!(*secs < 0.3 + 0.25, "a waiter took {secs:.3} s");
    }
    let statuses = statuses(&nginx, 0, 20);
    assert_eq!(count(&statuses, "MISS"), 1, "{statuses:?}");
    assert_eq!(count(&statuses, "HIT"), 19, "{statuses:?}");
    // The placeholder was replaced by the page, never served: every body was the page.
    let (stored, flags) = mc.get_raw("/cold").unwrap();
    assert!(
        !stored.is_empty() && flags != 0,
        "the page (rcache's stored form), not the placeholder"
    );
}

#[test]
fn a_waiter_past_rcache_lock_timeout_goes_to_the_fallback_itself_and_is_not_stored() {
    let mc = Memcached::start();
    let renders = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&renders);
    let app = App::start_with(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        thread::sleep(Duration::from_millis(700));
        AppResponse::new(200, format!("render {n}")).header("Cache-Control", "max-age=60")
    });
    let nginx = site(&mc, &app, "rcache_lock on; rcache_lock_timeout 200ms;");
    let got = timed_herd(nginx.port(), "/slow", 5);
    assert_eq!(
        renders.load(Ordering::SeqCst),
        5,
        "each waiter rendered after 200 ms"
    );
    for (status, _, secs) in &got {
        assert_eq!(*status, 200);
        assert!(*secs < 0.2 + 0.7 + 0.4, "{secs:.3} s");
    }
    let statuses = statuses(&nginx, 0, 5);
    assert_eq!(count(&statuses, "MISS"), 5, "{statuses:?}");
    // Only the lock's holder stored its page.
    wait_stored(&mc, "/slow", "render");
    let stored = String::from_utf8_lossy(&mc.get_raw("/slow").unwrap().0).into_owned();
    let winner = got.iter().map(|(_, b, _)| b.clone()).collect::<Vec<_>>();
    assert!(
        winner.iter().any(|b| stored.contains(b.as_str())),
        "{stored:?} {winner:?}"
    );
}

#[test]
fn when_the_lock_holder_fails_a_waiter_takes_the_lock_and_the_others_get_its_page() {
    let mc = Memcached::start();
    let renders = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&renders);
    let app = App::start_with(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        thread::sleep(RENDER);
        if n == 1 {
            return AppResponse::new(500, "the app failed");
        }
        AppResponse::new(200, format!("render {n}")).header("Cache-Control", "max-age=60")
    });
    let nginx = site(&mc, &app, "rcache_lock on;");
    let got = timed_herd(nginx.port(), "/fragile", 10);
    assert_eq!(
        renders.load(Ordering::SeqCst),
        2,
        "the failed render, then one more"
    );
    let failed = got.iter().filter(|(s, _, _)| *s == 500).count();
    let served = got
        .iter()
        .filter(|(s, b, _)| *s == 200 && b == "render 2")
        .count();
    assert_eq!((failed, served), (1, 9), "{got:?}");
}

#[test]
fn an_uncacheable_page_under_rcache_lock_is_marked_hit_for_pass_and_nobody_queues() {
    use std::sync::atomic::AtomicBool;
    let mc = Memcached::start();
    let renders = Arc::new(AtomicUsize::new(0));
    let cacheable = Arc::new(AtomicBool::new(false));
    let (counter, switch) = (Arc::clone(&renders), Arc::clone(&cacheable));
    let app = App::start_with(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        thread::sleep(RENDER);
        let r = AppResponse::new(200, format!("render {n}"));
        if switch.load(Ordering::SeqCst) {
            r.header("Cache-Control", "max-age=60")
        } else {
            r.header("Set-Cookie", "session=1")
        }
    });
    let nginx = site(&mc, &app, "rcache_lock on;");
    let got = timed_herd(nginx.port(), "/personal", 10);
    assert_eq!(
        renders.load(Ordering::SeqCst),
        10,
        "everyone went to the app"
    );
    for (status, _, secs) in &got {
        assert_eq!(*status, 200);
        // The lock holder's render, then everyone else's in parallel: about two renders,
        // not ten one after the other.
        assert!(
            *secs < 3.0 * RENDER.as_secs_f64() + 0.3,
            "{secs:.3} s: requests queued"
        );
    }
    let first = statuses(&nginx, 0, 10);
    assert_eq!(count(&first, "MISS"), 1, "{first:?}");
    assert_eq!(count(&first, "PASS"), 9, "{first:?}");
    let (marker, flags) = mc.get_raw("/personal").expect("the marker");
    assert!(marker.is_empty() && flags == 1 << 25, "{marker:?} {flags}");
    let ttl = mc.ttl("/personal").unwrap();
    assert!(
        (28..=30).contains(&ttl),
        "rcache_hit_for_pass 30s by default: {ttl}"
    );

    // Once the response is cacheable again, it replaces the marker.
    cacheable.store(true, Ordering::SeqCst);
    let r = http::get(nginx.port(), "/personal");
    assert_eq!(r.status, 200);
    wait_stored(&mc, "/personal", "render 11");
    assert_eq!(http::get(nginx.port(), "/personal").text(), "render 11");
    assert_eq!(statuses(&nginx, 10, 2), ["PASS", "HIT"]);
}

#[test]
fn rcache_hit_for_pass_0_gives_the_lock_back_instead() {
    let mc = Memcached::start();
    let app = App::start_with(|_| AppResponse::new(200, "personal").header("Set-Cookie", "a=1"));
    let nginx = site(&mc, &app, "rcache_lock on; rcache_hit_for_pass 0;");
    assert_eq!(http::get(nginx.port(), "/p").text(), "personal");
    thread::sleep(Duration::from_millis(200));
    // No marker: the placeholder was marked stale for the next request to take.
    let (value, flags) = mc.get_raw("/p").expect("the placeholder");
    assert!(value.is_empty() && flags == 0, "{value:?} {flags}");
    assert_eq!(http::get(nginx.port(), "/p").text(), "personal");
    assert_eq!(statuses(&nginx, 0, 2), ["MISS", "MISS"]);
}

/// nginx with the stale-pages location (`rcache_stale 30s`, store on, and `extra`) whose
/// fallback is the app at `app_port`, with `fallback_extra` in its location.
fn site_with(mc: &Memcached, app_port: u16, extra: &str, fallback_extra: &str) -> Nginx {
    Nginx::builder()
        .var("mc", mc.port())
        .var("app", app_port)
        .http(
            &"server {
                 listen 127.0.0.1:{port};
                 location / {
                     rcache_pass 127.0.0.1:{mc};
                     rcache_fallback @app;
                     rcache_store on;
                     rcache_stale 30s;
                     {extra}
                 }
                 location @app { proxy_pass http://127.0.0.1:{app}; {fallback_extra} }
             }"
            .replace("{extra}", extra)
            .replace("{fallback_extra}", fallback_extra),
        )
        .start()
}

/// [`site_with`] `rcache_lock on`, and a fallback that gives up on the app after 1 s.
fn site_with_short_timeout(mc: &Memcached, app_port: u16) -> Nginx {
    site_with(
        mc,
        app_port,
        "rcache_lock on;",
        "proxy_read_timeout 1s; proxy_connect_timeout 1s;",
    )
}

#[test]
fn while_the_app_fails_the_stale_page_is_served_with_its_own_headers() {
    let mc = Memcached::start();
    let failing = Arc::new(AtomicUsize::new(0));
    let mode = Arc::clone(&failing);
    let renders = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&renders);
    // 0: renders; 1: answers 503 with its own headers; 2: stalls past proxy_read_timeout.
    let app = App::start_with(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        match mode.load(Ordering::SeqCst) {
            1 => AppResponse::new(503, "down for maintenance")
                .header("Content-Type", "text/plain")
                .header("Set-Cookie", "error=1")
                .header("Retry-After", "120"),
            2 => {
                thread::sleep(Duration::from_millis(1500));
                AppResponse::new(200, "too late")
            }
            _ => AppResponse::new(200, format!("<p>render {n}</p>"))
                .header("Content-Type", "text/html; charset=utf-8")
                .header("ETag", &format!("\"v{n}\""))
                .header("Cache-Control", "max-age=1"),
        }
    });
    let nginx = site_with_short_timeout(&mc, app.port());
    assert_eq!(http::get(nginx.port(), "/p").text(), "<p>render 1</p>");
    wait_stored(&mc, "/p", "render 1");

    // (Only before the first: an `mg` on a stale item would take its win.)
    wait_ttl_below(&mc, "/p", 30);
    for (which, mode) in [("an error", 1), ("no answer in time", 2)] {
        failing.store(mode, Ordering::SeqCst);
        // Until a request wins the regeneration (the win given back by the previous
        // one reaches memcached a moment after its answer), every answer is the page.
        let mut stale = None;
        for _ in 0..20 {
            let before = nginx.access_entries().len();
            let t0 = std::time::Instant::now();
            let r = http::get(nginx.port(), "/p");
            let took = t0.elapsed();
            // The stored page as it was: its status, body and kept headers; nothing of
            // the error's.
            assert_eq!(r.status, 200, "{which}: {}", r.text());
            assert_eq!(r.text(), "<p>render 1</p>", "{which}");
            assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
            assert_eq!(r.header("ETag"), Some("\"v1\""));
            assert_eq!(r.header("Content-Length"), Some("15"));
            assert_eq!(r.header("Set-Cookie"), None, "{which}");
            assert_eq!(r.header("Retry-After"), None, "{which}");
            let status = statuses(&nginx, before, 1).remove(0);
            if status == "STALE" {
                stale = Some(took);
                break;
            }
            assert_eq!(status, "UPDATING", "{which}");
            thread::sleep(Duration::from_millis(50));
        }
        let took = stale.unwrap_or_else(|| panic!("{which}: no request regenerated"));
        if mode == 2 {
            assert!(
                took >= Duration::from_millis(900),
                "waited for the app: {took:?}"
            );
        }
        // A HEAD is answered the same way, without a body.
        let head = http::request(nginx.port(), "HEAD", "/p", &[], None);
        assert_eq!(head.status, 200, "{which}");
        assert!(head.body.is_empty());
        // The page was not replaced by the error, and stays stale.
        assert!(mc
            .get_raw("/p")
            .is_some_and(|(v, _)| String::from_utf8_lossy(&v).contains("render 1")));
    }

    // The app is back: the next request regenerates the page (the wins were given back).
    failing.store(0, Ordering::SeqCst);
    let n = until_regenerated(nginx.port(), "/p", "<p>render 1</p>", "<p>render 4</p>");
    assert!(n <= 3, "regenerated by the first requests: {n}");
    wait_stored(&mc, "/p", "render 4");
    assert_eq!(http::get(nginx.port(), "/p").text(), "<p>render 4</p>");
}

#[test]
fn while_the_app_is_down_a_hot_page_stays_up() {
    let mc = Memcached::start();
    let (app, _renders) = slow_app(1);
    let app_port = app.port();
    let nginx = site_with_short_timeout(&mc, app_port);
    assert_eq!(http::get(nginx.port(), "/hot").text(), "render 1");
    wait_stored(&mc, "/hot", "render 1");
    // The app goes away (connection refused: nginx's own 502).
    drop(app);
    wait_ttl_below(&mc, "/hot", 30);

    let before = nginx.access_entries().len();
    for _ in 0..3 {
        let bodies = herd(&[nginx.port()], "/hot", 10);
        assert!(bodies.iter().all(|b| b == "render 1"), "{bodies:?}");
    }
    let got = statuses(&nginx, before, 30);
    assert!(count(&got, "STALE") >= 1, "{got:?}");
    assert_eq!(
        count(&got, "STALE") + count(&got, "UPDATING"),
        30,
        "every request got the stale page: {got:?}"
    );
    // Each request that tried the app logged why at info level, not as an error of its
    // own beyond nginx's connect() line.
    assert!(nginx.error_log().contains("STALE, the stale page served"));
}

#[test]
fn a_page_the_app_writes_itself_is_served_stale_while_the_app_fails() {
    let mc = Memcached::start();
    let app = App::start_with(|_| AppResponse::new(500, "the app failed"));
    let nginx = site(&mc, &app, "rcache_store off;");
    mc.set_raw(b"/own", b"own 0", 0, 32);
    wait_ttl_below(&mc, "/own", 30);
    for _ in 0..3 {
        let r = http::get(nginx.port(), "/own");
        assert_eq!((r.status, r.text().as_str()), (200, "own 0"));
    }
    // Each failure gave the win back: each of these requests tried the app.
    let got = statuses(&nginx, 0, 3);
    assert_eq!(got, ["STALE", "STALE", "STALE"]);
    assert_eq!(app.requests(), 3);
}

/// [`site_with`] `rcache_lock_age 2s`.
fn site_with_lock_age_2s(mc: &Memcached, app_port: u16) -> Nginx {
    site_with(mc, app_port, "rcache_lock_age 2s;", "")
}

/// An app whose render `slow` (1-based) takes 8 s; the others are immediate. The first
/// page is fresh for 1 s, the others for 60 s.
fn app_with_one_slow_render(slow: usize) -> (App, Arc<AtomicUsize>) {
    let renders = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&renders);
    let app = App::start_with(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        if n == slow {
            thread::sleep(Duration::from_secs(8));
        }
        // The first page expires at once; the regenerated ones stay fresh.
        let max_age = if n == 1 { 1 } else { 60 };
        AppResponse::new(200, format!("render {n}"))
            .header("Cache-Control", &format!("max-age={max_age}"))
    });
    (app, renders)
}

/// Asks `port` for `path` every 100 ms until the answer is `want` (the stale page
/// `stale` meanwhile); returns how long it took. Panics after `limit`.
fn time_until(port: u16, path: &str, stale: &str, want: &str, limit: Duration) -> Duration {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < limit {
        let r = http::get(port, path);
        assert_eq!(r.status, 200, "{}", r.text());
        if r.text() == want {
            return t0.elapsed();
        }
        assert_eq!(r.text(), stale, "meanwhile the stale page");
        thread::sleep(Duration::from_millis(100));
    }
    panic!("{path}: no {want:?} within {limit:?}");
}

#[test]
fn a_regeneration_stalled_past_rcache_lock_age_is_handed_to_one_more_request() {
    let mc = Memcached::start();
    let (app, renders) = app_with_one_slow_render(2);
    let nginx = site_with_lock_age_2s(&mc, app.port());
    assert_eq!(http::get(nginx.port(), "/s").text(), "render 1");
    wait_stored(&mc, "/s", "render 1");
    wait_ttl_below(&mc, "/s", 30);

    // The winner's render stalls (8 s, within proxy_read_timeout).
    let port = nginx.port();
    let winner = thread::spawn(move || http::get(port, "/s").text());
    thread::sleep(Duration::from_millis(300));
    // Everyone else gets the stale page; once the win is older than rcache_lock_age
    // (2 s, memcached counts whole seconds), one more request regenerates the page.
    let took = time_until(port, "/s", "render 1", "render 3", Duration::from_secs(7));
    assert!(
        took < Duration::from_millis(4500),
        "handed on after about rcache_lock_age: {took:?}"
    );
    wait_stored(&mc, "/s", "render 3");
    assert_eq!(
        renders.load(Ordering::SeqCst),
        3,
        "one more render, not a herd"
    );

    // The stalled render ends: its client gets it, but it does not replace the newer
    // page (its CAS names the item that was handed on).
    assert_eq!(winner.join().expect("winner"), "render 2");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(http::get(port, "/s").text(), "render 3");
    assert!(nginx
        .error_log()
        .contains("ran longer than rcache_lock_age"));
}

#[test]
fn when_the_winners_nginx_is_killed_mid_render_another_server_regenerates() {
    let mc = Memcached::start();
    let (app, renders) = app_with_one_slow_render(2);
    let a = site_with_lock_age_2s(&mc, app.port());
    let b = site_with_lock_age_2s(&mc, app.port());
    assert_eq!(http::get(a.port(), "/k").text(), "render 1");
    wait_stored(&mc, "/k", "render 1");
    wait_ttl_below(&mc, "/k", 30);

    // a's request wins the regeneration; a dies (kill -9) while the app renders.
    let port_a = a.port();
    let doomed = thread::spawn(move || http::try_request(port_a, "GET", "/k", &[], None).is_ok());
    let rendering = wait_until(5 * SECOND, || renders.load(Ordering::SeqCst) == 2);
    assert!(rendering, "a's request reached the app");
    let mut pids = a.worker_pids();
    pids.push(a.pid());
    for pid in pids {
        let _ = common::process::kill(pid, libc::SIGKILL);
    }
    let _ = doomed.join();

    // b serves the stale page, and regenerates it once a's win is older than
    // rcache_lock_age — not only when the stale window (30 s) ends.
    let b_before = b.access_entries().len();
    let took = time_until(
        b.port(),
        "/k",
        "render 1",
        "render 3",
        Duration::from_secs(7),
    );
    assert!(took < Duration::from_millis(4500), "{took:?}");
    wait_stored(&mc, "/k", "render 3");
    assert_eq!(renders.load(Ordering::SeqCst), 3);
    let got = statuses(&b, b_before, b.access_entries().len() - b_before);
    assert_eq!(count(&got, "EXPIRED"), 1, "{got:?}");
}

#[test]
fn stale_pages_work_the_same_over_rcache_hash_with_gzip_pages_the_front_cache_and_bypass() {
    let mcs: Vec<Memcached> = (0..3).map(|_| Memcached::start()).collect();
    let plain = b"<p>a gzip page</p>\n".repeat(200);
    let gz = gzip(&plain);
    let renders = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&renders);
    let app_gz = gz.clone();
    let app = App::start_with(move |req| {
        if req.header("cookie").is_some() {
            return AppResponse::new(200, "for the logged-in user");
        }
        counter.fetch_add(1, Ordering::SeqCst);
        thread::sleep(RENDER);
        AppResponse::new(200, app_gz.clone())
            .header("Content-Type", "text/html; charset=utf-8")
            .header("Content-Encoding", "gzip")
            .header("Content-Language", "en")
            .header("Cache-Control", "max-age=1")
    });
    let nginx = Nginx::builder()
        .workers(2)
        .var("m0", mcs[0].port())
        .var("m1", mcs[1].port())
        .var("m2", mcs[2].port())
        .var("app", app.port())
        .http(
            "rcache_front_zone front:1m;
             upstream mc {
                 rcache_hash rendezvous;
                 server 127.0.0.1:{m0}; server 127.0.0.1:{m1}; server 127.0.0.1:{m2};
             }
             server {
                 listen 127.0.0.1:{port};
                 location / {
                     rcache_pass mc;
                     rcache_fallback @app;
                     rcache_store on;
                     rcache_stale 30s;
                     rcache_lock on;
                     rcache_front front ttl=1s;
                     rcache_bypass $cookie_session;
                 }
                 location @app { proxy_pass http://127.0.0.1:{app}; }
             }",
        )
        .start();
    let port = nginx.port();
    let gzip_ae = [("Accept-Encoding", "gzip")];

    // Cold: one render under the lock, for gzip and plain clients alike.
    let before = nginx.access_entries().len();
    mixed_herd(port, "/g", None, &gz, &plain);
    assert_eq!(
        renders.load(Ordering::SeqCst),
        1,
        "one render for the cold page"
    );
    let got = statuses(&nginx, before, 12);
    assert_eq!(count(&got, "MISS"), 1, "{got:?}");

    // The page lives on one of the three servers (the rendezvous choice).
    let holder = wait_until(10 * SECOND, || {
        mcs.iter().any(|m| m.get_raw("/g").is_some())
    });
    assert!(holder, "stored");
    let holders: Vec<_> = mcs.iter().filter(|m| m.get_raw("/g").is_some()).collect();
    assert_eq!(holders.len(), 1);
    let mc = holders[0];

    // A logged-in user is never served the cached page, and takes no win.
    let r = http::request(port, "GET", "/g", &[("Cookie", "session=1")], None);
    assert_eq!(r.text(), "for the logged-in user");

    // Expired: one render; everyone else gets the stale gzip page (the front cache's
    // 1 s copy may answer some of them first), each as it accepts.
    wait_ttl_below(mc, "/g", 30);
    thread::sleep(Duration::from_millis(1100));
    let before = nginx.access_entries().len();
    mixed_herd(port, "/g", Some(5), &gz, &plain);
    assert_eq!(
        renders.load(Ordering::SeqCst),
        2,
        "one render for the expiry"
    );
    let got = statuses(&nginx, before, 12);
    assert_eq!(count(&got, "EXPIRED"), 1, "{got:?}");
    assert_eq!(count(&got, "MISS") + count(&got, "BYPASS"), 0, "{got:?}");
    let r = http::request(port, "GET", "/g", &gzip_ae, None);
    assert!(r.body == gz);
    assert!(nginx.alerts().is_empty(), "{:?}", nginx.alerts());
}

/// 12 clients at once on `path`, every other one accepting gzip, client `head` (if any)
/// asking with HEAD: each gets the page whole — `gz` or `plain` as it accepts — with its
/// kept header. (The request that renders gets the app's own answer, gzip whoever asks.)
fn mixed_herd(port: u16, path: &str, head: Option<usize>, gz: &[u8], plain: &[u8]) {
    let herd: Vec<_> = (0..12)
        .map(|i| {
            let path = path.to_string();
            thread::spawn(move || {
                let ae: &[(&str, &str)] = if i % 2 == 0 {
                    &[("Accept-Encoding", "gzip")]
                } else {
                    &[]
                };
                let method = if head == Some(i) { "HEAD" } else { "GET" };
                (i, http::request(port, method, &path, ae, None))
            })
        })
        .collect();
    let mut apps_own = 0;
    for t in herd {
        let (i, r) = t.join().expect("client");
        assert_eq!(r.status, 200, "{i}");
        assert_eq!(r.header("Content-Language"), Some("en"), "{i}");
        if head == Some(i) {
            assert!(r.body.is_empty());
        } else if i % 2 == 0 {
            assert!(r.body == gz, "gzip client {i}");
        } else if r.body == gz {
            apps_own += 1;
        } else {
            assert!(r.body == plain, "plain client {i}");
        }
    }
    assert!(apps_own <= 1, "{apps_own} plain clients got gzip");
}
