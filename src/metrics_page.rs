//! The counters as Prometheus's text exposition format, version 0.0.4 (pure).

use core::fmt::Write;

use crate::front::FrontFigures;
use crate::metrics::{Counter, Snapshot, STATUSES};

/// A memcached server's figures.
#[derive(Clone, Debug, Default)]
pub struct ServerFigures {
    pub upstream: String,
    pub server: String,
    pub up: bool,
    pub lookups: u64,
    /// By kind: (name, count).
    pub failures: Vec<(&'static str, u64)>,
    pub down_episodes: u64,
    pub connections_opened: u64,
    pub idle: i64,
    /// (upper bound in seconds or None for +Inf, lookups in that bucket alone).
    pub buckets: Vec<(Option<f64>, u64)>,
    pub time_seconds: f64,
}

/// Everything the page shows.
#[derive(Debug, Default)]
pub struct Figures {
    pub counters: Snapshot,
    pub fronts: Vec<FrontFigures>,
    pub servers: Vec<ServerFigures>,
}

/// The content type of the page.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Page(String);

impl Page {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl core::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// A label value as the format wants it: backslash, double quote and line feed escaped.
pub fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The zone-wide counters: each family's name and help, and its samples' labels and
/// counters.
type Samples = &'static [(&'static [(&'static str, &'static str)], Counter)];
const ZONE_COUNTERS: &[(&str, &str, Samples)] = &[
    (
        "rcache_served_bytes_total",
        "Body bytes of cached pages sent, by where the page came from.",
        &[
            (&[("source", "memcached")], Counter::ServedMemcached),
            (&[("source", "front")], Counter::ServedFront),
        ],
    ),
    (
        "rcache_stores_total",
        "Pages rcache_store tried to write, by $rcache_store_status.",
        &[
            (&[("outcome", "STORED")], Counter::StoreStored),
            (&[("outcome", "PRESENT")], Counter::StorePresent),
            (&[("outcome", "NOT_CACHEABLE")], Counter::StoreNotCacheable),
            (&[("outcome", "TOO_LARGE")], Counter::StoreTooLarge),
            (&[("outcome", "FAILED")], Counter::StoreFailed),
        ],
    ),
    (
        "rcache_purges_total",
        "PURGE requests, by kind and by what memcached said (failed: it could not be asked).",
        &[
            (
                &[("kind", "hard"), ("result", "found")],
                Counter::PurgeHardFound,
            ),
            (
                &[("kind", "hard"), ("result", "absent")],
                Counter::PurgeHardAbsent,
            ),
            (
                &[("kind", "hard"), ("result", "failed")],
                Counter::PurgeHardFailed,
            ),
            (
                &[("kind", "soft"), ("result", "found")],
                Counter::PurgeSoftFound,
            ),
            (
                &[("kind", "soft"), ("result", "absent")],
                Counter::PurgeSoftAbsent,
            ),
            (
                &[("kind", "soft"), ("result", "failed")],
                Counter::PurgeSoftFailed,
            ),
        ],
    ),
    (
        "rcache_front_requests_total",
        "Lookups in the front cache, by result.",
        &[
            (&[("result", "hit")], Counter::FrontHit),
            (&[("result", "miss")], Counter::FrontMiss),
            (&[("result", "pass")], Counter::FrontPass),
        ],
    ),
    (
        "rcache_lock_waiting_requests_total",
        "Requests that waited for another request's render (rcache_lock).",
        &[(&[], Counter::LockWaited)],
    ),
    (
        "rcache_lock_waits_total",
        "Ends of those waits: got the page, or rcache_lock_timeout passed.",
        &[
            (&[("result", "page")], Counter::LockWaitPage),
            (&[("result", "timeout")], Counter::LockWaitTimeout),
        ],
    ),
    (
        "rcache_hit_for_pass_total",
        "Hit-for-pass markers written, and lookups that found one (PASS).",
        &[
            (&[("event", "written")], Counter::HitForPassWritten),
            (&[("event", "honoured")], Counter::HitForPassHonoured),
        ],
    ),
];

/// The page.
pub fn render(f: &Figures) -> String {
    let mut p = Page(String::with_capacity(4096));
    let c = &f.counters.counters;
    let n = |counter: Counter| c[counter as usize];

    p.family(
        "rcache_requests_total",
        "counter",
        "Requests rcache decided, by $rcache_status and server block.",
    );
    for (server, requests) in &f.counters.servers {
        for (status, count) in STATUSES.iter().zip(requests) {
            p.sample(
                "rcache_requests_total",
                &[("server", server), ("status", &status.to_string())],
                count,
            );
        }
    }
    for &(name, help, samples) in ZONE_COUNTERS {
        p.family(name, "counter", help);
        for &(labels, counter) in samples {
            p.sample(name, labels, n(counter));
        }
    }
    for (name, kind, help) in [
        (
            "rcache_front_insertions_total",
            "counter",
            "Pages kept in the front zone.",
        ),
        (
            "rcache_front_evictions_total",
            "counter",
            "Pages evicted from the front zone to make room.",
        ),
        (
            "rcache_front_used_bytes",
            "gauge",
            "Bytes of pages in the front zone.",
        ),
        (
            "rcache_front_capacity_bytes",
            "gauge",
            "Size of the front zone.",
        ),
        (
            "rcache_front_pinned",
            "gauge",
            "Responses sending a page straight from the front zone now.",
        ),
    ] {
        p.family(name, kind, help);
        for z in &f.fronts {
            let v = match name {
                "rcache_front_insertions_total" => z.insertions,
                "rcache_front_evictions_total" => z.evictions,
                "rcache_front_used_bytes" => z.used_bytes,
                "rcache_front_pinned" => z.pinned,
                _ => z.capacity_bytes,
            };
            p.sample(name, &[("zone", &z.zone)], v);
        }
    }
    let servers = |p: &mut Page,
                   name: &str,
                   kind: &str,
                   help: &str,
                   value: &dyn Fn(&ServerFigures) -> String| {
        p.family(name, kind, help);
        for s in &f.servers {
            p.sample(
                name,
                &[("upstream", &s.upstream), ("server", &s.server)],
                value(s),
            );
        }
    };
    servers(
        &mut p,
        "rcache_server_up",
        "gauge",
        "1 while the memcached server is up, 0 while it is marked down.",
        &|s| u8::from(s.up).to_string(),
    );
    servers(
        &mut p,
        "rcache_server_lookups_total",
        "counter",
        "Attempts on the memcached server (lookups, purges).",
        &|s| s.lookups.to_string(),
    );
    p.family(
        "rcache_server_failures_total",
        "counter",
        "Failed attempts on the memcached server, by kind.",
    );
    for s in &f.servers {
        for (kind, count) in &s.failures {
            p.sample(
                "rcache_server_failures_total",
                &[
                    ("upstream", &s.upstream),
                    ("server", &s.server),
                    ("kind", kind),
                ],
                count,
            );
        }
    }
    servers(
        &mut p,
        "rcache_server_down_episodes_total",
        "counter",
        "Times the memcached server was marked down.",
        &|s| s.down_episodes.to_string(),
    );
    servers(
        &mut p,
        "rcache_server_connections_opened_total",
        "counter",
        "New connections to the memcached server (the others are pooled).",
        &|s| s.connections_opened.to_string(),
    );
    servers(
        &mut p,
        "rcache_server_idle_connections",
        "gauge",
        "Idle pooled connections to the memcached server, all workers.",
        &|s| s.idle.max(0).to_string(),
    );
    p.family(
        "rcache_server_lookup_duration_seconds",
        "histogram",
        "Time of attempts on the memcached server.",
    );
    for s in &f.servers {
        let mut cumulative = 0;
        for (bound, count) in &s.buckets {
            cumulative += count;
            let le = bound.map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            p.sample(
                "rcache_server_lookup_duration_seconds_bucket",
                &[
                    ("upstream", &s.upstream),
                    ("server", &s.server),
                    ("le", &le),
                ],
                cumulative,
            );
        }
        let labels = [
            ("upstream", s.upstream.as_str()),
            ("server", s.server.as_str()),
        ];
        p.sample(
            "rcache_server_lookup_duration_seconds_sum",
            &labels,
            s.time_seconds,
        );
        p.sample(
            "rcache_server_lookup_duration_seconds_count",
            &labels,
            cumulative,
        );
    }
    p.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures() -> Figures {
        let mut f = Figures::default();
        f.counters.counters[Counter::ServedMemcached as usize] = 1234;
        f.counters
            .servers
            .push(("example.com".into(), [3, 1, 0, 0, 0, 0, 0, 0, 0]));
        f.fronts.push(FrontFigures {
            zone: "front".into(),
            insertions: 2,
            evictions: 1,
            used_bytes: 100,
            capacity_bytes: 1 << 20,
            pinned: 3,
        });
        f.servers.push(ServerFigures {
            upstream: "mc".into(),
            server: "127.0.0.1:11211".into(),
            up: true,
            lookups: 4,
            failures: vec![("refused", 1)],
            buckets: vec![(Some(0.0001), 2), (Some(0.001), 1), (None, 1)],
            time_seconds: 0.25,
            ..ServerFigures::default()
        });
        f
    }

    #[test]
    fn every_family_has_help_and_type_and_samples_follow() {
        let page = render(&figures());
        assert!(page.contains(
            "# TYPE rcache_requests_total counter\n\
             rcache_requests_total{server=\"example.com\",status=\"HIT\"} 3\n\
             rcache_requests_total{server=\"example.com\",status=\"MISS\"} 1\n"
        ));
        assert!(page.contains("rcache_served_bytes_total{source=\"memcached\"} 1234\n"));
        assert!(page.contains("rcache_front_capacity_bytes{zone=\"front\"} 1048576\n"));
        assert!(page.contains("rcache_front_pinned{zone=\"front\"} 3\n"));
        for line in page.lines().filter(|l| !l.starts_with('#')) {
            let family = line.split(['{', ' ']).next().unwrap_or_default();
            let base = family
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                page.contains(&format!("# TYPE {base} "))
                    || page.contains(&format!("# TYPE {family} ")),
                "{line}"
            );
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_count_is_the_last() {
        let page = render(&figures());
        let l = "upstream=\"mc\",server=\"127.0.0.1:11211\"";
        assert!(page.contains(&format!(
            "rcache_server_lookup_duration_seconds_bucket{{{l},le=\"0.0001\"}} 2\n"
        )));
        assert!(page.contains(&format!(
            "rcache_server_lookup_duration_seconds_bucket{{{l},le=\"0.001\"}} 3\n"
        )));
        assert!(page.contains(&format!(
            "rcache_server_lookup_duration_seconds_bucket{{{l},le=\"+Inf\"}} 4\n"
        )));
        assert!(page.contains(&format!(
            "rcache_server_lookup_duration_seconds_count{{{l}}} 4\n"
        )));
        assert!(page.contains(&format!(
            "rcache_server_lookup_duration_seconds_sum{{{l}}} 0.25\n"
        )));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
