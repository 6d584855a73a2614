//! rcache: serve whole pages straight out of memcached, over pooled
//! connections, and hand the request to the application on a miss, an error,
//! or when the visitor must not see a cached page.
//!
//! This file wires the module together (the descriptor, its configuration
//! types, postconfiguration); each concern has its own file, and
//! `ARCHITECTURE.md` is the map. A request flows one way:
//!
//! * `handler.rs` — the content phase: bypass → key → front cache → lookup;
//! * `upstream.rs` — the memcached exchange (nginx's upstream framework),
//!   which ends in an [`outcome::Outcome`];
//! * `respond.rs` — the one place an outcome becomes a response (HIT) or a
//!   fallback (MISS, BYPASS, ERROR), or a purge's answer.

use core::ffi::c_void;
use core::ptr;

use ngx::core::Status;
use ngx::ffi::*;
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf};

/// `ngx_log_debug` at the http level: compiled in only when nginx is built
/// `--with-debug`, shown with `error_log ... debug`.
macro_rules! debug {
    ($log:expr, $($arg:tt)+) => {
        ngx::ngx_log_debug!(mask: ngx::log::DebugMask::Http, $log, $($arg)+)
    };
}

mod balancer;
mod bitfield;
mod commands;
mod conf;
mod front;
#[cfg(test)]
mod fuzz;
mod gzip;
mod handler;
mod health;
mod health_zone;
mod key;
mod lookup;
mod meta;
mod metrics;
mod metrics_conf;
mod metrics_endpoint;
mod metrics_log;
mod metrics_page;
mod outcome;
mod page_response;
mod peer;
mod pool;
mod protocol;
mod read_size;
mod respond;
mod stale;
mod store;
mod target;
mod upstream;
mod value;
mod variables;
mod wait;
mod zone_arg;

/// The module's configuration types, for ngx's typed conf lookups
/// (`HttpRcacheModule::location_conf(r)` and friends).
pub(crate) struct HttpRcacheModule;

impl HttpModule for HttpRcacheModule {
    fn module() -> &'static ngx_module_t {
        // SAFETY: nginx writes the module's indexes while loading the
        // configuration, before any request runs; afterwards it is only read.
        unsafe { &*ptr::addr_of!(ngx_http_rcache_module) }
    }
}

// SAFETY: main_conf[ctx_index] is the MainConf conf::create_main_conf made.
unsafe impl HttpModuleMainConf for HttpRcacheModule {
    type MainConf = conf::MainConf;
}

// SAFETY: an upstream block's srv_conf[ctx_index] is the HashConf
// balancer::create_srv_conf made.
unsafe impl HttpModuleServerConf for HttpRcacheModule {
    type ServerConf = balancer::HashConf;
}

// SAFETY: loc_conf[ctx_index] is the LocConf conf::create_loc_conf made.
unsafe impl HttpModuleLocationConf for HttpRcacheModule {
    type LocationConf = conf::LocConf;
}

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
    commands: ptr::addr_of_mut!(commands::COMMANDS) as *mut ngx_command_t,
    type_: NGX_HTTP_MODULE as ngx_uint_t,
    init_process: Some(init_process),
    ..ngx_module_t::default()
};

/// The module descriptor (for `ctx_index`, buffer and zone tags).
pub(crate) fn module() -> &'static ngx_module_t {
    HttpRcacheModule::module()
}

/// A worker starts: take back what a worker that died left pinned in the front zones.
unsafe extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx calls init_process with the cycle the worker runs.
    unsafe { front::release_orphaned_pins(cycle) };
    Status::NGX_OK.into()
}

/// Everything that needs the whole configuration: variable indexes, the store
/// filters, checks that span locations, and rcache's layer over each balancer.
unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: nginx calls postconfiguration with the http{} configuration
    // being finished.
    let cf = unsafe { &mut *cf };
    let Some(mcf) = HttpRcacheModule::main_conf_mut(cf) else {
        return Status::NGX_ERROR.into();
    };
    let Some(indexes) = variables::indexes(cf) else {
        return Status::NGX_ERROR.into();
    };
    mcf.variables = indexes;
    // The capture filters go on top of the stale ones: they see the fallback's answer.
    if mcf.meta_used {
        stale::install_filters();
    }
    if mcf.store_used {
        store::capture::install_filters();
    }
    // SAFETY: the configuration is complete; its shared zones are listed.
    if !unsafe { front::check_zones(cf) } || !conf::check_named_fallbacks(cf, mcf) {
        return Status::NGX_ERROR.into();
    }
    // SAFETY: the finished configuration.
    if !unsafe { metrics_conf::postconfiguration(cf, mcf) } {
        return Status::NGX_ERROR.into();
    }
    // SAFETY: as above; the handler only reads requests.
    if !mcf.metrics.is_null() && !unsafe { metrics_log::install(cf) } {
        return Status::NGX_ERROR.into();
    }
    peer::wrap_balancers(&mcf.targets);
    // SAFETY: the finished configuration and its targets.
    let targets = ptr::from_ref(&mcf.targets).cast::<c_void>();
    if mcf.targets.iter().next().is_some()
        && !unsafe { health_zone::add(cf, target::attach_health, targets) }
    {
        return Status::NGX_ERROR.into();
    }
    Status::NGX_OK.into()
}
