//! The log phase counts every request rcache decided: by `$rcache_status` and server
//! block, the body bytes of cached pages (from memcached or from the front cache) and the
//! front cache's hits and misses. It runs once per request, after every internal
//! redirect, so a request's final status is the one counted.

use ngx::core::Status;
use ngx::ffi::*;
use ngx::http::{HttpModuleMainConf, NgxHttpCoreModule};

use crate::metrics::Counter;
use crate::metrics_conf;
use crate::variables::{self, CacheStatus, FrontStatus};

/// Postconfiguration: puts the counter in nginx's log phase.
///
/// # Safety
/// `cf` must be the finished http{} configuration.
pub unsafe fn install(cf: &mut ngx_conf_t) -> bool {
    let Some(cmcf) = NgxHttpCoreModule::main_conf_mut(cf) else {
        return false;
    };
    let phase = &mut cmcf.phases[ngx_http_phases_NGX_HTTP_LOG_PHASE as usize];
    // SAFETY: the phase's handler array, in the configuration's pool.
    let h = unsafe { ngx_array_push(&mut phase.handlers) as *mut ngx_http_handler_pt };
    if h.is_null() {
        return false;
    }
    // SAFETY: a fresh slot of the array.
    unsafe { *h = Some(count_request) };
    true
}

unsafe extern "C" fn count_request(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx runs log handlers with a live (main) request.
    let r = unsafe { &*r };
    let Some(status) = variables::status_of(r) else {
        return Status::NGX_OK.into();
    };
    let Some(zone) = metrics_conf::zone_of(r) else {
        return Status::NGX_OK.into();
    };
    // SAFETY: a live request has its server block's configuration.
    let cscf = unsafe { *r.srv_conf.add(ngx_http_core_module.ctx_index) };
    zone.request(cscf.cast_const(), status);
    let front = variables::front_of(r);
    match front {
        Some(FrontStatus::Hit) => zone.count(Counter::FrontHit),
        Some(FrontStatus::Miss) => zone.count(Counter::FrontMiss),
        Some(FrontStatus::Pass) => zone.count(Counter::FrontPass),
        None => {}
    }
    if matches!(
        status,
        CacheStatus::Hit | CacheStatus::Updating | CacheStatus::Stale
    ) {
        // As $body_bytes_sent.
        // SAFETY: a live request has its connection.
        let sent = unsafe { (*r.connection).sent } - r.header_size as off_t;
        let source = if front == Some(FrontStatus::Hit) {
            Counter::ServedFront
        } else {
            Counter::ServedMemcached
        };
        zone.add(source, u64::try_from(sent).unwrap_or(0));
    }
    Status::NGX_OK.into()
}
