//! The example Django blog (`examples/django-blog`, gunicorn, sqlite) behind nginx with
//! the two shipped configurations, loaded as they are with their placeholders filled in:
//!
//! * `nginx-conf/django-nginx-stores.conf`: nginx stores Django's pages (`rcache_store`),
//!   stale pages, soft purge sent by Django on `post_save`, the lock;
//! * `nginx-conf/django-writes.conf`: Django writes its pages through its cache framework
//!   (PyMemcacheCache over three memcached servers, `rcache_hash rendezvous`) and deletes
//!   them on `post_save`.
//!
//! Needs the venv of `scripts/django-env.sh` (see `tests/common/django.rs`).

mod common;

use common::django::{Django, StartError, ADMIN_PASSWORD, ADMIN_USER};
use common::http::{self, Response};
use common::*;

const POST: &str = "/posts/keep-alive-to-memcached/";
const POST_TITLE: &str = "Keep-alive to memcached";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    NginxStores,
    DjangoWrites,
}

/// `nginx-conf/<file>` without its comment lines, `{app}` and `{memcached}` filled in; a
/// line `server {memcached};` is repeated once per memcached server. `{port}` is left to
/// the nginx fixture.
fn site_conf(file: &str, memcached: &[String], app: &str) -> String {
    let path = format!("{}/nginx-conf/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        if line.trim() == "server {memcached};" {
            for mc in memcached {
                out.push(line.replace("{memcached}", mc));
            }
        } else {
            out.push(line.replace("{memcached}", &memcached[0]));
        }
    }
    out.join("\n").replace("{app}", app)
}

struct Site {
    mode: Mode,
    mcs: Vec<Memcached>,
    django: Django,
    nginx: Nginx,
}

fn start(mode: Mode) -> Site {
    start_with(mode, &[])
}

fn start_with(mode: Mode, env: &[(&str, &str)]) -> Site {
    match mode {
        Mode::NginxStores => {
            // Django needs nginx's address (for PURGE) and nginx Django's: nginx first, on
            // a port picked for gunicorn.
            let mc = Memcached::start();
            let conf = |port: u16| {
                site_conf(
                    "django-nginx-stores.conf",
                    &[mc.addr()],
                    &format!("127.0.0.1:{port}"),
                )
            };
            let mut app_port = free_port();
            let mut nginx = Nginx::builder().http(&conf(app_port)).start();
            for _ in 0..5 {
                let mut builder = Django::builder()
                    .env("BLOG_CACHE_MODE", "nginx-stores")
                    .env("RCACHE_PURGE_URL", nginx.url(""))
                    .port(app_port);
                for (n, v) in env {
                    builder = builder.env(n, v);
                }
                match builder.try_start() {
                    Ok(django) => {
                        return Site {
                            mode,
                            mcs: vec![mc],
                            django,
                            nginx,
                        }
                    }
                    Err(StartError::AddrInUse) => {
                        app_port = free_port();
                        nginx.set_http(&conf(app_port));
                        nginx.reload();
                    }
                    Err(StartError::Other(msg)) => panic!("{msg}"),
                }
            }
            panic!("gunicorn: no free port in 5 attempts");
        }
        Mode::DjangoWrites => {
            let mcs: Vec<Memcached> = (0..3).map(|_| Memcached::start()).collect();
            let addrs: Vec<String> = mcs.iter().map(|m| m.addr()).collect();
            let mut builder = Django::builder()
                .env("BLOG_CACHE_MODE", "django-writes")
                .env("BLOG_MEMCACHED", addrs.join(","));
            for (n, v) in env {
                builder = builder.env(n, v);
            }
            let django = builder.start();
            let nginx = Nginx::builder()
                .http(&site_conf("django-writes.conf", &addrs, &django.addr()))
                .start();
            Site {
                mode,
                mcs,
                django,
                nginx,
            }
        }
    }
}

impl Site {
    fn browser(&self) -> Browser<'_> {
        Browser::new(&self.nginx)
    }

    /// The servers that hold `key` (the page as stored: nginx's stored form, or the raw
    /// bytes Django wrote).
    fn holders(&self, key: &str) -> Vec<(Vec<u8>, u32)> {
        self.mcs.iter().filter_map(|m| m.get_raw(key)).collect()
    }

    /// True if memcached holds a page under `key` (not a lock or hit-for-pass marker).
    fn has_page(&self, key: &str) -> bool {
        self.holders(key)
            .iter()
            .any(|(value, flags)| match self.mode {
                Mode::NginxStores => flags & (1 << 24) != 0 && value.starts_with(b"RCACHE/1"),
                Mode::DjangoWrites => *flags == 0 && !value.is_empty(),
            })
    }

    /// What a request that finds the page invalidated is: soft-purged (EXPIRED, rendered
    /// again by Django) or deleted (MISS).
    fn after_invalidation(&self) -> &'static str {
        match self.mode {
            Mode::NginxStores => "EXPIRED",
            Mode::DjangoWrites => "MISS",
        }
    }
}

/// A client with a cookie jar, like a browser. Every request waits until nginx has logged
/// it (nginx logs after a store has finished, so the next request sees the stored page).
struct Browser<'a> {
    nginx: &'a Nginx,
    cookies: Vec<(String, String)>,
}

impl Browser<'_> {
    fn new(nginx: &Nginx) -> Browser<'_> {
        Browser {
            nginx,
            cookies: Vec::new(),
        }
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn request(&mut self, method: &str, target: &str, form: Option<&[(&str, &str)]>) -> Response {
        let logged = |nginx: &Nginx| {
            nginx
                .access_entries()
                .iter()
                .filter(|e| e.method == method && e.uri == target)
                .count()
        };
        let before = logged(self.nginx);
        let cookie = self
            .cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut headers = Vec::new();
        if !cookie.is_empty() {
            headers.push(("Cookie", cookie.as_str()));
        }
        let body = form.map(|fields| {
            fields
                .iter()
                .map(|(n, v)| format!("{}={}", urlencode(n), urlencode(v)))
                .collect::<Vec<_>>()
                .join("&")
        });
        if body.is_some() {
            headers.push(("Content-Type", "application/x-www-form-urlencoded"));
        }
        let r = http::request(
            self.nginx.port(),
            method,
            target,
            &headers,
            body.as_deref().map(str::as_bytes),
        );
        for set in r.headers_named("set-cookie") {
            let pair = set.split(';').next().unwrap_or("");
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            self.cookies.retain(|(n, _)| n != name);
            if !value.is_empty() && !set.contains("Max-Age=0") {
                self.cookies.push((name.to_string(), value.to_string()));
            }
        }
        assert!(
            wait_until(5 * SECOND, || logged(self.nginx) > before),
            "nginx did not log {method} {target}:\n{}",
            self.nginx.access_log()
        );
        r
    }

    fn get(&mut self, target: &str) -> Response {
        self.request("GET", target, None)
    }

    fn post(&mut self, target: &str, form: &[(&str, &str)]) -> Response {
        self.request("POST", target, Some(form))
    }

    /// GETs `page`, a page with a form, and returns its CSRF token (the cookie is kept).
    fn csrf_token(&mut self, page: &str) -> String {
        let r = self.get(page);
        assert_eq!(r.status, 200, "{page}: {}", r.text());
        assert!(
            self.cookie("csrftoken").is_some(),
            "{page} set no CSRF cookie"
        );
        input_value(&r.text(), "csrfmiddlewaretoken")
            .unwrap_or_else(|| panic!("{page} has no CSRF token:\n{}", r.text()))
    }

    /// Logs in to the admin like a browser: the login form, then its POST.
    fn log_in(&mut self) {
        let token = self.csrf_token("/admin/login/?next=/admin/");
        let r = self.post(
            "/admin/login/?next=/admin/",
            &[
                ("csrfmiddlewaretoken", &token),
                ("username", ADMIN_USER),
                ("password", ADMIN_PASSWORD),
                ("next", "/admin/"),
            ],
        );
        assert_eq!(r.status, 302, "admin login: {}", r.text());
        assert_eq!(r.header("location"), Some("/admin/"));
        assert!(self.cookie("sessionid").is_some(), "no session after login");
    }
}

/// `X-Rcache-Status` of a response (`-` without one).
fn status(r: &Response) -> &str {
    r.header("x-rcache-status").unwrap_or("-")
}

/// The `value` of the `<input>` named `name`.
fn input_value(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    let tag_start = html[..at].rfind('<')?;
    let tag = &html[tag_start..tag_start + html[tag_start..].find('>')?];
    let v = &tag[tag.find("value=\"")? + 7..];
    Some(v[..v.find('"')?].to_string())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// --- the second view is a HIT ----------------------------------------------------------

fn second_view_is_a_hit_django_never_sees(mode: Mode) {
    let site = start(mode);
    let mut anon = site.browser();
    for page in [POST, "/"] {
        let first = anon.get(page);
        assert_eq!(first.status, 200, "{page}: {}", first.text());
        assert_eq!(status(&first), "MISS", "{page}");
        assert_eq!(site.django.requests_for("GET", page), 1, "{page}");
        assert!(site.has_page(page), "{page} is not in memcached");

        let second = anon.get(page);
        assert_eq!(second.status, 200);
        assert_eq!(status(&second), "HIT", "{page}");
        assert_eq!(second.body, first.body, "{page}: the page as rendered");
        assert!(second.text().contains("Rendered by Django at"));
        assert!(
            second
                .header("content-type")
                .is_some_and(|t| t.starts_with("text/html") && t.contains("utf-8")),
            "{:?}",
            second.header("content-type")
        );
        if mode == Mode::NginxStores {
            // Django's SecurityMiddleware / XFrameOptionsMiddleware headers are stored
            // with the page: a HIT keeps the site's clickjacking and sniffing protection.
            for name in [
                "x-frame-options",
                "x-content-type-options",
                "referrer-policy",
                "cross-origin-opener-policy",
            ] {
                assert!(
                    first.header(name).is_some(),
                    "{page}: Django sent no {name}"
                );
                assert_eq!(second.header(name), first.header(name), "{page}: {name}");
            }
        }
        assert_eq!(
            site.django.requests_for("GET", page),
            1,
            "{page}: Django saw the HIT"
        );
    }
    assert!(anon.get(POST).text().contains(POST_TITLE));
    if mode == Mode::DjangoWrites {
        // Every page of the site, written by pymemcache's HashClient to one of three
        // servers, is found there by rcache_hash rendezvous.
        let pages = [
            "/posts/fast-caching-with-django-and-nginx/",
            "/posts/logged-in-users/",
        ];
        for page in pages {
            assert_eq!(status(&anon.get(page)), "MISS");
            assert_eq!(status(&anon.get(page)), "HIT", "{page}");
        }
        for page in pages.iter().chain(&[POST, "/"]) {
            let holders = site.holders(page);
            assert_eq!(holders.len(), 1, "{page} is on exactly one server");
            assert_eq!(holders[0].1, 0, "{page}: bytes, flags 0");
        }
    }
}

#[test]
fn nginx_stores_second_view_of_a_post_is_a_hit_django_never_sees() {
    second_view_is_a_hit_django_never_sees(Mode::NginxStores);
}

#[test]
fn django_writes_second_view_of_a_post_is_a_hit_django_never_sees() {
    second_view_is_a_hit_django_never_sees(Mode::DjangoWrites);
}

// --- comments ----------------------------------------------------------------------------

fn a_comment_shows_on_the_next_anonymous_view(mode: Mode) {
    let site = start(mode);
    let mut anon = site.browser();
    for page in [POST, "/", POST, "/"] {
        anon.get(page);
    }
    assert_eq!(status(&anon.get(POST)), "HIT");
    assert!(anon.get(POST).text().contains("No comments yet."));

    // The comment form sets the CSRF cookie: never cached, never stored.
    let form = format!("{POST}comment/");
    let mut visitor = site.browser();
    let token = visitor.csrf_token(&form);
    let again = visitor.get(&form);
    assert_ne!(status(&again), "HIT");
    assert_eq!(site.django.requests_for("GET", &form), 2);
    assert!(
        !site.has_page(&form),
        "the page with the CSRF cookie was stored"
    );

    // Without the CSRF cookie and token, Django refuses the comment.
    let r = site
        .browser()
        .post(POST, &[("name", "Mallory"), ("body", "forged")]);
    assert_eq!(r.status, 403);
    assert_eq!(status(&r), "BYPASS");

    // Like a browser: the form's token and the cookie, POSTed to the (cached) post URL.
    let r = visitor.post(
        POST,
        &[
            ("csrfmiddlewaretoken", &token),
            ("name", "Dee"),
            ("body", "Pooling, at last & for good"),
        ],
    );
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(r.header("location"), Some(POST));
    assert_eq!(status(&r), "BYPASS");
    assert_eq!(site.django.requests_for("POST", POST), 2);

    // Anyone's next view has the comment: no stale page after the invalidation.
    let comment = "<strong>Dee</strong>: Pooling, at last &amp; for good";
    let mut next = site.browser();
    let r = next.get(POST);
    assert_eq!(status(&r), site.after_invalidation());
    assert!(r.text().contains(comment), "{}", r.text());
    let r = next.get("/");
    assert_eq!(status(&r), site.after_invalidation());
    assert!(
        r.text().contains(&format!("{POST}\">1 comment</a>")),
        "{}",
        r.text()
    );
    let django_gets = site.django.requests_for("GET", POST);
    let r = next.get(POST);
    assert_eq!(status(&r), "HIT");
    assert!(r.text().contains(comment));
    assert_eq!(site.django.requests_for("GET", POST), django_gets);

    if mode == Mode::NginxStores {
        // Django's post_save handler sent one PURGE per page.
        let purges: Vec<_> = site
            .nginx
            .access_entries()
            .into_iter()
            .filter(|e| e.method == "PURGE")
            .map(|e| (e.uri, e.status))
            .collect();
        assert_eq!(purges, [(POST.to_string(), 200), ("/".to_string(), 200)]);
    }
}

#[test]
fn nginx_stores_a_posted_comment_shows_on_the_next_anonymous_view() {
    a_comment_shows_on_the_next_anonymous_view(Mode::NginxStores);
}

#[test]
fn django_writes_a_posted_comment_shows_on_the_next_anonymous_view() {
    a_comment_shows_on_the_next_anonymous_view(Mode::DjangoWrites);
}

// --- the admin ---------------------------------------------------------------------------

fn admin_sees_uncached_pages_and_an_edit_is_visible(mode: Mode) {
    let site = start(mode);
    let mut anon = site.browser();
    for page in [POST, "/"] {
        anon.get(page);
        assert_eq!(status(&anon.get(page)), "HIT", "{page}");
    }

    let mut admin = site.browser();
    admin.log_in();
    let before = site.django.requests_for("GET", POST);
    let r = admin.get(POST);
    assert_eq!(r.status, 200);
    assert_eq!(status(&r), "BYPASS");
    assert_eq!(site.django.requests_for("GET", POST), before + 1);
    assert_eq!(
        site.django.requests().last().map(|r| r.rcache.clone()),
        Some("BYPASS".to_string())
    );

    // Edit the post in the admin.
    let list = admin.get("/admin/blog/post/");
    assert_eq!(list.status, 200);
    assert_eq!(status(&list), "-", "the admin is never cached");
    let html = list.text();
    let at = html
        .find(&format!(">{POST_TITLE}</a>"))
        .unwrap_or_else(|| panic!("no {POST_TITLE:?} in the admin's list:\n{html}"));
    let href = &html[..at];
    let href = &href[href.rfind("href=\"").expect("link to the change form") + 6..];
    let change = href[..href.find('"').expect("end of href")].to_string();
    assert!(change.starts_with("/admin/blog/post/"), "{change}");
    let token = admin.csrf_token(&change);
    let r = admin.post(
        &change,
        &[
            ("csrfmiddlewaretoken", &token),
            ("title", "Keep-alive to memcached, edited"),
            ("slug", "keep-alive-to-memcached"),
            ("body", "Edited in the admin."),
            ("_save", "Save"),
        ],
    );
    assert_eq!(r.status, 302, "admin change: {}", r.text());
    assert_eq!(r.header("location"), Some("/admin/blog/post/"));

    let r = admin.get(POST);
    assert_eq!(status(&r), "BYPASS");
    assert!(r.text().contains("Edited in the admin."), "{}", r.text());
    if mode == Mode::DjangoWrites {
        assert!(
            !site.has_page(POST),
            "a logged-in view was written to memcached"
        );
    }

    let r = anon.get(POST);
    assert_eq!(status(&r), site.after_invalidation());
    assert!(r.text().contains("Keep-alive to memcached, edited"));
    assert!(r.text().contains("Edited in the admin."));
    let r = anon.get(POST);
    assert_eq!(status(&r), "HIT");
    assert!(r.text().contains("Edited in the admin."));
    let r = anon.get("/");
    assert_eq!(status(&r), site.after_invalidation());
    assert!(r.text().contains("Keep-alive to memcached, edited"));
}

#[test]
fn nginx_stores_an_admin_sees_uncached_pages_and_an_edit_is_visible() {
    admin_sees_uncached_pages_and_an_edit_is_visible(Mode::NginxStores);
}

#[test]
fn django_writes_an_admin_sees_uncached_pages_and_an_edit_is_visible() {
    admin_sees_uncached_pages_and_an_edit_is_visible(Mode::DjangoWrites);
}

// --- search ------------------------------------------------------------------------------

fn search_is_never_cached(mode: Mode) {
    let site = start(mode);
    let mut anon = site.browser();
    for target in ["/search/?q=memcached", "/search/?q=memcached", "/search/"] {
        let r = anon.get(target);
        assert_eq!(r.status, 200);
        assert_eq!(status(&r), "-", "{target}: rcache is not involved");
        if target.contains("q=") {
            assert!(r.text().contains(POST_TITLE), "{}", r.text());
        }
    }
    assert_eq!(site.django.requests_for("GET", "/search/?q=memcached"), 2);
    assert_eq!(site.django.requests_for("GET", "/search/"), 1);
    assert!(site.holders("/search/").is_empty());
}

#[test]
fn nginx_stores_search_is_never_cached() {
    search_is_never_cached(Mode::NginxStores);
}

#[test]
fn django_writes_search_is_never_cached() {
    search_is_never_cached(Mode::DjangoWrites);
}

// --- Django down ---------------------------------------------------------------------------

#[test]
fn nginx_stores_keeps_serving_cached_pages_while_gunicorn_is_stopped() {
    // Pages fresh for 2 s, then served stale for up to an hour (rcache_stale 1h).
    let mut site = start_with(Mode::NginxStores, &[("BLOG_CACHE_SECONDS", "2")]);
    let mut anon = Browser::new(&site.nginx);
    let stored = std::time::Instant::now();
    let page = anon.get(POST);
    assert_eq!(status(&page), "MISS");
    assert!(page.text().contains(POST_TITLE));
    anon.get("/");

    site.django.stop();
    let r = anon.get(POST);
    assert!(
        stored.elapsed() < 2 * SECOND,
        "too slow to see the page fresh: {:?}",
        stored.elapsed()
    );
    assert_eq!((r.status, status(&r)), (200, "HIT"));
    assert_eq!(r.body, page.body);

    // Past its freshness (memcached counts whole seconds: within about 3 s), Django
    // cannot render it again: the stale page, twice (each request tries Django again).
    let mut r = anon.get(POST);
    while status(&r) == "HIT" && stored.elapsed() < 5 * SECOND {
        std::thread::sleep(SECOND / 10);
        r = anon.get(POST);
    }
    for _ in 0..2 {
        assert_eq!((r.status, status(&r)), (200, "STALE"), "{}", r.text());
        assert_eq!(r.body, page.body);
        r = anon.get(POST);
    }
    let r = anon.get("/");
    assert_eq!((r.status, status(&r)), (200, "STALE"));
    // A page that was never cached has nothing to fall back on.
    assert_eq!(anon.get("/posts/logged-in-users/").status, 502);

    // Django back: the next request renders the page again.
    site.django.restart();
    let r = anon.get(POST);
    assert_eq!((r.status, status(&r)), (200, "EXPIRED"));
    assert_ne!(
        r.body, page.body,
        "rendered again (a new time in the footer)"
    );
    assert_eq!(status(&anon.get(POST)), "HIT");
}
