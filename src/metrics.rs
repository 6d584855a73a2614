//! rcache's counters (`rcache_metrics_zone NAME:SIZE`): in shared memory, updated with
//! atomics by every worker, kept across reload (nginx hands a zone of unchanged name and
//! size to the new configuration; its server blocks find their rows again by name).
//!
//! Requests are counted by `$rcache_status` and server block (one row per `server_name`);
//! the rest — bytes served, store outcomes, purges, the front cache's requests, the lock —
//! are counters of the whole zone. Each memcached server's own counters live with its
//! health (`health_zone.rs`), each front zone's with the zone (`front.rs`).

use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicU64, Ordering};

use ngx::core::Status;
use ngx::ffi::*;
use ngx::ngx_log_error;

use crate::variables::{CacheStatus, StoreStatus};

/// The zone-wide counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    ServedMemcached,
    ServedFront,
    FrontHit,
    FrontMiss,
    FrontPass,
    StoreStored,
    StorePresent,
    StoreNotCacheable,
    StoreTooLarge,
    StoreFailed,
    PurgeHardFound,
    PurgeHardAbsent,
    PurgeHardFailed,
    PurgeSoftFound,
    PurgeSoftAbsent,
    PurgeSoftFailed,
    /// Requests that waited for another request's page (`rcache_lock`).
    LockWaited,
    /// ... and got it.
    LockWaitPage,
    /// ... and went to the fallback after `rcache_lock_timeout`.
    LockWaitTimeout,
    HitForPassWritten,
    HitForPassHonoured,
}

pub const COUNTERS: usize = Counter::HitForPassHonoured as usize + 1;

impl Counter {
    pub fn store(status: StoreStatus) -> Counter {
        match status {
            StoreStatus::Stored => Counter::StoreStored,
            StoreStatus::Present => Counter::StorePresent,
            StoreStatus::NotCacheable => Counter::StoreNotCacheable,
            StoreStatus::TooLarge => Counter::StoreTooLarge,
            StoreStatus::Failed => Counter::StoreFailed,
        }
    }

    /// A purge's counter: `soft` or hard; `Some(found)`, or `None` when memcached could
    /// not be asked.
    pub fn purge(soft: bool, found: Option<bool>) -> Counter {
        match (soft, found) {
            (false, Some(true)) => Counter::PurgeHardFound,
            (false, Some(false)) => Counter::PurgeHardAbsent,
            (false, None) => Counter::PurgeHardFailed,
            (true, Some(true)) => Counter::PurgeSoftFound,
            (true, Some(false)) => Counter::PurgeSoftAbsent,
            (true, None) => Counter::PurgeSoftFailed,
        }
    }
}

/// Every `$rcache_status`, in the order of a row's counters.
pub use crate::variables::ALL_STATUSES as STATUSES;

/// Longest server name kept (longer ones are cut).
const NAME_MAX: usize = 64;

/// One server block's row, in shared memory.
#[repr(C)]
struct Row {
    /// The newest configuration that has it; 0: free.
    generation: u64,
    name_len: u64,
    name: [u8; NAME_MAX],
    requests: [AtomicU64; STATUSES.len()],
}

/// The zone's header, followed by `capacity` rows.
#[repr(C)]
struct Shared {
    generation: u64,
    capacity: u64,
    counters: [AtomicU64; COUNTERS],
}

/// The smallest zone for `servers` server blocks (the slab pool keeps half of a small
/// zone for its own bookkeeping and rounds allocations up to pages).
pub fn zone_size_for(servers: usize) -> usize {
    let table = size_of::<Shared>() + servers.max(1) * size_of::<Row>();
    (2 * table + 8 * 4096).next_multiple_of(4096)
}

/// A configuration's view of the zone (its `shm_zone->data`).
#[repr(C)]
pub struct Zone {
    shm: *mut ngx_shm_zone_t,
    shared: *mut Shared,
    /// The server blocks of this configuration (`ngx_http_core_srv_conf_t *`) and their
    /// names, set at postconfiguration; their rows, at the zone's init.
    servers: *mut ngx_array_t,
}

/// A server block and its row.
#[repr(C)]
struct ServerRow {
    cscf: *const c_void,
    name: ngx_str_t,
    row: *mut Row,
}

/// `rcache_metrics_zone NAME:SIZE`: the zone (its servers are added at postconfiguration).
///
/// # Safety
/// `cf` must be valid during configuration; `name` is copied by nginx.
pub unsafe fn add_zone(cf: *mut ngx_conf_t, name: &mut ngx_str_t, size: usize) -> *mut Zone {
    // SAFETY: per the contract above.
    unsafe {
        let tag = ptr::addr_of!(ZONE_TAG).cast_mut().cast::<c_void>();
        let shm = ngx_shared_memory_add(cf, name, size, tag);
        let zone = ngx_palloc((*cf).pool, size_of::<Zone>()) as *mut Zone;
        let servers = ngx_array_create((*cf).pool, 4, size_of::<ServerRow>());
        if shm.is_null() || zone.is_null() || servers.is_null() {
            return ptr::null_mut();
        }
        if !(*shm).data.is_null() {
            // A second rcache_metrics_zone with the same name.
            return ptr::null_mut();
        }
        ptr::write(
            zone,
            Zone {
                shm,
                shared: ptr::null_mut(),
                servers,
            },
        );
        (*shm).data = zone.cast();
        (*shm).init = Some(init_zone);
        zone
    }
}

/// The zone's tag: its own.
static ZONE_TAG: u8 = 0;

impl Zone {
    /// Postconfiguration: counts requests of server block `cscf` under `name`.
    ///
    /// # Safety
    /// During configuration; `name` must live as long as the configuration.
    pub unsafe fn add_server(&mut self, cscf: *const c_void, name: ngx_str_t) -> bool {
        // SAFETY: the array lives in the configuration's pool.
        unsafe {
            let slot = ngx_array_push(self.servers) as *mut ServerRow;
            if slot.is_null() {
                return false;
            }
            ptr::write(
                slot,
                ServerRow {
                    cscf,
                    name,
                    row: ptr::null_mut(),
                },
            );
        }
        true
    }

    /// The zone's size, as configured.
    pub fn size(&self) -> usize {
        // SAFETY: the zone lives as long as the configuration.
        unsafe { (*self.shm).shm.size }
    }

    /// How many server blocks it counts for.
    pub fn servers(&self) -> usize {
        // SAFETY: an array of ServerRow.
        unsafe { (*self.servers).nelts }
    }

    fn rows(&self) -> &[ServerRow] {
        // SAFETY: an array of ServerRow, complete after postconfiguration.
        unsafe { (*self.servers).as_slice::<ServerRow>() }
    }

    /// Adds one to `counter`.
    pub fn count(&self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Adds `n` to `counter`.
    pub fn add(&self, counter: Counter, n: u64) {
        // SAFETY: NULL before the zone's init (never in a worker), or the zone's header.
        if let Some(shared) = unsafe { self.shared.as_ref() } {
            shared.counters[counter as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts a request of server block `cscf` that rcache decided `status` for.
    pub fn request(&self, cscf: *const c_void, status: CacheStatus) {
        let Some(i) = STATUSES.iter().position(|&s| s == status) else {
            return;
        };
        if let Some(sr) = self.rows().iter().find(|sr| ptr::eq(sr.cscf, cscf)) {
            // SAFETY: NULL before the zone's init, or a row of the zone.
            if let Some(row) = unsafe { sr.row.as_ref() } {
                row.requests[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// What the counters say now.
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::default();
        // SAFETY: NULL before the zone's init, or the zone's header.
        let Some(shared) = (unsafe { self.shared.as_ref() }) else {
            return snap;
        };
        for (i, c) in shared.counters.iter().enumerate() {
            snap.counters[i] = c.load(Ordering::Relaxed);
        }
        let mut seen: Vec<*mut Row> = Vec::new();
        for sr in self.rows() {
            if sr.row.is_null() || seen.contains(&sr.row) {
                continue;
            }
            seen.push(sr.row);
            // SAFETY: a row of the zone.
            let row = unsafe { &*sr.row };
            let name = &row.name[..(row.name_len as usize).min(NAME_MAX)];
            let mut requests = [0; STATUSES.len()];
            for (n, c) in requests.iter_mut().zip(&row.requests) {
                *n = c.load(Ordering::Relaxed);
            }
            snap.servers
                .push((String::from_utf8_lossy(name).into_owned(), requests));
        }
        snap
    }
}

/// The counters at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub counters: [u64; COUNTERS],
    /// Per server block: its name and its requests by [`STATUSES`].
    pub servers: Vec<(String, [u64; STATUSES.len()])>,
}

/// Shared memory is ready: set up the table or take over the previous configuration's,
/// and give each server block its row.
unsafe extern "C" fn init_zone(shm: *mut ngx_shm_zone_t, old: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx calls this once the zone is mapped; its memory is a slab pool.
    unsafe {
        let zone = &mut *((*shm).data as *mut Zone);
        let shpool = (*shm).shm.addr as *mut ngx_slab_pool_t;
        if let Some(old) = (old as *const Zone).as_ref() {
            zone.shared = old.shared;
        } else {
            let capacity = zone
                .servers()
                .max((*shm).shm.size / 2 / size_of::<Row>() / 2);
            let bytes = size_of::<Shared>() + capacity * size_of::<Row>();
            let shared = ngx_slab_calloc(shpool, bytes) as *mut Shared;
            if shared.is_null() {
                ngx_log_error!(
                    NGX_LOG_EMERG,
                    (*shm).shm.log,
                    "rcache: \"rcache_metrics_zone\" \"{}\" is too small",
                    (*shm).shm.name
                );
                return Status::NGX_ERROR.into();
            }
            (*shared).capacity = capacity as u64;
            (*shpool).data = shared.cast();
            zone.shared = shared;
        }
        let shared = zone.shared;
        (*shared).generation += 1;
        let generation = (*shared).generation;
        let rows = core::slice::from_raw_parts_mut(
            (shared as *mut u8).add(size_of::<Shared>()) as *mut Row,
            (*shared).capacity as usize,
        );
        for sr in (*zone.servers).as_slice_mut::<ServerRow>() {
            match claim(rows, generation, sr.name.as_bytes()) {
                Some(row) => sr.row = row,
                None => {
                    ngx_log_error!(
                        NGX_LOG_EMERG,
                        (*shm).shm.log,
                        "rcache: \"rcache_metrics_zone\" \"{}\" has no room for server \"{}\"",
                        (*shm).shm.name,
                        sr.name
                    );
                    return Status::NGX_ERROR.into();
                }
            }
        }
    }
    Status::NGX_OK.into()
}

/// The row of `name` for `generation`: the one it had, else a free one, else one no
/// configuration since the previous one has.
fn claim(rows: &mut [Row], generation: u64, name: &[u8]) -> Option<*mut Row> {
    let name = &name[..name.len().min(NAME_MAX)];
    let named = |r: &Row| r.generation != 0 && &r.name[..r.name_len as usize] == name;
    let i = rows
        .iter()
        .position(named)
        .or_else(|| rows.iter().position(|r| r.generation == 0))
        .or_else(|| rows.iter().position(|r| r.generation + 1 < generation))?;
    let row = &mut rows[i];
    if !named(row) {
        // SAFETY: every field of Row is an integer, bytes or an atomic: zeroes are valid.
        *row = unsafe { core::mem::zeroed() };
        row.name[..name.len()].copy_from_slice(name);
        row.name_len = name.len() as u64;
    }
    row.generation = generation;
    Some(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> Vec<Row> {
        // SAFETY: all zeroes is a valid Row.
        (0..n).map(|_| unsafe { core::mem::zeroed() }).collect()
    }

    #[test]
    fn a_server_block_finds_its_row_again_after_a_reload() {
        let mut t = rows(4);
        let a = claim(&mut t, 1, b"example.com").unwrap();
        // SAFETY: a row of t.
        unsafe { (*a).requests[0].store(7, Ordering::Relaxed) };
        let b = claim(&mut t, 1, b"other.example").unwrap();
        assert_ne!(a, b);
        let a2 = claim(&mut t, 2, b"example.com").unwrap();
        assert_eq!(a, a2);
        // SAFETY: as above.
        assert_eq!(unsafe { (*a2).requests[0].load(Ordering::Relaxed) }, 7);
    }

    #[test]
    fn a_full_table_reuses_rows_of_older_configurations_zeroed() {
        let mut t = rows(2);
        let a = claim(&mut t, 1, b"a").unwrap();
        // SAFETY: a row of t.
        unsafe { (*a).requests[1].store(3, Ordering::Relaxed) };
        claim(&mut t, 1, b"b").unwrap();
        assert!(
            claim(&mut t, 2, b"c").is_none(),
            "the previous generation's rows stay"
        );
        claim(&mut t, 3, b"b").unwrap();
        let c = claim(&mut t, 3, b"c").unwrap();
        assert_eq!(c, a, "a's row, unused since generation 1");
        // SAFETY: as above.
        assert_eq!(unsafe { (*c).requests[1].load(Ordering::Relaxed) }, 0);
    }

    #[test]
    fn long_names_are_cut_and_still_found() {
        let mut t = rows(2);
        let long = vec![b'x'; 200];
        let a = claim(&mut t, 1, &long).unwrap();
        assert_eq!(claim(&mut t, 1, &long).unwrap(), a);
    }

    #[test]
    fn the_smallest_zone_grows_with_the_server_blocks() {
        assert!(zone_size_for(1) >= 32 * 1024);
        assert!(zone_size_for(1000) > zone_size_for(10));
    }
}
