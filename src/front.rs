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
    /// For `rcache_metrics`: pages kept, pages evicted for room, bytes of pages held.
    insertions: u64,
    evictions: u64,
    used: u64,
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
    // SAFETY: walks the cycle's shared memory list, our zones carry our tag.
    unsafe {
        let tag = ptr::from_ref(crate::module()).cast::<c_void>();
        let mut part: *mut ngx_list_part_t = &mut (*(*cf).cycle).shared_memory.part;
        while !part.is_null() {
            let zones = slice::from_raw_parts((*part).elts as *const ngx_shm_zone_t, (*part).nelts);
            for zone in zones {
                if zone.tag.cast_const() == tag && !(*(zone.data as *const ZoneCtx)).defined {
                    ngx_log_error!(
                        NGX_LOG_EMERG,
                        (*cf).log,
                        "\"rcache_front\" uses zone \"{}\", which no \"rcache_front_zone\" defines",
                        zone.shm.name
                    );
                    return false;
                }
            }
            part = (*part).next;
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

    /// # Safety
    /// `e` must be a live entry of this zone.
    unsafe fn remove(&mut self, e: *mut Entry) {
        // SAFETY: per the contract above; the entry is one slab allocation.
        unsafe {
            ngx_rbtree_delete(&mut self.shared.tree, &mut (*e).sn.node);
            ngx_queue_remove(&mut (*e).lru);
            let size = size_of::<Entry>() + (*e).sn.str_.len + (*e).value_len;
            self.shared.used = self.shared.used.saturating_sub(size as u64);
            ngx_slab_free_locked(self.shpool, e.cast());
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
            self.remove(e);
            self.shared.evictions += 1;
        }
        true
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // SAFETY: locked in new().
        unsafe { ngx_shmtx_unlock(&mut (*self.shpool).mutex) }
    }
}

/// A page found in the front cache, copied into the request's pool.
pub struct Found<'a> {
    pub value: &'a [u8],
    pub flags: u32,
}

/// Looks `key` up; an entry older than its ttl is dropped and not returned.
///
/// # Safety
/// `zone` must be a front zone; `pool` a live request pool.
pub unsafe fn lookup<'a>(
    zone: *mut ngx_shm_zone_t,
    key: &[u8],
    pool: *mut ngx_pool_t,
) -> Option<Found<'a>> {
    // SAFETY: entries are read and copied under the zone's mutex.
    unsafe {
        let mut z = Locked::new(zone)?;
        let e = z.find(key);
        if e.is_null() {
            return None;
        }
        if (ngx_current_msec.wrapping_sub((*e).expires) as isize) >= 0 {
            z.remove(e);
            return None;
        }
        ngx_queue_remove(&mut (*e).lru);
        ngx_queue_insert_after(&mut z.shared.lru, &mut (*e).lru);
        let value = Entry::value(e);
        let copy = ngx_pnalloc(pool, value.len().max(1)) as *mut u8;
        if copy.is_null() {
            return None;
        }
        ptr::copy_nonoverlapping(value.as_ptr(), copy, value.len());
        Some(Found {
            value: slice::from_raw_parts(copy, value.len()),
            flags: (*e).flags,
        })
    }
}

/// Drops the page under `key`, if the zone has it (a purge).
///
/// # Safety
/// `zone` must be a front zone.
pub unsafe fn remove(zone: *mut ngx_shm_zone_t, key: &[u8]) {
    // SAFETY: entries are unlinked under the zone's mutex.
    unsafe {
        if let Some(mut z) = Locked::new(zone) {
            let e = z.find(key);
            if !e.is_null() {
                z.remove(e);
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
    // SAFETY: entries are created and linked under the zone's mutex.
    unsafe {
        let Some(mut z) = Locked::new(zone) else {
            return;
        };
        let old = z.find(key);
        if !old.is_null() {
            z.remove(old);
        }
        let size = size_of::<Entry>() + key.len() + value.len();
        let mut e = ngx_slab_alloc_locked(z.shpool, size) as *mut Entry;
        while e.is_null() {
            if !z.evict_oldest() {
                return;
            }
            e = ngx_slab_alloc_locked(z.shpool, size) as *mut Entry;
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
        (*e).value_len = value.len();
        ngx_rbtree_insert(&mut z.shared.tree, &mut (*e).sn.node);
        ngx_queue_insert_after(&mut z.shared.lru, &mut (*e).lru);
        z.shared.insertions += 1;
        z.shared.used += size as u64;
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
}

/// The figures of every front zone of `cycle`'s configuration, for `rcache_metrics`.
///
/// # Safety
/// `cycle` must be the running cycle, in a worker.
pub unsafe fn figures(cycle: *mut ngx_cycle_t) -> Vec<FrontFigures> {
    let mut out = Vec::new();
    // SAFETY: walks the cycle's shared memory list; our zones carry our tag and are set up.
    unsafe {
        let tag = ptr::from_ref(crate::module()).cast::<c_void>();
        let mut part: *mut ngx_list_part_t = &mut (*cycle).shared_memory.part;
        while !part.is_null() {
            let zones =
                slice::from_raw_parts_mut((*part).elts as *mut ngx_shm_zone_t, (*part).nelts);
            for zone in zones {
                if zone.tag.cast_const() != tag {
                    continue;
                }
                let capacity_bytes = zone.shm.size as u64;
                let name = zone.shm.name.to_string();
                if let Some(z) = Locked::new(zone) {
                    out.push(FrontFigures {
                        zone: name,
                        insertions: z.shared.insertions,
                        evictions: z.shared.evictions,
                        used_bytes: z.shared.used,
                        capacity_bytes,
                    });
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
    fn fnv1a_reference_values() {
        assert_eq!(hash(b""), 0x811c_9dc5);
        assert_eq!(hash(b"a"), 0xe40c_292c);
        assert_eq!(hash(b"foobar"), 0xbf9c_f968);
    }
}
