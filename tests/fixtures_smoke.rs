//! Proves the fixtures in `tests/common` work, with stock nginx directives only (no rcache
//! module), so it passes with the vendored nginx and with `RCACHE_NGINX=/usr/sbin/nginx`.

mod common;

use std::time::{Duration, Instant};

use common::http::{self, KeepAliveClient};
use common::*;

fn server(body: &str) -> String {
    format!("server {{ listen 127.0.0.1:{{port}}; {body} }}")
}

/// Stock `memcached_pass` to `addr_var` with `$memcached_key = $uri`.
fn memcached_pass(extra: &str) -> String {
    server(&format!(
        "location / {{ set $memcached_key $uri; memcached_pass 127.0.0.1:{{mc}}; {extra} }}"
    ))
}

#[test]
fn sha256_known_vectors() {
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        sha256_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
}

#[test]
fn nginx_returns_200() {
    let nginx = Nginx::builder()
        .with_module(false)
        .http(&server(r#"location / { return 200 "ok"; }"#))
        .start();
    let r = http::get(nginx.port(), "/x?y=1");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ok");
    assert_eq!(r.header("content-length"), Some("2"));
    assert!(nginx.url("/a").ends_with(&format!(":{}/a", nginx.port())));
    let entries = nginx.wait_access_entries(1, SECOND);
    assert_eq!(
        entries[0],
        AccessEntry {
            method: "GET".into(),
            uri: "/x?y=1".into(),
            status: 200,
            bytes: 2,
            rcache: "-".into()
        }
    );
    // HEAD: headers only.
    let head = http::request(nginx.port(), "HEAD", "/", &[], None);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}

#[test]
fn several_nginx_instances_in_parallel() {
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let nginx = Nginx::builder()
                    .with_module(false)
                    .workers(2)
                    .var("n", i)
                    .http(&server(r#"location / { return 200 "n={n}"; }"#))
                    .start();
                assert_eq!(nginx.worker_pids().len(), 2);
                let r = http::get(nginx.port(), "/");
                assert_eq!(r.text(), format!("n={i}"));
                nginx.port()
            })
        })
        .collect();
    let mut ports: Vec<u16> = handles
        .into_iter()
        .map(|h| h.join().expect("nginx thread"))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 4);
}

#[test]
fn stock_memcached_pass_serves_value_byte_exact() {
    let mc = Memcached::start();
    let value = bytes(10 * 1024, 7);
    assert!(value.contains(&b'\n') && value.contains(&b'\r'));
    mc.client()
        .set("/page", value.as_slice(), 0)
        .expect("memcache set /page");
    let nginx = Nginx::builder()
        .with_module(false)
        .var("mc", mc.port())
        .http(&memcached_pass(""))
        .start();

    let r = http::get(nginx.port(), "/page");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), value.len());
    assert!(r.body == value, "body differs from the stored value");
    assert_eq!(r.header("content-length"), Some("10240"));

    let miss = http::get(nginx.port(), "/nope");
    assert_eq!(miss.status, 404);
    assert!(mc.cmd_get() >= 2);
}

#[test]
fn set_raw_keeps_flags_and_odd_keys() {
    let mc = Memcached::start();
    mc.set_raw(b"/text", "héllo".as_bytes(), 16, 0);
    assert_eq!(mc.get_raw("/text"), Some(("héllo".as_bytes().to_vec(), 16)));
    mc.set_raw(b"/gz", b"\x1f\x8b\x08", 0x2 | 0x4000, 0);
    assert_eq!(mc.get_raw("/gz"), Some((b"\x1f\x8b\x08".to_vec(), 0x4002)));

    // A key that is not UTF-8 (nginx's decoded $uri can be any byte): raw-protocol path.
    let nginx = Nginx::builder()
        .with_module(false)
        .var("mc", mc.port())
        .http(&memcached_pass(""))
        .start();
    mc.set_raw(b"/caf\xe9", b"latin1 key", 1, 0);
    let r = http::get(nginx.port(), "/caf%E9");
    assert_eq!((r.status, r.text().as_str()), (200, "latin1 key"));

    // Flags show through stock memcached_gzip_flag.
    let nginx = Nginx::builder()
        .with_module(false)
        .var("mc", mc.port())
        .http(&memcached_pass("memcached_gzip_flag 16384;"))
        .start();
    let r = http::get(nginx.port(), "/gz");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
}

#[test]
fn proxy_pass_reaches_app_with_body_intact() {
    let app = App::start();
    let nginx = Nginx::builder()
        .with_module(false)
        .var("app", app.port())
        .http(&server(
            "client_max_body_size 10m; location / { proxy_pass http://127.0.0.1:{app}; }",
        ))
        .start();

    // Larger than client_body_buffer_size: nginx spools it to client_body_temp_path.
    let body = bytes(200 * 1024, 3);
    let r = http::request(
        nginx.port(),
        "POST",
        "/dynamic/form?a=1&b=%20x",
        &[
            ("X-Test", "yes"),
            ("Content-Type", "application/octet-stream"),
        ],
        Some(&body),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = Echo::parse(&r.body);
    assert_eq!(echo.method(), "POST");
    assert_eq!(echo.uri(), "/dynamic/form?a=1&b=%20x");
    assert_eq!(echo.body_len(), body.len());
    assert_eq!(echo.body_sha(), sha256_hex(&body));
    assert_eq!(echo.header("x-test"), Some("yes"));
    assert_eq!(app.requests(), 1);
    assert_eq!(app.last().expect("app saw a request").body, body);

    // Chunked request body from the client.
    let small = b"hello chunked world".to_vec();
    let r = http::request(
        nginx.port(),
        "PUT",
        "/c",
        &[("Transfer-Encoding", "chunked")],
        Some(&http::chunked(&small, 5)),
    );
    let echo = Echo::parse(&r.body);
    assert_eq!((echo.method(), echo.body_len()), ("PUT", small.len()));
    assert_eq!(echo.body_sha(), sha256_hex(&small));
}

#[test]
fn app_directly_keepalive_and_chunked() {
    let app = App::start();
    let mut c = KeepAliveClient::connect(app.port()).expect("connect to app");
    for i in 0..3 {
        let r = c.get(&format!("/k{i}")).expect("keep-alive GET");
        assert_eq!(Echo::parse(&r.body).uri(), format!("/k{i}"));
        assert!(!c.is_closed());
    }
    let r = c
        .request(
            "POST",
            "/p",
            &[("Transfer-Encoding", "chunked")],
            Some(&http::chunked(b"abcdefghij", 3)),
        )
        .expect("chunked POST");
    assert_eq!(Echo::parse(&r.body).body_len(), 10);
    assert_eq!(app.connections(), 1, "all requests on one connection");
    assert_eq!(app.requests(), 4);
    assert!(app.seen().iter().all(|r| r.conn == 0));

    let custom = App::start_with(|req| {
        AppResponse::new(201, format!("custom {}", req.target)).header("X-App", "2")
    });
    let r = http::get(custom.port(), "/z");
    assert_eq!((r.status, r.text().as_str()), (201, "custom /z"));
    assert_eq!(r.header("x-app"), Some("2"));
}

#[test]
fn fake_memcached_split_reply_through_memcached_pass() {
    let value = bytes(3000, 11);
    let v = value.clone();
    let fake = FakeMemcached::start(move |req| {
        let reply = value_reply(&req.key().expect("get has a key"), 0, &v);
        // Cut inside the VALUE line, inside the data, and inside the trailing END.
        split(
            &reply,
            &[5, 20, 1500, reply.len() - 3],
            Duration::from_millis(30),
        )
    });
    let nginx = Nginx::builder()
        .with_module(false)
        .var("mc", fake.port())
        .http(&memcached_pass(""))
        .start();
    let r = http::get(nginx.port(), "/split");
    assert_eq!(r.status, 200);
    assert!(r.body == value, "split reply reassembled wrongly");
    assert_eq!(fake.requests(), vec!["get /split".to_string()]);
    assert_eq!(fake.connections(), 1);
}

#[test]
fn fake_memcached_faults_map_to_stock_errors() {
    let fake = FakeMemcached::start(|req| match req.key().as_deref() {
        Some("/reset") => vec![Step::Reset],
        Some("/stall") => vec![Step::Stall],
        Some("/short") => truncated(&value_reply("/short", 0, b"0123456789"), 25),
        Some("/garbage") => vec![Step::write("NOT A REPLY\r\n")],
        _ => vec![Step::write(MISS)],
    });
    let nginx = Nginx::builder()
        .with_module(false)
        .var("mc", fake.port())
        .http(&memcached_pass("memcached_read_timeout 300ms;"))
        .start();
    let port = nginx.port();
    assert_eq!(http::get(port, "/reset").status, 502);
    assert_eq!(http::get(port, "/garbage").status, 502);
    assert_eq!(http::get(port, "/miss").status, 404);
    let started = Instant::now();
    assert_eq!(http::get(port, "/stall").status, 504);
    assert!(started.elapsed() < Duration::from_secs(3));
    // Stock nginx sends the headers before the whole value arrived: the client sees a
    // truncated body. (rcache must not: the fixtures can tell.)
    let short = http::try_request(port, "GET", "/short", &[], None);
    assert!(
        short
            .as_ref()
            .map_or(true, |r| r.status != 200 || r.body.len() < 10),
        "{short:?}"
    );
    assert_eq!(fake.wait_requests(5, SECOND).len(), 5);
    assert!(nginx
        .error_log()
        .contains("memcached sent invalid response"));
}

#[test]
fn blackhole_makes_connects_time_out() {
    let hole = Blackhole::start();
    let nginx = Nginx::builder()
        .with_module(false)
        .var("mc", hole.port())
        .http(&memcached_pass("memcached_connect_timeout 200ms;"))
        .start();
    let started = Instant::now();
    let r = http::get(nginx.port(), "/x");
    assert_eq!(r.status, 504);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(nginx.error_log().contains("timed out"));
}

#[test]
fn check_config_reports_bad_directive() {
    let bad = Nginx::builder()
        .with_module(false)
        .http(&server("location / { memcached_bogus on; }"))
        .check_config();
    assert!(!bad.ok);
    assert!(bad.output.contains("memcached_bogus"), "{}", bad.output);

    let missing_arg = Nginx::builder()
        .with_module(false)
        .http(&server("location / { memcached_pass; }"))
        .check_config();
    assert!(!missing_arg.ok);
    assert!(
        missing_arg.output.contains("memcached_pass"),
        "{}",
        missing_arg.output
    );

    let good = Nginx::builder()
        .with_module(false)
        .http(&server("location / { return 204; }"))
        .check_config();
    assert!(good.ok, "{}", good.output);
    assert!(
        good.output.contains("test is successful"),
        "{}",
        good.output
    );
}

#[test]
#[should_panic(expected = "undefined placeholders")]
fn undefined_placeholder_is_reported() {
    Nginx::builder()
        .with_module(false)
        .http(&server(
            "location / { proxy_pass http://127.0.0.1:{nope}; }",
        ))
        .check_config();
}

#[test]
fn memcached_counts_stock_per_request_connections() {
    let mc = Memcached::start();
    mc.set_raw(b"/c", b"counted", 0, 0);
    let nginx = Nginx::builder()
        .with_module(false)
        .var("mc", mc.port())
        .http(&memcached_pass(""))
        .start();
    let before = mc.total_connections();
    let again = mc.total_connections();
    assert_eq!(before, again, "reading stats must not open connections");
    for _ in 0..5 {
        assert_eq!(http::get(nginx.port(), "/c").text(), "counted");
    }
    // Stock memcached_pass without an upstream keepalive: one connection per request.
    assert_eq!(mc.total_connections() - before, 5);
    assert!(wait_until(SECOND, || mc.client_connections() == 0));
}

#[test]
fn memcached_pause_resume_restart() {
    let mut mc = Memcached::start();
    mc.set_raw(b"/p", b"before", 0, 0);
    let port = mc.port();
    let pid = mc.pid();
    let nginx = Nginx::builder()
        .with_module(false)
        .var("mc", mc.port())
        .http(&memcached_pass("memcached_read_timeout 300ms;"))
        .start();

    mc.pause();
    assert_eq!(http::get(nginx.port(), "/p").status, 504);
    mc.resume();
    assert_eq!(http::get(nginx.port(), "/p").text(), "before");

    mc.restart();
    assert_eq!(mc.port(), port);
    assert_ne!(mc.pid(), pid);
    assert_eq!(
        http::get(nginx.port(), "/p").status,
        404,
        "data gone after restart"
    );

    mc.stop();
    assert!(!mc.is_running());
    assert_eq!(http::get(nginx.port(), "/p").status, 502, "refused");
}

#[test]
fn reload_and_quit_without_alerts() {
    let mut nginx = Nginx::builder()
        .with_module(false)
        .workers(2)
        .http(&server(r#"location / { return 200 "one"; }"#))
        .start();
    let before = nginx.worker_pids();
    assert_eq!(before.len(), 2);
    assert_eq!(http::get(nginx.port(), "/").text(), "one");

    nginx.set_http(&server(r#"location / { return 200 "two"; }"#));
    let after = nginx.reload();
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|p| !before.contains(p)));
    assert_eq!(http::get(nginx.port(), "/").text(), "two");

    nginx.set_http(&server("location / { no_such_directive; }"));
    let rejected = nginx.try_reload().expect_err("bad config must be rejected");
    assert!(rejected.contains("no_such_directive"), "{rejected}");
    assert_eq!(
        http::get(nginx.port(), "/").text(),
        "two",
        "old config still serves"
    );

    let shutdown = nginx.quit();
    assert!(shutdown.status.success(), "{shutdown:?}");
    assert!(!shutdown.timed_out);
    // The rejected reload logged an [emerg]; nothing else may be alert/emerg.
    assert!(
        shutdown
            .alerts
            .iter()
            .all(|l| l.contains("no_such_directive")),
        "{:?}",
        shutdown.alerts
    );
    assert!(after.iter().all(|&p| !common::process::is_alive(p)));
}

#[test]
fn clean_quit_after_traffic() {
    let mut nginx = Nginx::builder()
        .with_module(false)
        .http(&server(r#"location / { return 200 "fine"; }"#))
        .start();
    let result = http::load(nginx.port(), "/", 2000, 8);
    assert!(result.all_ok(), "{result:?}");
    assert_eq!(result.count(200), 2000);
    assert!(result.connections <= 8 + result.errors);
    let shutdown = nginx.quit();
    assert!(shutdown.is_clean(), "{shutdown:?}\n{}", nginx.error_log());
}

#[test]
fn load_with_checks_bodies() {
    let mc = Memcached::start();
    let value = bytes(4096, 5);
    mc.set_raw(b"/l", &value, 0, 0);
    let nginx = Nginx::builder()
        .with_module(false)
        .var("mc", mc.port())
        .main("worker_rlimit_nofile 4096;")
        .http(&memcached_pass(""))
        .start();
    let result = http::load_with(nginx.port(), "GET", "/l", &[], 300, 4, |r| r.body == value);
    assert!(result.all_ok(), "{result:?}");
}

#[test]
fn send_raw_sees_exact_bytes() {
    let mc = Memcached::start();
    mc.set_raw(b"/raw", b"raw", 0, 0);
    let nginx = Nginx::builder()
        .with_module(false)
        .var("mc", mc.port())
        .http(&memcached_pass(""))
        .start();
    let out = http::send_raw(
        nginx.port(),
        b"GET /raw HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    )
    .expect("raw request");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nraw"), "{text}");
}

#[test]
fn reload_closes_idle_keepalive_and_pooled_upstream() {
    let mc = Memcached::start();
    mc.set_raw(b"/k", b"v", 0, 0);
    let mut nginx = Nginx::builder()
        .with_module(false)
        .var("mc", mc.port())
        .http(
            "upstream mc { server 127.0.0.1:{mc}; keepalive 8; }
             server { listen 127.0.0.1:{port};
                      location / { set $memcached_key $uri; memcached_pass mc; } }",
        )
        .start();
    let mut client = KeepAliveClient::connect(nginx.port()).expect("connect");
    for _ in 0..3 {
        assert_eq!(client.get("/k").expect("GET /k").text(), "v");
    }
    assert_eq!(mc.client_connections(), 1, "one pooled upstream connection");
    let before = mc.total_connections();

    nginx.reload();
    assert!(
        client.get("/k").is_err(),
        "old worker closed the idle client connection"
    );
    assert!(wait_until(SECOND, || mc.client_connections() == 0));

    let mut client = KeepAliveClient::connect(nginx.port()).expect("reconnect");
    assert_eq!(client.get("/k").expect("GET /k").text(), "v");
    assert_eq!(
        mc.total_connections() - before,
        1,
        "new worker opened one connection"
    );
    assert!(nginx.quit().is_clean(), "{}", nginx.error_log());
}

#[test]
fn fake_on_accept_and_hit_helpers() {
    let resetting = FakeMemcached::builder()
        .on_accept(|conn| if conn == 0 { vec![Step::Reset] } else { vec![] })
        .start(|req| {
            vec![Step::Write(value_reply(
                &req.key().unwrap_or_default(),
                0,
                b"second",
            ))]
        });
    let hit = FakeMemcached::hit(0, b"always");
    let nginx = Nginx::builder()
        .with_module(false)
        .var("reset", resetting.port())
        .var("hit", hit.port())
        .http(&server(
            "location /r/ { set $memcached_key $uri; memcached_pass 127.0.0.1:{reset}; }
             location /h/ { set $memcached_key $uri; memcached_pass 127.0.0.1:{hit}; }",
        ))
        .start();
    assert_eq!(
        http::get(nginx.port(), "/r/1").status,
        502,
        "first connection reset"
    );
    assert_eq!(http::get(nginx.port(), "/r/2").text(), "second");
    assert_eq!(resetting.connections(), 2);
    assert_eq!(resetting.requests(), vec!["get /r/2".to_string()]);
    assert_eq!(http::get(nginx.port(), "/h/x").text(), "always");
}

#[test]
fn memcached_extra_args_allow_big_items() {
    let mc = Memcached::start_with_args(&["-I", "4m", "-m", "64"]);
    let big = bytes(1536 * 1024, 9);
    mc.set_raw(b"/big", &big, 0, 0);
    let nginx = Nginx::builder()
        .with_module(false)
        .var("mc", mc.port())
        .http(&memcached_pass(""))
        .start();
    let r = http::get(nginx.port(), "/big");
    assert_eq!(r.status, 200);
    assert!(r.body == big, "1.5 MiB value differs");
}
