//! `rcache_metrics_zone NAME:SIZE;` (http) and `rcache_metrics;` (location), and the
//! configuration's counters as the rest of the module reaches them.
//!
//! Without `rcache_metrics_zone` nothing is counted (and `rcache_metrics` is an error):
//! counting is something an operator turns on, and then costs a few atomic additions per
//! request.

use core::ffi::{c_char, c_void};

use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::*;
use ngx::http::{HttpModuleMainConf, NgxHttpCoreModule};
use ngx::{ngx_conf_log_error, ngx_log_error};

use crate::conf::{self, MainConf};
use crate::metrics::{self, Counter, Zone};
use crate::zone_arg;
use crate::HttpRcacheModule;

/// `rcache_metrics_zone NAME:SIZE;`
///
/// # Safety
/// Called by nginx while parsing the http{} block.
pub unsafe extern "C" fn set_zone(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: per the contract above.
    let cf = unsafe { &mut *cf };
    let Some(mcf) = conf::main_conf_mut(cf) else {
        return NGX_CONF_ERROR;
    };
    if !mcf.metrics.is_null() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    let Some((mut name, size)) = zone_arg::parse(cf, "rcache_metrics_zone") else {
        return NGX_CONF_ERROR;
    };
    // SAFETY: cf is the configuration being parsed.
    let zone = unsafe { metrics::add_zone(cf, &mut name, size) };
    if zone.is_null() {
        ngx_conf_log_error!(
            NGX_LOG_EMERG,
            cf,
            "zone \"{}\" of the \"rcache_metrics_zone\" directive is already used",
            name
        );
        return NGX_CONF_ERROR;
    }
    mcf.metrics = zone;
    NGX_CONF_OK
}

/// Postconfiguration: every server block gets its row, the zone must hold them, the
/// upstreams count their servers (`lib.rs` then puts `metrics_log` in the log phase).
///
/// # Safety
/// `cf` must be the finished http{} configuration.
pub unsafe fn postconfiguration(cf: &mut ngx_conf_t, mcf: &mut MainConf) -> bool {
    // SAFETY: mcf.metrics is NULL or the zone of this configuration.
    let Some(zone) = (unsafe { mcf.metrics.as_mut() }) else {
        if mcf.metrics_used {
            ngx_log_error!(
                NGX_LOG_EMERG,
                cf.log,
                "\"rcache_metrics\" needs an \"rcache_metrics_zone\" in the http block"
            );
            return false;
        }
        return true;
    };
    let Some(cmcf) = NgxHttpCoreModule::main_conf_mut(cf) else {
        return false;
    };
    // SAFETY: the core module's list of server blocks, complete.
    let servers = unsafe { cmcf.servers.as_slice::<*mut ngx_http_core_srv_conf_t>() };
    for &cscf in servers {
        // SAFETY: a server block of this configuration.
        let name = unsafe { (*cscf).server_name };
        let name = if name.len == 0 {
            ngx_str_t {
                len: 1,
                data: c"_".as_ptr().cast_mut().cast(),
            }
        } else {
            name
        };
        // SAFETY: during configuration; both live as long as it.
        if !unsafe { zone.add_server(cscf.cast_const().cast(), name) } {
            return false;
        }
    }
    let need = metrics::zone_size_for(zone.servers());
    if zone.size() < need {
        ngx_log_error!(
            NGX_LOG_EMERG,
            cf.log,
            "\"rcache_metrics_zone\" is too small for {} server blocks: it must be at least \
             {}k",
            zone.servers(),
            need / 1024
        );
        return false;
    }
    mcf.targets.counting = true;
    true
}

/// The running configuration's counters, if it has `rcache_metrics_zone`.
pub fn current() -> Option<&'static Zone> {
    // SAFETY: in a worker, ngx_cycle is the running cycle; its http main conf of rcache
    // is a MainConf (or the http block is absent: NULL).
    unsafe {
        let ctx = (*ngx_cycle).conf_ctx;
        if ctx.is_null() {
            return None;
        }
        let http = *ctx.add(ngx_http_module.index) as *mut ngx_http_conf_ctx_t;
        let http = http.as_ref()?;
        let mcf = *http.main_conf.add(crate::module().ctx_index) as *const MainConf;
        mcf.as_ref()?.metrics.as_ref()
    }
}

/// Counts one `counter`, if counting is on.
pub fn count(counter: Counter) {
    if let Some(z) = current() {
        z.count(counter);
    }
}

/// The counters of `r`'s configuration, if it has `rcache_metrics_zone`.
pub fn zone_of(r: &ngx_http_request_t) -> Option<&'static Zone> {
    // SAFETY: the zone lives as long as the configuration.
    HttpRcacheModule::main_conf(r).and_then(|mcf| unsafe { mcf.metrics.as_ref() })
}
