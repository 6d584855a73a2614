//! rcache: serve whole pages straight out of memcached, over pooled
//! connections, and hand the request to the application on a miss, an error,
//! or when the visitor must not see a cached page.
//!
//! This file wires the module together; each concern has its own file:
//!
//! * `conf.rs` — directives, defaults, merging;
//! * `handler.rs` — the content phase: bypass → lookup → HIT / fallback;
//! * `upstream.rs` — the memcached exchange on nginx's upstream framework;
//! * `protocol.rs`, `key.rs`, `gzip.rs` — pure reply parsing, key escaping,
//!   gzip handling;
//! * `target.rs`, `peer.rs`, `pool.rs` — hooking into an upstream's balancer,
//!   per-request peer handling, idle connection pool;
//! * `balancer/` — `rcache_hash`: the server a key's writer chose;
//! * `front.rs` — the shared-memory front cache;
//! * `store/` — `rcache_store` (capture, policy, stored form, write) and purge;
//! * `variables.rs` — `$rcache_status`, `$rcache_front`.

use core::ffi::c_void;
use core::ptr;

use ngx::ffi::*;

mod balancer;
mod conf;
mod front;
mod gzip;
mod handler;
mod key;
mod peer;
mod pool;
mod protocol;
mod store;
mod target;
mod upstream;
mod value;
mod variables;

static MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(variables::add),
    postconfiguration: Some(postconfiguration),
    create_main_conf: Some(conf::create_main_conf),
    init_main_conf: None,
    create_srv_conf: Some(balancer::create_srv_conf),
    merge_srv_conf: None,
    create_loc_conf: Some(conf::create_loc_conf),
    merge_loc_conf: Some(conf::merge_loc_conf),
};

// The unit-test executable is not loaded by nginx: it must not keep the
// module (and with it every call into nginx) alive, or it would not link.
#[cfg(all(feature = "export-modules", not(test)))]
ngx::ngx_modules!(ngx_http_rcache_module);

/// The module, as nginx sees it.
#[cfg_attr(not(test), used)]
#[allow(non_upper_case_globals)]
#[cfg_attr(not(feature = "export-modules"), no_mangle)]
pub static mut ngx_http_rcache_module: ngx_module_t = ngx_module_t {
    ctx: ptr::addr_of!(MODULE_CTX) as *mut c_void,
    commands: ptr::addr_of_mut!(conf::COMMANDS) as *mut ngx_command_t,
    type_: NGX_HTTP_MODULE as ngx_uint_t,
    ..ngx_module_t::default()
};

/// The module descriptor (for `ctx_index` and buffer tags).
pub(crate) fn module() -> &'static ngx_module_t {
    // SAFETY: nginx writes the module's indexes while loading the
    // configuration, before any request runs; afterwards it is only read.
    unsafe { &*ptr::addr_of!(ngx_http_rcache_module) }
}

unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: cf is the http{} configuration being finished; our main conf
    // was created by create_main_conf.
    unsafe {
        let ctx = (*cf).ctx as *mut ngx_http_conf_ctx_t;
        let mcf = *(*ctx).main_conf.add(module().ctx_index) as *mut conf::MainConf;
        let [status, front, store] = variables::indexes(cf);
        if [status, front, store].contains(&(NGX_ERROR as ngx_int_t)) {
            return NGX_ERROR as ngx_int_t;
        }
        (*mcf).status_index = status;
        (*mcf).front_index = front;
        (*mcf).store_index = store;
        if (*mcf).store_used {
            store::capture::install_filters();
        }
        if !front::check_zones(cf) {
            return NGX_ERROR as ngx_int_t;
        }
        if !conf::check_named_fallbacks(cf, mcf) {
            return NGX_ERROR as ngx_int_t;
        }
        target::wrap_peer_init(cf)
    }
}

/// The location configuration of `r`.
///
/// # Safety
/// `r` must be a live request.
pub(crate) unsafe fn loc_conf<'a>(r: *const ngx_http_request_t) -> &'a conf::LocConf {
    // SAFETY: loc_conf[ctx_index] is the LocConf created for r's location.
    unsafe { &*(*(*r).loc_conf.add(module().ctx_index) as *const conf::LocConf) }
}

/// The location configuration of `r`, for handing its upstream part to nginx.
///
/// # Safety
/// `r` must be a live request; nginx's upstream module only reads it.
pub(crate) unsafe fn loc_conf_mut<'a>(r: *const ngx_http_request_t) -> &'a mut conf::LocConf {
    // SAFETY: as loc_conf.
    unsafe { &mut *(*(*r).loc_conf.add(module().ctx_index) as *mut conf::LocConf) }
}

/// The http-level configuration of `r`.
///
/// # Safety
/// `r` must be a live request.
pub(crate) unsafe fn main_conf(r: *const ngx_http_request_t) -> *const conf::MainConf {
    // SAFETY: main_conf[ctx_index] is our MainConf.
    unsafe { *(*r).main_conf.add(module().ctx_index) as *const conf::MainConf }
}
