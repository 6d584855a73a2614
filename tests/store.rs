//! `rcache_store` and `rcache_purge` against a real nginx, a real memcached and the App as
//! the application behind `rcache_fallback`.
//!
//! * Store on miss: the first request is a MISS whose response is written to memcached in
//!   rcache's stored form (flag 16777216, `RCACHE/1`, kept headers, body); the second is a
//!   HIT with the same status, headers that matter and byte-identical body (1 B, 10 KiB,
//!   500 KiB through a proxy temp file; gzip from the app; chunked and streamed; with
//!   `proxy_buffering off`; files with and without sendfile; nginx's own gzip on the MISS;
//!   a URI fallback; concurrent keep-alive clients; escaped keys; the pooled connection).
//! * Not stored: every request and response rule (method, query string,
//!   `rcache_store_bypass`, status, `Set-Cookie`, `Cache-Control`, `Vary`, content coding,
//!   TTL 0, size, a truncated app response, a client gone mid-response), each proven by
//!   the key being absent from memcached and the next request being a MISS again; and the
//!   look-alikes that are stored.
//! * TTL sources read back from memcached with the meta command `mg <key> t` (over 30 days
//!   as an absolute time), and a short TTL that expires.
//! * Store failures (`SERVER_ERROR`, stall, reset, a request that ends first) never reach
//!   the client; logged once per episode.
//! * Purge: deletes (200), absent or unusable key (404), memcached down (502) or stalled
//!   (504), access control with `limit_except`, the front cache, `rcache_hash` servers,
//!   `rcache_key`; without `rcache_purge` a PURGE is a BYPASS.
//! * Values apps write themselves are served raw and not overwritten (also when the app
//!   writes while it answers the MISS).
//! * Kept headers on HITs: ETag / Last-Modified answer conditional requests; HEAD, ranges.
//! * `nginx -t` for the new directives; `$rcache_store_status` in the access log; SSI
//!   subrequests.
//!
//! Each nginx here logs `$request_method $request_uri $status $rcache_status
//! $rcache_store_status $rcache_front` to `store.log` (see [`Entry`]). nginx writes that line
//! only once memcached has answered the store, so waiting for it is how a test knows the
//! store is over — no sleeps.
//!
//! Known failures (module bugs, see each test's doc): a stored non-200 is served as 200;
//! PURGE under `limit_except` gets 405; a page the app writes during the MISS is
//! overwritten; a stored page over `rcache_max_size` is never served; an SSI include of an
//! rcache location hides the MISS and stops the store; `rcache_purge` without `rcache_pass`
//! passes `nginx -t`.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::fake_memcached::Request as McRequest;
use common::http::{self, KeepAliveClient, Response};
use common::*;

/// The flag bit of pages rcache stored (README: "Stored pages are marked with the
/// memcached flag bit 16777216").
const STORED_FLAG: u32 = 1 << 24;

/// `default_type` of every nginx here: a HIT that did not restore the app's Content-Type
/// shows this one.
const DEFAULT_TYPE: &str = "application/x-nginx-default";

/// How long to wait for a log line (generous: the machine may be busy).
const LOG_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------

/// One line of `store.log`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    method: String,
    uri: String,
    status: u16,
    /// `$rcache_status`
    rcache: String,
    /// `$rcache_store_status`
    store: String,
    /// `$rcache_front`
    front: String,
}

impl Entry {
    fn parse(line: &str) -> Entry {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 6, "bad store.log line {line:?}");
        Entry {
            method: f[0].to_string(),
            uri: f[1].to_string(),
            status: f[2].parse().expect("status in store.log"),
            rcache: f[3].to_string(),
            store: f[4].to_string(),
            front: f[5].to_string(),
        }
    }

    /// `"$rcache_status $rcache_store_status"`, e.g. `"MISS STORED"`.
    fn statuses(&self) -> String {
        format!("{} {}", self.rcache, self.store)
    }
}

/// The nginx config: `location /` with rcache (store on) and `location_extra`, the
/// fallback `@app`, and `http_extra` before the server. Placeholders: `{pass}` (what
/// `rcache_pass` names) and `{app}` (the app's port).
fn nginx_for(pass: &str, app: &App, location_extra: &str, http_extra: &str) -> Nginx {
    nginx_with_fallback(pass, app, "@app", location_extra, http_extra)
}

/// [`nginx_for`] with another `rcache_fallback` (`/dynamic$uri` is an internal location
/// proxying to the app).
fn nginx_with_fallback(
    pass: &str,
    app: &App,
    fallback: &str,
    location_extra: &str,
    http_extra: &str,
) -> Nginx {
    Nginx::builder()
        .var("pass", pass)
        .var("app", app.port())
        .var("fallback", fallback)
        .http(
            &"default_type {default_type};
             log_format store '$request_method $request_uri $status $rcache_status $rcache_store_status $rcache_front';
             {http_extra}
             server {
                 listen 127.0.0.1:{port};
                 access_log {prefix}/access.log rcache;
                 access_log {prefix}/store.log store;
                 location / {
                     rcache_pass {pass};
                     rcache_fallback {fallback};
                     rcache_store on;
                     {location_extra}
                 }
                 location @app {
                     proxy_pass http://127.0.0.1:{app};
                 }
                 location /dynamic/ {
                     internal;
                     proxy_pass http://127.0.0.1:{app};
                 }
             }"
            .replace("{default_type}", DEFAULT_TYPE)
            .replace("{http_extra}", http_extra)
            .replace("{location_extra}", location_extra),
        )
        .start()
}

/// nginx with two rcache locations: `/` falls back to a buffering proxy (`@app`),
/// `/unbuffered/` to one with `proxy_buffering off` (`@unbuffered`).
fn nginx_buffered_and_unbuffered(pass: &str, app: &App) -> Nginx {
    Nginx::builder()
        .var("pass", pass)
        .var("app", app.port())
        .http(
            &"default_type {default_type};
             log_format store '$request_method $request_uri $status $rcache_status $rcache_store_status $rcache_front';
             server {
                 listen 127.0.0.1:{port};
                 access_log {prefix}/store.log store;
                 location / {
                     rcache_pass {pass};
                     rcache_fallback @app;
                     rcache_store on;
                 }
                 location /unbuffered/ {
                     rcache_pass {pass};
                     rcache_fallback @unbuffered;
                     rcache_store on;
                 }
                 location @app { proxy_pass http://127.0.0.1:{app}; }
                 location @unbuffered {
                     proxy_buffering off;
                     proxy_pass http://127.0.0.1:{app};
                 }
             }"
            .replace("{default_type}", DEFAULT_TYPE),
        )
        .start()
}

fn store_log(nginx: &Nginx) -> Vec<Entry> {
    std::fs::read_to_string(nginx.prefix().join("store.log"))
        .unwrap_or_default()
        .lines()
        .map(Entry::parse)
        .collect()
}

/// Waits until `store.log` has more than `n` lines; returns line `n` (0-based).
fn wait_entry(nginx: &Nginx, n: usize) -> Entry {
    let ok = wait_until(LOG_WAIT, || store_log(nginx).len() > n);
    let log = store_log(nginx);
    assert!(
        ok,
        "waited {LOG_WAIT:?} for store.log line {} ; have {log:?}",
        n + 1
    );
    log[n].clone()
}

/// One request; returns the response and its store.log line.
fn logged(
    nginx: &Nginx,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (Response, Entry) {
    let before = store_log(nginx).len();
    let r = http::request(nginx.port(), method, target, headers, body);
    let e = wait_entry(nginx, before);
    assert_eq!(
        (e.method.as_str(), e.uri.as_str()),
        (method, target),
        "store.log line is not this request's"
    );
    (r, e)
}

struct Site {
    mc: Memcached,
    app: App,
    nginx: Nginx,
}

impl Site {
    /// A real memcached, `app`, and [`nginx_for`] with `location_extra`.
    fn start(app: App, location_extra: &str) -> Site {
        Site::start_with(Memcached::start(), app, location_extra, "")
    }

    fn start_with(mc: Memcached, app: App, location_extra: &str, http_extra: &str) -> Site {
        let nginx = nginx_for(&mc.addr(), &app, location_extra, http_extra);
        Site { mc, app, nginx }
    }

    fn get(&self, target: &str) -> (Response, Entry) {
        logged(&self.nginx, "GET", target, &[], None)
    }

    fn get_with(&self, target: &str, headers: &[(&str, &str)]) -> (Response, Entry) {
        logged(&self.nginx, "GET", target, headers, None)
    }

    fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> (Response, Entry) {
        logged(&self.nginx, method, target, headers, body)
    }

    fn purge(&self, target: &str) -> (Response, Entry) {
        logged(&self.nginx, "PURGE", target, &[], None)
    }

    /// The value and flags memcached holds for `key`.
    fn stored(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.mc.get_raw(key)
    }
}

/// The stored form: `RCACHE/1\r\n`, `Name: value\r\n` per header, `\r\n`, the body.
fn stored_form(headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut v = b"RCACHE/1\r\n".to_vec();
    for (n, val) in headers {
        v.extend_from_slice(format!("{n}: {val}\r\n").as_bytes());
    }
    v.extend_from_slice(b"\r\n");
    v.extend_from_slice(body);
    v
}

/// Splits a stored value into its header lines and body (panics if it is not the stored
/// form).
fn parse_stored(value: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
    let rest = value
        .strip_prefix(b"RCACHE/1\r\n")
        .unwrap_or_else(|| panic!("not rcache's stored form: {:?}", preview(value)));
    let end = rest
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(0);
    let (head, body) = if rest.starts_with(b"\r\n") {
        (&b""[..], &rest[2..])
    } else {
        (&rest[..end], &rest[end + 2..])
    };
    let headers = String::from_utf8_lossy(head)
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(": ").expect("header line");
            (n.to_string(), v.to_string())
        })
        .collect();
    (headers, body.to_vec())
}

fn preview(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The app answering `200 text/html; charset=utf-8` with `page(target)` to GETs, and
/// recording every request.
fn html_app(page: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> App {
    App::start_with(move |req| {
        AppResponse::new(200, page(&req.target)).header("Content-Type", "text/html; charset=utf-8")
    })
}

// ---------------------------------------------------------------------------------------
// 1. Stored on a MISS, served on the next request
// ---------------------------------------------------------------------------------------

#[test]
fn a_miss_is_stored_and_the_next_request_is_a_hit_with_the_same_page() {
    let sizes = [1usize, 10 * 1024, 500 * 1024];
    let site = Site::start(
        html_app(|target| {
            let size: usize = target.trim_start_matches("/page-").parse().unwrap_or(0);
            bytes(size, size as u64)
        }),
        "",
    );
    for (i, size) in sizes.into_iter().enumerate() {
        let path = format!("/page-{size}");
        let body = bytes(size, size as u64);

        let (miss, e) = site.get(&path);
        assert_eq!(miss.status, 200, "{path}");
        assert!(miss.body == body, "{path}: the MISS body is not the app's");
        assert_eq!(e.statuses(), "MISS STORED", "{path}");
        assert_eq!(site.app.requests(), i + 1);

        let (value, flags) = site
            .stored(&path)
            .unwrap_or_else(|| panic!("{path}: logged STORED but memcached has no value"));
        assert_eq!(flags, STORED_FLAG, "{path}: flags");
        assert!(
            value == stored_form(&[("Content-Type", "text/html; charset=utf-8")], &body),
            "{path}: stored value is not RCACHE/1 + Content-Type + body: {:?}",
            preview(&value)
        );

        let (hit, e) = site.get(&path);
        assert_eq!(e.statuses(), "HIT -", "{path}");
        assert_eq!(
            site.app.requests(),
            i + 1,
            "{path}: a HIT never reaches the app"
        );
        assert_eq!(hit.status, miss.status, "{path}");
        assert_eq!(
            hit.header("content-type"),
            Some("text/html; charset=utf-8"),
            "{path}: the HIT has the app's Content-Type"
        );
        assert_eq!(hit.header("content-encoding"), None);
        assert_eq!(
            hit.header("content-length"),
            Some(size.to_string().as_str()),
            "{path}"
        );
        assert!(
            hit.body == body,
            "{path}: the HIT body differs from the app's"
        );
    }
    assert!(site.nginx.alerts().is_empty(), "{:?}", site.nginx.alerts());
}

#[test]
fn a_gzip_page_is_stored_compressed_and_served_to_each_client_as_it_accepts() {
    let plain = b"<p>compressed by the app</p>\n".repeat(300);
    let gz = gzip(&plain);
    let app_gz = gz.clone();
    let site = Site::start(
        App::start_with(move |_| {
            AppResponse::new(200, app_gz.clone())
                .header("Content-Type", "text/html; charset=utf-8")
                .header("Content-Encoding", "gzip")
                .header("Vary", "Accept-Encoding")
        }),
        "",
    );
    let ae = [("Accept-Encoding", "gzip")];
    let (miss, e) = site.get_with("/gz", &ae);
    assert_eq!(e.statuses(), "MISS STORED");
    assert_eq!(miss.header("content-encoding"), Some("gzip"));
    assert!(miss.body == gz);

    let (value, flags) = site.stored("/gz").expect("stored");
    assert_eq!(flags, STORED_FLAG);
    let (headers, body) = parse_stored(&value);
    assert_eq!(
        headers,
        vec![
            (
                "Content-Type".to_string(),
                "text/html; charset=utf-8".to_string()
            ),
            ("Content-Encoding".to_string(), "gzip".to_string()),
        ],
        "kept headers (Vary is not kept: rcache adds its own)"
    );
    assert!(body == gz, "the gzip bytes are stored as the app sent them");

    let (hit, e) = site.get_with("/gz", &ae);
    assert_eq!(e.statuses(), "HIT -");
    assert_eq!(hit.status, 200);
    assert_eq!(hit.header("content-encoding"), Some("gzip"));
    assert_eq!(hit.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(hit.headers_named("vary"), vec!["Accept-Encoding"]);
    assert!(hit.body == gz, "a gzip client gets the app's gzip bytes");

    let (hit, e) = site.get("/gz");
    assert_eq!(e.statuses(), "HIT -");
    assert_eq!(
        hit.header("content-encoding"),
        None,
        "decompressed for this client"
    );
    assert_eq!(hit.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(hit.headers_named("vary"), vec!["Accept-Encoding"]);
    assert!(
        hit.body == plain,
        "a client without gzip gets the page decompressed"
    );
    assert_eq!(site.app.requests(), 1);
}

#[test]
fn stored_under_the_rcache_key_with_a_uri_fallback() {
    let mc = Memcached::start();
    let app = html_app(|_| b"<p>from the app</p>".to_vec());
    let nginx = nginx_with_fallback(&mc.addr(), &app, "/dynamic$uri", "", "");
    let (r, e) = logged(&nginx, "GET", "/about/", &[], None);
    assert_eq!(r.body, b"<p>from the app</p>");
    assert_eq!(e.statuses(), "MISS STORED");
    assert_eq!(app.last().unwrap().target, "/dynamic/about/");
    assert!(
        mc.get_raw("/about/").is_some(),
        "stored under the key looked up"
    );
    assert!(
        mc.get_raw("/dynamic/about/").is_none(),
        "not under the fallback URI"
    );
    let (hit, e) = logged(&nginx, "GET", "/about/", &[], None);
    assert_eq!(e.statuses(), "HIT -");
    assert_eq!(hit.body, b"<p>from the app</p>");
}

#[test]
fn a_streamed_chunked_response_and_an_unbuffered_proxy_are_stored_whole() {
    let body = bytes(100 * 1024 + 7, 42);
    let app_body = body.clone();
    let app = App::start_with(move |req| {
        AppResponse::new(200, app_body.clone())
            .header("Content-Type", "application/x-app")
            .chunked(
                8 * 1024,
                Duration::from_millis(if req.target.contains("slow") { 5 } else { 0 }),
            )
    });
    let mc = Memcached::start();
    let nginx = nginx_buffered_and_unbuffered(&mc.addr(), &app);
    for path in [
        "/chunked",
        "/slow-chunked",
        "/unbuffered/slow",
        "/unbuffered/fast",
    ] {
        let (r, e) = logged(&nginx, "GET", path, &[], None);
        assert!(r.body == body, "{path}: the client got the whole body");
        assert_eq!(e.statuses(), "MISS STORED", "{path}");
        let (value, flags) = mc.get_raw(path).expect(path);
        assert_eq!(flags, STORED_FLAG);
        assert!(
            value == stored_form(&[("Content-Type", "application/x-app")], &body),
            "{path}: stored value"
        );
        let (hit, e) = logged(&nginx, "GET", path, &[], None);
        assert_eq!(e.statuses(), "HIT -", "{path}");
        assert!(hit.body == body, "{path}: HIT body");
        assert_eq!(hit.header("content-type"), Some("application/x-app"));
    }
}

#[test]
fn nginx_gzip_on_the_miss_does_not_change_what_is_stored() {
    let page = b"<p>compress me, nginx</p>\n".repeat(200);
    let app_page = page.clone();
    let site = Site::start_with(
        Memcached::start(),
        App::start_with(move |_| {
            AppResponse::new(200, app_page.clone()).header("Content-Type", "text/html")
        }),
        "",
        "gzip on; gzip_min_length 10;",
    );
    let (miss, e) = site.get_with("/g", &[("Accept-Encoding", "gzip")]);
    assert_eq!(e.statuses(), "MISS STORED");
    assert_eq!(
        miss.header("content-encoding"),
        Some("gzip"),
        "nginx's gzip applied"
    );
    let (value, _) = site.stored("/g").expect("stored");
    assert!(
        value == stored_form(&[("Content-Type", "text/html")], &page),
        "rcache stores the app's bytes, not nginx's gzip output: {:?}",
        preview(&value)
    );
    let (hit, e) = site.get("/g");
    assert_eq!(e.statuses(), "HIT -");
    assert!(hit.body == page);
}

#[test]
fn many_concurrent_misses_on_keep_alive_connections_are_all_answered_and_stored() {
    let site = Site::start(
        html_app(|t| format!("<p>{t}</p>").repeat(50).into_bytes()),
        "",
    );
    let threads = 6;
    let per_thread = 15;
    std::thread::scope(|s| {
        for t in 0..threads {
            let port = site.nginx.port();
            s.spawn(move || {
                let mut c = KeepAliveClient::connect(port).expect("connect");
                for i in 0..per_thread {
                    let path = format!("/c{t}-{i}");
                    for round in 0..2 {
                        let r = c
                            .get(&path)
                            .unwrap_or_else(|e| panic!("{path} #{round}: {e}"));
                        assert_eq!(r.status, 200, "{path}");
                        assert!(
                            r.body == format!("<p>{path}</p>").repeat(50).into_bytes(),
                            "{path} #{round}: wrong body {:?}",
                            preview(&r.body)
                        );
                    }
                }
            });
        }
    });
    let n = threads * per_thread * 2;
    wait_entry(&site.nginx, n - 1);
    let log = store_log(&site.nginx);
    let mut by_path: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for e in &log {
        by_path.entry(&e.uri).or_default().push(e.statuses());
    }
    for (path, statuses) in &by_path {
        assert_eq!(
            statuses,
            &vec!["MISS STORED".to_string(), "HIT -".to_string()],
            "{path}: the second request on the keep-alive connection comes after the store"
        );
    }
    assert_eq!(site.app.requests(), threads * per_thread);
    assert!(site.nginx.alerts().is_empty(), "{:?}", site.nginx.alerts());
}

// ---------------------------------------------------------------------------------------
// 2. Not stored
// ---------------------------------------------------------------------------------------

/// Asserts that `path` was not stored: absent from memcached, and the next GET is a MISS
/// that reaches the app again.
#[track_caller]
fn assert_not_stored(site: &Site, path: &str) {
    assert_eq!(
        site.stored(path).map(|(v, f)| (preview(&v), f)),
        None,
        "{path}: must not be in memcached"
    );
    let before = site.app.requests();
    let (_, e) = site.get(path);
    assert_eq!(e.rcache, "MISS", "{path}: still not cached");
    assert_eq!(
        site.app.requests(),
        before + 1,
        "{path}: the app answered again"
    );
}

#[test]
fn requests_that_may_not_be_stored() {
    let site = Site::start(App::start(), "");

    // POST is not in rcache_methods: BYPASS, no store considered.
    let (r, e) = site.request("POST", "/form", &[], Some(b"a=1"));
    assert_eq!(Echo::parse(&r.body).method(), "POST");
    assert_eq!(e.statuses(), "BYPASS -");
    assert!(site.stored("/form").is_none());

    // HEAD at a MISS: looked up, but only a GET's response is stored.
    let (r, e) = site.request("HEAD", "/head", &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(site.app.last().unwrap().method, "HEAD");
    assert_eq!(e.statuses(), "MISS NOT_CACHEABLE");
    assert!(site.stored("/head").is_none());
    let (_, e) = site.get("/head");
    assert_eq!(e.statuses(), "MISS STORED", "the GET after it is stored");

    // A query string: stored under $uri it would poison /list.
    let (r, e) = site.get("/list?page=2");
    assert_eq!(Echo::parse(&r.body).uri(), "/list?page=2");
    assert_eq!(e.statuses(), "MISS NOT_CACHEABLE");
    assert_not_stored(&site, "/list");
}

/// A canned answer of the test app for one path: `body of <path>` with `status` and
/// `headers`.
#[derive(Clone)]
struct Canned {
    path: &'static str,
    status: u16,
    headers: Vec<(&'static str, String)>,
}

fn canned(path: &'static str, status: u16, headers: &[(&'static str, &str)]) -> Canned {
    Canned {
        path,
        status,
        headers: headers.iter().map(|(n, v)| (*n, v.to_string())).collect(),
    }
}

/// The app answering each path of `cases` as canned, and anything else with a plain 200
/// `body of <path>`.
fn canned_app(cases: &[Canned]) -> App {
    let cases = cases.to_vec();
    App::start_with(move |req| {
        let case = cases.iter().find(|c| c.path == req.target);
        let mut r = AppResponse::new(
            case.map_or(200, |c| c.status),
            format!("body of {}", req.target),
        )
        .header("Content-Type", "text/plain");
        for (n, v) in case.map(|c| c.headers.clone()).unwrap_or_default() {
            r = r.header(n, &v);
        }
        r
    })
}

#[test]
fn responses_that_are_not_cacheable_are_not_stored() {
    let past = format!("@{}", unix_now() - 3600);
    let cases = [
        canned("/s404", 404, &[]),
        canned("/s500", 500, &[]),
        canned("/s201", 201, &[]),
        canned("/cookie", 200, &[("Set-Cookie", "sessionid=abc; Path=/")]),
        canned("/cc-private", 200, &[("Cache-Control", "private")]),
        canned(
            "/cc-no-store",
            200,
            &[("Cache-Control", "public, no-store")],
        ),
        canned("/cc-no-cache", 200, &[("Cache-Control", "No-Cache")]),
        canned(
            "/cc-private-field",
            200,
            &[("Cache-Control", "max-age=60, private=\"Set-Cookie\"")],
        ),
        canned(
            "/cc-two-headers",
            200,
            &[
                ("Cache-Control", "public, max-age=60"),
                ("Cache-Control", "no-store"),
            ],
        ),
        canned("/vary-star", 200, &[("Vary", "*")]),
        canned("/vary-cookie", 200, &[("Vary", "Cookie")]),
        canned(
            "/vary-ae-cookie",
            200,
            &[("Vary", "Accept-Encoding, Cookie")],
        ),
        canned(
            "/vary-two-headers",
            200,
            &[("Vary", "Accept-Encoding"), ("Vary", "Accept-Language")],
        ),
        canned("/ce-br", 200, &[("Content-Encoding", "br")]),
        canned("/ce-deflate", 200, &[("Content-Encoding", "deflate")]),
        canned("/xae-0", 200, &[("X-Accel-Expires", "0")]),
        canned(
            "/xae-0-max-age-60",
            200,
            &[("X-Accel-Expires", "0"), ("Cache-Control", "max-age=60")],
        ),
        canned("/xae-past", 200, &[("X-Accel-Expires", &past)]),
        canned("/max-age-0", 200, &[("Cache-Control", "max-age=0")]),
        canned(
            "/s-maxage-0",
            200,
            &[("Cache-Control", "max-age=60, s-maxage=0")],
        ),
    ];
    let site = Site::start(canned_app(&cases), "");
    for case in &cases {
        let path = case.path;
        let (r, e) = site.get(path);
        assert_eq!(
            r.status, case.status,
            "{path}: the client gets the app's status"
        );
        assert_eq!(r.text(), format!("body of {path}"), "{path}: and its body");
        assert_eq!(e.statuses(), "MISS NOT_CACHEABLE", "{path}");
        assert_not_stored(&site, path);
    }
    // The same app, a response without any of those: stored (the control).
    let (_, e) = site.get("/plain");
    assert_eq!(e.statuses(), "MISS STORED");
}

#[test]
fn responses_that_are_cacheable_despite_looking_special() {
    let cases = [
        canned("/vary-ae", 200, &[("Vary", "Accept-Encoding")]),
        canned(
            "/vary-ae-twice",
            200,
            &[("Vary", "accept-encoding, Accept-Encoding")],
        ),
        canned("/public", 200, &[("Cache-Control", "public, max-age=60")]),
        canned("/ce-identity", 200, &[("Content-Encoding", "identity")]),
        canned("/xae-unreadable", 200, &[("X-Accel-Expires", "soon")]),
        canned(
            "/cc-must-revalidate",
            200,
            &[("Cache-Control", "must-revalidate")],
        ),
    ];
    let site = Site::start(canned_app(&cases), "");
    for case in &cases {
        let path = case.path;
        let (_, e) = site.get(path);
        assert_eq!(e.statuses(), "MISS STORED", "{path}");
        let (hit, e) = site.get(path);
        assert_eq!(e.statuses(), "HIT -", "{path}");
        assert_eq!(hit.text(), format!("body of {path}"));
    }
}

#[test]
fn query_strings_are_stored_only_with_rcache_store_args_and_a_key_that_holds_them() {
    let app = App::start();
    let site = Site::start(app, "rcache_store_args on; rcache_key \"$uri?$args\";");
    let (miss, e) = site.get("/list?page=2");
    assert_eq!(e.statuses(), "MISS STORED");
    let (value, flags) = site
        .stored("/list?page=2")
        .expect("stored under $uri?$args");
    assert_eq!(flags, STORED_FLAG);
    assert!(value.ends_with(&miss.body));
    assert!(site.stored("/list").is_none());

    let (hit, e) = site.get("/list?page=2");
    assert_eq!(e.statuses(), "HIT -");
    assert_eq!(hit.body, miss.body);
    let (other, e) = site.get("/list?page=3");
    assert_eq!(e.statuses(), "MISS STORED", "another query is another key");
    assert_eq!(Echo::parse(&other.body).uri(), "/list?page=3");
    assert_eq!(site.app.requests(), 2);
}

#[test]
fn rcache_store_bypass_keeps_matching_requests_out() {
    let site = Site::start(
        App::start(),
        "rcache_store_args on;
         rcache_key $uri$is_args$args;
         rcache_store_bypass $arg_nostore $cookie_preview;",
    );
    let (r, e) = site.get("/a?nostore=1");
    assert_eq!(r.status, 200);
    assert_eq!(e.statuses(), "MISS NOT_CACHEABLE");
    assert_not_stored(&site, "/a?nostore=1");

    let (_, e) = site.get("/a?nostore=0");
    assert_eq!(e.statuses(), "MISS STORED", "\"0\" does not exclude");
    assert!(site.stored("/a?nostore=0").is_some());

    let (r, e) = site.get_with("/b", &[("Cookie", "preview=yes")]);
    assert_eq!(Echo::parse(&r.body).header("cookie"), Some("preview=yes"));
    assert_eq!(e.statuses(), "MISS NOT_CACHEABLE");
    assert!(site.stored("/b").is_none());
    let (_, e) = site.get_with("/b", &[("Cookie", "other=1")]);
    assert_eq!(e.statuses(), "MISS STORED");
    let (_, e) = site.get_with("/b", &[("Cookie", "preview=yes")]);
    assert_eq!(
        e.statuses(),
        "HIT -",
        "rcache_store_bypass only stops storing; reading is rcache_bypass's business"
    );
}

/// `rcache_store_statuses 200 404 301` stores those responses — and a HIT must be the
/// same response again: the app's status (and for a redirect, its Location).
#[test]
fn a_stored_non_200_response_is_served_with_its_own_status() {
    let site = Site::start(
        App::start_with(|req| match req.target.as_str() {
            "/gone" => {
                AppResponse::new(404, "<h1>no such page</h1>").header("Content-Type", "text/html")
            }
            "/old" => AppResponse::new(301, "<a href=\"/new\">moved</a>")
                .header("Content-Type", "text/html")
                .header("Location", "http://example.com/new"),
            _ => AppResponse::new(200, "ok"),
        }),
        "rcache_store_statuses 200 404 301;",
    );
    let (miss, e) = site.get("/gone");
    assert_eq!(miss.status, 404);
    assert_eq!(
        e.statuses(),
        "MISS STORED",
        "404 is listed, so it is stored"
    );
    let (miss_old, e) = site.get("/old");
    assert_eq!(miss_old.status, 301);
    assert_eq!(
        e.statuses(),
        "MISS STORED",
        "301 is listed, so it is stored"
    );

    let (hit, e) = site.get("/gone");
    let (hit_old, e_old) = site.get("/old");
    assert_eq!((e.rcache.as_str(), e_old.rcache.as_str()), ("HIT", "HIT"));
    let observed = format!(
        "/gone: MISS {} -> HIT {} (body {:?}); /old: MISS {} Location {:?} -> HIT {} Location {:?}",
        miss.status,
        hit.status,
        hit.text(),
        miss_old.status,
        miss_old.header("location"),
        hit_old.status,
        hit_old.header("location"),
    );
    assert!(
        hit.status == 404
            && hit_old.status == 301
            && hit_old.header("location") == Some("http://example.com/new"),
        "a stored response must come back with its status (and Location): {observed}"
    );
}

// ---------------------------------------------------------------------------------------
// 3. TTL
// ---------------------------------------------------------------------------------------

#[test]
fn ttl_comes_from_x_accel_expires_then_s_maxage_then_max_age_then_rcache_store_ttl() {
    let at = unix_now() + 300;
    let xae_at = format!("@{at}");
    let site = Site::start(
        App::start_with(move |req| {
            let r = AppResponse::new(200, "page");
            match req.target.as_str() {
                "/xae" => r.header("X-Accel-Expires", "120"),
                "/xae-wins" => r
                    .header("Cache-Control", "max-age=60, s-maxage=90")
                    .header("X-Accel-Expires", "120"),
                "/xae-at" => r.header("X-Accel-Expires", &xae_at),
                "/s-maxage" => r.header("Cache-Control", "public, max-age=60, s-maxage=200"),
                "/max-age" => r.header("Cache-Control", "public, max-age=60"),
                "/a-year" => r.header("Cache-Control", "max-age=31536000"),
                "/xae-a-year" => r.header("X-Accel-Expires", "31536000"),
                _ => r,
            }
        }),
        "rcache_store_ttl 42s;",
    );
    let expected: [(&str, i64); 8] = [
        ("/xae", 120),
        ("/xae-wins", 120),
        ("/xae-at", 300),
        ("/s-maxage", 200),
        ("/max-age", 60),
        ("/default", 42),
        // Over 30 days memcached takes exptime as a Unix time: rcache must send one.
        ("/a-year", 31_536_000),
        ("/xae-a-year", 31_536_000),
    ];
    let mut wrong = Vec::new();
    for (path, want) in expected {
        let (_, e) = site.get(path);
        assert_eq!(e.statuses(), "MISS STORED", "{path}");
        match site.mc.ttl(path) {
            // memcached counts in whole seconds on its own clock; allow for a busy machine.
            Some(t) if (want - 15..=want + 1).contains(&t) => {}
            other => wrong.push(format!("{path}: want ~{want}s, memcached says {other:?}")),
        }
    }
    assert!(wrong.is_empty(), "TTLs:\n{}", wrong.join("\n"));
}

#[test]
fn a_short_ttl_expires_and_the_next_request_is_a_miss_that_stores_again() {
    let site = Site::start(
        App::start_with(|_| {
            AppResponse::new(200, "short-lived").header("Cache-Control", "max-age=2")
        }),
        "",
    );
    let (_, e) = site.get("/short");
    let stored_at = Instant::now();
    assert_eq!(e.statuses(), "MISS STORED");
    let ttl = site.mc.ttl("/short").expect("stored");
    assert!((0..=2).contains(&ttl), "ttl {ttl}");
    let (_, e) = site.get("/short");
    if stored_at.elapsed() < Duration::from_millis(900) {
        assert_eq!(e.statuses(), "HIT -", "still within its TTL");
    }
    assert!(
        wait_until(Duration::from_secs(6), || site.mc.ttl("/short").is_none()),
        "memcached still has /short (ttl {:?})",
        site.mc.ttl("/short")
    );
    let before = site.app.requests();
    let (r, e) = site.get("/short");
    assert_eq!(r.text(), "short-lived");
    assert_eq!(
        e.statuses(),
        "MISS STORED",
        "expired: fetched and stored again"
    );
    assert_eq!(site.app.requests(), before + 1);
}

// ---------------------------------------------------------------------------------------
// 4. Too large
// ---------------------------------------------------------------------------------------

#[test]
fn a_response_over_rcache_store_max_size_reaches_the_client_whole_and_is_not_stored() {
    let big = bytes(2 * 1024 * 1024, 9);
    let app_big = big.clone();
    let site = Site::start(
        App::start_with(move |req| {
            let r =
                AppResponse::new(200, app_big.clone()).header("Content-Type", "application/x-big");
            if req.target.starts_with("/chunked") {
                r.chunked(64 * 1024, Duration::from_millis(1))
            } else {
                r
            }
        }),
        "",
    );
    for path in ["/length", "/chunked"] {
        let (r, e) = site.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body.len(), big.len(), "{path}: length");
        assert_eq!(sha256_hex(&r.body), sha256_hex(&big), "{path}: body");
        assert_eq!(e.statuses(), "MISS TOO_LARGE", "{path}");
        assert_not_stored(&site, path);
    }
}

#[test]
fn rcache_store_max_size_is_inclusive_with_and_without_content_length() {
    let site = Site::start(
        App::start_with(|req| {
            let (kind, size) = req.target[1..].split_once('-').expect("/kind-size");
            let size: usize = size.parse().expect("size");
            let r = AppResponse::new(200, bytes(size, 3));
            if kind == "chunked" {
                r.chunked(1000, Duration::ZERO)
            } else {
                r
            }
        }),
        "rcache_store_max_size 10k;",
    );
    for kind in ["length", "chunked"] {
        let at_limit = format!("/{kind}-10240");
        let (r, e) = site.get(&at_limit);
        assert_eq!(r.body, bytes(10240, 3));
        assert_eq!(e.statuses(), "MISS STORED", "{at_limit}");
        let over = format!("/{kind}-10241");
        let (r, e) = site.get(&over);
        assert_eq!(r.body, bytes(10241, 3), "{over}: whole");
        assert_eq!(e.statuses(), "MISS TOO_LARGE", "{over}");
        assert_not_stored(&site, &over);
    }
}

// ---------------------------------------------------------------------------------------
// 5. Store failures
// ---------------------------------------------------------------------------------------

const OOM: u8 = 0;
const OK: u8 = 1;
const STALL: u8 = 2;
const RESET: u8 = 3;

/// A memcached that has nothing (`get` → END) and answers rcache's `add` as `mode` says.
fn store_fake(mode: Arc<AtomicU8>) -> FakeMemcached {
    FakeMemcached::start(move |req: &McRequest| match req.command().as_str() {
        "get" => vec![Step::write(MISS)],
        "add" => match mode.load(Ordering::SeqCst) {
            OOM => vec![Step::write("SERVER_ERROR out of memory storing object\r\n")],
            OK => vec![Step::write("STORED\r\n")],
            STALL => vec![Step::Stall],
            _ => vec![Step::Reset],
        },
        _ => vec![Step::write("ERROR\r\n")],
    })
}

fn store_failure_lines(nginx: &Nginx) -> Vec<String> {
    nginx
        .error_log()
        .lines()
        .filter(|l| l.contains("rcache: storing key"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_failing_store_never_reaches_the_client_and_is_logged_once_until_a_store_succeeds() {
    let mode = Arc::new(AtomicU8::new(OOM));
    let fake = store_fake(Arc::clone(&mode));
    let app = App::start();
    let nginx = nginx_for(&fake.addr().to_string(), &app, "", "");
    let get = |path: &str| {
        let start = Instant::now();
        let (r, e) = logged(&nginx, "GET", path, &[], None);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            Echo::parse(&r.body).uri(),
            path,
            "{path}: the app's response"
        );
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{path}: took {:?}",
            start.elapsed()
        );
        e.store
    };

    for path in ["/a", "/b", "/c", "/d"] {
        assert_eq!(get(path), "FAILED", "{path}");
    }
    let lines = store_failure_lines(&nginx);
    assert_eq!(lines.len(), 1, "one error line for the episode: {lines:#?}");
    assert!(
        lines[0].contains("[error]")
            && lines[0].contains("\"/a\"")
            && lines[0].contains(&fake.addr().to_string())
            && lines[0].contains("failed"),
        "{}",
        lines[0]
    );
    let sets: Vec<McRequest> = fake
        .request_log()
        .into_iter()
        .filter(|r| r.command() == "add")
        .collect();
    assert_eq!(sets.len(), 4, "one add per request");
    assert!(sets[0]
        .line_str()
        .starts_with(&format!("add /a {STORED_FLAG} 300 ")));
    assert!(sets[0].data.as_ref().unwrap().starts_with(b"RCACHE/1\r\n"));

    mode.store(OK, Ordering::SeqCst);
    assert_eq!(get("/e"), "STORED");
    assert_eq!(
        store_failure_lines(&nginx).len(),
        1,
        "a success logs nothing"
    );

    mode.store(OOM, Ordering::SeqCst);
    assert_eq!(get("/f"), "FAILED");
    assert_eq!(get("/g"), "FAILED");
    let lines = store_failure_lines(&nginx);
    assert_eq!(lines.len(), 2, "a new episode is logged again: {lines:#?}");
    assert!(lines[1].contains("\"/f\""), "{}", lines[1]);
    assert!(nginx.alerts().is_empty(), "{:?}", nginx.alerts());
}

#[test]
fn a_stalled_store_does_not_delay_the_response_and_times_out_as_failed() {
    let mode = Arc::new(AtomicU8::new(STALL));
    let fake = store_fake(Arc::clone(&mode));
    let app = App::start();
    let nginx = nginx_for(
        &fake.addr().to_string(),
        &app,
        "rcache_read_timeout 2s;",
        "",
    );
    let start = Instant::now();
    let r = http::get(nginx.port(), "/stalled");
    let answered = start.elapsed();
    assert_eq!(Echo::parse(&r.body).uri(), "/stalled");
    assert!(
        store_log(&nginx).is_empty(),
        "the client had its response ({answered:?}) while the store was still waiting"
    );
    let e = wait_entry(&nginx, 0);
    assert_eq!(e.statuses(), "MISS FAILED");
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "the FAILED came from rcache_read_timeout 2s, after the response ({answered:?})"
    );
    let lines = store_failure_lines(&nginx);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("timed out"), "{}", lines[0]);

    // A reset is a failure too; nginx keeps answering.
    mode.store(RESET, Ordering::SeqCst);
    let (r, e) = logged(&nginx, "GET", "/reset", &[], None);
    assert_eq!(Echo::parse(&r.body).uri(), "/reset");
    assert_eq!(e.statuses(), "MISS FAILED");
    mode.store(OK, Ordering::SeqCst);
    let (_, e) = logged(&nginx, "GET", "/fine", &[], None);
    assert_eq!(e.statuses(), "MISS STORED");
    assert!(nginx.alerts().is_empty(), "{:?}", nginx.alerts());
}

#[test]
fn a_closed_client_and_a_quit_during_a_stalled_store_end_cleanly() {
    let mode = Arc::new(AtomicU8::new(STALL));
    let fake = store_fake(Arc::clone(&mode));
    let app = App::start();
    let mut nginx = nginx_for(
        &fake.addr().to_string(),
        &app,
        "rcache_read_timeout 1s;",
        "",
    );
    // The client reads its response and closes at once.
    let r = http::get(nginx.port(), "/left");
    assert_eq!(Echo::parse(&r.body).uri(), "/left");
    let e = wait_entry(&nginx, 0);
    assert_eq!(e.store, "FAILED");
    // A second stalled store, and a graceful quit while it waits.
    let r = http::get(nginx.port(), "/quit");
    assert_eq!(Echo::parse(&r.body).uri(), "/quit");
    let start = Instant::now();
    let shutdown = nginx.quit();
    assert!(shutdown.is_clean(), "{shutdown:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn memcached_down_at_the_lookup_is_an_error_and_nothing_is_stored() {
    let mut site = Site::start(App::start(), "");
    site.mc.stop();
    let (r, e) = site.get("/down");
    assert_eq!(Echo::parse(&r.body).uri(), "/down");
    assert_eq!(e.statuses(), "ERROR -", "an ERROR is never stored");
}

// ---------------------------------------------------------------------------------------
// 6. Purge
// ---------------------------------------------------------------------------------------

#[test]
fn purge_deletes_the_page_and_the_next_request_is_a_miss_that_stores_it_again() {
    let site = Site::start(
        html_app(|t| format!("<p>{t}</p>").into_bytes()),
        "rcache_purge;",
    );
    let (_, e) = site.get("/p");
    assert_eq!(e.statuses(), "MISS STORED");
    let (_, e) = site.get("/p");
    assert_eq!(e.statuses(), "HIT -");

    let (r, e) = site.purge("/p");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "purged\n");
    assert_eq!(e.statuses(), "PURGE -");
    assert!(site.stored("/p").is_none(), "deleted from memcached");
    assert_eq!(site.app.requests(), 1, "a purge never reaches the app");

    let (r, e) = site.get("/p");
    assert_eq!(r.text(), "<p>/p</p>");
    assert_eq!(e.statuses(), "MISS STORED");
    assert_eq!(site.app.requests(), 2);

    let (r, e) = site.purge("/never-stored");
    assert_eq!(r.status, 404);
    assert_eq!(e.statuses(), "PURGE -");
    assert_eq!(site.app.requests(), 2);

    // A page the app wrote itself is purged the same way.
    site.mc.set_raw(b"/app-written", b"raw", 0, 0);
    assert_eq!(site.purge("/app-written").0.status, 200);
    assert!(site.stored("/app-written").is_none());
}

#[test]
fn purge_uses_rcache_key() {
    let site = Site::start(
        App::start(),
        "rcache_purge; rcache_store_args on; rcache_key \"page:$uri$is_args$args\";",
    );
    let (_, e) = site.get("/x?y=1");
    assert_eq!(e.statuses(), "MISS STORED");
    assert!(site.stored("page:/x?y=1").is_some());
    assert_eq!(site.purge("/x").0.status, 404, "another key");
    assert!(site.stored("page:/x?y=1").is_some());
    assert_eq!(site.purge("/x?y=1").0.status, 200);
    assert!(site.stored("page:/x?y=1").is_none());
}

#[test]
fn purge_from_a_denied_address_is_refused_and_the_page_stays() {
    let site = Site::start(
        App::start(),
        "rcache_purge;
         limit_except GET HEAD POST { allow 10.0.0.0/8; deny all; }",
    );
    let (_, e) = site.get("/keep");
    assert_eq!(e.statuses(), "MISS STORED");
    let (r, _) = site.purge("/keep");
    assert_eq!(r.status, 403, "127.0.0.1 may not purge");
    assert!(site.stored("/keep").is_some(), "the page stays");
    let (_, e) = site.get("/keep");
    assert_eq!(e.statuses(), "HIT -", "GET is not restricted");
    let (r, e) = site.request("POST", "/keep", &[], Some(b"x"));
    assert_eq!(r.status, 200, "nor POST");
    assert_eq!(e.statuses(), "BYPASS -");
}

/// The README's recipe: `rcache_purge` with `limit_except GET HEAD POST { allow ...; deny
/// all; }` in the same location. From an allowed address the purge must work.
#[test]
fn purge_from_an_allowed_address_under_limit_except_deletes() {
    let site = Site::start(
        App::start(),
        "rcache_purge;
         limit_except GET HEAD POST { allow 127.0.0.1; deny all; }",
    );
    let (_, e) = site.get("/allowed");
    assert_eq!(e.statuses(), "MISS STORED");
    let (r, e) = site.purge("/allowed");
    assert_eq!(
        (r.status, e.rcache.as_str()),
        (200, "PURGE"),
        "PURGE from 127.0.0.1 (allowed); body {:?}",
        r.text()
    );
    assert!(site.stored("/allowed").is_none());
}

#[test]
fn purge_removes_the_front_cache_entry_too() {
    let site = Site::start_with(
        Memcached::start(),
        html_app(|t| format!("<p>{t}</p>").into_bytes()),
        "rcache_purge; rcache_front front ttl=60s;",
        "rcache_front_zone front:1m;",
    );
    let (_, e) = site.get("/f");
    assert_eq!(
        (e.statuses(), e.front.as_str()),
        ("MISS STORED".into(), "MISS")
    );
    let (_, e) = site.get("/f");
    assert_eq!((e.statuses(), e.front.as_str()), ("HIT -".into(), "MISS"));
    let (hit, e) = site.get("/f");
    assert_eq!((e.statuses(), e.front.as_str()), ("HIT -".into(), "HIT"));
    assert_eq!(hit.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(hit.text(), "<p>/f</p>");

    assert_eq!(site.purge("/f").0.status, 200);
    let (r, e) = site.get("/f");
    assert_eq!(
        (e.statuses(), e.front.as_str()),
        ("MISS STORED".into(), "MISS"),
        "neither the front cache nor memcached has it"
    );
    assert_eq!(r.text(), "<p>/f</p>");
    assert_eq!(site.app.requests(), 2);
}

#[test]
fn purge_on_an_rcache_hash_upstream_deletes_on_the_servers_that_hold_the_keys() {
    let mcs: Vec<Memcached> = (0..3).map(|_| Memcached::start()).collect();
    let app = html_app(|t| format!("<p>{t}</p>").into_bytes());
    let mut upstream = String::from("upstream pages { rcache_hash rendezvous;\n");
    for mc in &mcs {
        upstream.push_str(&format!("server {};\n", mc.addr()));
    }
    upstream.push('}');
    let nginx = nginx_for("pages", &app, "rcache_purge;", &upstream);
    let paths: Vec<String> = (0..12).map(|i| format!("/k{i}")).collect();
    let mut holder = Vec::new();
    for path in &paths {
        let (_, e) = logged(&nginx, "GET", path, &[], None);
        assert_eq!(e.statuses(), "MISS STORED", "{path}");
        let on: Vec<usize> = (0..3).filter(|&i| mcs[i].get_raw(path).is_some()).collect();
        assert_eq!(on.len(), 1, "{path} is on exactly one server: {on:?}");
        holder.push(on[0]);
        let (_, e) = logged(&nginx, "GET", path, &[], None);
        assert_eq!(e.statuses(), "HIT -", "{path}: stored where lookups go");
    }
    let used: std::collections::BTreeSet<usize> = holder.iter().copied().collect();
    assert!(
        used.len() >= 2,
        "12 keys over 3 servers use more than one: {holder:?}"
    );

    let stat = |i: usize, name: &str| -> u64 { mcs[i].stats()[name].parse().unwrap() };
    let misses_before: Vec<u64> = (0..3).map(|i| stat(i, "delete_misses")).collect();
    let hits_before: Vec<u64> = (0..3).map(|i| stat(i, "delete_hits")).collect();
    for path in &paths {
        let (r, _) = logged(&nginx, "PURGE", path, &[], None);
        assert_eq!(r.status, 200, "{path}");
    }
    for (path, &h) in paths.iter().zip(&holder) {
        assert!(
            mcs[h].get_raw(path).is_none(),
            "{path} deleted on server {h}"
        );
    }
    for i in 0..3 {
        let own = holder.iter().filter(|&&h| h == i).count() as u64;
        assert_eq!(stat(i, "delete_hits") - hits_before[i], own, "server {i}");
        assert_eq!(
            stat(i, "delete_misses"),
            misses_before[i],
            "server {i} was asked to delete keys it does not hold"
        );
    }
}

#[test]
fn purge_with_memcached_down_or_stalled_is_502_or_504_and_never_the_fallback() {
    let mut site = Site::start(App::start(), "rcache_purge;");
    site.mc.stop();
    let (r, e) = site.purge("/p");
    assert_eq!(r.status, 502);
    assert_eq!(e.rcache, "PURGE");
    assert_eq!(site.app.requests(), 0);

    let fake = FakeMemcached::start(|req| match req.command().as_str() {
        "delete" => vec![Step::Stall],
        _ => vec![Step::write(MISS)],
    });
    let app = App::start();
    let nginx = nginx_for(
        &fake.addr().to_string(),
        &app,
        "rcache_purge; rcache_read_timeout 300ms;",
        "",
    );
    let (r, e) = logged(&nginx, "PURGE", "/p", &[], None);
    assert_eq!(r.status, 504);
    assert_eq!(e.rcache, "PURGE");
    assert_eq!(app.requests(), 0);
}

// ---------------------------------------------------------------------------------------
// 7. Values apps write themselves
// ---------------------------------------------------------------------------------------

#[test]
fn values_apps_write_are_served_raw_and_never_overwritten() {
    let site = Site::start(App::start(), "rcache_max_size 1k;");
    // Looks like rcache's stored form, but flags 0/16 mean raw bytes.
    let lookalike = b"RCACHE/1\r\nContent-Type: text/evil\r\n\r\nbody\x00\r\n".to_vec();
    for (key, flags) in [("/raw0", 0u32), ("/raw16", 16)] {
        site.mc.set_raw(key.as_bytes(), &lookalike, flags, 0);
        let (r, e) = site.get(key);
        assert_eq!(e.statuses(), "HIT -", "{key}");
        assert!(r.body == lookalike, "{key}: served as the raw bytes it is");
        assert_eq!(
            r.header("content-type"),
            Some(DEFAULT_TYPE),
            "{key}: no header parsing"
        );
        assert_eq!(site.stored(key), Some((lookalike.clone(), flags)), "{key}");
    }
    assert_eq!(site.app.requests(), 0);

    // Values rcache will not serve (not a page, too large, not in the stored form) are
    // MISSes, but memcached did have a value: rcache must not overwrite it.
    let big = bytes(2000, 5);
    let not_served: [(&str, &[u8], u32); 3] = [
        ("/pickled", b"\x80\x04K\x01.", 1),
        ("/too-large", &big, 0),
        ("/bad-stored-form", b"no RCACHE/1 header here", STORED_FLAG),
    ];
    for (key, value, flags) in not_served {
        site.mc.set_raw(key.as_bytes(), value, flags, 0);
        let (r, e) = site.get(key);
        assert_eq!(Echo::parse(&r.body).uri(), key, "{key}: the app answers");
        assert_eq!(e.statuses(), "MISS -", "{key}: no store considered");
        assert_eq!(
            site.stored(key),
            Some((value.to_vec(), flags)),
            "{key}: untouched"
        );
    }
    assert!(site
        .nginx
        .error_log()
        .contains("is not in rcache's stored form"));
}

/// The 2009 pattern: on a MISS the app renders the page, writes it to memcached itself,
/// and answers. rcache must not replace the app's value with its own copy (README: "rcache
/// never overwrites them (it only stores where memcached had nothing)").
#[test]
fn a_page_the_app_writes_while_answering_the_miss_is_not_overwritten() {
    let mc = Memcached::start();
    let url = format!("memcache://{}?protocol=ascii&timeout=5", mc.addr());
    let app = App::start_with(move |req| {
        let client = memcache::Client::connect(url.as_str()).expect("app's memcache client");
        client
            .set(
                &req.target,
                Flagged {
                    bytes: b"<p>the app's own cached copy</p>",
                    flags: 16,
                },
                600,
            )
            .expect("app writes its page");
        AppResponse::new(200, "<p>rendered for this request</p>")
            .header("Content-Type", "text/html")
    });
    let site = Site::start_with(mc, app, "", "");
    let (r, e) = site.get("/article/1");
    assert_eq!(r.text(), "<p>rendered for this request</p>");
    assert_eq!(e.rcache, "MISS");
    assert_eq!(
        e.store, "PRESENT",
        "rcache's add found the app's value and left it"
    );
    let value = site.stored("/article/1").map(|(v, f)| (preview(&v), f));
    assert_eq!(
        value,
        Some(("<p>the app's own cached copy</p>".to_string(), 16)),
        "the app's value (flags 16) was replaced; $rcache_store_status was {}",
        e.store
    );
    let (hit, e) = site.get("/article/1");
    assert_eq!(e.statuses(), "HIT -");
    assert_eq!(hit.text(), "<p>the app's own cached copy</p>");
}

// ---------------------------------------------------------------------------------------
// 8. Kept headers, conditional requests
// ---------------------------------------------------------------------------------------

const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

#[test]
fn kept_headers_come_back_on_a_hit_and_answer_conditional_requests() {
    let body = bytes(3000, 77);
    let app_body = body.clone();
    let site = Site::start(
        App::start_with(move |_| {
            AppResponse::new(200, app_body.clone())
                .header("Content-Type", "text/html; charset=utf-8")
                .header("ETag", "\"v1\"")
                .header("Last-Modified", LAST_MODIFIED)
                .header("Cache-Control", "public, max-age=600")
                .header("Content-Language", "en")
                .header("Link", "</s.css>; rel=preload; as=style")
                .header("Link", "</app.js>; rel=preload; as=script")
                .header("X-Custom", "not kept")
                .header("Expires", "Thu, 01 Jan 2037 00:00:00 GMT")
                // What Django's SecurityMiddleware and XFrameOptionsMiddleware send.
                .header("X-Frame-Options", "DENY")
                .header("X-Content-Type-Options", "nosniff")
                .header("Referrer-Policy", "same-origin")
                .header("Cross-Origin-Opener-Policy", "same-origin")
                .header("Content-Security-Policy", "default-src 'self'")
        }),
        "",
    );
    let (miss, e) = site.get("/doc");
    assert_eq!(e.statuses(), "MISS STORED");
    assert_eq!(miss.header("x-custom"), Some("not kept"));

    let (value, _) = site.stored("/doc").expect("stored");
    let (mut headers, stored_body) = parse_stored(&value);
    headers.sort();
    let mut want: Vec<(String, String)> = [
        ("Cache-Control", "public, max-age=600"),
        ("Content-Language", "en"),
        ("Content-Type", "text/html; charset=utf-8"),
        ("ETag", "\"v1\""),
        ("Last-Modified", LAST_MODIFIED),
        ("Link", "</s.css>; rel=preload; as=style"),
        ("Link", "</app.js>; rel=preload; as=script"),
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "same-origin"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
        ("Content-Security-Policy", "default-src 'self'"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    want.sort();
    assert_eq!(headers, want, "exactly the kept headers");
    assert!(stored_body == body);

    let (hit, e) = site.get("/doc");
    assert_eq!(e.statuses(), "HIT -");
    for (name, _) in &want {
        let mut got: Vec<&str> = hit.headers_named(name);
        got.sort();
        let mut kept: Vec<&str> = want
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        kept.sort();
        assert_eq!(got, kept, "HIT header {name}");
    }
    assert_eq!(hit.header("x-custom"), None);
    assert!(hit.body == body);

    for (headers, what) in [
        (vec![("If-None-Match", "\"v1\"")], "If-None-Match"),
        (
            vec![("If-Modified-Since", LAST_MODIFIED)],
            "If-Modified-Since",
        ),
    ] {
        let (r, e) = site.get_with("/doc", &headers);
        assert_eq!(r.status, 304, "{what}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), Some("\"v1\""), "{what}");
        assert_eq!(e.statuses(), "HIT -");
    }
    let (r, _) = site.get_with("/doc", &[("If-None-Match", "\"v0\"")]);
    assert_eq!(r.status, 200, "another ETag: the page");
    assert!(r.body == body);

    // HEAD and ranges on a stored page: the body, not the stored form, is the page.
    let (r, e) = site.request("HEAD", "/doc", &[], None);
    assert_eq!(e.statuses(), "HIT -");
    assert_eq!(r.header("content-length"), Some("3000"));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let (r, _) = site.get_with("/doc", &[("Range", "bytes=0-9")]);
    assert_eq!(r.status, 206);
    assert!(r.body == body[..10]);
    assert_eq!(site.app.requests(), 1);
}

// ---------------------------------------------------------------------------------------
// 9. Configuration
// ---------------------------------------------------------------------------------------

fn check_location(directives: &str) -> ConfigCheck {
    Nginx::builder()
        .http(&format!(
            "server {{ listen 127.0.0.1:{{port}};
                 location / {{ rcache_pass 127.0.0.1:11211; rcache_fallback @app; {directives} }}
                 location @app {{ return 200; }} }}"
        ))
        .check_config()
}

#[track_caller]
fn assert_rejected(c: &ConfigCheck, directive: &str, phrase: &str, what: &str) {
    assert!(!c.ok, "{what}: nginx -t accepted it:\n{}", c.output);
    let line = c
        .output
        .lines()
        .find(|l| l.contains("[emerg]"))
        .unwrap_or_else(|| panic!("{what}: no [emerg] line:\n{}", c.output));
    assert!(
        line.contains(&format!("\"{directive}\"")),
        "{what}: the message does not name \"{directive}\": {line}"
    );
    assert!(
        line.contains(phrase),
        "{what}: the message does not say {phrase:?}: {line}"
    );
    assert!(line.contains("nginx.conf:"), "{what}: no file:line: {line}");
}

#[test]
fn nginx_t_rejects_bad_store_and_purge_directives() {
    let cases = [
        (
            "rcache_store_statuses 99;",
            "rcache_store_statuses",
            "invalid status \"99\"",
        ),
        (
            "rcache_store_statuses 200 abc;",
            "rcache_store_statuses",
            "invalid status \"abc\"",
        ),
        (
            "rcache_store_statuses 600;",
            "rcache_store_statuses",
            "invalid status \"600\"",
        ),
        (
            "rcache_store_statuses;",
            "rcache_store_statuses",
            "invalid number of arguments",
        ),
        (
            "rcache_store maybe;",
            "rcache_store",
            "it must be \"on\" or \"off\"",
        ),
        (
            "rcache_store;",
            "rcache_store",
            "invalid number of arguments",
        ),
        (
            "rcache_store_args yes;",
            "rcache_store_args",
            "it must be \"on\" or \"off\"",
        ),
        ("rcache_store_ttl 5x;", "rcache_store_ttl", "invalid value"),
        (
            "rcache_store_max_size lots;",
            "rcache_store_max_size",
            "invalid value",
        ),
        (
            "rcache_store_bypass;",
            "rcache_store_bypass",
            "invalid number of arguments",
        ),
        (
            // `rcache_purge [soft | hard]`: a value, but not one of those two.
            "rcache_purge on;",
            "rcache_purge",
            "it must be \"soft\" or \"hard\"",
        ),
        (
            "rcache_purge soft hard;",
            "rcache_purge",
            "invalid number of arguments",
        ),
        (
            "rcache_store on; rcache_store off;",
            "rcache_store",
            "is duplicate",
        ),
        (
            "rcache_store_statuses 200; rcache_store_statuses 404;",
            "rcache_store_statuses",
            "is duplicate",
        ),
        (
            "rcache_store_ttl 1m; rcache_store_ttl 2m;",
            "rcache_store_ttl",
            "is duplicate",
        ),
        (
            "rcache_store_max_size 1k; rcache_store_max_size 2k;",
            "rcache_store_max_size",
            "is duplicate",
        ),
        (
            "rcache_store_args on; rcache_store_args off;",
            "rcache_store_args",
            "is duplicate",
        ),
        (
            "rcache_purge; rcache_purge;",
            "rcache_purge",
            "is duplicate",
        ),
    ];
    for (directives, directive, phrase) in cases {
        assert_rejected(&check_location(directives), directive, phrase, directives);
    }
    let server_level = Nginx::builder()
        .http(
            "server { listen 127.0.0.1:{port}; rcache_purge;
                 location / { rcache_pass 127.0.0.1:11211; } }",
        )
        .check_config();
    assert_rejected(
        &server_level,
        "rcache_purge",
        "is not allowed here",
        "server level",
    );
    let http_level = Nginx::builder()
        .http("rcache_purge; server { listen 127.0.0.1:{port}; location / { rcache_pass 127.0.0.1:11211; } }")
        .check_config();
    assert_rejected(
        &http_level,
        "rcache_purge",
        "is not allowed here",
        "http level",
    );
}

#[test]
fn nginx_t_accepts_the_store_directives_at_every_level() {
    let all = "rcache_store on;
               rcache_store_statuses 200 203 301 404 410;
               rcache_store_max_size 512k;
               rcache_store_ttl 10m;
               rcache_store_bypass $cookie_sessionid $arg_nocache;
               rcache_store_bypass $http_authorization;
               rcache_store_args off;";
    for http in [
        format!("{all} server {{ listen 127.0.0.1:{{port}}; location / {{ rcache_pass 127.0.0.1:11211; }} }}"),
        format!("server {{ listen 127.0.0.1:{{port}}; {all} location / {{ rcache_pass 127.0.0.1:11211; }} }}"),
        format!(
            "server {{ listen 127.0.0.1:{{port}}; location / {{ rcache_pass 127.0.0.1:11211; {all} rcache_purge; }} }}"
        ),
    ] {
        let c = Nginx::builder().http(&http).check_config();
        assert!(c.ok, "{http}\n{}", c.output);
    }
}

// ---------------------------------------------------------------------------------------
// 10. $rcache_store_status in the access log
// ---------------------------------------------------------------------------------------

#[test]
fn store_status_in_the_access_log() {
    let mc = Memcached::start();
    let app = App::start_with(|req| match req.target.as_str() {
        "/private" => AppResponse::new(200, "mine").header("Cache-Control", "private"),
        _ => AppResponse::new(200, "page"),
    });
    let nginx = nginx_for(
        &mc.addr(),
        &app,
        "rcache_purge; rcache_bypass $cookie_sessionid;
         location /nostore/ { rcache_pass {pass}; rcache_fallback @app; rcache_store off; }",
        "",
    );
    let long = format!("/{}", "l".repeat(300));
    let cookie = [("Cookie", "sessionid=1")];
    // (method, target, request headers, "$rcache_status $rcache_store_status")
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let steps: [(&str, &str, Headers, &str); 9] = [
        ("GET", "/page", &[], "MISS STORED"),
        ("GET", "/page", &[], "HIT -"),
        ("HEAD", "/page", &[], "HIT -"),
        ("GET", "/page", &cookie, "BYPASS -"),
        ("GET", "/private", &[], "MISS NOT_CACHEABLE"),
        ("GET", "/nostore/x", &[], "MISS -"),
        ("GET", &long, &[], "MISS -"),
        ("PURGE", "/page", &[], "PURGE -"),
        ("GET", "/page", &[], "MISS STORED"),
    ];
    for (method, target, headers, want) in steps {
        let (_, e) = logged(&nginx, method, target, headers, None);
        assert_eq!(
            e.statuses(),
            want,
            "{method} {}",
            &target[..target.len().min(40)]
        );
    }
    assert!(mc.get_raw("/nostore/x").is_none());
    // The stock log format shows the same $rcache_status.
    let rcache: Vec<String> = nginx
        .wait_access_entries(steps.len(), LOG_WAIT)
        .into_iter()
        .map(|e| e.rcache)
        .collect();
    let want: Vec<String> = steps
        .iter()
        .map(|s| s.3.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(rcache, want);
}

// ---------------------------------------------------------------------------------------
// More edges: truncated and aborted responses, files, subrequests, keys, pooling, limits
// ---------------------------------------------------------------------------------------

#[test]
fn a_truncated_app_response_is_never_stored() {
    let data = bytes(100_000, 8);
    let app_data = data.clone();
    let app = App::start_with(move |req| {
        if req.target.ends_with("/length") {
            // Says 100000 bytes, sends half, closes (nginx's proxy speaks HTTP/1.0).
            AppResponse::new(200, app_data[..50_000].to_vec()).header("Content-Length", "100000")
        } else {
            // Chunked, cut inside a chunk, no last chunk.
            let encoded = http::chunked(&app_data, 4096);
            AppResponse::new(200, encoded[..60_000].to_vec()).header("Transfer-Encoding", "chunked")
        }
    });
    let mc = Memcached::start();
    let nginx = nginx_buffered_and_unbuffered(&mc.addr(), &app);
    for path in [
        "/length",
        "/chunked",
        "/unbuffered/length",
        "/unbuffered/chunked",
    ] {
        let before = store_log(&nginx).len();
        let r = http::try_request(nginx.port(), "GET", path, &[], None);
        assert!(
            r.as_ref().map_or(true, |r| r.body != data),
            "{path}: the client cannot have had the whole page"
        );
        let e = wait_entry(&nginx, before);
        assert_ne!(e.store, "STORED", "{path}: {e:?}");
        assert_eq!(
            mc.get_raw(path).map(|(v, f)| (v.len(), f)),
            None,
            "{path}: a truncated page was stored"
        );
    }
    assert!(nginx.alerts().is_empty(), "{:?}", nginx.alerts());
}

#[test]
fn a_page_served_from_files_by_the_fallback_is_stored_with_and_without_sendfile() {
    let mc = Memcached::start();
    let app = App::start(); // unused: the fallbacks serve files
    let nginx = Nginx::builder()
        .var("mc", mc.addr())
        .var("app", app.port())
        .http(
            "types { text/html html; application/x-bin bin; }
             default_type application/x-nginx-default;
             log_format store '$request_method $request_uri $status $rcache_status $rcache_store_status $rcache_front';
             server {
                 listen 127.0.0.1:{port};
                 access_log {prefix}/store.log store;
                 location / { rcache_pass {mc}; rcache_fallback @files; rcache_store on; }
                 location /nosendfile/ {
                     rcache_pass {mc}; rcache_fallback @plain_files; rcache_store on;
                 }
                 location @files { sendfile on; root {prefix}/pages; }
                 location @plain_files { sendfile off; root {prefix}/pages; }
             }",
        )
        .start();
    let pages = nginx.prefix().join("pages");
    std::fs::create_dir_all(pages.join("nosendfile")).unwrap();
    let files = [
        ("/big.bin", bytes(300 * 1024, 1), "application/x-bin"),
        ("/small.html", b"<p>small</p>".to_vec(), "text/html"),
        (
            "/nosendfile/big.bin",
            bytes(300 * 1024, 2),
            "application/x-bin",
        ),
    ];
    for (path, body, _) in &files {
        std::fs::write(pages.join(&path[1..]), body).unwrap();
    }
    for (path, body, ctype) in &files {
        let (miss, e) = logged(&nginx, "GET", path, &[], None);
        assert!(miss.body == *body, "{path}");
        assert_eq!(e.statuses(), "MISS STORED", "{path}");
        let (value, _) = mc.get_raw(path).expect(path);
        let (headers, stored) = parse_stored(&value);
        assert!(stored == *body, "{path}: stored body");
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Content-Type", "Last-Modified", "ETag"], "{path}");
        let (hit, e) = logged(&nginx, "GET", path, &[], None);
        assert_eq!(e.statuses(), "HIT -", "{path}");
        assert!(hit.body == *body, "{path}: HIT body");
        assert_eq!(hit.header("content-type"), Some(*ctype));
        assert_eq!(hit.header("etag"), miss.header("etag"), "{path}");
        assert_eq!(hit.header("last-modified"), miss.header("last-modified"));
    }
}

#[test]
fn a_page_rcache_stored_is_served_even_at_the_edge_of_rcache_max_size() {
    // rcache_store_max_size counts the body; rcache_max_size the whole value, which is the
    // body plus the stored form's header lines. A page rcache stores must be one it serves.
    let site = Site::start(
        App::start_with(|req| {
            let size: usize = req.target[1..].parse().unwrap();
            AppResponse::new(200, bytes(size, 4)).header("Content-Type", "text/html")
        }),
        "rcache_max_size 10k; rcache_store_max_size 10k;",
    );
    let (_, e) = site.get("/10240");
    if e.store == "STORED" {
        let (value, _) = site.stored("/10240").unwrap();
        let (hit, e2) = site.get("/10240");
        assert_eq!(
            e2.statuses(),
            "HIT -",
            "rcache stored a {}-byte value (body 10240) that rcache_max_size 10k never lets it \
             serve: every request goes to the app until the TTL ends",
            value.len()
        );
        assert!(hit.body == bytes(10240, 4));
    } else {
        assert_eq!(e.statuses(), "MISS TOO_LARGE");
        assert!(site.stored("/10240").is_none());
    }
}

#[test]
fn keys_that_need_escaping_are_stored_and_purged_under_the_escaped_key() {
    let site = Site::start(App::start(), "rcache_purge;");
    // $uri is decoded: "/a b%c" and "/x\r\nset evil 0 0 1\r\nx", escaped as stock nginx does.
    let cases = [
        ("/a%20b%25c", "/a%20b%25c"),
        (
            "/x%0D%0Aset%20evil%200%200%201%0D%0Ax",
            "/x%0D%0Aset%20evil%200%200%201%0D%0Ax",
        ),
        ("/caf%C3%A9", "/café"),
    ];
    for (target, key) in cases {
        let (r, e) = site.get(target);
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(e.statuses(), "MISS STORED", "{target}");
        assert!(site.stored(key).is_some(), "{target}: stored under {key:?}");
        let (_, e) = site.get(target);
        assert_eq!(e.statuses(), "HIT -", "{target}");
        assert_eq!(site.purge(target).0.status, 200, "{target}");
        assert!(site.stored(key).is_none(), "{target}: purged");
    }
    assert!(
        site.stored("evil").is_none(),
        "no command injected through the set"
    );
    assert_eq!(
        site.mc.stats()["cmd_set"],
        "3",
        "one set per page, nothing more"
    );
}

#[test]
fn stores_go_over_the_pooled_connection_lookups_use() {
    let site = Site::start(App::start(), "");
    let before = site.mc.total_connections();
    for i in 0..10 {
        let path = format!("/pooled-{i}");
        assert_eq!(site.get(&path).1.statuses(), "MISS STORED");
        assert_eq!(site.get(&path).1.statuses(), "HIT -");
    }
    assert_eq!(
        site.mc.total_connections() - before,
        1,
        "10 lookups + 10 stores + 10 lookups over one pooled connection"
    );
}

/// SSI is on for the app's pages and a page includes an rcache location (a HIT). The
/// page's own request is a MISS whose response is stored; subrequests share the main
/// request's variables in nginx, which must not change what the page's request logs or
/// whether it is stored.
#[test]
fn an_ssi_include_of_an_rcache_location_neither_hides_the_miss_nor_stops_the_store() {
    let mc = Memcached::start();
    mc.set_raw(b"/frag/x", b"FRAGMENT", 0, 0);
    let template = "<p>head</p><!--#include virtual=\"/frag/x\" --><p>tail</p>";
    let app = App::start_with(move |_| {
        AppResponse::new(200, template)
            .header("Content-Type", "text/html")
            // Streamed: the include is processed before the page's last byte arrives.
            .chunked(47, Duration::from_millis(100))
    });
    let nginx = nginx_for(&mc.addr(), &app, "", "ssi on;");
    let (r, e) = logged(&nginx, "GET", "/page", &[], None);
    assert_eq!(r.text(), "<p>head</p>FRAGMENT<p>tail</p>");
    let stored = mc.get_raw("/page").map(|(v, _)| preview(&v));
    let observed = format!("logged {:?}, memcached has {stored:?}", e.statuses());
    assert_eq!(e.statuses(), "MISS STORED", "{observed}");
    assert_eq!(
        stored.as_deref(),
        Some(format!("RCACHE/1\r\nContent-Type: text/html\r\n\r\n{template}").as_str()),
        "the template is stored, as the app sent it; {observed}"
    );
    let (r, e) = logged(&nginx, "GET", "/page", &[], None);
    assert_eq!(e.rcache, "HIT");
    assert_eq!(r.text(), "<p>head</p>FRAGMENT<p>tail</p>");
}

/// A client that goes away mid-response: whatever rcache stores is the whole page, never
/// a part of it, and nginx goes on.
#[test]
fn a_client_that_goes_away_mid_response_never_leaves_a_truncated_page() {
    use std::io::{Read, Write};
    let body = bytes(600 * 1024, 6);
    let app_body = body.clone();
    let site = Site::start(
        App::start_with(move |req| {
            let r = AppResponse::new(200, app_body.clone()).header("Content-Type", "text/html");
            if req.target == "/slow" {
                r.chunked(16 * 1024, Duration::from_millis(15))
            } else {
                r
            }
        }),
        "",
    );
    for path in ["/slow", "/fast"] {
        let before = store_log(&site.nginx).len();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", site.nginx.port())).unwrap();
        s.set_read_timeout(Some(LOG_WAIT)).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut first = [0u8; 4096];
        let n = s.read(&mut first).unwrap();
        assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{path}");
        drop(s); // unread data: the kernel resets the connection
        let e = wait_entry(&site.nginx, before);
        if let Some((value, _)) = site.stored(path) {
            assert!(
                value == stored_form(&[("Content-Type", "text/html")], &body),
                "{path}: stored {} bytes that are not the whole page ({e:?})",
                value.len()
            );
        }
    }
    let (r, _) = site.get("/after");
    assert_eq!(r.status, 200);
    assert!(site.nginx.alerts().is_empty(), "{:?}", site.nginx.alerts());
}

/// The page has passed rcache's filter (so the store has started) but not yet the
/// client's socket, and the client resets the connection: nginx ends the request while
/// memcached has not answered the store. The write goes on without the request and ends
/// by itself (here: times out); nginx stays sound.
#[test]
fn a_store_in_flight_outlives_a_request_whose_client_went_away() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let mode = Arc::new(AtomicU8::new(STALL));
    let fake = store_fake(Arc::clone(&mode));
    let body = bytes(120 * 1024, 12);
    let app_body = body.clone();
    let app = App::start_with(move |_| AppResponse::new(200, app_body.clone()));
    // Small socket buffers and big proxy buffers: the whole page is in nginx's memory and
    // passes rcache's filter while most of it still waits for the client.
    let mut nginx = Nginx::builder()
        .var("mc", fake.addr())
        .var("app", app.port())
        .http(
            "log_format store '$request_method $request_uri $status $rcache_status $rcache_store_status $rcache_front';
             server {
                 listen 127.0.0.1:{port} sndbuf=16k;
                 access_log {prefix}/store.log store;
                 location / {
                     rcache_pass {mc}; rcache_fallback @app; rcache_store on;
                     rcache_read_timeout 3s;
                 }
                 location @app {
                     proxy_buffers 32 8k;
                     proxy_busy_buffers_size 128k;
                     proxy_pass http://127.0.0.1:{app};
                 }
             }",
        )
        .start();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", nginx.port())).unwrap();
    let rcvbuf: libc::c_int = 16 * 1024;
    // SAFETY: a valid socket fd and an int option of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&rcvbuf as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    s.set_read_timeout(Some(LOG_WAIT)).unwrap();
    s.write_all(b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 512];
    let n = s.read(&mut first).unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    let sets = || {
        fake.request_log()
            .iter()
            .filter(|r| r.command() == "add")
            .count()
    };
    assert!(
        wait_until(LOG_WAIT, || sets() == 1),
        "the store never started"
    );
    assert!(store_log(&nginx).is_empty(), "the request is still on");
    drop(s); // unread data: the kernel resets the connection
    let e = wait_entry(&nginx, 0);
    let failures = store_failure_lines(&nginx);
    assert!(
        failures.is_empty(),
        "the request ended with the client ({e:?}), before the store did: {failures:?}"
    );
    assert_eq!(e.rcache, "MISS");
    assert!(
        wait_until(LOG_WAIT, || store_failure_lines(&nginx).len() == 1),
        "the store in flight never ended"
    );
    assert!(store_failure_lines(&nginx)[0].contains("timed out"));

    mode.store(OK, Ordering::SeqCst);
    let r = http::get(nginx.port(), "/next");
    assert!(r.body == body);
    assert_eq!(wait_entry(&nginx, 1).statuses(), "MISS STORED");
    let shutdown = nginx.quit();
    assert!(shutdown.is_clean(), "{shutdown:?}");
}

#[test]
fn without_rcache_purge_a_purge_is_a_bypass_to_the_app() {
    let site = Site::start(App::start(), "");
    assert_eq!(site.get("/kept").1.statuses(), "MISS STORED");
    let (r, e) = site.purge("/kept");
    assert_eq!(Echo::parse(&r.body).method(), "PURGE", "the app got it");
    assert_eq!(e.statuses(), "BYPASS -");
    assert!(site.stored("/kept").is_some());
}

#[test]
fn a_purge_whose_key_cannot_be_a_memcached_key_is_404() {
    let site = Site::start(App::start(), "rcache_purge;");
    let long = format!("/{}", "p".repeat(300));
    let (r, e) = site.purge(&long);
    assert_eq!(r.status, 404);
    assert_eq!(e.rcache, "PURGE");
    assert_eq!(site.app.requests(), 0);
}

/// `rcache_purge` acts only where `rcache_pass` installed rcache's handler; anywhere else
/// a PURGE is never seen by rcache (nginx answers 405), so the directive is a mistake
/// `nginx -t` should name.
#[test]
fn nginx_t_rejects_rcache_purge_in_a_location_without_rcache_pass() {
    let c = Nginx::builder()
        .http(
            "server { listen 127.0.0.1:{port};
                 location / { rcache_pass 127.0.0.1:11211; }
                 location /purge/ { rcache_purge; } }",
        )
        .check_config();
    assert!(
        !c.ok,
        "nginx -t accepts rcache_purge where it can never act:\n{}",
        c.output
    );
    assert!(c.output.contains("\"rcache_purge\""), "{}", c.output);
}
