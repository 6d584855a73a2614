//! The example configuration in `nginx-conf/blog.conf` (the 2009 setup done with rcache),
//! loaded as it is, with its placeholders filled in, and exercised request by request.

mod common;

use common::http;
use common::*;

/// The file without its comment lines (whose prose mentions `{name}` placeholders).
fn blog_conf() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/nginx-conf/blog.conf");
    let text = std::fs::read_to_string(path).expect("read nginx-conf/blog.conf");
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

struct Blog {
    mc: Memcached,
    app: App,
    nginx: Nginx,
}

fn start_blog() -> Blog {
    let mc = Memcached::start();
    let app = App::start();
    let nginx = Nginx::builder()
        .var("memcached", mc.addr())
        .var("app", app.addr())
        .http(&blog_conf())
        .start();
    Blog { mc, app, nginx }
}

#[test]
fn blog_conf_serves_cached_pages_and_sends_the_rest_to_the_app() {
    let blog = start_blog();
    let port = blog.nginx.port();
    blog.mc
        .set_raw(b"/about/", b"<h1>About (cached)</h1>", 0, 0);

    // A cached page: HIT, the app is not asked.
    let r = http::get(port, "/about/");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"<h1>About (cached)</h1>");
    assert_eq!(r.header("content-type"), Some("text/html"));
    assert_eq!(r.header("x-rcache-status"), Some("HIT"));
    assert_eq!(blog.app.requests(), 0);

    // Not cached: MISS, the app sees the visitor's own path and query, and why it was asked.
    let r = http::get(port, "/archive/2009/?page=2");
    let echo = Echo::parse(&r.body);
    assert_eq!(echo.method(), "GET");
    assert_eq!(echo.uri(), "/archive/2009/?page=2");
    assert_eq!(echo.header("x-rcache-status"), Some("MISS"));
    assert_eq!(r.header("x-rcache-status"), Some("MISS"));

    // Logged in: BYPASS even though the page is cached.
    let r = http::request(
        port,
        "GET",
        "/about/",
        &[("Cookie", "sessionid=s3cr3t")],
        None,
    );
    let echo = Echo::parse(&r.body);
    assert_eq!(echo.uri(), "/about/");
    assert_eq!(echo.header("x-rcache-status"), Some("BYPASS"));

    // A comment POSTed to a cached page reaches the app with its body.
    let r = http::request(port, "POST", "/about/", &[], Some(b"comment=nice+post"));
    let echo = Echo::parse(&r.body);
    assert_eq!(echo.method(), "POST");
    assert_eq!(echo.body_sha(), sha256_hex(b"comment=nice+post"));
    assert_eq!(echo.header("x-rcache-status"), Some("BYPASS"));

    // Always dynamic, without rcache: no status at all, memcached not asked.
    let gets = blog.mc.cmd_get();
    for path in ["/search/?q=nginx", "/admin/", "/xhr/poll"] {
        let r = http::get(port, path);
        assert_eq!(Echo::parse(&r.body).uri(), path);
        assert_eq!(r.header("x-rcache-status"), None, "{path}");
    }
    assert_eq!(blog.mc.cmd_get(), gets);

    // /dynamic/ is internal: visitors cannot reach the app through it.
    assert_eq!(http::get(port, "/dynamic/about/").status, 404);

    let statuses: Vec<_> = blog
        .nginx
        .wait_access_entries(8, SECOND)
        .into_iter()
        .map(|e| e.rcache)
        .collect();
    assert_eq!(
        statuses,
        ["HIT", "MISS", "BYPASS", "BYPASS", "-", "-", "-", "-"]
    );
}

#[test]
fn blog_conf_keeps_serving_when_memcached_is_down() {
    let mut blog = start_blog();
    blog.mc.stop();
    let r = http::get(blog.nginx.port(), "/about/");
    assert_eq!(r.status, 200);
    assert_eq!(
        Echo::parse(&r.body).header("x-rcache-status"),
        Some("ERROR")
    );
    assert!(blog.nginx.alerts().is_empty(), "{:?}", blog.nginx.alerts());
}
