//! The front cache: the hottest pages in shared memory, without a memcached round trip.
//!
//! `rcache_front_zone NAME:SIZE` defines a zone; `rcache_front NAME ttl=TIME` in a location
//! keeps every page fetched from memcached there for `ttl`, for all workers. A lookup finds
//! the page under its memcached key, checks its age and copies it into the request's pool
//! (the zone may evict it the next moment); the request is then answered exactly like a
//! memcached HIT.
//!
//! Inside the zone: an rbtree of entries by key (nginx's string rbtree) and an LRU queue,
//! all under the slab pool's mutex. When the zone is full, the least recently used entries
//! are evicted until the new one fits; if it cannot fit at all it is simply not kept — a
//! full zone never fails a request. nginx keeps a zone across reloads when its name and
//! size are unchanged, so the pages in it survive a reload.

use core::ffi::{c_char, c_void};
use core::{ptr, slice};

use ngx::core::{Status, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::*;
use ngx::{ngx_conf_log_error, ngx_log_error};

use crate::value::Value;
use crate::zone_arg;

/// Smallest zone: a few slab pages besides the bookkeeping.
const MIN_ZONE_SIZE: usize = 32 * 1024;

/// The front cache of a location (`rcache_front`).
#[repr(C)]
pub struct FrontConf {
    pub zone: *mut ngx_shm_zone_t,
    pub ttl: ngx_msec_t,
    pub max_item: usize,
}

/// Default `max_item`.
pub const DEFAULT_MAX_ITEM: usize = 256 * 1024;

/// Pages smaller than this are copied into the request's pool; larger ones are sent
/// straight from the zone, pinned (a copy of a few KiB costs less than the second trip
/// through the zone's mutex that releasing a pin takes).
pub const PIN_MIN: usize = 8 * 1024;

/// Per-configuration data of a zone (its `shm_zone->data`).
#[repr(C)]
struct ZoneCtx {
    shared: *mut Shared,
    shpool: *mut ngx_slab_pool_t,
    /// Set by `rcache_front_zone`; a zone only named by `rcache_front` is not.
    defined: bool,
}

/// The zone's header, in shared memory.
#[repr(C)]
struct Shared {
    tree: ngx_rbtree_t,
    sentinel: ngx_rbtree_node_t,
    /// Most recently used first.
    lru: ngx_queue_t,
    /// Every [`Pin`], so that the pins of a worker that died can be released.
    pins: ngx_queue_t,
    /// For `rcache_metrics`: pages kept, pages evicted for room, bytes of entries held
    /// (pinned ones that were evicted or replaced included, until they are freed), pins.
    insertions: u64,
    evictions: u64,
    used: u64,
    pinned: u64,
}

/// What an entry is.
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A page fetched from memcached.
    Page,
    /// The page's last response was not cacheable (the miss memo, `rcache_hit_for_pass`).
    Pass,
}

/// One page, in shared memory: this header, then the key, then the value.
#[repr(C)]
struct Entry {
    /// rbtree node + the key (pointing just past this header).
    sn: ngx_str_node_t,
    lru: ngx_queue_t,
    /// `ngx_current_msec` after which the entry is not served (a monotonic clock,
    /// the same in every worker).
    expires: ngx_msec_t,
    flags: u32,
    kind: Kind,
    /// Responses sending the value straight from here; the entry is freed when the last
    /// one ends, if it is no longer `linked`.
    pins: u32,
    /// In the tree and the LRU queue (an evicted or replaced entry that is still pinned
    /// is not, and is found by nobody).
    linked: bool,
    value_len: usize,
}

impl Entry {
    /// # Safety
    /// `e` must be a live entry.
    unsafe fn value<'a>(e: *const Entry) -> &'a [u8] {
        // SAFETY: the value follows the key in the same allocation.
        unsafe {
            let start = (*e).sn.str_.data.add((*e).sn.str_.len);
            slice::from_raw_parts(start, (*e).value_len)
        }
    }

    /// # Safety
    /// `e` must be a live entry.
    unsafe fn size(e: *const Entry) -> usize {
        // SAFETY: per the contract above.
        unsafe { size_of::<Entry>() + (*e).sn.str_.len + (*e).value_len }
    }
}

/// A response sending an entry's value straight from the zone, in shared memory.
#[repr(C)]
struct Pin {
    /// In `Shared::pins`.
    link: ngx_queue_t,
    entry: *mut Entry,
    /// The worker sending it.
    pid: ngx_pid_t,
}

/// The request pool's cleanup data of a pin.
struct PinRelease {
    zone: *mut ngx_shm_zone_t,
    pin: *mut Pin,
}

/// `rcache_front_zone NAME:SIZE;`
///
/// # Safety
/// Called by nginx while parsing the http{} block.
pub unsafe extern "C" fn set_zone(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: per the contract above.
    let Some((mut name, size)) = zone_arg::parse(unsafe { &mut *cf }, "rcache_front_zone") else {
        return NGX_CONF_ERROR;
    };
    if size < MIN_ZONE_SIZE {
        ngx_conf_log_error!(
            NGX_LOG_EMERG,
            cf,
            "zone \"{}\" of the \"rcache_front_zone\" directive is too small, it must be \
             at least 32k",
            name
        );
        return NGX_CONF_ERROR;
    }
    // SAFETY: cf is the configuration being parsed.
    let zone = unsafe { add_zone(cf, &mut name, size) };
    // SAFETY: NULL, or a zone whose data is the ZoneCtx add_zone gave it.
    let Some(ctx) =
        (unsafe { zone.as_ref() }).and_then(|z| unsafe { (z.data as *mut ZoneCtx).as_mut() })
    else {
        return NGX_CONF_ERROR;
    };
    if ctx.defined {
        ngx_conf_log_error!(
            NGX_LOG_EMERG,
            cf,
            "duplicate zone \"{}\" in the \"rcache_front_zone\" directive",
            name
        );
        return NGX_CONF_ERROR;
    }
    ctx.defined = true;
    NGX_CONF_OK
}

/// `rcache_front NAME ttl=TIME [max_item=SIZE] | off;`
///
/// # Safety
/// Called by nginx while parsing; `conf` points at the location's `*mut FrontConf`
/// (the command's offset).
pub unsafe extern "C" fn set_front(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: per the contract above.
    let (slot, args) = unsafe {
        (
            &mut *((conf as *mut u8).add((*cmd).offset) as *mut *mut FrontConf),
            &(*(*cf).args).as_slice::<ngx_str_t>()[1..],
        )
    };
    if *slot != usize::MAX as *mut FrontConf {
        return c"is duplicate".as_ptr().cast_mut();
    }
    if args[0].as_bytes() == b"off" {
        if args.len() > 1 {
            return c"takes no parameters after \"off\"".as_ptr().cast_mut();
        }
        *slot = ptr::null_mut();
        return NGX_CONF_OK;
    }

    let mut max_item = DEFAULT_MAX_ITEM;
    let mut ttl = None;
    for arg in &args[1..] {
        let bytes = arg.as_bytes();
        let ok = if let Some(v) = bytes.strip_prefix(b"ttl=") {
            ttl = parse_time(v);
            ttl.is_some()
        } else if let Some(v) = bytes.strip_prefix(b"max_item=") {
            zone_arg::parse_size(v)
                .filter(|&size| size > 0)
                .map(|size| max_item = size)
                .is_some()
        } else {
            false
        };
        if !ok {
            ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "invalid parameter \"{}\" in the \"rcache_front\" directive",
                arg
            );
            return NGX_CONF_ERROR;
        }
    }
    let Some(ttl) = ttl else {
        return c"needs a ttl= parameter".as_ptr().cast_mut();
    };
    let mut name = args[0];
    // SAFETY: cf is the configuration being parsed.
    let zone = unsafe { add_zone(cf, &mut name, 0) };
    // SAFETY: allocated from the configuration pool and written at once.
    let fc = unsafe { ngx_palloc((*cf).pool, size_of::<FrontConf>()) as *mut FrontConf };
    if zone.is_null() || fc.is_null() {
        return NGX_CONF_ERROR;
    }
    // SAFETY: fc is fresh memory for a FrontConf.
    unsafe {
        ptr::write(
            fc,
            FrontConf {
                zone,
                ttl,
                max_item,
            },
        )
    };
    *slot = fc;
    NGX_CONF_OK
}

/// A positive time (`10s`, `500ms`) in milliseconds, as nginx parses times.
fn parse_time(text: &[u8]) -> Option<ngx_msec_t> {
    let mut s = ngx_str_t {
        len: text.len(),
        data: text.as_ptr().cast_mut(),
    };
    // SAFETY: nginx only reads the string.
    let ms = unsafe { ngx_parse_time(&mut s, 0) };
    (ms != Status::NGX_ERROR.0 && ms > 0).then_some(ms as ngx_msec_t)
}

/// The zone `name` (size 0: just a reference, defined elsewhere).
///
/// # Safety
/// `cf` must be valid during configuration.
unsafe fn add_zone(cf: *mut ngx_conf_t, name: &mut ngx_str_t, size: usize) -> *mut ngx_shm_zone_t {
    // SAFETY: nginx returns the zone for name (creating it) tagged with our module.
    unsafe {
        let tag = ptr::from_ref(crate::module()).cast_mut().cast::<c_void>();
        let zone = ngx_shared_memory_add(cf, name, size, tag);
        if zone.is_null() {
            return ptr::null_mut();
        }
        if (*zone).data.is_null() {
            let ctx = ngx_pcalloc((*cf).pool, size_of::<ZoneCtx>()) as *mut ZoneCtx;
            if ctx.is_null() {
                return ptr::null_mut();
            }
            (*zone).data = ctx.cast();
            (*zone).init = Some(init_zone);
        }
        zone
    }
}

/// Postconfiguration: every zone named by `rcache_front` must be defined.
///
/// # Safety
/// `cf` must be the finished configuration.
pub unsafe fn check_zones(cf: *mut ngx_conf_t) -> bool {
    // SAFETY: our zones carry our tag, their data is a ZoneCtx.
    unsafe {
        for zone in our_zones((*cf).cycle) {
            if !(*((*zone).data as *const ZoneCtx)).defined {
                ngx_log_error!(
                    NGX_LOG_EMERG,
                    (*cf).log,
                    "\"rcache_front\" uses zone \"{}\", which no \"rcache_front_zone\" defines",
                    (*zone).shm.name
                );
                return false;
            }
        }
    }
    true
}

/// Shared memory is ready: set up the zone, or take over the one a previous
/// configuration used (reload).
unsafe extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, old: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx calls this once the zone is mapped; its memory is a slab pool.
    unsafe {
        let ctx = &mut *((*zone).data as *mut ZoneCtx);
        if let Some(old) = (old as *const ZoneCtx).as_ref() {
            ctx.shared = old.shared;
            ctx.shpool = old.shpool;
            return Status::NGX_OK.into();
        }
        let shpool = (*zone).shm.addr as *mut ngx_slab_pool_t;
        ctx.shpool = shpool;
        if (*zone).shm.exists != 0 {
            ctx.shared = (*shpool).data as *mut Shared;
            return Status::NGX_OK.into();
        }
        let shared = ngx_slab_calloc(shpool, size_of::<Shared>()) as *mut Shared;
        if shared.is_null() {
            return Status::NGX_ERROR.into();
        }
        ngx_rbtree_init(
            &mut (*shared).tree,
            &mut (*shared).sentinel,
            Some(ngx_str_rbtree_insert_value),
        );
        ngx_queue_init(&mut (*shared).lru);
        ngx_queue_init(&mut (*shared).pins);
        (*shpool).data = shared.cast();
        // Eviction makes room when the zone is full: that is not worth a log line.
        (*shpool).set_log_nomem(0);
        ctx.shared = shared;
    }
    Status::NGX_OK.into()
}

/// Holds the zone's mutex.
struct Locked<'a> {
    shpool: *mut ngx_slab_pool_t,
    shared: &'a mut Shared,
}

impl Locked<'_> {
    /// # Safety
    /// `zone` must be an initialised front zone.
    unsafe fn new(zone: *mut ngx_shm_zone_t) -> Option<Self> {
        // SAFETY: per the contract above.
        unsafe {
            let ctx = &*((*zone).data as *const ZoneCtx);
            let shared = ctx.shared.as_mut()?;
            ngx_shmtx_lock(&mut (*ctx.shpool).mutex);
            Some(Locked {
                shpool: ctx.shpool,
                shared,
            })
        }
    }

    fn find(&mut self, key: &[u8]) -> *mut Entry {
        let mut name = ngx_str_t {
            len: key.len(),
            data: key.as_ptr().cast_mut(),
        };
        // SAFETY: the tree holds ngx_str_node_t first fields of entries.
        unsafe { ngx_str_rbtree_lookup(&mut self.shared.tree, &mut name, hash(key)) as *mut Entry }
    }

    /// Takes a linked entry out of the tree and the LRU queue: freed now, or by the last
    /// response still sending it.
    ///
    /// # Safety
    /// `e` must be a linked entry of this zone.
    unsafe fn unlink(&mut self, e: *mut Entry) {
        // SAFETY: per the contract above.
        unsafe {
            ngx_rbtree_delete(&mut self.shared.tree, &mut (*e).sn.node);
            ngx_queue_remove(&mut (*e).lru);
            (*e).linked = false;
            if (*e).pins == 0 {
                self.free(e);
            }
        }
    }

    /// # Safety
    /// `e` must be an unlinked, unpinned entry of this zone.
    unsafe fn free(&mut self, e: *mut Entry) {
        // SAFETY: per the contract above; the entry is one slab allocation.
        unsafe {
            self.shared.used = self.shared.used.saturating_sub(Entry::size(e) as u64);
            ngx_slab_free_locked(self.shpool, e.cast());
        }
    }

    /// Pins `e` for a response of this worker; None when the zone has no room for the pin.
    ///
    /// # Safety
    /// `e` must be a linked entry of this zone.
    unsafe fn pin(&mut self, e: *mut Entry) -> Option<*mut Pin> {
        // SAFETY: per the contract above; the pin is a fresh slab allocation.
        unsafe {
            let pin =
                (ngx_slab_alloc_locked(self.shpool, size_of::<Pin>()) as *mut Pin).as_mut()?;
            pin.entry = e;
            pin.pid = ngx_pid;
            ngx_queue_insert_after(&mut self.shared.pins, &mut pin.link);
            (*e).pins += 1;
            self.shared.pinned += 1;
            Some(pin)
        }
    }

    /// Ends a pin, freeing its entry if that was evicted or replaced meanwhile.
    ///
    /// # Safety
    /// `pin` must be a pin of this zone, released once.
    unsafe fn release(&mut self, pin: *mut Pin) {
        // SAFETY: per the contract above.
        unsafe {
            let e = (*pin).entry;
            ngx_queue_remove(&mut (*pin).link);
            ngx_slab_free_locked(self.shpool, pin.cast());
            self.shared.pinned = self.shared.pinned.saturating_sub(1);
            (*e).pins -= 1;
            if (*e).pins == 0 && !(*e).linked {
                self.free(e);
            }
        }
    }

    /// Evicts the least recently used entry; false if there is none.
    fn evict_oldest(&mut self) -> bool {
        // SAFETY: the queue links entries through their `lru` field.
        unsafe {
            let head = &mut self.shared.lru as *mut ngx_queue_t;
            let last = (*head).prev;
            if last == head {
                return false;
            }
            let e = (last as *mut u8).sub(core::mem::offset_of!(Entry, lru)) as *mut Entry;
            self.unlink(e);
            self.shared.evictions += 1;
        }
        true
    }

    /// Links a new entry for `key`, replacing what was there and evicting the least
    /// recently used entries until it fits; false if it cannot fit at all.
    ///
    /// # Safety
    /// The zone must be locked (it is: `self`).
    unsafe fn insert(
        &mut self,
        key: &[u8],
        value: Value,
        flags: u32,
        kind: Kind,
        ttl: ngx_msec_t,
    ) -> bool {
        // SAFETY: entries are created and linked under the zone's mutex.
        unsafe {
            let old = self.find(key);
            if !old.is_null() {
                self.unlink(old);
            }
            let size = size_of::<Entry>() + key.len() + value.len();
            let mut e = ngx_slab_alloc_locked(self.shpool, size) as *mut Entry;
            while e.is_null() {
                if !self.evict_oldest() {
                    return false;
                }
                e = ngx_slab_alloc_locked(self.shpool, size) as *mut Entry;
            }
            let data = (e as *mut u8).add(size_of::<Entry>());
            ptr::copy_nonoverlapping(key.as_ptr(), data, key.len());
            value.copy_to(slice::from_raw_parts_mut(data.add(key.len()), value.len()));
            ptr::write_bytes(e, 0, 1);
            (*e).sn.node.key = hash(key) as ngx_rbtree_key_t;
            (*e).sn.str_ = ngx_str_t {
                len: key.len(),
                data,
            };
            (*e).expires = ngx_current_msec.wrapping_add(ttl);
            (*e).flags = flags;
            (*e).kind = kind;
            (*e).linked = true;
            (*e).value_len = value.len();
            ngx_rbtree_insert(&mut self.shared.tree, &mut (*e).sn.node);
            ngx_queue_insert_after(&mut self.shared.lru, &mut (*e).lru);
            self.shared.insertions += 1;
            self.shared.used += size as u64;
            true
        }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // SAFETY: locked in new().
        unsafe { ngx_shmtx_unlock(&mut (*self.shpool).mutex) }
    }
}

/// A page found in the front cache: copied into the request's pool, or (from
/// [`PIN_MIN`] bytes) pinned in the zone until the request's pool goes away.
pub struct Found<'a> {
    pub value: &'a [u8],
    pub flags: u32,
}

/// What the front cache knows of a key.
pub enum Front<'a> {
    Page(Found<'a>),
    /// The page's last response was not cacheable: straight to the fallback.
    Pass,
    Miss,
}

/// Looks `key` up; an entry older than its ttl is dropped and not returned.
///
/// # Safety
/// `zone` must be a front zone; `pool` a live request pool, which the page's bytes
/// are valid for.
pub unsafe fn lookup<'a>(
    zone: *mut ngx_shm_zone_t,
    key: &[u8],
    pool: *mut ngx_pool_t,
) -> Front<'a> {
    // SAFETY: entries are read, copied and pinned under the zone's mutex.
    unsafe {
        let Some(mut z) = Locked::new(zone) else {
            return Front::Miss;
        };
        let e = z.find(key);
        if e.is_null() {
            return Front::Miss;
        }
        if (ngx_current_msec.wrapping_sub((*e).expires) as isize) >= 0 {
            z.unlink(e);
            return Front::Miss;
        }
        ngx_queue_remove(&mut (*e).lru);
        ngx_queue_insert_after(&mut z.shared.lru, &mut (*e).lru);
        if (*e).kind == Kind::Pass {
            return Front::Pass;
        }
        let value = Entry::value(e);
        let flags = (*e).flags;
        if value.len() >= PIN_MIN {
            if let Some(pinned) = pin_for(&mut z, zone, e, pool) {
                return Front::Page(Found {
                    value: pinned,
                    flags,
                });
            }
        }
        let copy = ngx_pnalloc(pool, value.len().max(1)) as *mut u8;
        if copy.is_null() {
            return Front::Miss;
        }
        ptr::copy_nonoverlapping(value.as_ptr(), copy, value.len());
        Front::Page(Found {
            value: slice::from_raw_parts(copy, value.len()),
            flags,
        })
    }
}

/// Pins `e` until `pool` goes away; its value then stays where it is (None: no room for
/// the pin or its cleanup, copy instead).
///
/// # Safety
/// `e` must be a linked entry of the locked zone `zone`; `pool` a live request pool.
unsafe fn pin_for<'a>(
    z: &mut Locked,
    zone: *mut ngx_shm_zone_t,
    e: *mut Entry,
    pool: *mut ngx_pool_t,
) -> Option<&'a [u8]> {
    // SAFETY: per the contract above; the cleanup runs once, when the pool is destroyed
    // (after the response's buffers are no longer used).
    unsafe {
        let cln = ngx_pool_cleanup_add(pool, size_of::<PinRelease>()).as_mut()?;
        let pin = z.pin(e)?;
        ptr::write(cln.data as *mut PinRelease, PinRelease { zone, pin });
        cln.handler = Some(release_pin);
        Some(Entry::value(e))
    }
}

/// The request's pool is going away, and with it the last use of the pinned value.
unsafe extern "C" fn release_pin(data: *mut c_void) {
    // SAFETY: data is the PinRelease pin_for wrote, run once; the zone outlives the
    // worker's configuration.
    unsafe {
        let PinRelease { zone, pin } = ptr::read(data as *const PinRelease);
        if let Some(mut z) = Locked::new(zone) {
            z.release(pin);
        }
    }
}

/// Releases the pins of worker processes that are gone (one that crashed, or was killed,
/// never ran its requests' cleanups): called as a worker starts.
///
/// # Safety
/// `cycle` must be the cycle a worker process is starting with.
pub unsafe fn release_orphaned_pins(cycle: *mut ngx_cycle_t) {
    // SAFETY: our zones carry our tag and are set up; pins are walked under the mutex.
    unsafe {
        for zone in our_zones(cycle) {
            let Some(mut z) = Locked::new(zone) else {
                continue;
            };
            let head = &mut z.shared.pins as *mut ngx_queue_t;
            let mut q = (*head).next;
            let mut released = 0u64;
            while q != head {
                let next = (*q).next;
                let pin = q as *mut Pin;
                if !process_alive((*pin).pid) {
                    z.release(pin);
                    released += 1;
                }
                q = next;
            }
            drop(z);
            if released > 0 {
                ngx_log_error!(
                    NGX_LOG_WARN,
                    (*cycle).log,
                    "rcache: front zone \"{}\": released {} page(s) pinned by a worker \
                     process that exited without finishing its responses",
                    (*zone).shm.name,
                    released
                );
            }
        }
    }
}

/// Whether `pid` is a running process other than this one (a new worker has no pins: a
/// pin with its pid is a dead one's, whose pid was reused).
fn process_alive(pid: ngx_pid_t) -> bool {
    // SAFETY: reading this process's pid.
    if pid == unsafe { ngx_pid } {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Drops the page (or memo) under `key`, if the zone has it (a purge).
///
/// # Safety
/// `zone` must be a front zone.
pub unsafe fn remove(zone: *mut ngx_shm_zone_t, key: &[u8]) {
    // SAFETY: entries are unlinked under the zone's mutex.
    unsafe {
        if let Some(mut z) = Locked::new(zone) {
            let e = z.find(key);
            if !e.is_null() {
                z.unlink(e);
            }
        }
    }
}

/// Keeps `value` (fetched from memcached now) under `key` for `ttl`, replacing what was
/// there. Values over `max_item`, or too large for the zone, are not kept.
///
/// # Safety
/// `zone` must be a front zone.
pub unsafe fn keep(
    zone: *mut ngx_shm_zone_t,
    key: &[u8],
    value: Value,
    flags: u32,
    ttl: ngx_msec_t,
    max_item: usize,
) {
    if value.len() > max_item {
        return;
    }
    // SAFETY: per the contract above.
    if let Some(mut z) = unsafe { Locked::new(zone) } {
        // SAFETY: locked.
        unsafe { z.insert(key, value, flags, Kind::Page, ttl) };
    }
}

/// Remembers that the response for `key` was not cacheable (the miss memo): for the
/// front cache's ttl, at most `hit_for_pass` seconds (0: not at all), lookups answer
/// [`Front::Pass`] without asking memcached.
///
/// # Safety
/// `fc` must be a front cache of this configuration.
pub unsafe fn remember_pass(fc: &FrontConf, key: &[u8], hit_for_pass: time_t) {
    let Ok(seconds @ 1..) = ngx_msec_t::try_from(hit_for_pass) else {
        return;
    };
    let ttl = fc.ttl.min(seconds.saturating_mul(1000));
    // SAFETY: per the contract above.
    if let Some(mut z) = unsafe { Locked::new(fc.zone) } {
        // SAFETY: locked.
        unsafe { z.insert(key, Value::whole(&[]), 0, Kind::Pass, ttl) };
    }
}

/// A front zone's figures, for `rcache_metrics`.
#[derive(Clone, Debug, Default)]
pub struct FrontFigures {
    pub zone: String,
    pub insertions: u64,
    pub evictions: u64,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    pub pinned: u64,
}

/// The figures of every front zone of `cycle`'s configuration, for `rcache_metrics`.
///
/// # Safety
/// `cycle` must be the running cycle, in a worker.
pub unsafe fn figures(cycle: *mut ngx_cycle_t) -> Vec<FrontFigures> {
    let mut out = Vec::new();
    // SAFETY: our zones carry our tag and are set up.
    unsafe {
        for zone in our_zones(cycle) {
            let capacity_bytes = (*zone).shm.size as u64;
            let name = (*zone).shm.name.to_string();
            if let Some(z) = Locked::new(zone) {
                out.push(FrontFigures {
                    zone: name,
                    insertions: z.shared.insertions,
                    evictions: z.shared.evictions,
                    used_bytes: z.shared.used,
                    capacity_bytes,
                    pinned: z.shared.pinned,
                });
            }
        }
    }
    out
}

/// The front zones of `cycle`'s configuration.
///
/// # Safety
/// `cycle` must be a cycle whose shared memory list is complete.
unsafe fn our_zones(cycle: *mut ngx_cycle_t) -> Vec<*mut ngx_shm_zone_t> {
    let mut out = Vec::new();
    // SAFETY: walks the cycle's shared memory list; our zones carry our tag.
    unsafe {
        let tag = ptr::from_ref(crate::module()).cast::<c_void>();
        let mut part: *mut ngx_list_part_t = &mut (*cycle).shared_memory.part;
        while !part.is_null() {
            let zones = (*part).elts as *mut ngx_shm_zone_t;
            for i in 0..(*part).nelts {
                let zone = zones.add(i);
                if (*zone).tag.cast_const() == tag {
                    out.push(zone);
                }
            }
            part = (*part).next;
        }
    }
    out
}

/// The rbtree key of a page key (FNV-1a).
fn hash(key: &[u8]) -> u32 {
    key.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn entry_and_pin_sizes_are_what_the_readme_says() {
        // README, "The front cache": a page takes its size + its key + 104 bytes; a pin 32.
        assert_eq!(size_of::<Entry>(), 104);
        assert_eq!(size_of::<Pin>(), 32);
    }

    #[test]
    fn fnv1a_reference_values() {
        assert_eq!(hash(b""), 0x811c_9dc5);
        assert_eq!(hash(b"a"), 0xe40c_292c);
        assert_eq!(hash(b"foobar"), 0xbf9c_f968);
    }
}
