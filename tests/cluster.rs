//! `rcache_hash`: several memcached servers, each key looked up on the server the
//! application's client put it on — proven against the real clients — and failures
//! (killed, stalled, restarted, `down`) that users never see as anything but the app.
//!
//! Every test runs real memcached instances (3 per cluster). Keys are written by the real
//! clients (pymemcache as Django builds it, pylibmc/libmemcached) through
//! `tests/scripts/write_keys.py` ([`common::python`]); where each key landed is then read
//! back from the servers ([`Cluster::placement`]), so a key's "home" is always the
//! writer's choice, never a reimplementation of its hashing.
//!
//! * proofs (10 002 keys per algorithm: plain, `%20`/`%25`-escaped, UTF-8, punctuation;
//!   str and bytes values): 100% byte-exact HIT, each server asked for exactly its own
//!   keys, over pooled connections; other weights, port 11211 with port-less client
//!   lists, IPv6, unix sockets, host names, a Django key prefix;
//! * wrong setups miss (another algorithm, another server order, pylibmc ketama without
//!   md5), so the proofs can fail;
//! * a killed server: its keys go to the fallback without connects after the first
//!   failure (nginx's `connect() failed` and rcache's "go to the fallback" line once per
//!   worker, once in all with `zone`); probes once per `fail_timeout`; recovery with
//!   "answers again" once; `max_fails` 3 and 0, a single server, `down`, `max_conns`;
//! * connects that hang and a stalled server (SIGSTOP): one timeout, then instant
//!   fallback; other servers unaffected; concurrent lookups time out in parallel;
//! * a restart with pooled connections is a MISS, never an ERROR, never "down";
//! * reload (also to another algorithm) and graceful quit under load;
//! * `nginx -t`: `rcache_hash` outside `upstream`, bad arguments, duplicates, server
//!   lines without port, `backup`, a duplicate server; valid forms;
//! * `memcached_pass` to the same upstream is round robin.
//!
//! Needs `scripts/python-env.sh` (target/pyenv) or `RCACHE_PYTHON`.

mod common;

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::http::{self, KeepAliveClient, Response};
use common::python::{value_of, write_keys, WriteReport, Writer};
use common::*;

/// Weights of the three servers for `ketama weighted` (pylibmc `host:port:weight`).
const WEIGHTS: [u32; 3] = [1, 2, 5];

/// rcache's default `rcache_keepalive`.
const DEFAULT_KEEPALIVE: u64 = 64;

// ---------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------

/// A key as the application writes it (a `str`; it is also the memcached key rcache
/// sends) and the request-target that makes rcache look it up.
#[derive(Clone, Debug)]
struct Key {
    key: String,
    url: String,
}

/// `n` distinct keys under `/<tag>/`: plain ones, ones with `%20` and `%25` escapes (the
/// app writes the escaped form, as nginx escapes `$uri`), non-ASCII ones (UTF-8; 2-byte,
/// 3-byte and 4-byte characters) and URL punctuation.
fn keys(tag: &str, n: usize) -> Vec<Key> {
    (0..n)
        .map(|i| {
            let key = match i % 6 {
                0 => format!("/{tag}/p/{i}"),
                1 => format!("/{tag}/a%20b/{i}"),
                2 => format!("/{tag}/café/{i}"),
                3 => format!("/{tag}/100%25/{i}"),
                4 => format!("/{tag}/日本/😀{i}"),
                _ => format!("/{tag}/x-y_z.~!$&'()*+,;=:@/{i}"),
            };
            Key {
                url: url_of(&key),
                key,
            }
        })
        .collect()
}

/// The request-target for `key`: its non-ASCII bytes percent-encoded. nginx decodes them
/// into `$uri`, and rcache's escaping (space, controls and `%` only) restores the key.
fn url_of(key: &str) -> String {
    key.bytes()
        .map(|b| {
            if b >= 0x80 {
                format!("%{b:02X}")
            } else {
                (b as char).to_string()
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------

/// Three memcached instances and the fallback app.
struct Cluster {
    mcs: Vec<Memcached>,
    app: App,
    /// Server weights for `ketama weighted`.
    weights: [u32; 3],
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::of((0..3).map(|_| Memcached::start()).collect())
    }

    fn of(mcs: Vec<Memcached>) -> Cluster {
        assert_eq!(mcs.len(), 3);
        Cluster {
            mcs,
            app: App::start(),
            weights: WEIGHTS,
        }
    }

    /// `127.0.0.1:<port>` of server `i`: in the client's list and the `server` line alike.
    fn addr(&self, i: usize) -> String {
        self.mcs[i].addr()
    }

    /// The server list the application's client gets.
    fn client_servers(&self, writer: Writer) -> Vec<String> {
        (0..self.mcs.len())
            .map(|i| {
                if writer.weighted() {
                    format!("{}:{}", self.addr(i), self.weights[i])
                } else {
                    self.addr(i)
                }
            })
            .collect()
    }

    /// `weight=N` for the weighted algorithm, nothing otherwise.
    fn weight_param(&self, writer: Writer, i: usize) -> String {
        if writer.weighted() {
            format!("weight={}", self.weights[i])
        } else {
            String::new()
        }
    }

    /// Writes `keys` through `writer`'s real client.
    fn write(&self, writer: Writer, keys: &[Key]) -> WriteReport {
        self.write_with(writer, &self.client_servers(writer), keys)
    }

    /// Writes `keys` through `writer`'s real client configured with `servers`.
    fn write_with(&self, writer: Writer, servers: &[String], keys: &[Key]) -> WriteReport {
        let names: Vec<String> = keys.iter().map(|k| k.key.clone()).collect();
        write_keys(writer, servers, &names)
    }

    /// Where the client put each key: the index of the one server that holds it. Panics
    /// unless exactly one server holds each key, with the value [`value_of`] and the
    /// flags of its Python type (str: 16 for even positions, bytes: 0 for odd ones).
    fn placement(&self, keys: &[Key]) -> Vec<usize> {
        let raw: Vec<&[u8]> = keys.iter().map(|k| k.key.as_bytes()).collect();
        let found: Vec<_> = self.mcs.iter().map(|mc| mc.get_multi(&raw)).collect();
        keys.iter()
            .enumerate()
            .map(|(j, k)| {
                let holders: Vec<usize> = (0..self.mcs.len())
                    .filter(|&i| found[i][j].is_some())
                    .collect();
                assert_eq!(
                    holders.len(),
                    1,
                    "key {:?} is on servers {holders:?}, expected exactly one",
                    k.key
                );
                let (value, flags) = found[holders[0]][j].as_ref().expect("holder has it");
                assert_eq!(value, &value_of(&k.key), "value of {:?}", k.key);
                let want = if j % 2 == 0 { 16 } else { 0 };
                assert_eq!(*flags, want, "flags of {:?} (position {j})", k.key);
                holders[0]
            })
            .collect()
    }

    /// `keys` split by [`placement`](Self::placement): those on `server`, and the rest.
    fn split_by_home(&self, keys: &[Key], server: usize) -> (Vec<Key>, Vec<Key>) {
        split_by_home(keys, &self.placement(keys), server)
    }

    /// `upstream mc { ... }` with `hash_line` first (e.g. `rcache_hash ketama;`) and one
    /// `server <addr> <params(i)>;` per memcached, in the client's order.
    fn upstream(&self, hash_line: &str, params: impl Fn(usize) -> String) -> String {
        let mut s = format!("upstream mc {{\n    {hash_line}\n");
        for i in 0..self.mcs.len() {
            s.push_str(&format!("    server {} {};\n", self.addr(i), params(i)));
        }
        s.push_str("}\n");
        s
    }

    /// nginx with `upstream` and a server whose `/` is rcache (plus `location_extra`)
    /// falling back to the app; `$rcache_status` in `X-Rcache-Status`.
    fn nginx(
        &self,
        upstream: &str,
        workers: usize,
        location_extra: &str,
    ) -> common::nginx::NginxBuilder {
        Nginx::builder()
            .workers(workers)
            .var("app", self.app.port())
            .http(upstream)
            .http(&server_block(location_extra))
    }

    fn cmd_gets(&self) -> Vec<u64> {
        self.mcs.iter().map(Memcached::cmd_get).collect()
    }

    fn total_connections(&self) -> Vec<u64> {
        self.mcs.iter().map(Memcached::total_connections).collect()
    }

    fn curr_items(&self) -> Vec<u64> {
        self.mcs
            .iter()
            .map(|mc| mc.stats()["curr_items"].parse().expect("curr_items"))
            .collect()
    }
}

/// `after - before`, element by element.
fn deltas(after: &[u64], before: &[u64]) -> Vec<u64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

fn server_block(location_extra: &str) -> String {
    format!(
        "server {{
            listen 127.0.0.1:{{port}};
            add_header X-Rcache-Status $rcache_status always;
            location / {{ rcache_pass mc; rcache_fallback @app; {location_extra} }}
            location @app {{ proxy_pass http://127.0.0.1:{{app}}; }}
        }}"
    )
}

/// The keys whose home is (or is not) `server`.
fn split_by_home(keys: &[Key], home: &[usize], server: usize) -> (Vec<Key>, Vec<Key>) {
    let mut on = Vec::new();
    let mut off = Vec::new();
    for (k, &h) in keys.iter().zip(home) {
        if h == server {
            on.push(k.clone());
        } else {
            off.push(k.clone());
        }
    }
    (on, off)
}

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

/// What a request for a key got.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Got {
    /// 200, `X-Rcache-Status: HIT`, body = the key's value exactly.
    Hit,
    /// 200 from the app with `X-Rcache-Status: MISS`.
    Miss,
    /// 200 from the app with `X-Rcache-Status: ERROR`.
    Error,
    /// Anything else (described).
    Other(String),
}

fn classify(r: &Response, key: &Key) -> Got {
    let status = r.header("x-rcache-status");
    let from_app = r.status == 200 && r.body.starts_with(b"app=1\n");
    match status {
        Some("HIT") if r.status == 200 && r.body == value_of(&key.key) => Got::Hit,
        Some("MISS") if from_app => Got::Miss,
        Some("ERROR") if from_app => Got::Error,
        _ => Got::Other(format!(
            "{}: {} X-Rcache-Status {status:?} body {:?}",
            key.url,
            r.status,
            String::from_utf8_lossy(&r.body[..r.body.len().min(80)])
        )),
    }
}

/// One request on a new connection, timed.
fn get_timed(port: u16, key: &Key) -> (Got, Duration) {
    let started = Instant::now();
    let got = match http::try_request(port, "GET", &key.url, &[], None) {
        Ok(r) => classify(&r, key),
        Err(e) => Got::Other(format!("{}: I/O error {e}", key.url)),
    };
    (got, started.elapsed())
}

fn get(port: u16, key: &Key) -> Got {
    get_timed(port, key).0
}

/// Results of [`fetch_all`], in key order.
struct Fetched {
    got: Vec<Got>,
    took: Vec<Duration>,
    elapsed: Duration,
}

impl Fetched {
    fn count(&self, want: &Got) -> usize {
        self.got.iter().filter(|g| *g == want).count()
    }

    fn summary(&self) -> String {
        let others: Vec<&String> = self
            .got
            .iter()
            .filter_map(|g| match g {
                Got::Other(s) => Some(s),
                _ => None,
            })
            .collect();
        format!(
            "{} requests in {:?}: HIT {}, MISS {}, ERROR {}, other {} {:?}",
            self.got.len(),
            self.elapsed,
            self.count(&Got::Hit),
            self.count(&Got::Miss),
            self.count(&Got::Error),
            others.len(),
            &others[..others.len().min(5)]
        )
    }

    fn max_took(&self) -> Duration {
        self.took.iter().copied().max().unwrap_or_default()
    }
}

/// Requests every key once over `clients` keep-alive connections (reconnecting after
/// nginx closes one).
fn fetch_all(port: u16, keys: &[Key], clients: usize) -> Fetched {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(vec![
        (Got::Other("not requested".into()), Duration::ZERO);
        keys.len()
    ]);
    let started = Instant::now();
    thread::scope(|scope| {
        for _ in 0..clients.max(1) {
            scope.spawn(|| {
                let mut client: Option<KeepAliveClient> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(key) = keys.get(i) else { break };
                    let t = Instant::now();
                    if client.as_ref().is_none_or(KeepAliveClient::is_closed) {
                        client = KeepAliveClient::connect(port).ok();
                    }
                    let got = match client.as_mut().map(|c| c.get(&key.url)) {
                        Some(Ok(r)) => classify(&r, key),
                        Some(Err(e)) => Got::Other(format!("{}: I/O error {e}", key.url)),
                        None => Got::Other(format!("{}: cannot connect", key.url)),
                    };
                    results.lock().expect("results lock")[i] = (got, t.elapsed());
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let (got, took) = results
        .into_inner()
        .expect("results lock")
        .into_iter()
        .unzip();
    Fetched { got, took, elapsed }
}

/// Asserts every key of `keys` was a HIT.
fn assert_all_hit(what: &str, fetched: &Fetched) {
    assert_eq!(
        fetched.count(&Got::Hit),
        fetched.got.len(),
        "{what}: {}",
        fetched.summary()
    );
}

// ---------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------

/// Lines of `log` containing every one of `needles`.
fn lines_with<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

/// The worker PID of an error log line (`YYYY/MM/DD HH:MM:SS [level] PID#TID: ...`).
fn pid_of(line: &str) -> u32 {
    line.split_once("] ")
        .and_then(|(_, rest)| rest.split_once('#'))
        .and_then(|(pid, _)| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in error log line {line:?}"))
}

/// Number of lines per worker PID.
fn per_worker(lines: &[&str]) -> BTreeMap<u32, usize> {
    let mut m = BTreeMap::new();
    for l in lines {
        *m.entry(pid_of(l)).or_insert(0) += 1;
    }
    m
}

/// nginx's own line for a failed connect to `addr`.
fn connect_failures<'a>(log: &'a str, addr: &str) -> Vec<&'a str> {
    lines_with(log, &["connect() failed", addr])
}

/// rcache's line when `addr` goes down.
fn down_lines<'a>(log: &'a str, addr: &str) -> Vec<&'a str> {
    let head = format!("rcache: memcached server \"{addr}\" failed ");
    lines_with(log, &["[error]", &head, "its keys go to the fallback for "])
}

/// rcache's line when `addr` is back.
fn back_lines<'a>(log: &'a str, addr: &str) -> Vec<&'a str> {
    let line = format!("rcache: memcached server \"{addr}\" answers again, after ");
    lines_with(
        log,
        &["[notice]", &line, "went to the fallback without trying it"],
    )
}

/// rcache's info line for a request skipped because its server is down.
fn skip_lines(log: &str) -> Vec<&str> {
    lines_with(
        log,
        &["[info]", "rcache: no live memcached server for this key"],
    )
}

fn error_lines(log: &str) -> Vec<&str> {
    lines_with(log, &["[error]"])
}

fn serious_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("[alert]") || l.contains("[crit]") || l.contains("[emerg]"))
        .collect()
}

fn assert_no_serious_log_lines(nginx: &Nginx) {
    let log = nginx.error_log();
    let bad = serious_lines(&log);
    assert!(bad.is_empty(), "alert/crit/emerg:\n{}", bad.join("\n"));
}

// ---------------------------------------------------------------------------------------
// 1. Proof against the real clients
// ---------------------------------------------------------------------------------------

/// Writes 10 002 keys with `writer`'s real client to 3 memcached instances and requests
/// every one through rcache with the matching `rcache_hash`: 100% HIT, byte-exact.
fn proof(writer: Writer, tag: &str, hash_after_servers: bool) {
    let started = Instant::now();
    let c = Cluster::start();
    let keys = keys(tag, 10_002);
    let line = proof_on(
        &c,
        writer,
        &keys,
        &c.client_servers(writer),
        hash_after_servers,
    );
    println!("{line}; whole test {:?}", started.elapsed());
}

/// Writes `keys` through `writer` configured with `client_servers` (the cluster's servers,
/// as the application names them), then asks nginx — `rcache_hash` for `writer`, the
/// servers as `127.0.0.1:port` with weights — for every key over 8 keep-alive clients.
/// Asserts: every key is on one server (each server has at least 5% of them), every
/// request is a byte-exact HIT, each server was asked exactly for its own keys (memcached's
/// `cmd_get`), and over pooled connections. Returns a summary with timings.
fn proof_on(
    c: &Cluster,
    writer: Writer,
    keys: &[Key],
    client_servers: &[String],
    hash_after_servers: bool,
) -> String {
    const CLIENTS: usize = 8;
    const WORKERS: u64 = 2;
    let n = keys.len();
    let items_before = c.curr_items();
    let report = c.write_with(writer, client_servers, keys);
    assert_eq!(
        (report.str_values, report.bytes_values),
        (n.div_ceil(2), n / 2)
    );
    let home = c.placement(keys);
    let mut per_server = vec![0u64; 3];
    for &h in &home {
        per_server[h] += 1;
    }
    assert_eq!(
        deltas(&c.curr_items(), &items_before),
        per_server,
        "new items per server"
    );
    for (i, &count) in per_server.iter().enumerate() {
        assert!(
            count >= (n / 20) as u64,
            "{writer:?} put only {count} of {n} keys on server {i} ({per_server:?}): the test \
             needs keys on every server"
        );
    }

    let hash_line = format!("rcache_hash {};", writer.rcache_hash());
    let mut upstream = c.upstream(if hash_after_servers { "" } else { &hash_line }, |i| {
        c.weight_param(writer, i)
    });
    if hash_after_servers {
        upstream = upstream.replace("\n}\n", &format!("\n    {hash_line}\n}}\n"));
    }
    let nginx = c.nginx(&upstream, WORKERS as usize, "").start();
    let app_before = c.app.requests();
    let (conns, gets) = (c.total_connections(), c.cmd_gets());
    let fetched = fetch_all(nginx.port(), keys, CLIENTS);
    let new_conns = deltas(&c.total_connections(), &conns);
    let new_gets = deltas(&c.cmd_gets(), &gets);
    let line = format!(
        "{writer:?} {client_servers:?} / rcache_hash {}: wrote {n} keys in {:.2}s ({:.2}s in \
         Python), spread {per_server:?}; {n} requests over {CLIENTS} keep-alive clients in \
         {:?} ({:.0} req/s); memcached connections opened {new_conns:?}",
        writer.rcache_hash(),
        report.wall_seconds,
        report.seconds,
        fetched.elapsed,
        n as f64 / fetched.elapsed.as_secs_f64(),
    );
    if fetched.count(&Got::Hit) != n {
        let wrong: Vec<String> = fetched
            .got
            .iter()
            .zip(keys)
            .zip(&home)
            .filter(|((g, _), _)| **g != Got::Hit)
            .take(10)
            .map(|((g, k), h)| format!("{:?} (home: server {h}): {g:?}", k.key))
            .collect();
        panic!(
            "{writer:?} with rcache_hash {}: not 100% HIT: {}\nfirst wrong: {wrong:#?}",
            writer.rcache_hash(),
            fetched.summary()
        );
    }
    assert_eq!(
        new_gets, per_server,
        "each key is looked up on its home server only, once"
    );
    for (i, n) in new_conns.iter().enumerate() {
        assert!(
            *n >= 1 && *n <= WORKERS * DEFAULT_KEEPALIVE,
            "server {i}: {n} connections for {} requests (pooled: at most {} per server)",
            per_server[i],
            WORKERS * DEFAULT_KEEPALIVE
        );
    }
    assert_eq!(
        c.app.requests(),
        app_before,
        "no request reached the fallback"
    );
    let entries = nginx.wait_access_entries(n, SECOND * 10);
    assert!(entries.iter().all(|e| e.rcache == "HIT" && e.status == 200));
    assert_no_serious_log_lines(&nginx);
    line
}

#[test]
fn proof_rendezvous_matches_pymemcache_hashclient() {
    proof(Writer::Pymemcache, "rv", false);
}

#[test]
fn proof_ketama_matches_pylibmc_ketama_md5() {
    proof(Writer::PylibmcKetama, "kt", false);
}

#[test]
fn proof_ketama_weighted_matches_pylibmc_ketama_weighted() {
    proof(Writer::PylibmcKetamaWeighted, "kw", false);
}

#[test]
fn proof_modula_matches_pylibmc_default_with_rcache_hash_after_the_servers() {
    proof(Writer::PylibmcModula, "md", true);
}

#[test]
fn proof_ketama_weighted_with_other_weights() {
    // Equal weights, and weights whose shares are not round numbers (libmemcached's float
    // arithmetic decides each server's point count).
    for (weights, tag) in [([1, 1, 1], "kw111"), ([10, 3, 7], "kw1037")] {
        let mut c = Cluster::start();
        c.weights = weights;
        let keys = keys(tag, 3000);
        let servers = c.client_servers(Writer::PylibmcKetamaWeighted);
        println!(
            "{}",
            proof_on(&c, Writer::PylibmcKetamaWeighted, &keys, &servers, false)
        );
    }
}

/// Three memcached instances on memcached's default port 11211, each on its own loopback
/// address (127.0.42.x).
fn cluster_on_port_11211() -> Cluster {
    let mut mcs = Vec::new();
    for last in 1..=254u8 {
        if let Some(mc) =
            Memcached::start_at(std::net::Ipv4Addr::new(127, 0, 42, last).into(), 11211)
        {
            mcs.push(mc);
            if mcs.len() == 3 {
                return Cluster::of(mcs);
            }
        }
    }
    panic!("no 3 free addresses 127.0.42.x:11211 for memcached");
}

#[test]
fn proof_on_the_default_port_11211_with_servers_named_without_port() {
    // On port 11211 libmemcached names ketama points "host-N", not "host:port-N": the
    // usual production setup. The clients are given the servers as applications often
    // write them, without the port; nginx needs it (`server 127.0.42.x:11211`).
    let c = cluster_on_port_11211();
    for (writer, tag) in [
        (Writer::Pymemcache, "d-rv"),
        (Writer::PylibmcKetama, "d-kt"),
        (Writer::PylibmcKetamaWeighted, "d-kw"),
        (Writer::PylibmcModula, "d-md"),
    ] {
        let servers: Vec<String> = (0..3)
            .map(|i| {
                let host = c
                    .addr(i)
                    .strip_suffix(":11211")
                    .expect("port 11211")
                    .to_string();
                if writer.weighted() {
                    // pylibmc needs the port to give a weight.
                    format!("{host}:11211:{}", c.weights[i])
                } else {
                    host
                }
            })
            .collect();
        println!(
            "{}",
            proof_on(&c, writer, &keys(tag, 2000), &servers, false)
        );
    }
}

#[test]
fn proof_with_ipv6_servers() {
    // Clients and nginx write "[::1]:port"; pymemcache names the node "::1:port" and
    // libmemcached hashes "::1:port-N": the brackets are not part of the name.
    let mut mcs = Vec::new();
    while mcs.len() < 3 {
        if let Some(mc) = Memcached::start_at(std::net::Ipv6Addr::LOCALHOST.into(), free_port()) {
            mcs.push(mc);
        }
    }
    let c = Cluster::of(mcs);
    assert!(c.addr(0).starts_with("[::1]:"), "{}", c.addr(0));
    for (writer, tag) in [
        (Writer::Pymemcache, "v6-rv"),
        (Writer::PylibmcKetama, "v6-kt"),
        (Writer::PylibmcKetamaWeighted, "v6-kw"),
        (Writer::PylibmcModula, "v6-md"),
    ] {
        let servers = c.client_servers(writer);
        println!(
            "{}",
            proof_on(&c, writer, &keys(tag, 2000), &servers, false)
        );
    }
}

#[test]
fn proof_with_a_key_prefix_django_style() {
    // Django writes "<KEY_PREFIX>:<VERSION>:<key>" (":1:/page" by default); nginx hashes
    // the whole key it sends: `rcache_key :1:$uri;`.
    let c = Cluster::start();
    let keys: Vec<Key> = keys("dj", 2000)
        .into_iter()
        .map(|k| Key {
            key: format!(":1:{}", k.key),
            url: k.url,
        })
        .collect();
    c.write(Writer::Pymemcache, &keys);
    let home = c.placement(&keys);
    let upstream = c.upstream("rcache_hash rendezvous;", |_| String::new());
    let nginx = c.nginx(&upstream, 1, "rcache_key :1:$uri;").start();
    let gets = c.cmd_gets();
    let f = fetch_all(nginx.port(), &keys, 8);
    assert_all_hit("rcache_key :1:$uri", &f);
    let mut per_server = vec![0u64; 3];
    for &h in &home {
        per_server[h] += 1;
    }
    assert_eq!(deltas(&c.cmd_gets(), &gets), per_server);
    // Without the prefix, the keys are not found.
    let plain = c.nginx(&upstream, 1, "").start();
    let f = fetch_all(plain.port(), &keys, 8);
    assert_eq!(f.count(&Got::Miss), keys.len(), "{}", f.summary());
}

// ---------------------------------------------------------------------------------------
// 2. A setup that differs from the writer's misses (so the proofs can fail)
// ---------------------------------------------------------------------------------------

#[test]
fn a_setup_unlike_the_writer_misses() {
    const N: usize = 3000;
    let c = Cluster::start();

    // pymemcache (rendezvous) keys, nginx configured for modula.
    let keys_a = keys("wrong-alg", N);
    c.write(Writer::Pymemcache, &keys_a);
    c.placement(&keys_a);
    {
        let nginx = c
            .nginx(&c.upstream("rcache_hash modula;", |_| String::new()), 1, "")
            .start();
        let f = fetch_all(nginx.port(), &keys_a, 8);
        println!("pymemcache keys, rcache_hash modula: {}", f.summary());
        assert_eq!(
            f.count(&Got::Hit) + f.count(&Got::Miss),
            N,
            "only HIT or MISS: {}",
            f.summary()
        );
        assert!(
            f.count(&Got::Miss) >= N * 4 / 10,
            "a wrong algorithm must miss most keys: {}",
            f.summary()
        );
    }

    // pylibmc with {"ketama": True} but without "hash": "md5" (as django-pylibmc's README
    // has it): libmemcached hashes keys with one_at_a_time, rcache_hash ketama with MD5.
    let keys_k = keys("wrong-hash", N);
    c.write(Writer::PylibmcKetamaDefaultHash, &keys_k);
    c.placement(&keys_k);
    {
        let nginx = c
            .nginx(&c.upstream("rcache_hash ketama;", |_| String::new()), 1, "")
            .start();
        let f = fetch_all(nginx.port(), &keys_k, 8);
        println!(
            "pylibmc ketama without md5, rcache_hash ketama: {}",
            f.summary()
        );
        assert_eq!(
            f.count(&Got::Hit) + f.count(&Got::Miss),
            N,
            "{}",
            f.summary()
        );
        assert!(f.count(&Got::Miss) >= N * 4 / 10, "{}", f.summary());
    }

    // pylibmc modula keys, nginx modula with the servers in reverse order: exactly the
    // keys of the middle server (index 1 either way) are found.
    let keys_b = keys("wrong-order", N);
    c.write(Writer::PylibmcModula, &keys_b);
    let home = c.placement(&keys_b);
    let reversed = {
        let mut s = String::from("upstream mc {\n    rcache_hash modula;\n");
        for i in (0..3).rev() {
            s.push_str(&format!("    server {};\n", c.addr(i)));
        }
        s + "}\n"
    };
    let nginx = c.nginx(&reversed, 1, "").start();
    let f = fetch_all(nginx.port(), &keys_b, 8);
    println!("pylibmc modula keys, servers reversed: {}", f.summary());
    for ((got, k), h) in f.got.iter().zip(&keys_b).zip(&home) {
        let want = if *h == 1 { Got::Hit } else { Got::Miss };
        assert_eq!(
            got, &want,
            "{:?} (home server {h}) with the servers reversed",
            k.key
        );
    }
    assert!(f.count(&Got::Miss) >= N * 4 / 10, "{}", f.summary());
    assert_no_serious_log_lines(&nginx);
}

// ---------------------------------------------------------------------------------------
// 3. Dead server
// ---------------------------------------------------------------------------------------

#[test]
fn killed_server_keys_go_to_the_fallback_without_connects() {
    const N: usize = 600;
    const DEAD: usize = 1;
    const DEAD_REQUESTS: usize = 40;
    let mut c = Cluster::start();
    let keys = keys("dead", N);
    c.write(Writer::Pymemcache, &keys);
    let home = c.placement(&keys);
    let (dead_keys, live_keys) = split_by_home(&keys, &home, DEAD);
    // Defaults: max_fails=1 fail_timeout=10s.
    let nginx = c
        .nginx(
            &c.upstream("rcache_hash rendezvous;", |_| String::new()),
            2,
            "",
        )
        .start();
    assert_all_hit("warm-up", &fetch_all(nginx.port(), &keys, 8));

    let addr = c.addr(DEAD);
    c.mcs[DEAD].stop();
    let live_servers: Vec<usize> = (0..3).filter(|&i| i != DEAD).collect();
    let gets_before: Vec<u64> = live_servers.iter().map(|&i| c.mcs[i].cmd_get()).collect();
    let offset = nginx.error_log_len();
    let started = Instant::now();
    // The dead server's keys one at a time on new connections (so no worker ever has two
    // of them in flight), while 4 keep-alive clients ask for the other servers' keys.
    let (dead_got, live) = thread::scope(|scope| {
        let live = scope.spawn(|| fetch_all(nginx.port(), &live_keys, 4));
        let dead_got: Vec<(Got, Duration)> = dead_keys
            .iter()
            .cycle()
            .take(DEAD_REQUESTS)
            .map(|k| get_timed(nginx.port(), k))
            .collect();
        (dead_got, live.join().expect("live clients"))
    });
    let took = started.elapsed();
    assert_all_hit("the other servers' keys while one is dead", &live);
    // The dead server's keys are never looked up on another server.
    let gets: Vec<u64> = live_servers.iter().map(|&i| c.mcs[i].cmd_get()).collect();
    let expected: Vec<u64> = live_servers
        .iter()
        .map(|&i| home.iter().filter(|&&h| h == i).count() as u64)
        .collect();
    assert_eq!(
        deltas(&gets, &gets_before),
        expected,
        "gets on the live servers: exactly their own keys, once each"
    );
    for (i, (g, _)) in dead_got.iter().enumerate() {
        assert_eq!(g, &Got::Error, "request {i} for a key of the dead server");
    }
    let log = nginx.error_log_since(offset);
    let connects = connect_failures(&log, &addr);
    let downs = down_lines(&log, &addr);
    let skips = skip_lines(&log);
    println!(
        "dead server: {DEAD_REQUESTS} requests for its keys and {} for the others' in {took:?}; \
         {} connect attempts ({:?} per worker), {} skipped; slowest dead-key request {:?}",
        live.got.len(),
        connects.len(),
        per_worker(&connects),
        skips.len(),
        dead_got.iter().map(|(_, t)| *t).max().unwrap_or_default()
    );
    assert!(
        took < SECOND * 9,
        "the test must stay within fail_timeout (10s): {took:?}"
    );
    assert!(
        !connects.is_empty(),
        "no connect() failed line for {addr}:\n{log}"
    );
    let connects_per_worker = per_worker(&connects);
    assert!(
        connects_per_worker.values().all(|&n| n == 1),
        "each worker tries the dead server once, then not again within fail_timeout: \
         {connects_per_worker:?}\n{}",
        connects.join("\n")
    );
    assert_eq!(
        per_worker(&downs),
        connects_per_worker,
        "one 'its keys go to the fallback' line per worker that found it dead:\n{log}"
    );
    assert!(
        downs
            .iter()
            .all(|l| l.contains("failed 1 time(s)") && l.contains("fallback for 10s")),
        "{downs:#?}"
    );
    assert_eq!(
        skips.len() + connects.len(),
        DEAD_REQUESTS,
        "every request for its keys either tried it (connect() failed) or was skipped\n{log}"
    );
    assert!(
        skips.iter().all(|l| l.contains("upstream \"mc\"")),
        "{skips:#?}"
    );
    let entries = nginx.wait_access_entries(N + live.got.len() + DEAD_REQUESTS, SECOND * 5);
    let errors = entries.iter().filter(|e| e.rcache == "ERROR").count();
    assert_eq!(errors, DEAD_REQUESTS, "ERROR in the access log");
    assert!(entries.iter().all(|e| e.status == 200), "no 5xx");
    assert_no_serious_log_lines(&nginx);
}

// ---------------------------------------------------------------------------------------
// 4. Recovery
// ---------------------------------------------------------------------------------------

#[test]
fn restarted_server_is_asked_again_after_fail_timeout() {
    const N: usize = 300;
    const DEAD: usize = 2;
    let mut c = Cluster::start();
    let keys = keys("back", N);
    c.write(Writer::Pymemcache, &keys);
    let home = c.placement(&keys);
    let (dead_keys, live_keys) = split_by_home(&keys, &home, DEAD);
    let nginx = c
        .nginx(
            &c.upstream("rcache_hash rendezvous;", |_| {
                "max_fails=1 fail_timeout=1s".into()
            }),
            1,
            "",
        )
        .start();
    assert_all_hit("warm-up", &fetch_all(nginx.port(), &keys, 4));
    let addr = c.addr(DEAD);

    c.mcs[DEAD].stop();
    let offset = nginx.error_log_len();
    let t0 = Instant::now();
    assert_eq!(
        get(nginx.port(), &dead_keys[0]),
        Got::Error,
        "first request after the kill"
    );
    // It is down now. Bring it back (empty) and write its keys again with the client.
    c.mcs[DEAD].restart();
    let conns = c.mcs[DEAD].total_connections();
    assert_eq!(get(nginx.port(), &dead_keys[1]), Got::Error, "while down");
    assert!(
        t0.elapsed() < SECOND,
        "setup too slow to observe the down period ({:?})",
        t0.elapsed()
    );
    assert_eq!(
        c.mcs[DEAD].total_connections(),
        conns,
        "a request for a key of a server that is down must not connect to it"
    );
    c.write(Writer::Pymemcache, &keys);
    assert_eq!(
        c.placement(&keys),
        home,
        "the client put the keys where it did before"
    );
    let before_polls = c.mcs[DEAD].total_connections();

    // Poll until its keys are HITs again.
    let mut polls = 0;
    let back = wait_until(SECOND * 5, || {
        polls += 1;
        match get(nginx.port(), &dead_keys[0]) {
            Got::Hit => true,
            Got::Error => false,
            other => panic!("while polling for recovery: {other:?}"),
        }
    });
    let back_after = t0.elapsed();
    assert!(
        back,
        "its keys were not HITs again within 5 s\n{}",
        nginx.error_log_since(offset)
    );
    let nginx_conns = c.mcs[DEAD].total_connections() - before_polls;
    println!(
        "recovery: HIT again {back_after:?} after it went down (fail_timeout=1s), {polls} polls, \
         {nginx_conns} connection(s) from nginx"
    );
    assert!(
        back_after > SECOND,
        "its keys were looked up again before fail_timeout (1s) passed: {back_after:?}"
    );
    assert!(back_after < SECOND * 3 + SECOND / 2, "{back_after:?}");
    assert_eq!(
        nginx_conns, 1,
        "while down, polls made no connection; the first request after fail_timeout made one"
    );
    assert_all_hit(
        "all keys after recovery",
        &fetch_all(nginx.port(), &keys, 4),
    );
    assert_all_hit(
        "the other servers' keys",
        &fetch_all(nginx.port(), &live_keys, 4),
    );

    let log = nginx.error_log_since(offset);
    assert_eq!(connect_failures(&log, &addr).len(), 1, "{log}");
    assert_eq!(down_lines(&log, &addr).len(), 1, "{log}");
    assert!(
        down_lines(&log, &addr)[0].contains("fallback for 1s"),
        "{log}"
    );
    assert_eq!(
        back_lines(&log, &addr).len(),
        1,
        "one 'answers again' line:\n{log}"
    );
    assert_no_serious_log_lines(&nginx);
}

#[test]
fn a_server_that_stays_dead_is_probed_once_per_fail_timeout_and_logged_once() {
    // One failure episode: probes after each fail_timeout fail too, but the "its keys go
    // to the fallback" line is written once; when it is back (restarted, empty), the
    // probe gets a MISS, which is an answer: "answers again", once.
    const DEAD: usize = 0;
    let mut c = Cluster::start();
    let keys = keys("probe", 300);
    c.write(Writer::Pymemcache, &keys);
    let (dead_keys, live_keys) = c.split_by_home(&keys, DEAD);
    let nginx = c
        .nginx(
            &c.upstream("rcache_hash rendezvous;", |_| "fail_timeout=1s".into()),
            1,
            "",
        )
        .start();
    assert_all_hit("warm-up", &fetch_all(nginx.port(), &keys, 4));
    let addr = c.addr(DEAD);
    c.mcs[DEAD].stop();
    let offset = nginx.error_log_len();
    let t0 = Instant::now();
    let dead_requests = std::cell::Cell::new(0usize);
    let ask = |k: &Key| {
        dead_requests.set(dead_requests.get() + 1);
        get(nginx.port(), k)
    };
    assert_eq!(ask(&dead_keys[0]), Got::Error);
    // Keep asking until the probe after fail_timeout has tried it (and failed) again.
    let probed = wait_until(SECOND * 5, || {
        assert_eq!(ask(&dead_keys[1]), Got::Error);
        connect_failures(&nginx.error_log_since(offset), &addr).len() == 2
    });
    let probed_after = t0.elapsed();
    assert!(
        probed,
        "no probe within 5 s:\n{}",
        nginx.error_log_since(offset)
    );
    assert!(
        probed_after > SECOND,
        "probed before fail_timeout: {probed_after:?}"
    );
    let log = nginx.error_log_since(offset);
    assert_eq!(
        down_lines(&log, &addr).len(),
        1,
        "one line per episode:\n{log}"
    );
    assert_eq!(skip_lines(&log).len(), dead_requests.get() - 2, "{log}");
    assert_eq!(
        lines_with(&log, &["temporarily disabled"]),
        Vec::<&str>::new(),
        "nginx's own line for each failure is not written: rcache's says it once"
    );
    assert!(
        connect_failures(&log, &addr)
            .iter()
            .all(|l| l.contains("[info]")),
        "the failed attempts themselves are info lines:\n{log}"
    );

    // Back, empty: after fail_timeout its keys are MISSes (memcached answers), not ERRORs.
    c.mcs[DEAD].restart();
    let mut last = Got::Error;
    let back = wait_until(SECOND * 5, || {
        last = ask(&dead_keys[0]);
        last != Got::Error
    });
    let back_after = t0.elapsed() - probed_after;
    assert!(
        back,
        "still ERROR 5 s after the restart\n{}",
        nginx.error_log_since(offset)
    );
    assert_eq!(last, Got::Miss, "the restarted server is empty");
    println!("probe: second probe {probed_after:?} after the kill; back {back_after:?} later");
    let log = nginx.error_log_since(offset);
    assert_eq!(back_lines(&log, &addr).len(), 1, "{log}");
    assert_eq!(down_lines(&log, &addr).len(), 1, "{log}");
    assert_eq!(connect_failures(&log, &addr).len(), 2, "{log}");
    c.write(Writer::Pymemcache, &dead_keys);
    assert_all_hit("re-written", &fetch_all(nginx.port(), &dead_keys, 4));
    assert_all_hit("others", &fetch_all(nginx.port(), &live_keys, 4));
    assert_no_serious_log_lines(&nginx);
}

// ---------------------------------------------------------------------------------------
// 5. max_fails, single server, `down`
// ---------------------------------------------------------------------------------------

#[test]
fn max_fails_3_tries_three_times_then_stops() {
    const DEAD: usize = 0;
    let mut c = Cluster::start();
    let keys = keys("mf3", 300);
    c.write(Writer::PylibmcKetama, &keys);
    let (dead_keys, live_keys) = c.split_by_home(&keys, DEAD);
    let nginx = c
        .nginx(
            &c.upstream("rcache_hash ketama;", |_| {
                "max_fails=3 fail_timeout=30s".into()
            }),
            1,
            "",
        )
        .start();
    assert_all_hit("warm-up", &fetch_all(nginx.port(), &keys, 4));
    let addr = c.addr(DEAD);
    c.mcs[DEAD].stop();
    let offset = nginx.error_log_len();
    for n in 1..=10usize {
        let key = &dead_keys[n % dead_keys.len()];
        assert_eq!(get(nginx.port(), key), Got::Error, "request {n}");
        let log = nginx.error_log_since(offset);
        assert_eq!(
            connect_failures(&log, &addr).len(),
            n.min(3),
            "after request {n}: max_fails=3 tries 3 times\n{log}"
        );
        assert_eq!(
            down_lines(&log, &addr).len(),
            usize::from(n >= 3),
            "after request {n}: down after the 3rd failure\n{log}"
        );
        assert_eq!(
            skip_lines(&log).len(),
            n.saturating_sub(3),
            "after request {n}\n{log}"
        );
    }
    let log = nginx.error_log_since(offset);
    assert!(
        down_lines(&log, &addr)[0].contains("failed 3 time(s)"),
        "{log}"
    );
    assert!(
        down_lines(&log, &addr)[0].contains("fallback for 30s"),
        "{log}"
    );
    assert_all_hit(
        "the other servers' keys",
        &fetch_all(nginx.port(), &live_keys, 4),
    );
    assert_no_serious_log_lines(&nginx);
}

#[test]
fn max_fails_0_never_marks_a_server_down() {
    const DEAD: usize = 1;
    const REQUESTS: usize = 10;
    let mut c = Cluster::start();
    let keys = keys("mf0", 300);
    c.write(Writer::PylibmcModula, &keys);
    let (dead_keys, live_keys) = c.split_by_home(&keys, DEAD);
    let nginx = c
        .nginx(
            &c.upstream("rcache_hash modula;", |_| "max_fails=0".into()),
            1,
            "",
        )
        .start();
    assert_all_hit("warm-up", &fetch_all(nginx.port(), &keys, 4));
    let addr = c.addr(DEAD);
    c.mcs[DEAD].stop();
    let offset = nginx.error_log_len();
    for n in 1..=REQUESTS {
        let key = &dead_keys[n % dead_keys.len()];
        assert_eq!(get(nginx.port(), key), Got::Error, "request {n}");
    }
    let log = nginx.error_log_since(offset);
    assert_eq!(
        connect_failures(&log, &addr).len(),
        REQUESTS,
        "max_fails=0: every request tries the server\n{log}"
    );
    assert!(down_lines(&log, &addr).is_empty(), "{log}");
    assert!(skip_lines(&log).is_empty(), "{log}");
    assert!(!log.contains("temporarily disabled"), "{log}");
    assert_all_hit(
        "the other servers' keys",
        &fetch_all(nginx.port(), &live_keys, 4),
    );
    let entries = nginx.wait_access_entries(keys.len() + REQUESTS + live_keys.len(), SECOND * 5);
    assert!(entries.iter().all(|e| e.status == 200), "never a 5xx");
    assert_no_serious_log_lines(&nginx);
}

#[test]
fn a_single_server_upstream_is_marked_down_said_once_probed_once_per_fail_timeout() {
    // nginx never marks the only server of an upstream down (it tries it on every
    // request, one connect and one error line each); rcache does, by nginx's own rule.
    const REQUESTS: usize = 40;
    let mut mc = Memcached::start();
    let key = Key {
        key: "/single/page".into(),
        url: "/single/page".into(),
    };
    write_keys(
        Writer::Pymemcache,
        &[mc.addr()],
        std::slice::from_ref(&key.key),
    );
    let app = App::start();
    let nginx = Nginx::builder()
        .var("app", app.port())
        .http(&format!(
            "upstream mc {{ rcache_hash rendezvous; server {} max_fails=1 fail_timeout=1s; }}",
            mc.addr()
        ))
        .http(&server_block(""))
        .start();
    assert_eq!(get(nginx.port(), &key), Got::Hit);
    mc.stop();
    let offset = nginx.error_log_len();
    for n in 1..=REQUESTS {
        assert_eq!(get(nginx.port(), &key), Got::Error, "request {n}");
    }
    let log = nginx.error_log_since(offset);
    assert_eq!(
        connect_failures(&log, &mc.addr()).len(),
        1,
        "one attempt:\n{log}"
    );
    let down = down_lines(&log, &mc.addr());
    assert_eq!(down.len(), 1, "said once:\n{log}");
    assert!(
        down[0].contains("(refused or closed the connection)"),
        "{}",
        down[0]
    );
    assert_eq!(
        error_lines(&log),
        down,
        "nothing else at error level (the failed connect is an info line):\n{log}"
    );

    // Still dead after fail_timeout: one request tries it (one more connect line).
    thread::sleep(Duration::from_millis(2100));
    for _ in 0..10 {
        assert_eq!(get(nginx.port(), &key), Got::Error);
    }
    let log = nginx.error_log_since(offset);
    assert_eq!(
        connect_failures(&log, &mc.addr()).len(),
        2,
        "one probe:\n{log}"
    );
    assert_eq!(down_lines(&log, &mc.addr()).len(), 1, "{log}");

    // Back: the first request after fail_timeout finds it, and it is said once.
    mc.restart();
    write_keys(
        Writer::Pymemcache,
        &[mc.addr()],
        std::slice::from_ref(&key.key),
    );
    thread::sleep(Duration::from_millis(2100));
    assert_eq!(get(nginx.port(), &key), Got::Hit);
    assert_eq!(get(nginx.port(), &key), Got::Hit);
    let log = nginx.error_log_since(offset);
    let back = lines_with(&log, &["[notice]", "answers again, after"]);
    assert_eq!(back.len(), 1, "{log}");
    assert!(
        // All but the failed attempt and the probe went without trying it.
        back[0].contains(&format!("{} request(s)", REQUESTS + 10 - 2)),
        "counts what fell back: {}",
        back[0]
    );
    assert_eq!(app.requests(), REQUESTS + 10);
}

#[test]
fn rcache_pass_host_port_marks_its_server_down_on_the_first_failure() {
    // `rcache_pass 127.0.0.1:PORT` (no upstream block): nginx's defaults, max_fails=1
    // fail_timeout=10s.
    let mut mc = Memcached::start();
    let app = App::start();
    let nginx = Nginx::builder()
        .var("app", app.port())
        .var("mc", mc.port())
        .http(
            "server {
                listen 127.0.0.1:{port};
                add_header X-Rcache-Status $rcache_status always;
                location / { rcache_pass 127.0.0.1:{mc}; rcache_fallback @app; }
                location @app { proxy_pass http://127.0.0.1:{app}; }
            }",
        )
        .start();
    mc.set_raw(b"/p", b"page", 0, 0);
    assert_eq!(http::get(nginx.port(), "/p").text(), "page");
    mc.stop();
    let offset = nginx.error_log_len();
    for _ in 0..100 {
        let r = http::get(nginx.port(), "/p");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("X-Rcache-Status"), Some("ERROR"));
    }
    let log = nginx.error_log_since(offset);
    assert_eq!(connect_failures(&log, &mc.addr()).len(), 1, "{log}");
    let down = down_lines(&log, &mc.addr());
    assert_eq!(down.len(), 1, "{log}");
    assert!(
        down[0].contains("for 10s"),
        "nginx's default fail_timeout: {}",
        down[0]
    );
    assert_eq!(error_lines(&log), down, "{log}");
}

/// A server found down stays down for the workers of a reloaded configuration (rcache
/// keeps the servers' health in a shared memory zone that nginx hands over): they do not
/// try it again before its fail_timeout, and its episode goes on — one "down" line, one
/// "answers again" line counting the requests of the old and the new workers.
fn down_state_survives(change_config: bool) {
    const BEFORE: usize = 5;
    const AFTER: usize = 20;
    let mut mc = Memcached::start();
    let app = App::start();
    let mc_addr = mc.addr();
    let server = |extra: &str| {
        format!(
            "upstream mc {{ server {} max_fails=1 fail_timeout=3s; }}
             server {{
                listen 127.0.0.1:{{port}};
                add_header X-Rcache-Status $rcache_status always;
                location / {{ rcache_pass mc; rcache_fallback @app; }}
                location @app {{ proxy_pass http://127.0.0.1:{{app}}; {extra} }}
             }}",
            mc_addr
        )
    };
    let mut nginx = Nginx::builder()
        .workers(2)
        .var("app", app.port())
        .http(&server(""))
        .start();
    mc.set_raw(b"/p", b"page", 0, 0);
    assert_eq!(http::get(nginx.port(), "/p").text(), "page");
    mc.stop();
    let offset = nginx.error_log_len();
    let failed_at = Instant::now();
    for _ in 0..=BEFORE {
        assert_eq!(
            http::get(nginx.port(), "/p").header("X-Rcache-Status"),
            Some("ERROR")
        );
    }
    if change_config {
        nginx.set_http(&server("proxy_set_header X-Reloaded yes;"));
    }
    let new_workers = nginx.reload();
    for _ in 0..AFTER {
        assert_eq!(
            http::get(nginx.port(), "/p").header("X-Rcache-Status"),
            Some("ERROR")
        );
    }
    assert!(
        failed_at.elapsed() < Duration::from_millis(2500),
        "too slow to stay within fail_timeout (3s): {:?}",
        failed_at.elapsed()
    );
    let log = nginx.error_log_since(offset);
    assert_eq!(
        connect_failures(&log, &mc.addr()).len(),
        1,
        "the new workers did not try it again:\n{log}"
    );
    assert_eq!(down_lines(&log, &mc.addr()).len(), 1, "{log}");

    // Back after fail_timeout: said once, by a new worker, counting old and new requests.
    mc.restart();
    mc.set_raw(b"/p", b"page", 0, 0);
    let back = wait_until(SECOND * 6, || {
        http::get(nginx.port(), "/p").header("X-Rcache-Status") == Some("HIT")
    });
    let log = nginx.error_log_since(offset);
    assert!(back, "not HIT again:\n{log}");
    let backs = back_lines(&log, &mc.addr());
    assert_eq!(backs.len(), 1, "{log}");
    assert!(new_workers.contains(&pid_of(backs[0])), "{}", backs[0]);
    let fell_back: usize = backs[0]
        .split(" request(s) went")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {}", backs[0]));
    assert!(
        fell_back >= BEFORE + AFTER,
        "the old workers' {BEFORE} and the new workers' {AFTER} (and the polls): {}",
        backs[0]
    );
    assert_eq!(connect_failures(&log, &mc.addr()).len(), 1, "{log}");
    assert_no_serious_log_lines(&nginx);
}

#[test]
fn a_reload_keeps_a_down_server_down() {
    down_state_survives(false);
}

#[test]
fn a_reload_with_a_changed_configuration_keeps_a_down_server_down() {
    down_state_survives(true);
}

#[test]
fn a_stalled_single_server_costs_one_read_timeout_per_fail_timeout() {
    let mc = Memcached::start();
    let app = App::start();
    let nginx = Nginx::builder()
        .var("app", app.port())
        .var("mc", mc.port())
        .http(
            "upstream mc { server 127.0.0.1:{mc} max_fails=1 fail_timeout=5s; }
             server {
                listen 127.0.0.1:{port};
                add_header X-Rcache-Status $rcache_status always;
                location / { rcache_pass mc; rcache_fallback @app; rcache_read_timeout 300ms; }
                location @app { proxy_pass http://127.0.0.1:{app}; }
            }",
        )
        .start();
    mc.set_raw(b"/p", b"page", 0, 0);
    assert_eq!(http::get(nginx.port(), "/p").text(), "page");
    mc.pause();
    let offset = nginx.error_log_len();
    let t0 = std::time::Instant::now();
    let first = http::get(nginx.port(), "/p");
    assert_eq!(first.header("X-Rcache-Status"), Some("ERROR"));
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "waited one read timeout"
    );
    // The others do not wait: straight to the fallback.
    let t1 = std::time::Instant::now();
    for _ in 0..20 {
        let r = http::get(nginx.port(), "/p");
        assert_eq!(r.header("X-Rcache-Status"), Some("ERROR"));
    }
    assert!(
        t1.elapsed() < Duration::from_millis(1000),
        "20 requests without a timeout each: {:?}",
        t1.elapsed()
    );
    mc.resume();
    let log = nginx.error_log_since(offset);
    let down = down_lines(&log, &mc.addr());
    assert_eq!(down.len(), 1, "{log}");
    assert!(down[0].contains("(timed out)"), "{}", down[0]);
}

#[test]
fn a_server_marked_down_is_never_asked() {
    const DOWN: usize = 2;
    let c = Cluster::start();
    let keys = keys("down", 300);
    c.write(Writer::PylibmcKetamaWeighted, &keys);
    let (down_keys, live_keys) = c.split_by_home(&keys, DOWN);
    let nginx = c
        .nginx(
            &c.upstream("rcache_hash ketama weighted;", |i| {
                let w = c.weight_param(Writer::PylibmcKetamaWeighted, i);
                if i == DOWN {
                    format!("{w} down")
                } else {
                    w
                }
            }),
            2,
            "",
        )
        .start();
    let (conns, gets) = (c.mcs[DOWN].total_connections(), c.mcs[DOWN].cmd_get());
    let f = fetch_all(nginx.port(), &down_keys, 4);
    assert_eq!(f.count(&Got::Error), down_keys.len(), "{}", f.summary());
    assert_all_hit(
        "the other servers' keys",
        &fetch_all(nginx.port(), &live_keys, 4),
    );
    assert_eq!(
        (c.mcs[DOWN].total_connections(), c.mcs[DOWN].cmd_get()),
        (conns, gets),
        "a server marked `down` is never connected to"
    );
    let log = nginx.error_log();
    assert_eq!(skip_lines(&log).len(), down_keys.len(), "{log}");
    assert!(down_lines(&log, &c.addr(DOWN)).is_empty(), "{log}");
    assert_no_serious_log_lines(&nginx);
}

// ---------------------------------------------------------------------------------------
// 6. Stall
// ---------------------------------------------------------------------------------------

#[test]
fn stalled_server_costs_one_read_timeout_then_its_keys_fall_back_at_once() {
    const READ_TIMEOUT: Duration = Duration::from_millis(300);
    const STALLED: usize = 1;
    const LATER: usize = 20;
    let c = Cluster::start();
    let keys = keys("stall", 300);
    c.write(Writer::PylibmcKetama, &keys);
    let (stalled_keys, live_keys) = c.split_by_home(&keys, STALLED);
    let nginx = c
        .nginx(
            &c.upstream("rcache_hash ketama;", |_| "fail_timeout=1s".into()),
            1,
            "rcache_read_timeout 300ms; rcache_connect_timeout 200ms;",
        )
        .start();
    assert_all_hit("warm-up", &fetch_all(nginx.port(), &keys, 4));
    let addr = c.addr(STALLED);
    let offset = nginx.error_log_len();

    c.mcs[STALLED].pause();
    let stop = AtomicBool::new(false);
    let (first, later, live) = thread::scope(|scope| {
        // The other servers' keys, back to back, during the stall.
        let live = scope.spawn(|| {
            let mut rounds = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                rounds.push(fetch_all(nginx.port(), &live_keys[..40], 1));
            }
            rounds
        });
        let first = get_timed(nginx.port(), &stalled_keys[0]);
        let failed_at = Instant::now();
        let later: Vec<(Got, Duration, Duration)> = (1..=LATER)
            .map(|n| {
                let sent = failed_at.elapsed();
                let (g, t) = get_timed(nginx.port(), &stalled_keys[n % stalled_keys.len()]);
                (g, t, sent)
            })
            .collect();
        stop.store(true, Ordering::SeqCst);
        (first, later, live.join().expect("live clients"))
    });
    c.mcs[STALLED].resume();

    println!(
        "stall: first request for its keys {:?}, the next {LATER} took at most {:?}; other \
         servers: {} requests, slowest {:?}",
        first.1,
        later.iter().map(|(_, t, _)| *t).max().unwrap_or_default(),
        live.iter().map(|f| f.got.len()).sum::<usize>(),
        live.iter().map(Fetched::max_took).max().unwrap_or_default()
    );
    assert_eq!(
        first.0,
        Got::Error,
        "first request for a key of the stalled server"
    );
    assert!(
        first.1 >= READ_TIMEOUT - Duration::from_millis(20) && first.1 < READ_TIMEOUT + SECOND,
        "first request took {:?}; rcache_read_timeout is {READ_TIMEOUT:?}",
        first.1
    );
    let mut slow = 1;
    for (n, (g, t, sent)) in later.iter().enumerate() {
        assert_eq!(
            g,
            &Got::Error,
            "request {} for its keys during the stall",
            n + 1
        );
        if *t >= READ_TIMEOUT - Duration::from_millis(20) {
            slow += 1;
        }
        // Down for at least fail_timeout (1s) after the failure: anything sent sooner must
        // not wait for the stalled server at all.
        if *sent < Duration::from_millis(900) {
            assert!(
                *t < READ_TIMEOUT / 2,
                "request {} ({sent:?} after the timeout) took {t:?}: it waited for the \
                 stalled server instead of falling back at once",
                n + 1
            );
        }
    }
    assert!(!live.is_empty());
    for f in &live {
        assert_all_hit("other servers during the stall", f);
        assert!(
            f.max_took() < READ_TIMEOUT - Duration::from_millis(50),
            "a key of a healthy server took {:?} during the stall",
            f.max_took()
        );
    }

    // Resumed: after fail_timeout its keys are HITs again.
    let resumed = Instant::now();
    let back = wait_until(SECOND * 5, || {
        get(nginx.port(), &stalled_keys[0]) == Got::Hit
    });
    assert!(
        back,
        "not HIT within 5 s of resume\n{}",
        nginx.error_log_since(offset)
    );
    println!("stall: HIT again {:?} after resume", resumed.elapsed());
    assert_all_hit(
        "all keys after the stall",
        &fetch_all(nginx.port(), &keys, 4),
    );

    let log = nginx.error_log_since(offset);
    let timeouts = lines_with(&log, &["upstream timed out", &addr]);
    assert_eq!(
        timeouts.len(),
        slow,
        "one 'upstream timed out' per request that waited for it\n{log}"
    );
    assert_eq!(down_lines(&log, &addr).len(), 1, "{log}");
    assert_eq!(back_lines(&log, &addr).len(), 1, "{log}");
    assert_no_serious_log_lines(&nginx);
}

// ---------------------------------------------------------------------------------------
// 7. Restart with pooled connections
// ---------------------------------------------------------------------------------------

#[test]
fn restart_with_pooled_connections_is_a_miss_and_does_not_mark_the_server_down() {
    const CLIENTS: usize = 20;
    const RESTARTED: usize = 0;
    let mut c = Cluster::start();
    let keys = keys("restart", 600);
    c.write(Writer::Pymemcache, &keys);
    let home = c.placement(&keys);
    let (restarted_keys, live_keys) = split_by_home(&keys, &home, RESTARTED);
    let nginx = c
        .nginx(
            &c.upstream("rcache_hash rendezvous;", |_| String::new()),
            2,
            "",
        )
        .start();
    let addr = c.addr(RESTARTED);

    // 20 keep-alive clients, warmed up concurrently: both workers pool connections to
    // all three servers.
    let mut clients: Vec<(BufReader<TcpStream>, TcpStream)> = (0..CLIENTS)
        .map(|_| {
            let s = TcpStream::connect(("127.0.0.1", nginx.port())).expect("connect");
            s.set_read_timeout(Some(SECOND * 10)).expect("timeout");
            (BufReader::new(s.try_clone().expect("clone")), s)
        })
        .collect();
    let request = |k: &Key| format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", k.url).into_bytes();
    thread::scope(|scope| {
        for (n, (reader, writer)) in clients.iter_mut().enumerate() {
            let keys = &keys;
            scope.spawn(move || {
                for k in keys.iter().skip(n).step_by(CLIENTS) {
                    writer.write_all(&request(k)).expect("send");
                    let (r, _) = http::read_response(reader, false).expect("response");
                    assert_eq!(classify(&r, k), Got::Hit, "warm-up");
                }
            });
        }
    });
    for (i, mc) in c.mcs.iter().enumerate() {
        assert!(
            mc.client_connections() >= 2,
            "server {i}: pooled connections {}",
            mc.client_connections()
        );
    }

    // Workers frozen, every client sends a request for a key of the server that restarts,
    // it restarts (empty): the workers see the requests before the closes of their pooled
    // connections, so requests take dead connections. Each is retried on a new one: MISS.
    let offset = nginx.error_log_len();
    let frozen = Frozen::pids(nginx.worker_pids());
    for (n, (_, writer)) in clients.iter_mut().enumerate() {
        writer
            .write_all(&request(&restarted_keys[n % restarted_keys.len()]))
            .expect("send");
    }
    c.mcs[RESTARTED].restart();
    drop(frozen);
    let mut statuses = Vec::new();
    for (n, (reader, _)) in clients.iter_mut().enumerate() {
        let (r, _) = http::read_response(reader, false).expect("response");
        statuses.push(classify(&r, &restarted_keys[n % restarted_keys.len()]));
    }
    // Then everything, under load: its keys MISS (it is empty), the others HIT.
    let after = fetch_all(nginx.port(), &keys, 8);
    let log = nginx.error_log_since(offset);
    let stale = lines_with(&log, &[&addr])
        .into_iter()
        .filter(|l| l.contains("prematurely closed") || l.contains("reset by peer"))
        .count();
    println!(
        "restart: {CLIENTS} waiting requests, {stale} took a dead pooled connection; then {}",
        after.summary()
    );
    assert!(
        statuses.iter().all(|s| *s == Got::Miss),
        "requests waiting during the restart: {statuses:?}\n{log}"
    );
    for ((got, k), h) in after.got.iter().zip(&keys).zip(&home) {
        let want = if *h == RESTARTED { Got::Miss } else { Got::Hit };
        assert_eq!(
            got, &want,
            "{:?} (home server {h}) after the restart",
            k.key
        );
    }
    assert!(
        stale >= 1,
        "no request took a dead pooled connection:\n{log}"
    );
    assert!(
        down_lines(&log, &addr).is_empty(),
        "a restart must not mark it down:\n{log}"
    );
    assert!(!log.contains("temporarily disabled"), "{log}");
    assert!(connect_failures(&log, &addr).is_empty(), "{log}");

    // The app writes them again: HITs.
    c.write(Writer::Pymemcache, &restarted_keys);
    assert_all_hit(
        "after re-writing",
        &fetch_all(nginx.port(), &restarted_keys, 8),
    );
    assert_all_hit("the others", &fetch_all(nginx.port(), &live_keys, 8));
    let errors = nginx
        .wait_access_entries(keys.len() + CLIENTS + keys.len() + keys.len(), SECOND * 5)
        .iter()
        .filter(|e| e.rcache == "ERROR")
        .count();
    assert_eq!(errors, 0, "ERROR in the access log");
    assert_no_serious_log_lines(&nginx);
}

// ---------------------------------------------------------------------------------------
// 8. Reload and graceful shutdown
// ---------------------------------------------------------------------------------------

#[test]
fn reload_and_graceful_quit_under_load_with_pooled_connections() {
    let c = Cluster::start();
    let keys = keys("reload", 300);
    c.write(Writer::PylibmcKetama, &keys);
    c.placement(&keys);
    let upstream = c.upstream("rcache_hash ketama;", |_| String::new());
    let mut nginx = c.nginx(&upstream, 2, "").start();
    assert_all_hit("warm-up", &fetch_all(nginx.port(), &keys, 8));
    for (i, mc) in c.mcs.iter().enumerate() {
        assert!(
            mc.client_connections() >= 1,
            "server {i} has pooled connections"
        );
    }

    let port = nginx.port();
    let stop = AtomicBool::new(false);
    let quitting = AtomicBool::new(false);
    let done = AtomicUsize::new(0);
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::<String>::new());
    let refused_after_quit = AtomicUsize::new(0);
    let shutdown = thread::scope(|scope| {
        // Background clients on fresh connections (a keep-alive connection that an old
        // worker closes between two requests is HTTP's own race, not rcache's).
        for _ in 0..4 {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let k = &keys[next.fetch_add(1, Ordering::SeqCst) % keys.len()];
                    match http::try_request(port, "GET", &k.url, &[], None) {
                        Ok(r) => match classify(&r, k) {
                            Got::Hit => {
                                done.fetch_add(1, Ordering::SeqCst);
                            }
                            other => failures.lock().expect("lock").push(format!("{other:?}")),
                        },
                        // Once the listener is closed, new connections fail: not a
                        // wrong answer, and the only failure allowed.
                        Err(_) if quitting.load(Ordering::SeqCst) => {
                            refused_after_quit.fetch_add(1, Ordering::SeqCst);
                            thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => failures.lock().expect("lock").push(format!("I/O: {e}")),
                    }
                }
            });
        }
        let wait_for = |n: usize| {
            let target = done.load(Ordering::SeqCst) + n;
            assert!(
                wait_until(SECOND * 10, || done.load(Ordering::SeqCst) >= target),
                "background load stalled"
            );
        };
        wait_for(200);
        for round in 0..2 {
            nginx.set_http(&format!(
                "{upstream}\n{}",
                server_block(&format!("set $round {round};"))
            ));
            let old = nginx.worker_pids();
            let new = nginx.reload();
            assert!(new.iter().all(|p| !old.contains(p)));
            wait_for(200);
        }
        // Graceful quit while the clients keep going.
        quitting.store(true, Ordering::SeqCst);
        let shutdown = nginx.quit();
        stop.store(true, Ordering::SeqCst);
        shutdown
    });
    let failures = failures.into_inner().expect("lock");
    println!(
        "reload/quit under load: {} HITs, {} failures, {} connections refused after quit",
        done.load(Ordering::SeqCst),
        failures.len(),
        refused_after_quit.load(Ordering::SeqCst)
    );
    assert!(
        failures.is_empty(),
        "{} wrong answers, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(shutdown.is_clean(), "{shutdown:?}\n{}", nginx.error_log());
    assert_no_serious_log_lines(&nginx);
    for (i, mc) in c.mcs.iter().enumerate() {
        assert!(
            wait_until(SECOND * 2, || mc.client_connections() == 0),
            "server {i}: {} connections left after nginx quit",
            mc.client_connections()
        );
    }
}

// ---------------------------------------------------------------------------------------
// 9. Config errors (nginx -t)
// ---------------------------------------------------------------------------------------

/// nginx -t on `upstream` plus a server passing to `mc`.
fn check_upstream(upstream: &str) -> ConfigCheck {
    Nginx::builder()
        .var("app", 1)
        .http(upstream)
        .http(&server_block(""))
        .check_config()
}

fn emerg(c: &ConfigCheck) -> String {
    c.output
        .lines()
        .find(|l| l.contains("[emerg]"))
        .unwrap_or_else(|| panic!("no [emerg] line in:\n{}", c.output))
        .to_string()
}

#[test]
fn rcache_hash_outside_upstream_is_rejected() {
    let up = "upstream mc { server 127.0.0.1:11211; }";
    for (conf, level) in [
        (
            format!("rcache_hash ketama;\n{up}\n{}", server_block("")),
            "http",
        ),
        (
            format!(
                "{up}\nserver {{ listen 127.0.0.1:{{port}}; rcache_hash ketama; \
                 location / {{ rcache_pass mc; }} }}"
            ),
            "server",
        ),
        (
            format!("{up}\n{}", server_block("rcache_hash ketama;")),
            "location",
        ),
    ] {
        let c = Nginx::builder().var("app", 1).http(&conf).check_config();
        assert!(!c.ok, "rcache_hash in {level}: accepted\n{}", c.output);
        let line = emerg(&c);
        assert!(
            line.contains("\"rcache_hash\" directive is not allowed here"),
            "rcache_hash in {level}: {line}"
        );
    }
}

#[test]
fn rcache_hash_bad_arguments_are_rejected() {
    for (args, needle) in [
        ("crc32", "invalid value \"crc32\""),
        ("Ketama", "invalid value \"Ketama\""),
        ("modula weighted", "invalid value \"modula weighted\""),
        (
            "rendezvous weighted",
            "invalid value \"rendezvous weighted\"",
        ),
    ] {
        let c = check_upstream(&format!(
            "upstream mc {{ rcache_hash {args}; server 127.0.0.1:11211; }}"
        ));
        assert!(!c.ok, "rcache_hash {args}: accepted\n{}", c.output);
        let line = emerg(&c);
        assert!(line.contains(needle), "rcache_hash {args}: {line}");
        assert!(
            line.contains("\"rcache_hash\""),
            "names the directive: {line}"
        );
        for valid in [
            "\"rendezvous\"",
            "\"ketama\"",
            "\"ketama weighted\"",
            "\"modula\"",
        ] {
            assert!(line.contains(valid), "lists {valid}: {line}");
        }
    }
    for args in ["", "ketama weighted md5"] {
        let c = check_upstream(&format!(
            "upstream mc {{ rcache_hash {args}; server 127.0.0.1:11211; }}"
        ));
        assert!(!c.ok, "rcache_hash {args:?}: accepted\n{}", c.output);
        let line = emerg(&c);
        assert!(
            line.contains("invalid number of arguments in \"rcache_hash\" directive"),
            "rcache_hash {args:?}: {line}"
        );
    }
    let c = check_upstream(
        "upstream mc { rcache_hash ketama; rcache_hash ketama; server 127.0.0.1:11211; }",
    );
    assert!(!c.ok, "{}", c.output);
    assert!(
        emerg(&c).contains("\"rcache_hash\" directive is duplicate"),
        "{}",
        emerg(&c)
    );
}

#[test]
fn rcache_hash_server_lines_are_checked() {
    // No port: nginx would use 80, memcached clients 11211; neither is what the user meant.
    let c = check_upstream(
        "upstream mc { rcache_hash ketama; server 127.0.0.1; server 127.0.0.1:11212; }",
    );
    assert!(!c.ok, "{}", c.output);
    let line = emerg(&c);
    assert!(
        line.contains("rcache_hash: server \"127.0.0.1\" needs an explicit port"),
        "{line}"
    );
    assert!(line.contains("upstream \"mc\""), "{line}");

    // backup: rcache_hash first makes nginx reject the parameter ...
    let c = check_upstream(
        "upstream mc { rcache_hash rendezvous; server 127.0.0.1:11211; server 127.0.0.1:11212 backup; }",
    );
    assert!(!c.ok, "{}", c.output);
    assert!(
        emerg(&c).contains("balancing method does not support parameter \"backup\""),
        "{}",
        emerg(&c)
    );
    // ... and rcache_hash after it is rejected by rcache.
    let c = check_upstream(
        "upstream mc { server 127.0.0.1:11211; server 127.0.0.1:11212 backup; rcache_hash rendezvous; }",
    );
    assert!(!c.ok, "{}", c.output);
    assert!(
        emerg(&c).contains("rcache_hash: backup servers are not supported"),
        "{}",
        emerg(&c)
    );
}

#[test]
fn rcache_hash_valid_forms_are_accepted() {
    for upstream in [
        "upstream mc { rcache_hash ketama weighted; server 127.0.0.1:11211 weight=1; \
         server 127.0.0.1:11212 weight=2; server 127.0.0.1:11213 weight=5; }",
        "upstream mc { rcache_hash rendezvous; server unix:/tmp/rcache-mc.sock; \
         server 127.0.0.1:11212; }",
        "upstream mc { rcache_hash modula; server 127.0.0.1:11211 max_fails=3 fail_timeout=5s; \
         server 127.0.0.1:11212 down; server 127.0.0.1:11213 max_fails=0; }",
        "upstream mc { server 127.0.0.1:11211; server 127.0.0.1:11212; rcache_hash ketama; }",
        "upstream mc { rcache_hash ketama; server 127.0.0.1:11211; }",
    ] {
        let c = check_upstream(upstream);
        assert!(c.ok, "{upstream}\n{}", c.output);
    }
}

// ---------------------------------------------------------------------------------------
// 10. Non-rcache traffic to the same upstream
// ---------------------------------------------------------------------------------------

#[test]
fn memcached_pass_to_an_rcache_hash_upstream_is_round_robin() {
    const STOCK: usize = 30;
    let mut c = Cluster::start();
    let keys = keys("rc", 120);
    c.write(Writer::Pymemcache, &keys);
    c.placement(&keys);
    // The stock page is on every server, so round robin finds it wherever it asks.
    let page = b"<p>stock</p>";
    for mc in &c.mcs {
        mc.set_raw(b"/stock/page", page, 0, 0);
    }
    let nginx = Nginx::builder()
        .workers(1)
        .var("app", c.app.port())
        .http(&c.upstream("rcache_hash rendezvous;", |_| String::new()))
        .http(
            "server {
                listen 127.0.0.1:{port};
                add_header X-Rcache-Status $rcache_status always;
                location / { rcache_pass mc; rcache_fallback @app; }
                location /stock/ { set $memcached_key $uri; memcached_pass mc; }
                location @app { proxy_pass http://127.0.0.1:{app}; }
            }",
        )
        .start();
    let gets: Vec<u64> = c.mcs.iter().map(|mc| mc.cmd_get()).collect();
    for n in 0..STOCK {
        let r = http::get(nginx.port(), "/stock/page");
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &page[..]),
            "stock request {n}"
        );
        assert_eq!(r.header("x-rcache-status"), None, "not an rcache request");
    }
    let per_server: Vec<u64> = c
        .mcs
        .iter()
        .zip(&gets)
        .map(|(mc, before)| mc.cmd_get() - before)
        .collect();
    assert_eq!(
        per_server,
        vec![(STOCK / 3) as u64; 3],
        "memcached_pass is balanced round robin over the 3 servers"
    );
    // rcache lookups through the same upstream still go to each key's home.
    assert_all_hit("rcache keys", &fetch_all(nginx.port(), &keys, 4));

    // A dead server: stock requests move on to the next server (memcached_next_upstream),
    // rcache lookups for its keys fall back.
    const DEAD: usize = 1;
    let (dead_keys, live_keys) = c.split_by_home(&keys, DEAD);
    c.mcs[DEAD].stop();
    for n in 0..STOCK {
        let r = http::get(nginx.port(), "/stock/page");
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &page[..]),
            "stock request {n} with a dead server"
        );
    }
    let f = fetch_all(nginx.port(), &dead_keys, 2);
    assert_eq!(f.count(&Got::Error), dead_keys.len(), "{}", f.summary());
    assert_all_hit("live rcache keys", &fetch_all(nginx.port(), &live_keys, 4));
    assert_no_serious_log_lines(&nginx);
}

// ---------------------------------------------------------------------------------------
// More failure modes: connects that hang, shared state (`zone`), `max_conns`
// ---------------------------------------------------------------------------------------

#[test]
fn server_not_accepting_connects_costs_one_connect_timeout() {
    const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
    const HUNG: usize = 2;
    const LATER: usize = 20;
    let mut c = Cluster::start();
    let keys = keys("hang", 300);
    c.write(Writer::Pymemcache, &keys);
    let home = c.placement(&keys);
    let (hung_keys, live_keys) = split_by_home(&keys, &home, HUNG);
    let nginx = c
        .nginx(
            &c.upstream("rcache_hash rendezvous;", |_| "fail_timeout=30s".into()),
            1,
            "rcache_connect_timeout 200ms;",
        )
        .start();
    assert_all_hit("warm-up", &fetch_all(nginx.port(), &keys, 4));
    let addr = c.addr(HUNG);
    let port = c.mcs[HUNG].port();
    c.mcs[HUNG].stop();
    // Its address now takes no connections: SYNs go unanswered.
    let _hole = Blackhole::start_on(port).expect("blackhole on the stopped memcached's port");
    let offset = nginx.error_log_len();

    let first = get_timed(nginx.port(), &hung_keys[0]);
    let later: Vec<(Got, Duration)> = (1..=LATER)
        .map(|n| get_timed(nginx.port(), &hung_keys[n % hung_keys.len()]))
        .collect();
    println!(
        "connect timeout: first {:?}, then at most {:?}",
        first.1,
        later.iter().map(|(_, t)| *t).max().unwrap_or_default()
    );
    assert_eq!(first.0, Got::Error);
    assert!(
        first.1 >= CONNECT_TIMEOUT - Duration::from_millis(20)
            && first.1 < CONNECT_TIMEOUT + SECOND,
        "first request took {:?}; rcache_connect_timeout is {CONNECT_TIMEOUT:?}",
        first.1
    );
    for (n, (g, t)) in later.iter().enumerate() {
        assert_eq!(g, &Got::Error, "request {}", n + 1);
        assert!(
            *t < CONNECT_TIMEOUT / 2,
            "request {} took {t:?}: it tried the server again",
            n + 1
        );
    }
    assert_all_hit(
        "the other servers' keys",
        &fetch_all(nginx.port(), &live_keys, 4),
    );
    let log = nginx.error_log_since(offset);
    let timeouts = lines_with(&log, &["upstream timed out", &addr]);
    assert_eq!(timeouts.len(), 1, "{log}");
    assert!(
        timeouts[0].contains("while connecting to upstream"),
        "{log}"
    );
    assert_eq!(down_lines(&log, &addr).len(), 1, "{log}");
    assert_eq!(skip_lines(&log).len(), LATER, "{log}");
    assert_no_serious_log_lines(&nginx);
}

/// Keep-alive clients, one per nginx worker (`X-Worker: $pid`), by worker PID.
fn client_per_worker(port: u16, workers: usize, probe: &Key) -> BTreeMap<u32, KeepAliveClient> {
    let mut pinned = BTreeMap::new();
    for _ in 0..200 {
        let mut client = KeepAliveClient::connect(port).expect("connect");
        let r = client.get(&probe.url).expect("probe request");
        assert_eq!(classify(&r, probe), Got::Hit);
        let pid: u32 = r
            .header("x-worker")
            .and_then(|p| p.parse().ok())
            .expect("X-Worker header");
        pinned.entry(pid).or_insert(client);
        if pinned.len() == workers {
            return pinned;
        }
    }
    panic!(
        "200 connections did not reach all {workers} workers: {:?}",
        pinned.keys()
    );
}

/// Two workers, a killed server: with or without `zone` (rcache keeps the servers' health
/// in a shared memory zone of its own), the workers share its state: one connect, one "go
/// to the fallback" and one "answers again" line in all.
fn down_state_across_workers(zone: bool) {
    const DEAD: usize = 1;
    const SKIPS: usize = 10;
    let tag = if zone { "zone" } else { "nozone" };
    let mut c = Cluster::start();
    let keys = keys(tag, 300);
    c.write(Writer::Pymemcache, &keys);
    let (dead_keys, live_keys) = c.split_by_home(&keys, DEAD);
    let mut upstream = c.upstream("rcache_hash rendezvous;", |_| "fail_timeout=1s".into());
    if zone {
        upstream = upstream.replace("upstream mc {\n", "upstream mc {\n    zone mc 64k;\n");
    }
    let nginx = Nginx::builder()
        .workers(2)
        .var("app", c.app.port())
        .http(&upstream)
        .http(
            "server {
                listen 127.0.0.1:{port} reuseport;
                add_header X-Rcache-Status $rcache_status always;
                add_header X-Worker $pid always;
                location / { rcache_pass mc; rcache_fallback @app; }
                location @app { proxy_pass http://127.0.0.1:{app}; }
            }",
        )
        .start();
    assert_all_hit("warm-up", &fetch_all(nginx.port(), &keys, 8));
    let mut pinned = client_per_worker(nginx.port(), 2, &live_keys[0]);
    let pids: Vec<u32> = pinned.keys().copied().collect();
    let (w1, w2) = (pids[0], pids[1]);
    let mut ask = |pid: u32, key: &Key| -> Got {
        let client = pinned.get_mut(&pid).expect("pinned client");
        let r = client.get(&key.url).expect("request");
        assert_eq!(r.header("x-worker"), Some(pid.to_string().as_str()));
        classify(&r, key)
    };

    let addr = c.addr(DEAD);
    c.mcs[DEAD].stop();
    let offset = nginx.error_log_len();
    let failed_at = Instant::now();
    assert_eq!(ask(w1, &dead_keys[0]), Got::Error, "worker 1 finds it dead");
    for n in 0..SKIPS {
        assert_eq!(
            ask(w2, &dead_keys[n % dead_keys.len()]),
            Got::Error,
            "worker 2"
        );
        assert_eq!(
            ask(w1, &dead_keys[n % dead_keys.len()]),
            Got::Error,
            "worker 1"
        );
        assert_eq!(ask(w2, &live_keys[n]), Got::Hit, "worker 2, a live key");
    }
    assert!(
        failed_at.elapsed() < Duration::from_millis(900),
        "too slow to stay within fail_timeout (1s): {:?}",
        failed_at.elapsed()
    );
    let log = nginx.error_log_since(offset);
    let connects = per_worker(&connect_failures(&log, &addr));
    let downs = per_worker(&down_lines(&log, &addr));
    let skips = per_worker(&skip_lines(&log));
    println!("{tag}: connects {connects:?}, down lines {downs:?}, skips {skips:?}");
    assert_eq!(connects, BTreeMap::from([(w1, 1)]), "{log}");
    assert_eq!(downs, BTreeMap::from([(w1, 1)]), "{log}");
    assert_eq!(skips, BTreeMap::from([(w1, SKIPS), (w2, SKIPS)]), "{log}");

    // Back: worker 2 polls until HIT, then worker 1 HITs at once.
    c.mcs[DEAD].restart();
    c.write(Writer::Pymemcache, &dead_keys);
    let back = wait_until(SECOND * 5, || ask(w2, &dead_keys[0]) == Got::Hit);
    assert!(
        back,
        "not HIT again via worker 2\n{}",
        nginx.error_log_since(offset)
    );
    assert_eq!(
        ask(w1, &dead_keys[0]),
        Got::Hit,
        "worker 1 after worker 2 saw it back"
    );
    let log = nginx.error_log_since(offset);
    let backs = back_lines(&log, &addr);
    assert_eq!(per_worker(&backs), BTreeMap::from([(w2, 1)]), "{log}");
    // Both workers' requests that did not try it (the polls included) are counted.
    let skipped = skip_lines(&log).len();
    assert!(skipped > 2 * SKIPS, "{log}");
    assert!(
        backs[0].contains(&format!("{skipped} request(s) went")),
        "both workers' requests are counted ({skipped}): {}",
        backs[0]
    );
    assert_eq!(connect_failures(&log, &addr).len(), 1, "{log}");
    assert_no_serious_log_lines(&nginx);
}

#[test]
fn without_a_zone_workers_share_a_dead_server_state_too() {
    down_state_across_workers(false);
}

#[test]
fn with_a_zone_workers_share_a_dead_server_state() {
    down_state_across_workers(true);
}

#[test]
fn max_conns_caps_lookups_in_flight_per_server() {
    const READ_TIMEOUT: Duration = Duration::from_millis(300);
    const SLOW: usize = 0;
    let c = Cluster::start();
    let keys = keys("maxconns", 300);
    c.write(Writer::PylibmcKetama, &keys);
    let (slow_keys, live_keys) = c.split_by_home(&keys, SLOW);
    let nginx = c
        .nginx(
            &c.upstream("rcache_hash ketama;", |i| {
                if i == SLOW {
                    "max_conns=1 max_fails=0".into()
                } else {
                    String::new()
                }
            }),
            1,
            "rcache_read_timeout 300ms;",
        )
        .start();
    // One client: never two lookups on a server at once.
    assert_all_hit("warm-up", &fetch_all(nginx.port(), &keys, 1));
    let offset = nginx.error_log_len();
    let slow_port = c.mcs[SLOW].port();
    c.mcs[SLOW].pause();
    let (first, second) = thread::scope(|scope| {
        let first = scope.spawn(|| get_timed(nginx.port(), &slow_keys[0]));
        // Once the first lookup waits at the stalled server (its `get` sits unread in
        // memcached's socket), a second lookup on it is over max_conns: straight to the
        // fallback.
        assert!(
            wait_until(SECOND * 5, || unread_bytes_at(slow_port) > 0),
            "the first lookup never reached the stalled server"
        );
        let second = get_timed(nginx.port(), &slow_keys[1]);
        (first.join().expect("first"), second)
    });
    c.mcs[SLOW].resume();
    println!("max_conns=1: first {:?}, second {:?}", first, second);
    assert_eq!(first.0, Got::Error);
    assert!(
        first.1 >= READ_TIMEOUT - Duration::from_millis(20),
        "{:?}",
        first.1
    );
    assert_eq!(second.0, Got::Error);
    assert!(
        second.1 < READ_TIMEOUT / 2,
        "the second lookup waited ({:?}) although max_conns=1 was reached",
        second.1
    );
    // max_fails=0: not down; with the server back, its keys HIT at once.
    assert_all_hit("after resume", &fetch_all(nginx.port(), &slow_keys, 1));
    assert_all_hit("others", &fetch_all(nginx.port(), &live_keys, 4));
    let log = nginx.error_log_since(offset);
    assert_eq!(skip_lines(&log).len(), 1, "{log}");
    assert_eq!(lines_with(&log, &["upstream timed out"]).len(), 1, "{log}");
    assert_no_serious_log_lines(&nginx);
}

/// Bytes received but not yet read on established TCP sockets whose local address is
/// 127.0.0.1:`port` (from /proc/net/tcp): requests waiting at a stalled server.
fn unread_bytes_at(port: u16) -> u64 {
    let local = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (addr, state, queues) = (cols.get(1)?, cols.get(3)?, cols.get(4)?);
            if *addr != local || *state != "01" {
                return None;
            }
            u64::from_str_radix(queues.split(':').nth(1)?, 16).ok()
        })
        .sum()
}

// ---------------------------------------------------------------------------------------
// Server names are the client's, textually
// ---------------------------------------------------------------------------------------

#[test]
fn servers_named_by_host_name_as_the_client_names_them() {
    use std::net::ToSocketAddrs;
    let c = Cluster::start();
    let named: Vec<String> = c
        .mcs
        .iter()
        .map(|mc| format!("localhost:{}", mc.port()))
        .collect();
    let upstream = |hash: &str, names: &[String]| {
        let mut s = format!("upstream mc {{\n    rcache_hash {hash};\n");
        for n in names {
            s.push_str(&format!("    server {n};\n"));
        }
        s + "}\n"
    };
    let resolved: Vec<_> = ("localhost", 1)
        .to_socket_addrs()
        .expect("resolve localhost")
        .collect();
    if resolved.len() != 1 {
        // e.g. 127.0.0.1 and ::1: a key needs one server.
        let check = Nginx::builder()
            .var("app", 1)
            .http(&upstream("rendezvous", &named))
            .http(&server_block(""))
            .check_config();
        assert!(!check.ok, "{}", check.output);
        assert!(
            emerg(&check).contains("addresses, a key needs one server"),
            "{}",
            emerg(&check)
        );
        println!("localhost resolves to {resolved:?}: rejected as expected");
        return;
    }
    for (writer, tag) in [
        (Writer::Pymemcache, "host-rv"),
        (Writer::PylibmcKetama, "host-kt"),
    ] {
        let keys = keys(tag, 2000);
        c.write_with(writer, &named, &keys);
        let home = c.placement(&keys);
        // Named as the client names them: every key found.
        let nginx = c
            .nginx(&upstream(writer.rcache_hash(), &named), 1, "")
            .start();
        assert_all_hit(
            &format!("{writer:?} with localhost:port"),
            &fetch_all(nginx.port(), &keys, 8),
        );
        drop(nginx);
        // The same servers by address: other names, other placement.
        let by_ip: Vec<String> = (0..3).map(|i| c.addr(i)).collect();
        let nginx = c
            .nginx(&upstream(writer.rcache_hash(), &by_ip), 1, "")
            .start();
        let f = fetch_all(nginx.port(), &keys, 8);
        println!(
            "{writer:?} written with localhost:port, nginx with 127.0.0.1:port: {}",
            f.summary()
        );
        assert_eq!(f.count(&Got::Hit) + f.count(&Got::Miss), keys.len());
        assert!(f.count(&Got::Miss) >= keys.len() / 5, "{}", f.summary());
        assert!(home.iter().any(|&h| h != home[0]));
    }
}

/// memcached on a unix socket only (the [`Memcached`] fixture is TCP).
struct UnixMemcached {
    proc: common::process::Proc,
    path: std::path::PathBuf,
    _dir: common::process::TempDir,
}

impl UnixMemcached {
    fn start() -> UnixMemcached {
        let dir = common::process::TempDir::new("mc-unix");
        let path = dir.path().join("mc.sock");
        let log = dir.path().join("memcached.log");
        let binary =
            common::process::env_path("RCACHE_MEMCACHED").unwrap_or_else(|| "memcached".into());
        let mut cmd = std::process::Command::new(binary);
        cmd.arg("-s")
            .arg(&path)
            .args(["-a", "0777", "-U", "0", "-t", "1", "-c", "4096"]);
        if common::process::is_root() {
            cmd.args(["-u", "root"]);
        }
        let proc = common::process::Proc::spawn("memcached-unix", &mut cmd, &log);
        assert!(
            wait_until(SECOND * 10, || std::os::unix::net::UnixStream::connect(
                &path
            )
            .is_ok()),
            "memcached did not listen on {}: {}",
            path.display(),
            common::process::read_text(&log)
        );
        UnixMemcached {
            proc,
            path,
            _dir: dir,
        }
    }

    fn curr_items(&self) -> u64 {
        use std::io::BufRead;
        let mut s = std::os::unix::net::UnixStream::connect(&self.path).expect("connect");
        s.set_read_timeout(Some(SECOND * 5)).expect("timeout");
        s.write_all(b"stats\r\n").expect("stats");
        let mut items = None;
        for line in BufReader::new(s).lines() {
            let line = line.expect("stats line");
            if line == "END" {
                break;
            }
            if let Some(v) = line.strip_prefix("STAT curr_items ") {
                items = v.parse().ok();
            }
        }
        items.expect("curr_items")
    }
}

impl Drop for UnixMemcached {
    fn drop(&mut self) {
        self.proc.stop(libc::SIGKILL, SECOND * 5);
    }
}

#[test]
fn proof_with_unix_socket_servers() {
    // pymemcache names a socket node by its path; libmemcached hashes "path:0-N".
    const N: usize = 3000;
    let mcs: Vec<UnixMemcached> = (0..3).map(|_| UnixMemcached::start()).collect();
    let app = App::start();
    for (writer, tag) in [
        (Writer::Pymemcache, "ux-rv"),
        (Writer::PylibmcKetama, "ux-kt"),
        (Writer::PylibmcModula, "ux-md"),
    ] {
        let before: Vec<u64> = mcs.iter().map(UnixMemcached::curr_items).collect();
        let client_servers: Vec<String> = mcs
            .iter()
            .map(|m| {
                if writer == Writer::Pymemcache {
                    format!("unix:{}", m.path.display())
                } else {
                    m.path.display().to_string()
                }
            })
            .collect();
        let keys = keys(tag, N);
        let names: Vec<String> = keys.iter().map(|k| k.key.clone()).collect();
        write_keys(writer, &client_servers, &names);
        let per_server = deltas(
            &mcs.iter()
                .map(UnixMemcached::curr_items)
                .collect::<Vec<_>>(),
            &before,
        );
        assert_eq!(per_server.iter().sum::<u64>(), N as u64, "{per_server:?}");
        assert!(
            per_server.iter().all(|&n| n >= (N / 20) as u64),
            "{per_server:?}"
        );
        let mut upstream = format!(
            "upstream mc {{\n    rcache_hash {};\n",
            writer.rcache_hash()
        );
        for m in &mcs {
            upstream.push_str(&format!("    server unix:{};\n", m.path.display()));
        }
        upstream.push_str("}\n");
        let nginx = Nginx::builder()
            .workers(2)
            .var("app", app.port())
            .http(&upstream)
            .http(&server_block(""))
            .start();
        let f = fetch_all(nginx.port(), &keys, 8);
        println!(
            "{writer:?} over unix sockets, spread {per_server:?}: {}",
            f.summary()
        );
        assert_all_hit(&format!("{writer:?} over unix sockets"), &f);
        assert_no_serious_log_lines(&nginx);
    }
}

#[test]
fn stalled_server_under_concurrent_requests_is_one_failure_episode() {
    // 20 lookups in flight on a server that stalls: all fall back after one read timeout
    // (in parallel, not one after another), and the server goes down once.
    const READ_TIMEOUT: Duration = Duration::from_millis(300);
    const STALLED: usize = 2;
    const CONCURRENT: usize = 20;
    let c = Cluster::start();
    let keys = keys("stall20", 300);
    c.write(Writer::PylibmcKetama, &keys);
    let (stalled_keys, live_keys) = c.split_by_home(&keys, STALLED);
    let nginx = c
        .nginx(
            &c.upstream("rcache_hash ketama;", |_| "fail_timeout=30s".into()),
            1,
            "rcache_read_timeout 300ms;",
        )
        .start();
    assert_all_hit("warm-up", &fetch_all(nginx.port(), &keys, 8));
    let addr = c.addr(STALLED);
    let offset = nginx.error_log_len();
    c.mcs[STALLED].pause();
    let barrier = std::sync::Barrier::new(CONCURRENT);
    let port = nginx.port();
    let started = Instant::now();
    let results: Vec<(Got, Duration)> = thread::scope(|scope| {
        let handles: Vec<_> = (0..CONCURRENT)
            .map(|i| {
                let (barrier, key) = (&barrier, &stalled_keys[i % stalled_keys.len()]);
                scope.spawn(move || {
                    barrier.wait();
                    get_timed(port, key)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect()
    });
    let took = started.elapsed();
    let live = fetch_all(nginx.port(), &live_keys, 4);
    // Still down (fail_timeout=30s): its keys fall back at once, also after resume.
    c.mcs[STALLED].resume();
    let (after, after_took) = get_timed(nginx.port(), &stalled_keys[0]);
    let slow = results
        .iter()
        .filter(|(_, t)| *t >= READ_TIMEOUT - Duration::from_millis(20))
        .count();
    println!("{CONCURRENT} concurrent lookups on a stalled server: {took:?}, {slow} waited");
    assert!(results.iter().all(|(g, _)| *g == Got::Error), "{results:?}");
    assert!(
        took < READ_TIMEOUT + SECOND,
        "{CONCURRENT} concurrent lookups took {took:?}: timeouts in series?"
    );
    assert_all_hit("the other servers' keys", &live);
    assert_eq!(after, Got::Error);
    assert!(after_took < READ_TIMEOUT / 2, "{after_took:?}");
    let log = nginx.error_log_since(offset);
    assert_eq!(
        lines_with(&log, &["upstream timed out", &addr]).len(),
        slow,
        "{log}"
    );
    assert_eq!(skip_lines(&log).len(), CONCURRENT - slow + 1, "{log}");
    assert_eq!(
        down_lines(&log, &addr).len(),
        1,
        "one line for the episode:\n{log}"
    );
    assert_no_serious_log_lines(&nginx);
}

#[test]
fn reload_to_the_matching_algorithm_takes_effect() {
    let c = Cluster::start();
    let keys = keys("realg", 1000);
    c.write(Writer::Pymemcache, &keys);
    c.placement(&keys);
    let mut nginx = c
        .nginx(&c.upstream("rcache_hash modula;", |_| String::new()), 2, "")
        .start();
    let before = fetch_all(nginx.port(), &keys, 4);
    assert!(
        before.count(&Got::Miss) >= keys.len() / 4,
        "{}",
        before.summary()
    );
    nginx.set_http(&format!(
        "{}\n{}",
        c.upstream("rcache_hash rendezvous;", |_| String::new()),
        server_block("")
    ));
    nginx.reload();
    assert_all_hit("after reload", &fetch_all(nginx.port(), &keys, 4));
    assert_no_serious_log_lines(&nginx);
}

#[test]
fn rcache_hash_duplicate_server_line_is_rejected_with_a_clear_message() {
    // The same server twice is a config mistake: rejected, and the message must say what
    // is wrong with the line (not that it "resolves to several addresses").
    let c = check_upstream(
        "upstream mc { rcache_hash ketama; server 127.0.0.1:11211; server 127.0.0.1:11212; \
         server 127.0.0.1:11211; }",
    );
    assert!(!c.ok, "{}", c.output);
    let line = emerg(&c);
    assert!(line.contains("rcache_hash"), "{line}");
    assert!(line.contains("\"127.0.0.1:11211\""), "{line}");
    assert!(line.contains("is listed twice"), "{line}");
}

#[test]
fn with_a_zone_the_workers_share_a_lone_servers_down_state() {
    let mut mc = Memcached::start();
    let key = Key {
        key: "/zoned/page".into(),
        url: "/zoned/page".into(),
    };
    let app = App::start();
    let nginx = Nginx::builder()
        .workers(2)
        .var("app", app.port())
        .http(&format!(
            "upstream mc {{ zone lone 64k; server {} max_fails=1 fail_timeout=30s; }}",
            mc.addr()
        ))
        .http(&server_block(""))
        .start();
    mc.stop();
    let offset = nginx.error_log_len();
    for n in 1..=60 {
        assert_eq!(get(nginx.port(), &key), Got::Error, "request {n}");
    }
    let log = nginx.error_log_since(offset);
    // Both workers answered, but only the first failure tried the server.
    let workers: std::collections::BTreeSet<u32> = log
        .lines()
        .filter(|l| l.contains("[error]"))
        .map(pid_of)
        .collect();
    assert_eq!(connect_failures(&log, &mc.addr()).len(), 1, "{log}");
    assert_eq!(down_lines(&log, &mc.addr()).len(), 1, "{log}");
    assert_eq!(workers.len(), 1, "{log}");
    assert_eq!(app.requests(), 60);
}

#[test]
fn a_lone_server_sending_garbage_is_marked_down_like_one_that_refuses() {
    let fake = FakeMemcached::start(|_| vec![Step::write("HTTP/1.1 400 Bad Request\r\n\r\n")]);
    let app = App::start();
    let key = Key {
        key: "/garbage/page".into(),
        url: "/garbage/page".into(),
    };
    let nginx = Nginx::builder()
        .var("app", app.port())
        .http(&format!(
            "upstream mc {{ server {} max_fails=1 fail_timeout=30s; }}",
            fake.addr()
        ))
        .http(&server_block(""))
        .start();
    for n in 1..=20 {
        assert_eq!(get(nginx.port(), &key), Got::Error, "request {n}");
    }
    assert_eq!(fake.requests().len(), 1, "asked once, then marked down");
    let log = nginx.error_log();
    let down = down_lines(&log, &fake.addr().to_string());
    assert_eq!(down.len(), 1, "{log}");
    assert!(
        down[0].contains("(sent a reply that is no valid answer)"),
        "{}",
        down[0]
    );
    assert_eq!(
        error_lines(&log).len(),
        2,
        "the reply's line and the down line:\n{log}"
    );
}
