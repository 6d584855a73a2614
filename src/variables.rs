//! `$rcache_status` (HIT, MISS, BYPASS or ERROR) and `$rcache_front` (HIT or MISS in the
//! front cache).
//!
//! An internal redirect wipes module contexts (`r->ctx`) but not the
//! request's variable values (`r->variables`), which is where `set $var`
//! keeps its values too. rcache stores its values there, under the
//! variables' indexes, when it decides them; the fallback location, `add_header`
//! and `access_log` then read those stored values. For requests rcache never
//! saw, the get handler reports "not found" (`-` in logs).

use ngx::ffi::*;
use ngx::ngx_string;

/// What rcache did with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Bypass,
    Error,
}

impl CacheStatus {
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            CacheStatus::Hit => b"HIT",
            CacheStatus::Miss => b"MISS",
            CacheStatus::Bypass => b"BYPASS",
            CacheStatus::Error => b"ERROR",
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

/// Preconfiguration: declares the variables.
///
/// # Safety
/// `cf` must be valid during configuration.
pub unsafe extern "C" fn add(cf: *mut ngx_conf_t) -> ngx_int_t {
    for mut name in [ngx_string!("rcache_status"), ngx_string!("rcache_front")] {
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

/// Postconfiguration: the indexes rcache writes `$rcache_status` and
/// `$rcache_front` under.
///
/// # Safety
/// `cf` must be valid during configuration.
pub unsafe fn indexes(cf: *mut ngx_conf_t) -> (ngx_int_t, ngx_int_t) {
    let mut status = ngx_string!("rcache_status");
    let mut front = ngx_string!("rcache_front");
    // SAFETY: cf is valid during configuration.
    unsafe {
        (
            ngx_http_get_variable_index(cf, &mut status),
            ngx_http_get_variable_index(cf, &mut front),
        )
    }
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

/// # Safety
/// `r` must be a live request; `index` one obtained at configuration time.
unsafe fn store(r: *mut ngx_http_request_t, index: ngx_int_t, bytes: &'static [u8]) {
    if index < 0 {
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
