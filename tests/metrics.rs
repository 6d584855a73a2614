//! `rcache_metrics_zone` and `rcache_metrics`: known numbers of every kind of request
//! across two workers, and every counter read back exactly; the page checked by Debian's
//! `promtool` and scraped by a real Prometheus server; counters across reload; config
//! errors.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::http;
use common::*;

const SECOND: Duration = Duration::from_secs(1);

/// The page, parsed: `name{labels}` → value.
fn scrape(port: u16) -> BTreeMap<String, f64> {
    let r = http::get(port, "/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse(&r.text())
}

/// Scrapes until `key` reaches `at_least` (counters that follow memcached's answers), or
/// 5 s have passed; the last page.
fn scrape_until(port: u16, key: &str, at_least: f64) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + SECOND * 5;
    loop {
        let m = scrape(port);
        if value(&m, key) >= at_least || Instant::now() > deadline {
            return m;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn parse(page: &str) -> BTreeMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (
                k.to_string(),
                v.parse().unwrap_or_else(|_| panic!("bad value {l:?}")),
            )
        })
        .collect()
}

fn value(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no {key} in:\n{}", dump(m)))
}

fn dump(m: &BTreeMap<String, f64>) -> String {
    m.iter().map(|(k, v)| format!("{k} {v}\n")).collect()
}

fn requests(m: &BTreeMap<String, f64>, status: &str) -> f64 {
    value(
        m,
        &format!("rcache_requests_total{{server=\"site.test\",status=\"{status}\"}}"),
    )
}

fn cacheable_app() -> App {
    App::start_with(|req| {
        if req.target.contains("/nc") {
            return AppResponse::new(200, format!("<p>private {}</p>", req.target))
                .header("Cache-Control", "no-store");
        }
        if req.target.contains("/slow") {
            thread::sleep(Duration::from_millis(600));
        }
        AppResponse::new(200, format!("<p>page {}</p>", req.target))
            .header("Cache-Control", "max-age=60")
    })
}

fn site_conf(extra_http: &str) -> String {
    format!(
        "rcache_metrics_zone metrics:1m;
         rcache_front_zone front:1m;
         rcache_front_zone small:32k;
         {extra_http}
         upstream mc {{ server 127.0.0.1:{{mc}}; }}
         server {{
            listen 127.0.0.1:{{port}} reuseport;
            server_name site.test;
            add_header X-Rcache-Status $rcache_status always;
            add_header X-Worker $pid always;
            location / {{
                rcache_pass mc;
                rcache_fallback @app;
                rcache_bypass $cookie_session;
                rcache_store on;
                rcache_purge;
            }}
            location /front/ {{
                rcache_pass mc;
                rcache_fallback @app;
                rcache_front front ttl=60s;
            }}
            location /meta/ {{
                rcache_pass mc;
                rcache_fallback @app;
                rcache_store on;
                rcache_stale 30s;
                rcache_lock on;
            }}
            location /tight/ {{
                rcache_pass mc;
                rcache_fallback @app;
                rcache_store on;
                rcache_stale 30s;
                rcache_lock on;
                rcache_lock_timeout 200ms;
            }}
            location /small/ {{
                rcache_pass mc;
                rcache_fallback @app;
                rcache_front small ttl=60s;
            }}
            location /down/ {{
                rcache_pass 127.0.0.1:{{dead}};
                rcache_fallback @app;
            }}
            location = /metrics {{
                rcache_metrics;
                allow 127.0.0.1;
                deny all;
            }}
            location @app {{ proxy_pass http://127.0.0.1:{{app}}; }}
         }}"
    )
}

struct Site {
    mc: Memcached,
    app: App,
    nginx: Nginx,
    dead: u16,
}

fn site() -> Site {
    let mc = Memcached::start();
    let app = cacheable_app();
    let dead = free_port();
    let nginx = Nginx::builder()
        .workers(2)
        .var("mc", mc.port())
        .var("app", app.port())
        .var("dead", dead)
        .http(&site_conf(""))
        .start();
    Site {
        mc,
        app,
        nginx,
        dead,
    }
}

/// `f` on new connections, so that both workers take some.
fn each(n: usize, f: impl Fn(usize) + Sync) {
    thread::scope(|s| {
        for i in 0..n {
            let f = &f;
            s.spawn(move || f(i));
        }
    });
}

#[test]
fn every_counter_after_known_numbers_of_each_kind_of_request_across_two_workers() {
    let s = site();
    let port = s.nginx.port();
    let pages: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                format!("/p{i}"),
                format!("<p>cached {i}</p>").repeat(i + 1).into_bytes(),
            )
        })
        .collect();
    for (k, v) in &pages {
        s.mc.set_raw(k.as_bytes(), v, 0, 0);
    }
    let front_page = b"<p>front page</p>".repeat(10);
    s.mc.set_raw(b"/front/p", &front_page, 0, 0);

    // 30 HITs from memcached, on new connections: both workers serve some.
    let workers = std::sync::Mutex::new(std::collections::BTreeSet::new());
    each(30, |i| {
        let (k, v) = &pages[i % 3];
        let r = http::get(port, k);
        assert_eq!(r.header("X-Rcache-Status"), Some("HIT"));
        assert_eq!(&r.body, v);
        let pid = r.header("X-Worker").unwrap_or_default().to_string();
        workers.lock().expect("lock").insert(pid);
    });
    assert_eq!(
        workers.lock().expect("lock").len(),
        2,
        "both workers counted"
    );
    let hit_bytes: usize = (0..30).map(|i| pages[i % 3].1.len()).sum();
    // 5 MISSes, each stored.
    each(5, |i| {
        let r = http::get(port, &format!("/m{i}"));
        assert_eq!(r.header("X-Rcache-Status"), Some("MISS"));
    });
    // 4 BYPASSes.
    each(4, |_| {
        let r = http::request(port, "GET", "/p0", &[("Cookie", "session=1")], None);
        assert_eq!(r.header("X-Rcache-Status"), Some("BYPASS"));
    });
    // 3 ERRORs: nothing listens on the dead port (marked down at the first).
    for _ in 0..3 {
        let r = http::get(port, "/down/x");
        assert_eq!(r.header("X-Rcache-Status"), Some("ERROR"));
    }
    // Purges: one found, one absent.
    assert_eq!(http::request(port, "PURGE", "/p2", &[], None).status, 200);
    assert_eq!(http::request(port, "PURGE", "/p2", &[], None).status, 404);
    // The front cache: one lookup in memcached, then 5 from the zone.
    for n in 0..6 {
        let r = http::get(port, "/front/p");
        assert_eq!(
            r.header("X-Rcache-Status"),
            Some("HIT"),
            "front request {n}"
        );
        assert_eq!(r.body, front_page);
    }
    assert!(
        wait_until(SECOND * 5, || s.mc.get_raw("/m4").is_some()
            && (0..5).all(|i| s.mc.get_raw(&format!("/m{i}")).is_some())),
        "the MISSes were stored"
    );

    // The store counter follows memcached's answer: wait for all five.
    let m = scrape_until(port, "rcache_stores_total{outcome=\"STORED\"}", 5.0);
    let expect = |key: &str, want: f64| assert_eq!(value(&m, key), want, "{key}\n{}", dump(&m));
    assert_eq!(requests(&m, "HIT"), 36.0, "{}", dump(&m));
    assert_eq!(requests(&m, "MISS"), 5.0);
    assert_eq!(requests(&m, "BYPASS"), 4.0);
    assert_eq!(requests(&m, "ERROR"), 3.0);
    assert_eq!(requests(&m, "PURGE"), 2.0);
    for st in ["UPDATING", "EXPIRED", "STALE", "PASS"] {
        assert_eq!(requests(&m, st), 0.0, "{st}");
    }
    expect(
        "rcache_served_bytes_total{source=\"memcached\"}",
        (hit_bytes + front_page.len()) as f64,
    );
    expect(
        "rcache_served_bytes_total{source=\"front\"}",
        (5 * front_page.len()) as f64,
    );
    expect("rcache_stores_total{outcome=\"STORED\"}", 5.0);
    expect("rcache_stores_total{outcome=\"NOT_CACHEABLE\"}", 0.0);
    expect("rcache_purges_total{kind=\"hard\",result=\"found\"}", 1.0);
    expect("rcache_purges_total{kind=\"hard\",result=\"absent\"}", 1.0);
    expect("rcache_purges_total{kind=\"soft\",result=\"found\"}", 0.0);
    expect("rcache_front_requests_total{result=\"hit\"}", 5.0);
    expect("rcache_front_requests_total{result=\"miss\"}", 1.0);
    expect("rcache_front_insertions_total{zone=\"front\"}", 1.0);
    expect("rcache_front_evictions_total{zone=\"front\"}", 0.0);
    expect(
        "rcache_front_capacity_bytes{zone=\"front\"}",
        (1 << 20) as f64,
    );
    assert!(value(&m, "rcache_front_used_bytes{zone=\"front\"}") >= front_page.len() as f64);

    let mc = format!("upstream=\"mc\",server=\"127.0.0.1:{}\"", s.mc.port());
    // 30 HITs + 5 MISSes + the front's one + 2 purges; BYPASS and front hits never ask.
    expect(&format!("rcache_server_lookups_total{{{mc}}}"), 38.0);
    expect(
        &format!("rcache_server_lookup_duration_seconds_count{{{mc}}}"),
        38.0,
    );
    expect(
        &format!("rcache_server_lookup_duration_seconds_bucket{{{mc},le=\"+Inf\"}}"),
        38.0,
    );
    expect(&format!("rcache_server_up{{{mc}}}"), 1.0);
    expect(&format!("rcache_server_down_episodes_total{{{mc}}}"), 0.0);
    for kind in ["refused", "timeout", "reset", "malformed"] {
        expect(
            &format!("rcache_server_failures_total{{{mc},kind=\"{kind}\"}}"),
            0.0,
        );
    }
    let opened = value(
        &m,
        &format!("rcache_server_connections_opened_total{{{mc}}}"),
    );
    let idle = value(&m, &format!("rcache_server_idle_connections{{{mc}}}"));
    assert!((1.0..=38.0).contains(&opened), "{opened}");
    assert!(
        idle >= 1.0 && idle <= opened,
        "idle {idle}, opened {opened}"
    );

    let dead = format!(
        "upstream=\"127.0.0.1:{0}\",server=\"127.0.0.1:{0}\"",
        s.dead
    );
    expect(&format!("rcache_server_lookups_total{{{dead}}}"), 1.0);
    expect(
        &format!("rcache_server_failures_total{{{dead},kind=\"refused\"}}"),
        1.0,
    );
    expect(&format!("rcache_server_down_episodes_total{{{dead}}}"), 1.0);
    expect(&format!("rcache_server_up{{{dead}}}"), 0.0);
    assert!(
        s.app.requests() >= 12,
        "5 MISS + 4 BYPASS + 3 ERROR reached the app"
    );
}

#[test]
fn the_lock_and_hit_for_pass_are_counted() {
    let s = site();
    let port = s.nginx.port();
    // Four at once on a cold page: one renders (600 ms), three wait and get it.
    each(4, |i| {
        thread::sleep(Duration::from_millis(40 * i as u64));
        let r = http::get(port, "/meta/slow");
        assert_eq!(r.status, 200);
    });
    // Not cacheable under the lock: a hit-for-pass marker; the next request is a PASS.
    assert_eq!(
        http::get(port, "/meta/nc").header("X-Rcache-Status"),
        Some("MISS")
    );
    let m = scrape_until(port, "rcache_hit_for_pass_total{event=\"written\"}", 1.0);
    assert_eq!(
        http::get(port, "/meta/nc").header("X-Rcache-Status"),
        Some("PASS")
    );
    let after = scrape(port);
    let expect = |m: &BTreeMap<String, f64>, key: &str, want: f64| {
        assert_eq!(value(m, key), want, "{key}\n{}", dump(m))
    };
    expect(&m, "rcache_lock_waiting_requests_total", 3.0);
    expect(&m, "rcache_lock_waits_total{result=\"page\"}", 3.0);
    expect(&m, "rcache_lock_waits_total{result=\"timeout\"}", 0.0);
    expect(&m, "rcache_hit_for_pass_total{event=\"written\"}", 1.0);
    expect(&m, "rcache_stores_total{outcome=\"NOT_CACHEABLE\"}", 1.0);
    expect(&after, "rcache_hit_for_pass_total{event=\"honoured\"}", 1.0);
    assert_eq!(requests(&after, "PASS"), 1.0);
    assert_eq!(requests(&after, "HIT"), 3.0, "the waiters");
    assert_eq!(
        requests(&after, "MISS"),
        2.0,
        "the render and the uncacheable page"
    );
}

#[test]
fn lock_timeouts_and_front_evictions_are_counted() {
    let s = site();
    let port = s.nginx.port();
    // The render takes 600 ms, the lock timeout is 200 ms: the waiter gives up.
    each(2, |i| {
        thread::sleep(Duration::from_millis(100 * i as u64));
        assert_eq!(http::get(port, "/tight/slow").status, 200);
    });
    // 10 pages of 10 KiB through a 32 KiB front zone: most are evicted to make room.
    for i in 0..10 {
        let page = vec![b'x'; 10 * 1024];
        s.mc.set_raw(format!("/small/{i}").as_bytes(), &page, 0, 0);
        assert_eq!(http::get(port, &format!("/small/{i}")).body, page);
    }
    let m = scrape(port);
    let expect = |key: &str, want: f64| assert_eq!(value(&m, key), want, "{key}\n{}", dump(&m));
    expect("rcache_lock_waiting_requests_total", 1.0);
    expect("rcache_lock_waits_total{result=\"timeout\"}", 1.0);
    expect("rcache_lock_waits_total{result=\"page\"}", 0.0);
    expect("rcache_front_insertions_total{zone=\"small\"}", 10.0);
    let evicted = value(&m, "rcache_front_evictions_total{zone=\"small\"}");
    assert!((7.0..10.0).contains(&evicted), "{evicted}");
    let used = value(&m, "rcache_front_used_bytes{zone=\"small\"}");
    assert!((10240.0..32768.0).contains(&used), "{used}");
    expect("rcache_front_capacity_bytes{zone=\"small\"}", 32768.0);
}

#[test]
fn concurrent_updates_from_both_workers_lose_no_increment() {
    const N: usize = 4000;
    let s = site();
    s.mc.set_raw(b"/hot", b"<p>hot</p>", 0, 0);
    let pids = s.nginx.worker_pids();
    assert_eq!(pids.len(), 2);
    let result = http::load(s.nginx.port(), "/hot", N, 16);
    assert!(result.all_ok(), "{result:?}");
    let m = scrape(s.nginx.port());
    assert_eq!(requests(&m, "HIT"), N as f64);
    let mc = format!("upstream=\"mc\",server=\"127.0.0.1:{}\"", s.mc.port());
    assert_eq!(
        value(&m, &format!("rcache_server_lookups_total{{{mc}}}")),
        N as f64
    );
    assert_eq!(
        value(&m, "rcache_served_bytes_total{source=\"memcached\"}"),
        (N * 10) as f64
    );
}

#[test]
fn counters_survive_a_reload() {
    let mut s = site();
    s.mc.set_raw(b"/p", b"page", 0, 0);
    for _ in 0..7 {
        http::get(s.nginx.port(), "/p");
    }
    assert_eq!(requests(&scrape(s.nginx.port()), "HIT"), 7.0);
    s.nginx.set_http(&site_conf("# reloaded"));
    s.nginx.reload();
    for _ in 0..3 {
        http::get(s.nginx.port(), "/p");
    }
    let m = scrape(s.nginx.port());
    assert_eq!(requests(&m, "HIT"), 10.0, "{}", dump(&m));
    let mc = format!("upstream=\"mc\",server=\"127.0.0.1:{}\"", s.mc.port());
    assert_eq!(
        value(&m, &format!("rcache_server_lookups_total{{{mc}}}")),
        10.0
    );
}

#[test]
fn the_endpoint_answers_get_and_head_only_and_obeys_deny() {
    let s = site();
    let port = s.nginx.port();
    assert_eq!(
        http::request(port, "POST", "/metrics", &[], Some(b"x")).status,
        405
    );
    let head = http::request(port, "HEAD", "/metrics", &[], None);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let nginx = Nginx::builder()
        .var("mc", s.mc.port())
        .http(
            "rcache_metrics_zone m:1m;
             server {
                listen 127.0.0.1:{port};
                location / { rcache_pass 127.0.0.1:{mc}; }
                location = /metrics { rcache_metrics; deny all; }
             }",
        )
        .start();
    assert_eq!(http::get(nginx.port(), "/metrics").status, 403);
}

#[test]
fn configuration_errors_name_the_directive() {
    let check = |http: &str| Nginx::builder().http(http).check_config();
    let c = check("server { listen 127.0.0.1:{port}; location = /m { rcache_metrics; } }");
    assert!(!c.ok);
    assert!(
        c.output
            .contains("\"rcache_metrics\" needs an \"rcache_metrics_zone\" in the http block"),
        "{}",
        c.output
    );
    let mut servers = String::new();
    for i in 0..400 {
        servers.push_str(&format!(
            "server {{ listen 127.0.0.1:{{port}}; server_name s{i}.test; }}\n"
        ));
    }
    let c = check(&format!("rcache_metrics_zone m:32k;\n{servers}"));
    assert!(!c.ok);
    assert!(
        c.output.contains(
            "\"rcache_metrics_zone\" is too small for 400 server blocks: it must be at least"
        ),
        "{}",
        c.output
    );
    let c = check("rcache_metrics_zone m;");
    assert!(!c.ok);
    assert!(
        c.output
            .contains("invalid zone \"m\" in the \"rcache_metrics_zone\" directive"),
        "{}",
        c.output
    );
    let c = check("rcache_metrics_zone m:1m; rcache_metrics_zone n:1m;");
    assert!(!c.ok);
    assert!(
        c.output
            .contains("\"rcache_metrics_zone\" directive is duplicate"),
        "{}",
        c.output
    );
}

#[test]
fn promtool_accepts_the_page() {
    let s = site();
    s.mc.set_raw(b"/p", b"page", 0, 0);
    http::get(s.nginx.port(), "/p");
    http::get(s.nginx.port(), "/down/x");
    let page = http::get(s.nginx.port(), "/metrics").body;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package: scripts/install-deps.sh)");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&page)
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&page)
    );
}

/// Debian's Prometheus server, on a free port, scraping the endpoint every second.
struct Prometheus {
    child: std::process::Child,
    port: u16,
    _dir: tempdir::Dir,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus(target_port: u16) -> Prometheus {
    let dir = std::env::temp_dir().join(format!(
        "rcache-prometheus-{}-{target_port}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: rcache\n    \
             metrics_path: /metrics\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        ),
    )
    .expect("write config");
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("prometheus (Debian's prometheus package: scripts/install-deps.sh)");
    Prometheus {
        child,
        port,
        _dir: tempdir::Dir(dir),
    }
}

#[test]
fn a_real_prometheus_scrapes_the_endpoint() {
    let s = site();
    s.mc.set_raw(b"/p", b"page", 0, 0);
    for _ in 0..9 {
        http::get(s.nginx.port(), "/p");
    }
    let p = prometheus(s.nginx.port());
    let query = "/api/v1/query?query=rcache_requests_total%7Bstatus%3D%22HIT%22%7D";
    let mut last = String::new();
    let got = wait_until(SECOND * 30, || {
        match http::try_request(p.port, "GET", query, &[], None) {
            Ok(r) if r.status == 200 => {
                last = r.text();
                last.contains("\"server\":\"site.test\"") && last.contains(",\"9\"]")
            }
            Ok(r) => {
                last = format!("{} {}", r.status, r.text());
                false
            }
            Err(e) => {
                last = e.to_string();
                false
            }
        }
    });
    let log = std::fs::read_to_string(p._dir.0.join("prometheus.log")).unwrap_or_default();
    assert!(
        got,
        "Prometheus did not report 9 HITs: {last}\n{}",
        tail(&log)
    );
    assert!(Path::new(&p._dir.0).exists());
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[test]
fn rcache_lookup_time_is_seconds_with_milliseconds_where_memcached_was_asked() {
    let mc = Memcached::start();
    let app = cacheable_app();
    let nginx = Nginx::builder()
        .var("mc", mc.port())
        .var("app", app.port())
        .http(
            "server {
                listen 127.0.0.1:{port};
                add_header X-Lookup-Time $rcache_lookup_time always;
                location / {
                    rcache_pass 127.0.0.1:{mc};
                    rcache_fallback @app;
                    rcache_bypass $cookie_session;
                }
                location @app { proxy_pass http://127.0.0.1:{app}; }
             }",
        )
        .start();
    mc.set_raw(b"/p", b"page", 0, 0);
    let seconds = |r: &http::Response| -> Option<f64> {
        let v = r.header("X-Lookup-Time")?;
        let (s, ms) = v.split_once('.')?;
        (ms.len() == 3 && s.chars().all(|c| c.is_ascii_digit()))
            .then(|| v.parse().ok())
            .flatten()
    };
    let hit = http::get(nginx.port(), "/p");
    let t = seconds(&hit).unwrap_or_else(|| panic!("HIT: {:?}", hit.header("X-Lookup-Time")));
    assert!(t < 1.0, "{t}");
    let miss = http::get(nginx.port(), "/absent");
    assert!(
        seconds(&miss).is_some(),
        "MISS (through the fallback): {:?}",
        miss.header("X-Lookup-Time")
    );
    let bypass = http::request(nginx.port(), "GET", "/p", &[("Cookie", "session=1")], None);
    assert_eq!(
        bypass.header("X-Lookup-Time"),
        None,
        "memcached was not asked"
    );
}
