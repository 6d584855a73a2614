//! `rcache_metrics;`: the location answers `GET` (and `HEAD`) with the counters in
//! Prometheus's text format. Protect it with nginx's own `allow` / `deny`.

use core::sync::atomic::Ordering;

use core::ffi::{c_char, c_void};

use ngx::core::{Status, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::*;
use ngx::http::{HTTPStatus, HttpModuleLocationConf, HttpModuleMainConf, NgxHttpCoreModule};

use crate::conf;
use crate::front;
use crate::health_zone::{FailureKind, BUCKETS_US};
use crate::metrics_conf;
use crate::metrics_page::{self, Figures, ServerFigures};
use crate::HttpRcacheModule;

/// `rcache_metrics;`: the location answers with the counters.
///
/// # Safety
/// Called by nginx while parsing a location.
pub unsafe extern "C" fn set_metrics(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: per the contract above.
    let cf = unsafe { &mut *cf };
    let Some(clcf) = NgxHttpCoreModule::location_conf_mut(cf) else {
        return NGX_CONF_ERROR;
    };
    if clcf.handler.is_some() {
        return c"conflicts with another content handler in this location"
            .as_ptr()
            .cast_mut();
    }
    clcf.handler = Some(handler);
    let Some(mcf) = conf::main_conf_mut(cf) else {
        return NGX_CONF_ERROR;
    };
    mcf.metrics_used = true;
    NGX_CONF_OK
}

/// The location's content handler.
pub unsafe extern "C" fn handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls content handlers with a live request.
    unsafe { answer(&mut *r) }.into()
}

unsafe fn answer(r: &mut ngx_http_request_t) -> Status {
    if r.method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as ngx_uint_t == 0 {
        return HTTPStatus::NOT_ALLOWED.into();
    }
    // SAFETY: r is a live request in its content phase.
    let rc = Status(unsafe { ngx_http_discard_request_body(r) });
    if !rc.is_ok() {
        return rc;
    }
    let Some(zone) = metrics_conf::zone_of(r) else {
        return HTTPStatus::NOT_FOUND.into();
    };
    let mut figures = Figures {
        counters: zone.snapshot(),
        // SAFETY: in a worker, the running cycle.
        fronts: unsafe { front::figures(ngx_cycle) },
        servers: Vec::new(),
    };
    if let Some(mcf) = HttpRcacheModule::main_conf(r) {
        for t in mcf.targets.iter() {
            // SAFETY: targets and their upstreams live as long as the configuration.
            let t = unsafe { &*t };
            // SAFETY: as above; implicit upstreams (`rcache_pass host:port`) have no
            // srv_conf, and their host lacks the port: they go by the server's address.
            let (host, implicit) =
                unsafe { ((*t.uscf).host.to_string(), (*t.uscf).srv_conf.is_null()) };
            for h in &t.health {
                let upstream = if implicit { h.name() } else { &host };
                figures.servers.push(server_figures(upstream, h));
            }
        }
    }
    let body = metrics_page::render(&figures);
    send(r, body.as_bytes())
}

fn server_figures(upstream: &str, h: &crate::health_zone::ServerHealth) -> ServerFigures {
    let st = h.stats();
    let load = |a: &core::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut buckets: Vec<(Option<f64>, u64)> = BUCKETS_US
        .iter()
        .zip(&st.buckets)
        .map(|(&us, n)| (Some(us as f64 / 1e6), load(n)))
        .collect();
    buckets.push((None, load(&st.buckets[BUCKETS_US.len()])));
    ServerFigures {
        upstream: upstream.to_string(),
        server: h.name().to_string(),
        up: !h.marked_down(),
        lookups: load(&st.lookups),
        failures: FailureKind::ALL
            .iter()
            .zip(&st.failures)
            .map(|(k, n)| (k.name(), load(n)))
            .collect(),
        down_episodes: load(&st.down_episodes),
        connections_opened: load(&st.connections_opened),
        idle: st.idle.load(Ordering::Relaxed),
        buckets,
        time_seconds: load(&st.time_us) as f64 / 1e6,
    }
}

/// Sends `body` (copied into the request's pool) as the `text/plain` page.
fn send(r: &mut ngx_http_request_t, body: &[u8]) -> Status {
    let out = &mut r.headers_out;
    out.status = HTTPStatus::OK.into();
    out.content_length_n = body.len() as off_t;
    let ct = metrics_page::CONTENT_TYPE;
    out.content_type = ngx_str_t {
        len: ct.len(),
        data: ct.as_ptr().cast_mut(),
    };
    out.content_type_len = ct.len();
    // SAFETY: r is live and its headers_out is filled in.
    let rc = unsafe { ngx_http_send_header(r) };
    if rc == Status::NGX_ERROR.0 || rc > Status::NGX_OK.0 || r.header_only() != 0 {
        return Status(rc);
    }
    // SAFETY: a buffer and chain link from the request's pool, holding a copy of body.
    unsafe {
        let b = ngx_create_temp_buf(r.pool, body.len().max(1));
        let cl = ngx_alloc_chain_link(r.pool);
        if b.is_null() || cl.is_null() {
            return Status::NGX_ERROR;
        }
        core::ptr::copy_nonoverlapping(body.as_ptr(), (*b).last, body.len());
        (*b).last = (*b).last.add(body.len());
        (*b).set_last_buf(1);
        (*b).set_last_in_chain(1);
        (*cl).buf = b;
        (*cl).next = core::ptr::null_mut();
        Status(ngx_http_output_filter(r, cl))
    }
}
