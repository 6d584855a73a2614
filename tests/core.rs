//! rcache's core behaviour against a real nginx and a real memcached: HIT, MISS and BYPASS,
//! the fallback (URI and named), `$rcache_status`, flags, gzip, keys, and the answers
//! without a fallback. Values are written with the `memcache` crate (see
//! `Memcached::set_raw`).

mod common;

use common::http::{self, KeepAliveClient};
use common::*;

/// memcached, the echo app, and nginx with `location` (rcache) plus the app's locations:
/// `/dynamic/` (internal, proxied, the URI form of the fallback) and `@app` (named).
/// Both fallback locations add `X-Rcache-Status: $rcache_status`.
struct Site {
    mc: Memcached,
    app: App,
    nginx: Nginx,
}

impl Site {
    fn start(rcache_location: &str) -> Site {
        Site::start_with(Memcached::start(), rcache_location, "")
    }

    fn start_with(mc: Memcached, rcache_location: &str, http_extra: &str) -> Site {
        let app = App::start();
        let nginx = Nginx::builder()
            .var("mc", mc.port())
            .var("app", app.port())
            .http(
                &"default_type text/html;
                 types { text/css css; image/png png; }
                 {extra}
                 server {
                     listen 127.0.0.1:{port};
                     {loc}
                     location /dynamic/ {
                         internal;
                         add_header X-Rcache-Status $rcache_status always;
                         proxy_pass http://127.0.0.1:{app};
                     }
                     location @app {
                         add_header X-Rcache-Status $rcache_status always;
                         proxy_pass http://127.0.0.1:{app};
                     }
                 }"
                .replace("{extra}", http_extra)
                .replace("{loc}", rcache_location),
            )
            .start();
        Site { mc, app, nginx }
    }

    fn port(&self) -> u16 {
        self.nginx.port()
    }

    fn last_status(&self, n: usize) -> String {
        let entries = self.nginx.wait_access_entries(n, SECOND);
        entries[n - 1].rcache.clone()
    }
}

/// The usual rcache location: everything under `/`, MISS to `/dynamic$uri`.
const CACHED: &str = "location / {
    rcache_pass 127.0.0.1:{mc};
    rcache_fallback /dynamic$uri;
    rcache_bypass $cookie_sessionid;
}";

#[test]
fn hit_is_byte_exact_for_1_byte_10_kib_and_1_mib() {
    let mc = Memcached::start_with_args(&["-I", "2m"]);
    let site = Site::start_with(mc, CACHED, "");
    for (i, size) in [1usize, 10 * 1024, 1024 * 1024].into_iter().enumerate() {
        let value = bytes(size, i as u64 + 7);
        let key = format!("/page-{size}");
        site.mc.set_raw(key.as_bytes(), &value, 0, 0);

        let r = http::get(site.port(), &key);
        assert_eq!(r.status, 200, "{key}");
        assert_eq!(r.body.len(), size, "{key}: length");
        assert!(r.body == value, "{key}: body differs from the stored value");
        assert_eq!(r.header("content-length"), Some(size.to_string().as_str()));
        assert_eq!(r.header("content-type"), Some("text/html"));
        assert_eq!(r.header("content-encoding"), None);
        assert_eq!(site.last_status(i + 1), "HIT");
    }
    assert_eq!(site.app.requests(), 0, "a HIT never reaches the app");
}

#[test]
fn a_page_larger_than_the_first_read_works_with_ranges_gzip_head_and_ssi() {
    // rcache reads the first 16 KiB of a reply and the rest of a larger value into a
    // second buffer: the page is then in two pieces, which every path must handle.
    let site = Site::start(
        "location / {
            rcache_pass 127.0.0.1:{mc};
            rcache_fallback @app;
            rcache_gzip_flag 2;
        }
        location /ssi/ {
            ssi on;
            rcache_pass 127.0.0.1:{mc};
            rcache_fallback @app;
        }",
    );
    let value = bytes(100_000, 3);
    site.mc.set_raw(b"/big", &value, 0, 0);

    let mut c = KeepAliveClient::connect(site.port()).unwrap();
    let r = c.get("/big").unwrap();
    assert!(r.status == 200 && r.body == value, "{}", r.status);

    // One range across the two pieces, several ranges (nginx needs one buffer for those).
    let r = c
        .request("GET", "/big", &[("Range", "bytes=16000-17000")], None)
        .unwrap();
    assert_eq!(r.status, 206);
    assert!(r.body == value[16000..=17000], "single range");
    let r = c
        .request(
            "GET",
            "/big",
            &[("Range", "bytes=0-3,50000-50003,99990-")],
            None,
        )
        .unwrap();
    assert_eq!(r.status, 206);
    let ct = r.header("content-type").unwrap_or_default().to_string();
    assert!(ct.starts_with("multipart/byteranges"), "{ct}");
    for (range, part) in [
        ("0-3/100000", &value[0..4]),
        ("50000-50003/100000", &value[50000..50004]),
        ("99990-99999/100000", &value[99990..]),
    ] {
        let head = format!("Content-Range: bytes {range}\r\n\r\n");
        let at = r
            .body
            .windows(head.len())
            .position(|w| w == head.as_bytes())
            .unwrap_or_else(|| panic!("no part {range}"));
        assert!(r.body[at + head.len()..].starts_with(part), "part {range}");
    }

    let head = c.request("HEAD", "/big", &[], None).unwrap();
    assert_eq!(head.header("content-length"), Some("100000"));
    assert!(head.body.is_empty());

    // A gzip value that large (random bytes do not compress), decompressed for a client
    // that does not accept gzip.
    let gz = gzip(&value);
    assert!(gz.len() > 20_000);
    site.mc.set_raw(b"/big.gz", &gz, 2, 0);
    let r = c.get("/big.gz").unwrap();
    assert!(r.status == 200 && r.body == value, "gunzipped");
    let r = c
        .request("GET", "/big.gz", &[("Accept-Encoding", "gzip")], None)
        .unwrap();
    assert!(r.body == gz, "as stored");

    // Included by SSI: a subrequest's response ends without ending the page.
    site.mc.set_raw(
        b"/ssi/page",
        b"<a><!--# include virtual=\"/big\" --><b>",
        0,
        0,
    );
    let r = c.get("/ssi/page").unwrap();
    let mut expected = b"<a>".to_vec();
    expected.extend_from_slice(&value);
    expected.extend_from_slice(b"<b>");
    assert!(r.status == 200 && r.body == expected, "SSI page");

    let entries = site.nginx.wait_access_entries(7, SECOND);
    assert!(entries.iter().all(|e| e.rcache == "HIT"), "{entries:?}");
    assert_eq!(site.app.requests(), 0);
}

#[test]
fn head_gets_the_headers_of_the_page_and_no_body() {
    let site = Site::start(CACHED);
    site.mc.set_raw(b"/about/", &bytes(5000, 1), 0, 0);
    let mut c = KeepAliveClient::connect(site.port()).unwrap();
    let head = c.request("HEAD", "/about/", &[], None).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("5000"));
    assert!(head.body.is_empty());
    // The connection is still in step: the next response is the whole page.
    let get = c.get("/about/").unwrap();
    assert_eq!(get.body, bytes(5000, 1));
    assert_eq!(site.last_status(2), "HIT");
}

#[test]
fn content_type_comes_from_types_and_output_filters_apply() {
    let site = Site::start(
        "location / {
            rcache_pass 127.0.0.1:{mc};
            rcache_fallback @app;
            add_header X-Served-By rcache;
        }",
    );
    site.mc.set_raw(b"/style.css", b"body{color:red}", 0, 0);
    let r = http::get(site.port(), "/style.css");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/css"));
    assert_eq!(r.header("x-served-by"), Some("rcache"));

    // Ranges work on a HIT, like any static response.
    let r = http::request(
        site.port(),
        "GET",
        "/style.css",
        &[("Range", "bytes=0-3")],
        None,
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body, b"body");
}

#[test]
fn gzip_filter_compresses_a_hit_for_clients_that_accept_it() {
    let page = b"<p>hello</p>".repeat(200);
    let mc = Memcached::start();
    let site = Site::start_with(
        mc,
        "location / { rcache_pass 127.0.0.1:{mc}; rcache_fallback @app; }",
        "gzip on; gzip_min_length 1; gzip_types text/html;",
    );
    site.mc.set_raw(b"/g", &page, 0, 0);
    let r = http::request(
        site.port(),
        "GET",
        "/g",
        &[("Accept-Encoding", "gzip")],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&r.body[..]), &mut plain).unwrap();
    assert_eq!(plain, page);
}

#[test]
fn a_miss_goes_to_the_fallback_uri_with_query_string_and_status() {
    let site = Site::start(CACHED);
    let r = http::get(site.port(), "/missing/page?x=1&y=%20");
    assert_eq!(r.status, 200);
    let echo = Echo::parse(&r.body);
    assert_eq!(echo.method(), "GET");
    assert_eq!(echo.uri(), "/dynamic/missing/page?x=1&y=%20");
    assert_eq!(r.header("x-rcache-status"), Some("MISS"));
    assert_eq!(site.last_status(1), "MISS");
    assert_eq!(site.app.requests(), 1);
}

#[test]
fn a_miss_goes_to_a_named_fallback_unchanged() {
    let site = Site::start(
        "location / {
            rcache_pass 127.0.0.1:{mc};
            rcache_fallback @app;
        }",
    );
    let r = http::get(site.port(), "/blog/post-1/?utm=x");
    let echo = Echo::parse(&r.body);
    assert_eq!(echo.uri(), "/blog/post-1/?utm=x");
    assert_eq!(r.header("x-rcache-status"), Some("MISS"));
}

#[test]
fn a_fallback_with_its_own_query_string_replaces_the_request_one() {
    let site = Site::start(
        "location / {
            rcache_pass 127.0.0.1:{mc};
            rcache_fallback /dynamic$uri?from=cache&$args;
        }",
    );
    let r = http::get(site.port(), "/p?a=1");
    assert_eq!(Echo::parse(&r.body).uri(), "/dynamic/p?from=cache&a=1");

    // `$uri` is decoded: an encoded `?` in the path must not split the fallback URI.
    let r = http::get(site.port(), "/what%3Fnot?a=2");
    assert_eq!(
        Echo::parse(&r.body).uri(),
        "/dynamic/what%3Fnot?from=cache&a=2"
    );
}

#[test]
fn a_post_is_bypassed_and_its_body_reaches_the_fallback_intact() {
    let site = Site::start(CACHED);
    site.mc.set_raw(b"/form", b"cached page", 0, 0);
    // Larger than client_body_buffer_size: nginx buffers it to a file on the way.
    let body = bytes(200 * 1024, 3);
    let r = http::request(site.port(), "POST", "/form?next=/", &[], Some(&body));
    assert_eq!(r.status, 200);
    let echo = Echo::parse(&r.body);
    assert_eq!(echo.method(), "POST");
    assert_eq!(echo.uri(), "/dynamic/form?next=/");
    assert_eq!(echo.body_len(), body.len());
    assert_eq!(echo.body_sha(), sha256_hex(&body));
    assert_eq!(r.header("x-rcache-status"), Some("BYPASS"));

    // Chunked as well.
    let chunked = http::chunked(&body[..5000], 777);
    let r = http::request(
        site.port(),
        "POST",
        "/form",
        &[("Transfer-Encoding", "chunked")],
        Some(&chunked),
    );
    let echo = Echo::parse(&r.body);
    assert_eq!(echo.body_sha(), sha256_hex(&body[..5000]));
    assert_eq!(site.last_status(2), "BYPASS");
}

#[test]
fn other_methods_are_bypassed_never_405() {
    let site = Site::start(CACHED);
    site.mc.set_raw(b"/thing", b"cached", 0, 0);
    for method in ["PUT", "DELETE", "PATCH", "OPTIONS"] {
        let r = http::request(site.port(), method, "/thing", &[], Some(b"x"));
        assert_eq!(r.status, 200, "{method}");
        assert_eq!(Echo::parse(&r.body).method(), method);
        assert_eq!(r.header("x-rcache-status"), Some("BYPASS"), "{method}");
    }
}

#[test]
fn a_method_in_rcache_methods_with_a_body_is_looked_up_and_keeps_its_body() {
    let site = Site::start(
        "location / {
            rcache_pass 127.0.0.1:{mc};
            rcache_methods GET HEAD POST;
            rcache_fallback @app;
        }",
    );
    site.mc.set_raw(b"/search", b"cached results", 0, 0);
    let body = bytes(64 * 1024, 9);
    let mut c = KeepAliveClient::connect(site.port()).unwrap();

    // MISS: the app gets the POST with its body.
    let r = c.request("POST", "/nothing", &[], Some(&body)).unwrap();
    let echo = Echo::parse(&r.body);
    assert_eq!(echo.method(), "POST");
    assert_eq!(echo.body_sha(), sha256_hex(&body));
    assert_eq!(r.header("x-rcache-status"), Some("MISS"));

    // HIT: the body is consumed, so the connection stays in step.
    let r = c.request("POST", "/search", &[], Some(&body)).unwrap();
    assert_eq!(r.body, b"cached results");
    let r = c.get("/search").unwrap();
    assert_eq!(r.body, b"cached results");
    let statuses: Vec<_> = site
        .nginx
        .wait_access_entries(3, SECOND)
        .into_iter()
        .map(|e| e.rcache)
        .collect();
    assert_eq!(statuses, ["MISS", "HIT", "HIT"]);
}

#[test]
fn a_session_cookie_bypasses_the_cache() {
    let site = Site::start(CACHED);
    site.mc.set_raw(b"/account/", b"anonymous page", 0, 0);

    let anon = http::get(site.port(), "/account/");
    assert_eq!(anon.body, b"anonymous page");

    let logged_in = http::request(
        site.port(),
        "GET",
        "/account/",
        &[("Cookie", "theme=dark; sessionid=abc123")],
        None,
    );
    let echo = Echo::parse(&logged_in.body);
    assert_eq!(echo.uri(), "/dynamic/account/");
    assert_eq!(echo.header("cookie"), Some("theme=dark; sessionid=abc123"));
    assert_eq!(logged_in.header("x-rcache-status"), Some("BYPASS"));

    // "0" and empty values do not bypass (as proxy_cache_bypass).
    for cookie in ["sessionid=0", "sessionid=", "other=1"] {
        let r = http::request(site.port(), "GET", "/account/", &[("Cookie", cookie)], None);
        assert_eq!(r.body, b"anonymous page", "{cookie}");
    }
    let statuses: Vec<_> = site
        .nginx
        .wait_access_entries(5, SECOND)
        .into_iter()
        .map(|e| e.rcache)
        .collect();
    assert_eq!(statuses, ["HIT", "BYPASS", "HIT", "HIT", "HIT"]);
}

#[test]
fn rcache_status_is_in_the_access_log_for_every_outcome() {
    let site = Site::start(CACHED);
    site.mc.set_raw(b"/hit", b"x", 0, 0);
    http::get(site.port(), "/hit");
    http::get(site.port(), "/miss");
    http::request(site.port(), "POST", "/hit", &[], Some(b"b"));
    let entries = site.nginx.wait_access_entries(3, SECOND);
    let got: Vec<_> = entries
        .iter()
        .map(|e| {
            (
                e.method.as_str(),
                e.uri.as_str(),
                e.status,
                e.rcache.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("GET", "/hit", 200, "HIT"),
            ("GET", "/miss", 200, "MISS"),
            ("POST", "/hit", 200, "BYPASS"),
        ]
    );

    // ERROR: memcached gone.
    let mut site = site;
    site.mc.stop();
    let r = http::get(site.port(), "/hit");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-rcache-status"), Some("ERROR"));
    assert_eq!(site.last_status(4), "ERROR");
}

#[test]
fn flags_0_and_16_are_pages_other_flags_are_misses() {
    let site = Site::start(
        "location / {
            rcache_pass 127.0.0.1:{mc};
            rcache_fallback @app;
            rcache_gzip_flag 2;
        }",
    );
    for (flags, served) in [
        (0u32, true),
        (16, true),
        (1, false),
        (4, false),
        (8, false),
        (32, false),
        (1 | 16, false),
        (2 | 1, false),
        (0x8000_0000, false),
    ] {
        let key = format!("/f{flags}");
        site.mc.set_raw(key.as_bytes(), b"page", flags, 0);
        let r = http::get(site.port(), &key);
        assert_eq!(r.status, 200);
        if served {
            assert_eq!(r.body, b"page", "flags {flags}");
        } else {
            assert_eq!(
                r.header("x-rcache-status"),
                Some("MISS"),
                "flags {flags} must not be served"
            );
        }
    }
    assert!(site.nginx.error_log().contains("not a page: MISS"));
}

#[test]
fn gzip_values_go_compressed_to_accepting_clients_and_plain_to_others() {
    let page = b"<html><body>compressed page</body></html>".repeat(300);
    let gz = gzip(&page);
    let site = Site::start(
        "location / {
            rcache_pass 127.0.0.1:{mc};
            rcache_fallback @app;
            rcache_gzip_flag 2;
        }",
    );
    site.mc.set_raw(b"/gz", &gz, 2, 0);
    site.mc.set_raw(b"/gz16", &gz, 2 | 16, 0);

    for key in ["/gz", "/gz16"] {
        let r = http::request(
            site.port(),
            "GET",
            key,
            &[("Accept-Encoding", "gzip, deflate")],
            None,
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        assert_eq!(r.header("vary"), Some("Accept-Encoding"));
        assert!(r.body == gz, "the stored gzip bytes, as they are");

        for ae in [None, Some("identity"), Some("gzip;q=0")] {
            let headers: Vec<(&str, &str)> =
                ae.map(|v| vec![("Accept-Encoding", v)]).unwrap_or_default();
            let r = http::request(site.port(), "GET", key, &headers, None);
            assert_eq!(r.status, 200);
            assert_eq!(r.header("content-encoding"), None, "{ae:?}");
            assert_eq!(r.header("vary"), Some("Accept-Encoding"));
            assert!(r.body == page, "decompressed for {ae:?}");
            assert_eq!(
                r.header("content-length"),
                Some(page.len().to_string().as_str())
            );
        }
    }
    let head = http::request(site.port(), "HEAD", "/gz", &[], None);
    assert_eq!(
        head.header("content-length"),
        Some(page.len().to_string().as_str())
    );

    // Without the gzip flag configured, bit 2 is just another type tag: MISS.
    let plain_site =
        Site::start("location / { rcache_pass 127.0.0.1:{mc}; rcache_fallback @app; }");
    plain_site.mc.set_raw(b"/gz", &gz, 2, 0);
    let r = http::get(plain_site.port(), "/gz");
    assert_eq!(r.header("x-rcache-status"), Some("MISS"));
}

#[test]
fn a_corrupt_gzip_value_is_a_miss_for_clients_that_need_it_decompressed() {
    let site = Site::start(
        "location / {
            rcache_pass 127.0.0.1:{mc};
            rcache_fallback @app;
            rcache_gzip_flag 2;
        }",
    );
    let mut gz = gzip(&b"page ".repeat(100));
    let n = gz.len();
    gz[n / 2] ^= 0x55;
    site.mc.set_raw(b"/bad", &gz, 2, 0);
    let r = http::get(site.port(), "/bad");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-rcache-status"), Some("MISS"));
    Echo::parse(&r.body);
    assert!(site.nginx.error_log().contains("not valid gzip data"));
}

#[test]
fn keys_are_escaped_like_stock_nginx() {
    let site = Site::start(CACHED);
    // $uri is decoded; rcache escapes space, % and control bytes as %XX.
    site.mc.set_raw(b"/a%20b", b"space", 0, 0);
    site.mc.set_raw(b"/100%25", b"percent", 0, 0);
    site.mc.set_raw(b"/caf\xc3\xa9", b"utf8", 0, 0);
    assert_eq!(http::get(site.port(), "/a%20b").body, b"space");
    assert_eq!(http::get(site.port(), "/100%25").body, b"percent");
    assert_eq!(http::get(site.port(), "/caf%C3%A9").body, b"utf8");
}

#[test]
fn crlf_in_the_url_cannot_inject_a_memcached_command() {
    let site = Site::start(CACHED);
    let sets_before = site.mc.stats()["cmd_set"].parse::<u64>().unwrap();
    let evil = "/x%0d%0aset%20evil%200%200%204%0d%0apwnd%0d%0aget%20y";
    let r = http::get(site.port(), evil);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-rcache-status"), Some("MISS"));
    Echo::parse(&r.body);
    assert_eq!(site.mc.get_raw("evil"), None, "no command was injected");
    let sets_after = site.mc.stats()["cmd_set"].parse::<u64>().unwrap();
    assert_eq!(sets_after, sets_before);

    // The key as memcached saw it: escaped, one token. Storing under that exact key
    // makes the same URL a HIT.
    site.mc.set_raw(
        b"/x%0D%0Aset%20evil%200%200%204%0D%0Apwnd%0D%0Aget%20y",
        b"escaped key",
        0,
        0,
    );
    assert_eq!(http::get(site.port(), evil).body, b"escaped key");
}

#[test]
fn keys_over_250_bytes_after_escaping_are_misses_without_a_round_trip() {
    let site = Site::start(CACHED);
    let gets = || site.mc.cmd_get();

    // 250 bytes exactly: looked up, and served.
    let key250 = format!("/{}", "k".repeat(249));
    site.mc.set_raw(key250.as_bytes(), b"longest key", 0, 0);
    let before = gets();
    assert_eq!(http::get(site.port(), &key250).body, b"longest key");
    assert_eq!(gets(), before + 1);

    // 251 bytes, and 85 raw bytes that escape to 251: MISS, memcached not asked.
    let before = gets();
    for uri in [
        format!("/{}", "k".repeat(250)),
        format!("/{}k", "%20".repeat(83)),
    ] {
        let r = http::get(site.port(), &uri);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-rcache-status"), Some("MISS"), "{uri}");
        Echo::parse(&r.body);
    }
    assert_eq!(gets(), before, "no get was sent for over-long keys");
}

#[test]
fn without_a_fallback_a_miss_is_404_and_error_page_works_as_with_stock_nginx() {
    let site = Site::start(
        "location /plain/ { rcache_pass 127.0.0.1:{mc}; }
         location /stock/ {
             rcache_pass 127.0.0.1:{mc};
             error_page 404 502 504 = @app;
         }",
    );
    site.mc.set_raw(b"/plain/x", b"hit", 0, 0);
    assert_eq!(http::get(site.port(), "/plain/x").body, b"hit");
    assert_eq!(http::get(site.port(), "/plain/y").status, 404);
    assert_eq!(
        http::request(site.port(), "POST", "/plain/x", &[], Some(b"z")).status,
        404
    );

    let r = http::get(site.port(), "/stock/y");
    assert_eq!(r.status, 200);
    assert_eq!(Echo::parse(&r.body).uri(), "/stock/y");
    assert_eq!(r.header("x-rcache-status"), Some("MISS"));

    let mut site = site;
    site.mc.stop();
    assert_eq!(http::get(site.port(), "/plain/x").status, 502);
    let r = http::get(site.port(), "/stock/x");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-rcache-status"), Some("ERROR"));
}

#[test]
fn an_upstream_block_and_a_custom_key_work() {
    let mc = Memcached::start();
    let app = App::start();
    let nginx = Nginx::builder()
        .var("mc", mc.port())
        .var("app", app.port())
        .http(
            "upstream memcached_pool { server 127.0.0.1:{mc}; }
             server {
                 listen 127.0.0.1:{port};
                 rcache_key \"site1:$uri\";
                 location / {
                     rcache_pass memcached_pool;
                     rcache_fallback @app;
                 }
                 location @app { proxy_pass http://127.0.0.1:{app}; }
             }",
        )
        .start();
    mc.set_raw(b"site1:/p", b"from the pool", 0, 0);
    assert_eq!(http::get(nginx.port(), "/p").body, b"from the pool");
    assert_eq!(nginx.wait_access_entries(1, SECOND)[0].rcache, "HIT");
}

#[test]
fn values_over_rcache_max_size_are_misses() {
    let site = Site::start(
        "location / {
            rcache_pass 127.0.0.1:{mc};
            rcache_fallback @app;
            rcache_max_size 1k;
        }",
    );
    site.mc.set_raw(b"/small", &bytes(1024, 1), 0, 0);
    site.mc.set_raw(b"/large", &bytes(1025, 2), 0, 0);
    assert_eq!(http::get(site.port(), "/small").body, bytes(1024, 1));
    let r = http::get(site.port(), "/large");
    assert_eq!(r.header("x-rcache-status"), Some("MISS"));
    assert!(site.nginx.error_log().contains("more than rcache_max_size"));
    // The connection that carried the unread value was not reused: still right.
    assert_eq!(http::get(site.port(), "/small").body, bytes(1024, 1));
}

#[test]
fn upstream_status_records_what_memcached_answered() {
    let mc = Memcached::start();
    let nginx = Nginx::builder()
        .var("mc", mc.port())
        .http(
            "log_format ups '$rcache_status $upstream_status';
             server {
                 listen 127.0.0.1:{port};
                 access_log {prefix}/ups.log ups;
                 location / { rcache_pass 127.0.0.1:{mc}; }
             }",
        )
        .start();
    mc.set_raw(b"/found", b"x", 0, 0);
    assert_eq!(http::get(nginx.port(), "/found").status, 200);
    assert_eq!(http::get(nginx.port(), "/missing").status, 404);
    let path = nginx.prefix().join("ups.log");
    let read = || std::fs::read_to_string(&path).unwrap_or_default();
    wait_until(SECOND, || read().lines().count() == 2);
    assert_eq!(read(), "HIT 200\nMISS 404\n");
}
