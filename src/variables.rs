//! `$rcache_status`: HIT, MISS, BYPASS or ERROR.
//!
//! An internal redirect wipes module contexts (`r->ctx`) but not the
//! request's variable values (`r->variables`), which is where `set $var`
//! keeps its values too. rcache stores the status there, under the
//! variable's index, when it decides it; the fallback location, `add_header`
//! and `access_log` then read that stored value. For requests rcache never
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

/// Preconfiguration: declares `$rcache_status`.
pub unsafe extern "C" fn add(cf: *mut ngx_conf_t) -> ngx_int_t {
    let mut name = ngx_string!("rcache_status");
    // SAFETY: cf is valid during configuration.
    unsafe {
        let v = ngx_http_add_variable(cf, &mut name, 0);
        if v.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        (*v).get_handler = Some(get_unset);
    }
    NGX_OK as ngx_int_t
}

/// Postconfiguration: the index rcache writes the status under.
pub unsafe fn index(cf: *mut ngx_conf_t) -> ngx_int_t {
    let mut name = ngx_string!("rcache_status");
    // SAFETY: cf is valid during configuration.
    unsafe { ngx_http_get_variable_index(cf, &mut name) }
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
    // SAFETY: r->variables has one slot per declared variable, and the
    // index was obtained at configuration time.
    unsafe {
        let index = (*crate::main_conf(r)).status_index;
        if index < 0 {
            return;
        }
        let v = &mut *(*r).variables.add(index as usize);
        let bytes = status.as_bytes();
        v.set_len(bytes.len() as u32);
        v.data = bytes.as_ptr().cast_mut();
        v.set_valid(1);
        v.set_no_cacheable(0);
        v.set_not_found(0);
        v.set_escape(0);
    }
}
