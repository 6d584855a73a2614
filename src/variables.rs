//! `$rcache_status` (HIT, MISS, BYPASS, ERROR, PURGE), `$rcache_front` (HIT or MISS in
//! the front cache) and `$rcache_store_status` (STORED, NOT_CACHEABLE, TOO_LARGE, FAILED).
//!
//! An internal redirect wipes module contexts (`r->ctx`) but not the
//! request's variable values (`r->variables`), which is where `set $var`
//! keeps its values too. rcache stores its values there, under the
//! variables' indexes, when it decides them; the fallback location, `add_header`
//! and `access_log` then read those stored values. For requests rcache never
//! saw, the get handler reports "not found" (`-` in logs).

use core::ptr;

use ngx::ffi::*;
use ngx::ngx_string;

/// What rcache did with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Bypass,
    Error,
    /// A `PURGE` request (`rcache_purge`).
    Purge,
}

impl CacheStatus {
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            CacheStatus::Hit => b"HIT",
            CacheStatus::Miss => b"MISS",
            CacheStatus::Bypass => b"BYPASS",
            CacheStatus::Error => b"ERROR",
            CacheStatus::Purge => b"PURGE",
        }
    }
}

/// Whether the front cache had the page (only set where `rcache_front` is on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontStatus {
    Hit,
    Miss,
}

impl FrontStatus {
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            FrontStatus::Hit => b"HIT",
            FrontStatus::Miss => b"MISS",
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

/// Preconfiguration: declares the variables.
///
/// # Safety
/// `cf` must be valid during configuration.
pub unsafe extern "C" fn add(cf: *mut ngx_conf_t) -> ngx_int_t {
    for mut name in [
        ngx_string!("rcache_status"),
        ngx_string!("rcache_front"),
        ngx_string!("rcache_store_status"),
    ] {
        // SAFETY: cf is valid during configuration.
        unsafe {
            let v = ngx_http_add_variable(cf, &mut name, 0);
            if v.is_null() {
                return NGX_ERROR as ngx_int_t;
            }
            (*v).get_handler = Some(get_unset);
        }
    }
    NGX_OK as ngx_int_t
}

/// Postconfiguration: the indexes rcache writes `$rcache_status`,
/// `$rcache_front` and `$rcache_store_status` under.
///
/// # Safety
/// `cf` must be valid during configuration.
pub unsafe fn indexes(cf: *mut ngx_conf_t) -> [ngx_int_t; 3] {
    let names = [
        ngx_string!("rcache_status"),
        ngx_string!("rcache_front"),
        ngx_string!("rcache_store_status"),
    ];
    // SAFETY: cf is valid during configuration.
    names.map(|mut name| unsafe { ngx_http_get_variable_index(cf, &mut name) })
}

/// Get handler for requests rcache has not decided on.
unsafe extern "C" fn get_unset(
    _r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes the value slot to fill.
    unsafe { (*v).set_not_found(1) };
    NGX_OK as ngx_int_t
}

/// Records `status` for `r` (and the internal redirects that follow).
///
/// # Safety
/// `r` must be a live request.
pub unsafe fn set_status(r: *mut ngx_http_request_t, status: CacheStatus) {
    // SAFETY: forwarded contract.
    unsafe { store(r, (*crate::main_conf(r)).status_index, status.as_bytes()) }
}

/// Records what the front cache had for `r`.
///
/// # Safety
/// `r` must be a live request.
pub unsafe fn set_front(r: *mut ngx_http_request_t, status: FrontStatus) {
    // SAFETY: forwarded contract.
    unsafe { store(r, (*crate::main_conf(r)).front_index, status.as_bytes()) }
}

/// Records what became of `r`'s page.
///
/// # Safety
/// `r` must be a live request.
pub unsafe fn set_store(r: *mut ngx_http_request_t, status: StoreStatus) {
    // SAFETY: forwarded contract.
    unsafe { store(r, (*crate::main_conf(r)).store_index, status.as_bytes()) }
}

/// Whether rcache recorded a MISS for `r` (a cheap test for the store filters).
///
/// # Safety
/// `r` must be a live request.
pub unsafe fn status_is_miss(r: *mut ngx_http_request_t) -> bool {
    // SAFETY: r->variables has one slot per declared variable.
    unsafe {
        let index = (*crate::main_conf(r)).status_index;
        if index < 0 {
            return false;
        }
        let v = &*(*r).variables.add(index as usize);
        v.valid() != 0 && ptr::eq(v.data, CacheStatus::Miss.as_bytes().as_ptr())
    }
}

/// # Safety
/// `r` must be a live request; `index` one obtained at configuration time.
unsafe fn store(r: *mut ngx_http_request_t, index: ngx_int_t, bytes: &'static [u8]) {
    // Subrequests (SSI includes) share their parent's variables: an included
    // fragment must not overwrite what rcache recorded for the page.
    // SAFETY: r is a live request.
    if index < 0 || unsafe { !ptr::eq(r, (*r).main) } {
        return;
    }
    // SAFETY: r->variables has one slot per declared variable.
    unsafe {
        let v = &mut *(*r).variables.add(index as usize);
        v.set_len(bytes.len() as u32);
        v.data = bytes.as_ptr().cast_mut();
        v.set_valid(1);
        v.set_no_cacheable(0);
        v.set_not_found(0);
        v.set_escape(0);
    }
}
