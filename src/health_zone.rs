//! Where rcache keeps each memcached server's health (`health.rs`'s rule): a small
//! shared-memory zone of its own, so that
//!
//! * all workers share one view, with or without the upstream's `zone`: an outage costs one
//!   probe per `fail_timeout` and one pair of log lines for the whole host, not per worker;
//! * a reload keeps it: nginx hands a zone of unchanged name and size to the new
//!   configuration, whose servers find their entries again by upstream, name and address
//!   (a server that was down is still down for the new workers, and its episode goes on).
//!
//! A healthy server costs no lock: its failure count is read atomically first.

use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use ngx::core::Status;
use ngx::ffi::*;
use ngx::ngx_log_error;

use crate::health::{self, Change, Episode, PeerState, Rule};
use crate::outcome::Failure;

/// The zone's name (nginx's shared memory names are global: this one is taken).
const ZONE_NAME: &str = "rcache_health";
/// Servers the zone can hold, over every upstream rcache passes to.
pub const CAPACITY: usize = 512;
/// The zone: the table plus the slab pool's own bookkeeping. Never change it lightly:
/// a zone whose size changed is not handed to the new configuration at reload.
const ZONE_SIZE: usize = 512 * 1024;

/// Upper bounds (µs) of the lookup-time histogram's buckets; one more counts the rest.
pub const BUCKETS_US: [u64; 9] = [
    100, 500, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000,
];

/// What failed, for the failure counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The connection was never made: refused, unreachable.
    Refused,
    /// Connect, send or read timeout.
    Timeout,
    /// Connected, then reset or closed.
    Reset,
    /// A reply that is no valid answer.
    Malformed,
}

impl FailureKind {
    pub const ALL: [FailureKind; 4] = [
        FailureKind::Refused,
        FailureKind::Timeout,
        FailureKind::Reset,
        FailureKind::Malformed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Refused => "refused",
            FailureKind::Timeout => "timeout",
            FailureKind::Reset => "reset",
            FailureKind::Malformed => "malformed",
        }
    }
}

/// A server's counters (`rcache_metrics`), updated by every worker with atomics.
#[repr(C)]
pub struct ServerStats {
    pub lookups: AtomicU64,
    /// By [`FailureKind`], in the order of `FailureKind::ALL`.
    pub failures: [AtomicU64; 4],
    pub down_episodes: AtomicU64,
    pub connections_opened: AtomicU64,
    /// Idle pooled connections of all workers.
    pub idle: AtomicI64,
    /// Lookups per bucket of [`BUCKETS_US`] (not cumulative); the last: slower ones.
    pub buckets: [AtomicU64; 10],
    pub time_us: AtomicU64,
}

/// One server, in shared memory; written under the slab pool's mutex.
#[repr(C)]
struct Entry {
    /// Of upstream name, server name and address; with `generation` 0 the entry is free.
    key: u64,
    /// The newest configuration that has this server.
    generation: u64,
    /// Read without the lock: 0 means up, nothing to check.
    fails: AtomicUsize,
    accessed: time_t,
    checked: time_t,
    /// The current down episode's start (`ngx_current_msec`), 0 when up.
    down_since: ngx_msec_t,
    fell_back: u64,
    stats: ServerStats,
}

#[repr(C)]
struct Shared {
    /// Bumped by each configuration that takes the zone.
    generation: u64,
    entries: [Entry; CAPACITY],
}

/// Called when the zone is ready (in the master, before the workers start), to take an
/// entry for each server of the configuration from `table`; false fails the start.
pub type OnReady = unsafe fn(data: *const c_void, table: &mut Table) -> bool;

/// The zone's `shm_zone->data`, per configuration.
#[repr(C)]
struct ZoneCtx {
    shpool: *mut ngx_slab_pool_t,
    shared: *mut Shared,
    on_ready: OnReady,
    data: *const c_void,
}

/// Postconfiguration: asks for the zone (once the configuration uses `rcache_pass`);
/// `on_ready(data, ...)` will give the servers their entries.
///
/// # Safety
/// `cf` must be the finished configuration; `data` must live as long as it.
pub unsafe fn add(cf: *mut ngx_conf_t, on_ready: OnReady, data: *const c_void) -> bool {
    // SAFETY: the configuration's pool and cycle, during configuration.
    unsafe {
        let mut name = ngx_str_t {
            len: ZONE_NAME.len(),
            data: ZONE_NAME.as_ptr().cast_mut(),
        };
        let tag = ptr::addr_of!(ZONE_TAG).cast_mut().cast::<c_void>();
        let zone = ngx_shared_memory_add(cf, &mut name, ZONE_SIZE, tag);
        if zone.is_null() {
            return false;
        }
        let ctx = ngx_palloc((*cf).pool, size_of::<ZoneCtx>()) as *mut ZoneCtx;
        if ctx.is_null() {
            return false;
        }
        ptr::write(
            ctx,
            ZoneCtx {
                shpool: ptr::null_mut(),
                shared: ptr::null_mut(),
                on_ready,
                data,
            },
        );
        (*zone).data = ctx.cast();
        (*zone).init = Some(init_zone);
    }
    true
}

/// The zone's tag: its own, so that no `rcache_front_zone` can be taken for it.
static ZONE_TAG: u8 = 0;

/// Shared memory is ready (in the master, before the workers start): set up the table
/// or take over the previous configuration's, and give every server its entry.
unsafe extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, old: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx calls this once the zone is mapped; its memory is a slab pool, and
    // the targets are this configuration's, complete.
    unsafe {
        let ctx = &mut *((*zone).data as *mut ZoneCtx);
        let shpool = (*zone).shm.addr as *mut ngx_slab_pool_t;
        ctx.shpool = shpool;
        if let Some(old) = (old as *const ZoneCtx).as_ref() {
            ctx.shared = old.shared;
        } else {
            let shared = ngx_slab_calloc(shpool, size_of::<Shared>()) as *mut Shared;
            if shared.is_null() {
                return Status::NGX_ERROR.into();
            }
            (*shpool).data = shared.cast();
            ctx.shared = shared;
        }
        let shared = &mut *ctx.shared;
        shared.generation += 1;
        let mut table = Table {
            shared,
            mutex: ptr::addr_of_mut!((*shpool).mutex),
            log: (*zone).shm.log,
        };
        if !(ctx.on_ready)(ctx.data, &mut table) {
            return Status::NGX_ERROR.into();
        }
    }
    Status::NGX_OK.into()
}

/// The zone's table, while a configuration takes its entries.
pub struct Table<'a> {
    shared: &'a mut Shared,
    mutex: *mut ngx_shmtx_t,
    log: *mut ngx_log_t,
}

impl Table<'_> {
    /// The entry of server `name` at `addr` (sockaddr bytes) of `upstream`: the one it had
    /// before a reload, else a new one. `None` (said) when the zone is full.
    pub fn server(
        &mut self,
        upstream: &[u8],
        name: &str,
        addr: &[u8],
        rule: Rule,
    ) -> Option<ServerHealth> {
        let key = entry_key(upstream, name.as_bytes(), addr);
        let Some(entry) = claim(self.shared, key) else {
            ngx_log_error!(
                NGX_LOG_EMERG,
                self.log,
                "rcache: more than {} memcached servers in the upstreams rcache_pass uses",
                CAPACITY
            );
            return None;
        };
        Some(ServerHealth {
            entry,
            mutex: self.mutex,
            addr: addr.to_vec(),
            name: name.to_string(),
            rule,
        })
    }
}

/// The entry of `key` for this generation: the one it had (reload), else a free one, else
/// one that no configuration since the previous one has.
fn claim(shared: &mut Shared, key: u64) -> Option<*mut Entry> {
    let generation = shared.generation;
    let entries = &mut shared.entries;
    let index = entries
        .iter()
        .position(|e| e.generation != 0 && e.key == key)
        .or_else(|| entries.iter().position(|e| e.generation == 0))
        .or_else(|| entries.iter().position(|e| e.generation + 1 < generation))?;
    let e = &mut entries[index];
    if e.generation == 0 || e.key != key {
        // SAFETY: every field of Entry is an integer or an atomic: all zeroes is valid.
        *e = unsafe { core::mem::zeroed() };
        e.key = key;
    }
    e.generation = generation;
    Some(e)
}

/// FNV-1a over the fields, each ended by a 0 byte.
fn entry_key(upstream: &[u8], name: &[u8], addr: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for field in [upstream, name, addr] {
        for &b in field.iter().chain(&[0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// One server's entry, for the workers of one configuration.
pub struct ServerHealth {
    entry: *mut Entry,
    mutex: *mut ngx_shmtx_t,
    /// Its address (sockaddr bytes), to find it by the address a balancer chose.
    addr: Vec<u8>,
    /// Its address as the `server` line gave it, for the log.
    name: String,
    rule: Rule,
}

/// How an attempt's end changed a server, for the log line that says so.
pub struct Recorded {
    pub change: Change,
    pub fails: ngx_uint_t,
    pub episode: Episode,
}

impl ServerHealth {
    pub fn addr(&self) -> &[u8] {
        &self.addr
    }

    /// The address as the `server` line gave it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its counters, shared by the workers (and kept across reload).
    pub fn stats(&self) -> &ServerStats {
        // SAFETY: the entry is in shared memory mapped for the process's lifetime.
        unsafe { &(*self.entry).stats }
    }

    /// Whether it is marked down now (for the `up` gauge).
    pub fn marked_down(&self) -> bool {
        let rule = self.rule;
        !self.is_up() && self.locked(|e| state(e, rule).is_down())
    }

    /// Whether a request may try the server at `now`: not while it is down, except the
    /// one request (of all workers) per `fail_timeout` that checks it. A request turned
    /// away is counted in the episode.
    pub fn admit(&self, now: time_t) -> bool {
        let rule = self.rule;
        if self.is_up() {
            return true;
        }
        self.locked(|e| {
            let mut s = state(e, rule);
            let admitted = health::admit(&mut s, now);
            e.checked = s.checked;
            if !admitted {
                e.fell_back += 1;
            }
            admitted
        })
    }

    /// Whether the server is down at `now` and not due for its check (a store skips it;
    /// it never takes the check).
    pub fn is_down(&self, now: time_t) -> bool {
        let rule = self.rule;
        !self.is_up()
            && self.locked(|e| {
                let s = state(e, rule);
                s.is_down() && now - s.checked <= s.fail_timeout
            })
    }

    /// Records how an attempt ended at `now` (seconds; `now_msec` for the episode).
    pub fn record(&self, failed: bool, now: time_t, now_msec: ngx_msec_t) -> Recorded {
        let rule = self.rule;
        if !failed && self.is_up() {
            return Recorded {
                change: Change::None,
                fails: 0,
                episode: Episode::default(),
            };
        }
        self.locked(|e| {
            let mut s = state(e, rule);
            let change = health::record(&mut s, failed, now);
            e.fails.store(s.fails, Ordering::Relaxed);
            e.accessed = s.accessed;
            e.checked = s.checked;
            let episode = Episode {
                since: (e.down_since != 0).then_some(e.down_since),
                fell_back: e.fell_back,
            };
            match change {
                Change::WentDown => {
                    // 0 is "up": a clock that reads 0 is off by a millisecond.
                    e.down_since = now_msec.max(1);
                    e.fell_back = 0;
                    e.stats.down_episodes.fetch_add(1, Ordering::Relaxed);
                }
                Change::CameBack => {
                    e.down_since = 0;
                    e.fell_back = 0;
                }
                Change::None => {}
            }
            Recorded {
                change,
                fails: s.fails,
                episode,
            }
        })
    }

    fn is_up(&self) -> bool {
        // SAFETY: the entry is in shared memory mapped for the process's lifetime.
        unsafe { (*self.entry).fails.load(Ordering::Relaxed) == 0 }
    }

    fn locked<T>(&self, f: impl FnOnce(&mut Entry) -> T) -> T {
        // SAFETY: the zone's mutex guards every entry; held only for `f`.
        unsafe {
            ngx_shmtx_lock(self.mutex);
            let r = f(&mut *self.entry);
            ngx_shmtx_unlock(self.mutex);
            r
        }
    }
}

fn state(e: &Entry, rule: Rule) -> PeerState {
    PeerState {
        fails: e.fails.load(Ordering::Relaxed),
        max_fails: rule.max_fails,
        fail_timeout: rule.fail_timeout,
        accessed: e.accessed,
        checked: e.checked,
    }
}

impl ServerStats {
    /// One attempt on the server ended after `us` microseconds; `failure` if it failed.
    pub fn lookup(&self, us: u64, failure: Option<FailureKind>) {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        if let Some(kind) = failure {
            let i = FailureKind::ALL
                .iter()
                .position(|&k| k == kind)
                .unwrap_or(0);
            self.failures[i].fetch_add(1, Ordering::Relaxed);
        }
        let bucket = BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(BUCKETS_US.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.time_us.fetch_add(us, Ordering::Relaxed);
    }
}

impl ServerHealth {
    /// Whether its failures are worth nginx's own `[error]` line each: not when rcache
    /// marks it down, and says so once.
    pub fn marks_down(&self) -> bool {
        self.rule.max_fails != 0
    }

    /// Records an attempt and says it when that changed the server's state: the one
    /// place an episode's lines are written.
    pub fn record_and_say(&self, failed: bool, failure: Failure, log: *mut ngx_log_t) {
        // SAFETY: nginx's cached time, read in the worker that updates it.
        let now_msec = unsafe { ngx_current_msec };
        let r = self.record(failed, ngx_time(), now_msec);
        let (name, rule) = (&self.name, self.rule);
        match r.change {
            Change::WentDown => health::log_down(
                log,
                name,
                r.fails,
                rule.fail_timeout,
                health::reason(failure),
            ),
            Change::CameBack => health::log_back(log, name, r.episode, now_msec),
            Change::None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Box<Shared> {
        // SAFETY: every field of Shared is an integer or an atomic: all zeroes is valid.
        unsafe { Box::new(core::mem::zeroed()) }
    }

    #[test]
    fn a_reload_finds_each_server_again_and_new_servers_get_free_entries() {
        let mut t = table();
        t.generation = 1;
        let a = claim(&mut t, entry_key(b"mc", b"10.0.0.1:11211", b"a")).unwrap();
        let b = claim(&mut t, entry_key(b"mc", b"10.0.0.2:11211", b"b")).unwrap();
        // SAFETY: entries of `t`, alive.
        unsafe { (*a).fails.store(1, Ordering::Relaxed) };
        t.generation = 2;
        let a2 = claim(&mut t, entry_key(b"mc", b"10.0.0.1:11211", b"a")).unwrap();
        let c = claim(&mut t, entry_key(b"other", b"10.0.0.1:11211", b"a")).unwrap();
        assert_eq!(a, a2, "the same server, the same entry: its state survives");
        // SAFETY: as above.
        assert_eq!(unsafe { (*a2).fails.load(Ordering::Relaxed) }, 1);
        assert!(
            c != a && c != b,
            "another upstream's server is another entry"
        );
    }

    #[test]
    fn a_full_table_reuses_entries_no_recent_configuration_has() {
        let mut t = table();
        t.generation = 1;
        for i in 0..CAPACITY {
            assert!(claim(&mut t, entry_key(b"mc", &i.to_le_bytes(), b"")).is_some());
        }
        t.generation = 2;
        // The previous configuration's workers may still be running: not taken.
        assert!(claim(&mut t, entry_key(b"mc", b"new", b"")).is_none());
        t.generation = 3;
        let e = claim(&mut t, entry_key(b"mc", b"new", b"")).unwrap();
        // SAFETY: an entry of `t`.
        assert_eq!(
            unsafe { (*e).fails.load(Ordering::Relaxed) },
            0,
            "starts up"
        );
    }

    #[test]
    fn the_table_fits_the_zone() {
        // The slab pool keeps a page per 4 KiB of the zone, and rounds the table up to
        // whole pages: half the zone is ample.
        assert!(size_of::<Shared>() * 2 < ZONE_SIZE);
    }
}
