//! `$rcache_status` (HIT, MISS, BYPASS, ERROR, PURGE), `$rcache_front` (HIT or MISS in
//! the front cache), `$rcache_store_status` (STORED, NOT_CACHEABLE, TOO_LARGE, FAILED) and
//! `$rcache_lookup_time` (seconds spent on memcached, `0.001`).
//!
//! An internal redirect wipes module contexts (`r->ctx`) but not the
//! request's variable values (`r->variables`), which is where `set $var`
//! keeps its values too. rcache stores its values there, under the
//! variables' indexes, when it decides them; the fallback location, `add_header`
//! and `access_log` then read those stored values. For requests rcache never
//! saw, the get handler reports "not found" (`-` in logs).

use core::ptr;

use ngx::core::Status;
use ngx::ffi::*;
use ngx::http::HttpModuleMainConf;
use ngx::ngx_string;

use crate::bitfield::{self, ValueFlags};
use crate::HttpRcacheModule;

/// A value found and cacheable.
const VALID: ValueFlags = ValueFlags {
    valid: true,
    no_cacheable: false,
    not_found: false,
    escape: false,
};

/// Where rcache writes its variables in `r->variables` (-1: not yet known).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct VariableIndexes {
    pub status: ngx_int_t,
    pub front: ngx_int_t,
    pub store: ngx_int_t,
    pub lookup_time: ngx_int_t,
}

/// What rcache did with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Bypass,
    Error,
    /// A `PURGE` request (`rcache_purge`).
    Purge,
    /// A stale page served while another request regenerates it.
    Updating,
    /// This request regenerates an expired or soft-purged page (it went to the fallback).
    Expired,
    /// A stale page served because its regeneration failed (the fallback answered an
    /// error) or nothing can regenerate it (no `rcache_fallback`).
    Stale,
    /// The key's response was not cacheable lately: to the fallback (`rcache_hit_for_pass`).
    Pass,
}

impl core::fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        f.write_str(core::str::from_utf8(self.as_bytes()).unwrap_or("?"))
    }
}

impl CacheStatus {
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            CacheStatus::Hit => b"HIT",
            CacheStatus::Miss => b"MISS",
            CacheStatus::Bypass => b"BYPASS",
            CacheStatus::Error => b"ERROR",
            CacheStatus::Purge => b"PURGE",
            CacheStatus::Updating => b"UPDATING",
            CacheStatus::Expired => b"EXPIRED",
            CacheStatus::Stale => b"STALE",
            CacheStatus::Pass => b"PASS",
        }
    }
}

/// Whether the front cache had the page (only set where `rcache_front` is on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontStatus {
    Hit,
    Miss,
    /// The zone remembers that the page is not cacheable (the miss memo).
    Pass,
}

impl FrontStatus {
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            FrontStatus::Hit => b"HIT",
            FrontStatus::Miss => b"MISS",
            FrontStatus::Pass => b"PASS",
        }
    }
}

/// What became of a MISS's page (where `rcache_store` is on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreStatus {
    Stored,
    /// The key had a value by the time the page was written (the app stored it): kept.
    Present,
    NotCacheable,
    TooLarge,
    Failed,
}

impl StoreStatus {
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            StoreStatus::Stored => b"STORED",
            StoreStatus::Present => b"PRESENT",
            StoreStatus::NotCacheable => b"NOT_CACHEABLE",
            StoreStatus::TooLarge => b"TOO_LARGE",
            StoreStatus::Failed => b"FAILED",
        }
    }
}

/// rcache's variables, in the order of [`VariableIndexes`]'s fields.
const NAMES: [ngx_str_t; 4] = [
    ngx_string!("rcache_status"),
    ngx_string!("rcache_front"),
    ngx_string!("rcache_store_status"),
    ngx_string!("rcache_lookup_time"),
];

/// `$rcache_lookup_time`'s place in [`NAMES`].
const LOOKUP_TIME: usize = 3;

/// Preconfiguration: declares the variables.
///
/// # Safety
/// `cf` must be valid during configuration.
pub unsafe extern "C" fn add(cf: *mut ngx_conf_t) -> ngx_int_t {
    for (i, mut name) in NAMES.into_iter().enumerate() {
        // SAFETY: cf is valid during configuration; nginx copies the name.
        let v = unsafe { ngx_http_add_variable(cf, &mut name, 0) };
        // SAFETY: NULL or the variable nginx just added.
        let Some(v) = (unsafe { v.as_mut() }) else {
            return Status::NGX_ERROR.into();
        };
        v.get_handler = Some(if i == LOOKUP_TIME {
            get_lookup_time
        } else {
            get_unset
        });
    }
    Status::NGX_OK.into()
}

/// Postconfiguration: the indexes rcache writes `$rcache_status`,
/// `$rcache_front` and `$rcache_store_status` under.
pub fn indexes(cf: &mut ngx_conf_t) -> Option<VariableIndexes> {
    let [status, front, store, lookup_time] = NAMES
        // SAFETY: cf is the configuration being finished; the name is only read.
        .map(|mut name| unsafe { ngx_http_get_variable_index(cf, &mut name) });
    let found = |index| (index != Status::NGX_ERROR.0).then_some(index);
    Some(VariableIndexes {
        status: found(status)?,
        front: found(front)?,
        store: found(store)?,
        lookup_time: found(lookup_time)?,
    })
}

/// Get handler for requests rcache has not decided on.
unsafe extern "C" fn get_unset(
    _r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes the value slot to fill.
    unsafe { (*v).set_not_found(1) };
    Status::NGX_OK.into()
}

/// Where `r`'s variables go.
fn indexes_of(r: &ngx_http_request_t) -> Option<VariableIndexes> {
    HttpRcacheModule::main_conf(r).map(|mcf| mcf.variables)
}

/// Records `status` for `r` (and the internal redirects that follow).
pub fn set_status(r: &mut ngx_http_request_t, status: CacheStatus) {
    if let Some(ix) = indexes_of(r) {
        record(r, ix.status, status.as_bytes());
    }
}

/// Records what the front cache had for `r`.
pub fn set_front(r: &mut ngx_http_request_t, status: FrontStatus) {
    if let Some(ix) = indexes_of(r) {
        record(r, ix.front, status.as_bytes());
    }
}

/// Records what became of `r`'s page.
pub fn set_store(r: &mut ngx_http_request_t, status: StoreStatus) {
    if let Some(ix) = indexes_of(r) {
        record(r, ix.store, status.as_bytes());
    }
}

/// Records the time `r` spent on memcached so far: seconds with millisecond resolution,
/// as `$upstream_response_time`.
///
/// Only the number is kept here (in the variable's slot, marked as not yet evaluated); it is
/// formatted when something reads the variable (`get_lookup_time`), so a request that
/// nobody logs it for pays nothing.
pub fn set_lookup_time(r: &mut ngx_http_request_t, ms: ngx_msec_t) {
    let Some(index) = indexes_of(r).and_then(|ix| usize::try_from(ix.lookup_time).ok()) else {
        return;
    };
    if !ptr::eq(r, r.main) {
        return;
    }
    // SAFETY: r->variables has one slot per declared variable.
    let v = unsafe { &mut *r.variables.add(index) };
    // len is 28 bits: 74 hours is long enough.
    let ms = u32::try_from(ms).unwrap_or(u32::MAX).min(0x0fff_ffff);
    bitfield::set_value(v, ms, ValueFlags::default());
    v.data = LOOKUP_TIME_SET.as_ptr().cast_mut();
}

/// Marks a `$rcache_lookup_time` slot that holds a number of milliseconds in its `len`.
static LOOKUP_TIME_SET: [u8; 1] = [0];

/// Get handler of `$rcache_lookup_time`: formats the milliseconds `set_lookup_time` left.
unsafe extern "C" fn get_lookup_time(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request and the variable's slot.
    let (r, v) = unsafe { (&mut *r, &mut *v) };
    if !ptr::eq(v.data, LOOKUP_TIME_SET.as_ptr()) {
        v.set_not_found(1);
        return Status::NGX_OK.into();
    }
    let mut buf = [0u8; 24];
    let text = format_seconds(bitfield::value_len_of(v) as ngx_msec_t, &mut buf);
    // SAFETY: the request's pool outlives its variables.
    let data = unsafe { ngx_pnalloc(r.pool, text.len()) as *mut u8 };
    if data.is_null() {
        return Status::NGX_ERROR.into();
    }
    // SAFETY: data has room for text.
    unsafe { ptr::copy_nonoverlapping(text.as_ptr(), data, text.len()) };
    v.data = data;
    bitfield::set_value(v, text.len() as u32, VALID);
    Status::NGX_OK.into()
}

/// `1234` ms as `1.234`, in `buf` (no allocation: this runs for every lookup).
pub fn format_seconds(ms: ngx_msec_t, buf: &mut [u8; 24]) -> &[u8] {
    let mut end = buf.len();
    let mut put = |b: u8| {
        end -= 1;
        buf[end] = b;
    };
    let (mut secs, frac) = (ms / 1000, ms % 1000);
    put(b'0' + (frac % 10) as u8);
    put(b'0' + (frac / 10 % 10) as u8);
    put(b'0' + (frac / 100) as u8);
    put(b'.');
    loop {
        put(b'0' + (secs % 10) as u8);
        secs /= 10;
        if secs == 0 {
            break;
        }
    }
    &buf[end..]
}

/// Whether rcache recorded a MISS, EXPIRED or PASS for `r`: the requests whose response
/// may be stored (a cheap test for the store filters).
pub fn status_may_store(r: &ngx_http_request_t) -> bool {
    let Some(index) = indexes_of(r).and_then(|ix| usize::try_from(ix.status).ok()) else {
        return false;
    };
    // SAFETY: r->variables has one slot per declared variable.
    let v = unsafe { &*r.variables.add(index) };
    v.valid() != 0
        && (ptr::eq(v.data, CacheStatus::Miss.as_bytes().as_ptr())
            || ptr::eq(v.data, CacheStatus::Expired.as_bytes().as_ptr())
            || ptr::eq(v.data, CacheStatus::Pass.as_bytes().as_ptr()))
}

/// What rcache recorded for `r`, if anything.
pub fn status_of(r: &ngx_http_request_t) -> Option<CacheStatus> {
    let index = indexes_of(r).and_then(|ix| usize::try_from(ix.status).ok())?;
    // SAFETY: r->variables has one slot per declared variable.
    let v = unsafe { &*r.variables.add(index) };
    if v.valid() == 0 {
        return None;
    }
    ALL_STATUSES
        .into_iter()
        .find(|s| ptr::eq(v.data, s.as_bytes().as_ptr()))
}

/// What the front cache had for `r`, if it was asked.
pub fn front_of(r: &ngx_http_request_t) -> Option<FrontStatus> {
    let index = indexes_of(r).and_then(|ix| usize::try_from(ix.front).ok())?;
    // SAFETY: r->variables has one slot per declared variable.
    let v = unsafe { &*r.variables.add(index) };
    if v.valid() == 0 {
        return None;
    }
    [FrontStatus::Hit, FrontStatus::Miss]
        .into_iter()
        .find(|s| ptr::eq(v.data, s.as_bytes().as_ptr()))
}

/// Every `$rcache_status`, in the order the counters keep them.
pub const ALL_STATUSES: [CacheStatus; 9] = [
    CacheStatus::Hit,
    CacheStatus::Miss,
    CacheStatus::Bypass,
    CacheStatus::Error,
    CacheStatus::Purge,
    CacheStatus::Updating,
    CacheStatus::Expired,
    CacheStatus::Stale,
    CacheStatus::Pass,
];

/// Whether rcache recorded `status` for `r` (a cheap test for filters).
pub fn status_is(r: &ngx_http_request_t, status: CacheStatus) -> bool {
    let Some(index) = indexes_of(r).and_then(|ix| usize::try_from(ix.status).ok()) else {
        return false;
    };
    // SAFETY: r->variables has one slot per declared variable.
    let v = unsafe { &*r.variables.add(index) };
    v.valid() != 0 && ptr::eq(v.data, status.as_bytes().as_ptr())
}

/// Writes `bytes` as the value of variable `index` of `r`.
fn record(r: &mut ngx_http_request_t, index: ngx_int_t, bytes: &'static [u8]) {
    // Subrequests (SSI includes) share their parent's variables: an included
    // fragment must not overwrite what rcache recorded for the page.
    let Ok(index) = usize::try_from(index) else {
        return;
    };
    if !ptr::eq(r, r.main) {
        return;
    }
    // SAFETY: r->variables has one slot per declared variable.
    let v = unsafe { &mut *r.variables.add(index) };
    v.data = bytes.as_ptr().cast_mut();
    bitfield::set_value(v, bytes.len() as u32, VALID);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_with_milliseconds() {
        let mut buf = [0; 24];
        for (ms, text) in [
            (0, "0.000"),
            (7, "0.007"),
            (61_234, "61.234"),
            (ngx_msec_t::MAX, ""),
        ] {
            if text.is_empty() {
                // The largest value still fits.
                assert!(!format_seconds(ms, &mut buf).is_empty());
                continue;
            }
            assert_eq!(format_seconds(ms, &mut buf), text.as_bytes());
        }
    }
}
