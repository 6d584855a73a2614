//! A hostile or broken memcached: values that claim 4 GiB, values flagged as rcache's
//! stored form that hold garbage headers (a line break in a header value, `Status: 999`,
//! thousands of header lines, NUL bytes). Each is a MISS (or an ERROR) with a clear log
//! line, the app answers, nginx keeps running, and nothing from the value becomes a
//! response header.

mod common;

use common::*;

const STORED_FLAG: u32 = 1 << 24;

fn site(mc_port: u16, app: &App) -> Nginx {
    Nginx::builder()
        .var("mc", mc_port)
        .var("app", app.port())
        .http(
            "server {
                 listen 127.0.0.1:{port};
                 add_header X-Rcache-Status $rcache_status always;
                 location / { rcache_pass 127.0.0.1:{mc}; rcache_fallback @app; }
                 location @app { proxy_pass http://127.0.0.1:{app}; }
             }",
        )
        .start()
}

#[test]
fn garbage_in_the_stored_form_is_a_miss_and_never_a_header() {
    let mc = Memcached::start();
    let app = App::start();
    let nginx = site(mc.port(), &app);
    let many: String = (0..5000).map(|i| format!("Link: </{i}>\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "/lf-in-value",
            b"RCACHE/1\r\nContent-Type: text/html\nSet-Cookie: owned=1\r\n\r\nbody".to_vec(),
        ),
        (
            "/cr-in-value",
            b"RCACHE/1\r\nLocation: /x\rSet-Cookie: owned=1\r\n\r\nbody".to_vec(),
        ),
        (
            "/nul-in-value",
            b"RCACHE/1\r\nETag: \"a\0b\"\r\n\r\nbody".to_vec(),
        ),
        (
            "/status-999",
            b"RCACHE/1\r\nStatus: 999\r\n\r\nbody".to_vec(),
        ),
        (
            "/unknown-header",
            b"RCACHE/1\r\nSet-Cookie: owned=1\r\n\r\nbody".to_vec(),
        ),
        (
            "/no-end-of-headers",
            b"RCACHE/1\r\nContent-Type: x".to_vec(),
        ),
    ];
    for (key, value) in &cases {
        mc.set_raw(key.as_bytes(), value, STORED_FLAG, 0);
        let r = http::get(nginx.port(), key);
        assert_eq!(r.status, 200, "{key}");
        assert_eq!(r.header("X-Rcache-Status"), Some("MISS"), "{key}");
        assert_eq!(Echo::parse(&r.body).uri(), *key, "{key}: the app answered");
        assert!(
            r.headers_named("set-cookie").is_empty(),
            "{key}: {:?}",
            r.headers
        );
    }
    // Thousands of (kept) header lines: a page like any other, whole.
    let mut value = b"RCACHE/1\r\n".to_vec();
    value.extend_from_slice(many.as_bytes());
    value.extend_from_slice(b"\r\nthe body");
    mc.set_raw(b"/many-headers", &value, STORED_FLAG, 0);
    let r = http::get(nginx.port(), "/many-headers");
    assert_eq!(r.header("X-Rcache-Status"), Some("HIT"));
    assert_eq!(r.headers_named("link").len(), 5000);
    assert_eq!(r.text(), "the body");

    let log = nginx.error_log();
    assert_eq!(
        log.matches("is not in rcache's stored form: MISS").count(),
        cases.len(),
        "one line per such request:\n{log}"
    );
    assert!(nginx.alerts().is_empty(), "{:?}", nginx.alerts());
    assert_eq!(app.requests(), cases.len());
}

#[test]
fn a_value_that_claims_4_gib_is_a_miss_read_no_further() {
    let fake = FakeMemcached::start(|req| {
        let key = req.key().unwrap_or_default();
        match key.as_str() {
            "/4gib" => vec![Step::write(format!("VALUE {key} 0 4294967296\r\nabc"))],
            "/u64" => vec![Step::write(format!(
                "VALUE {key} 0 18446744073709551615\r\n"
            ))],
            _ => vec![Step::write("END\r\n")],
        }
    });
    let app = App::start();
    let nginx = site(fake.port(), &app);
    for key in ["/4gib", "/u64"] {
        let r = http::get(nginx.port(), key);
        assert_eq!(r.status, 200, "{key}");
        let status = r.header("X-Rcache-Status").unwrap_or("-").to_string();
        assert!(status == "MISS" || status == "ERROR", "{key}: {status}");
        assert_eq!(Echo::parse(&r.body).uri(), key);
    }
    assert!(nginx.alerts().is_empty(), "{:?}", nginx.alerts());
    // nginx is still serving.
    assert_eq!(http::get(nginx.port(), "/other").status, 200);
}
