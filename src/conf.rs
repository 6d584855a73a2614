//! Directives, their defaults, and merging.
//!
//! The README's "Directives" section is the reference for everything here.
//! Values that nginx's own slot functions can parse (times, sizes, numbers,
//! complex values, predicates) use them, so syntax errors are reported by
//! `nginx -t` exactly as for nginx's own directives (`"rcache_read_timeout"
//! directive invalid value in ...`). The table of directives is in
//! `commands.rs`; `rcache_pass` is parsed in `handler.rs` (it installs the
//! content handler), the front cache's and `rcache_hash`'s directives in their
//! own files.

use core::ffi::{c_char, c_void, CStr};
use core::ptr;

use ngx::core::{Status, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::*;
use ngx::http::{
    HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf, NgxHttpCoreModule,
};
use ngx::{ngx_conf_log_error, ngx_log_error};

use crate::front::FrontConf;
use crate::metrics::Zone;
use crate::target::{Target, Targets};
pub use crate::variables::VariableIndexes;
use crate::HttpRcacheModule;

/// Defaults: a cache must fail fast.
const DEFAULT_CONNECT_TIMEOUT: ngx_msec_t = 200;
const DEFAULT_SEND_TIMEOUT: ngx_msec_t = 200;
const DEFAULT_READ_TIMEOUT: ngx_msec_t = 500;
const DEFAULT_KEEPALIVE: ngx_int_t = 64;
const DEFAULT_MAX_SIZE: usize = 4 * 1024 * 1024;
const DEFAULT_STORE_MAX_SIZE: usize = 1024 * 1024;
const DEFAULT_STORE_TTL: time_t = 300;
const DEFAULT_LOCK_TIMEOUT: ngx_msec_t = 5000;
const DEFAULT_LOCK_AGE: time_t = 5;
const DEFAULT_HIT_FOR_PASS: time_t = 30;
const DEFAULT_METHODS: ngx_uint_t = (NGX_HTTP_GET | NGX_HTTP_HEAD) as ngx_uint_t;

/// Per-location configuration.
#[repr(C)]
pub struct LocConf {
    /// Timeouts and the upstream (`rcache_pass`) for nginx's upstream framework.
    pub upstream: ngx_http_upstream_conf_t,
    /// The content handler `rcache_pass` installed here (inherited by `if` and
    /// `limit_except` blocks, as `proxy_pass` is).
    pub pass_handler: ngx_http_handler_pt,
    /// `rcache_key`; NULL means `$uri`.
    pub key: *mut ngx_http_complex_value_t,
    /// `rcache_fallback`; NULL means none.
    pub fallback: *mut Fallback,
    /// `rcache_bypass` predicates; NULL means none.
    pub bypass: *mut ngx_array_t,
    /// `rcache_methods` as a bitmask of `NGX_HTTP_*` methods (0: unset).
    pub methods: ngx_uint_t,
    /// `rcache_keepalive`.
    pub keepalive: ngx_int_t,
    /// `rcache_max_size`.
    pub max_size: usize,
    /// `rcache_gzip_flag`.
    pub gzip_flag: ngx_int_t,
    /// The upstream's pooling and failure state, shared by every location
    /// that passes to the same upstream.
    pub target: *mut Target,
    /// `rcache_front`; NULL means off.
    pub front: *mut FrontConf,
    /// `rcache_store`.
    pub store: ngx_flag_t,
    /// `rcache_store_statuses`, as `u16`s; NULL means 200.
    pub store_statuses: *mut ngx_array_t,
    /// `rcache_store_max_size`.
    pub store_max_size: usize,
    /// `rcache_store_ttl`, seconds.
    pub store_ttl: time_t,
    /// `rcache_store_bypass` predicates; NULL means none.
    pub store_bypass: *mut ngx_array_t,
    /// `rcache_store_args`.
    pub store_args: ngx_flag_t,
    /// `rcache_purge`: 0 off, [`PURGE_HARD`] or [`PURGE_SOFT`].
    pub purge: ngx_int_t,
    /// `rcache_stale`, seconds (0: off).
    pub stale: time_t,
    /// `rcache_lock`.
    pub lock: ngx_flag_t,
    /// `rcache_lock_timeout`.
    pub lock_timeout: ngx_msec_t,
    /// `rcache_lock_age`, seconds.
    pub lock_age: time_t,
    /// `rcache_hit_for_pass`, seconds (0: no marker).
    pub hit_for_pass: time_t,
}

/// `rcache_purge` / `rcache_purge hard`: delete the key.
pub const PURGE_HARD: ngx_int_t = 1;
/// `rcache_purge soft`: mark the page stale; one request regenerates it.
pub const PURGE_SOFT: ngx_int_t = 2;

impl LocConf {
    /// `rcache_store_statuses` (default 200).
    pub fn store_statuses(&self) -> &[u16] {
        if self.store_statuses.is_null() {
            return &[200];
        }
        // SAFETY: an ngx_array_t of u16 built by set_store_statuses.
        unsafe { (*self.store_statuses).as_slice::<u16>() }
    }

    /// Flag bits of values that are gzip bytes (0: none).
    pub fn gzip_mask(&self) -> u32 {
        // Bounded to u32 at configuration time.
        self.gzip_flag as u32
    }

    /// Idle connections to keep per server.
    pub fn keepalive(&self) -> usize {
        self.keepalive.max(0) as usize
    }

    /// The `rcache_fallback`, if any.
    pub fn fallback(&self) -> Option<&Fallback> {
        // SAFETY: NULL or a Fallback built by set_fallback, in the conf pool.
        unsafe { self.fallback.as_ref() }
    }

    /// Whether lookups use the meta protocol (`mg`): stale pages need it.
    pub fn uses_meta(&self) -> bool {
        self.stale > 0 || self.purge == PURGE_SOFT || self.lock == 1
    }

    /// Whether this location's commands go out in the meta protocol right now: it uses
    /// it, and this worker has not found its upstream without it (see `Target`).
    pub fn meta_now(&self) -> bool {
        // SAFETY: NULL or the location's target, live for the configuration.
        self.uses_meta() && !unsafe { self.target.as_ref() }.is_some_and(|t| t.classic_only.get())
    }

    /// `rcache_lock_age` in seconds (at least 1), the regeneration lock's lifetime.
    pub fn lock_age_secs(&self) -> u32 {
        u32::try_from(self.lock_age).unwrap_or(1).max(1)
    }

    /// `rcache_stale` in seconds, as memcached takes TTLs.
    pub fn stale_secs(&self) -> u32 {
        u32::try_from(self.stale).unwrap_or(0)
    }

    /// The `rcache_front` cache, if any.
    pub fn front(&self) -> Option<&FrontConf> {
        // SAFETY: NULL or a FrontConf built by front::set_front.
        unsafe { self.front.as_ref() }
    }
}

/// `rcache_fallback`: a URI (with an optional query string of its own) or a
/// named location.
#[repr(C)]
pub struct Fallback {
    /// The URI or `@name`.
    pub target: ngx_http_complex_value_t,
    /// What follows a literal `?`; NULL keeps the request's query string.
    /// Split at configuration time, so that a `?` inside a variable's value
    /// (`$uri` is decoded: `%3F` becomes `?`) never splits the URI.
    pub args: *mut ngx_http_complex_value_t,
    /// Where the directive is, for errors found after parsing.
    pub file: *const u8,
    pub line: ngx_uint_t,
}

/// Main (http-level) configuration.
#[repr(C)]
pub struct MainConf {
    /// Every upstream used by `rcache_pass`.
    pub targets: Targets,
    /// `$rcache_status`, `$rcache_front`, `$rcache_store_status`.
    pub variables: VariableIndexes,
    /// Some location has `rcache_store on`: the capture filters are needed.
    pub store_used: bool,
    /// Some location uses the meta protocol (it may regenerate stale pages): the stale
    /// filters are installed.
    pub meta_used: bool,
    /// Named-location fallbacks to verify once every server's named
    /// locations are known, as `NamedFallback`.
    pub named_fallbacks: *mut ngx_array_t,
    /// `rcache_metrics_zone`, or NULL: nothing is counted.
    pub metrics: *mut Zone,
    /// Some location has `rcache_metrics`.
    pub metrics_used: bool,
}

/// A location using `rcache_fallback @name`, and the server it is in.
#[repr(C)]
pub struct NamedFallback {
    pub server: *mut ngx_http_core_srv_conf_t,
    pub fallback: *mut Fallback,
}

pub unsafe extern "C" fn create_main_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: cf is valid during configuration; the struct is fully written.
    unsafe {
        let pool = (*cf).pool;
        let mcf = ngx_palloc(pool, size_of::<MainConf>()) as *mut MainConf;
        let named_fallbacks = ngx_array_create(pool, 4, size_of::<NamedFallback>());
        let Some(targets) = Targets::new(pool) else {
            return ptr::null_mut();
        };
        if mcf.is_null() || named_fallbacks.is_null() {
            return ptr::null_mut();
        }
        ptr::write(
            mcf,
            MainConf {
                targets,
                variables: VariableIndexes {
                    status: UNSET,
                    front: UNSET,
                    store: UNSET,
                    lookup_time: UNSET,
                },
                store_used: false,
                meta_used: false,
                named_fallbacks,
                metrics: ptr::null_mut(),
                metrics_used: false,
            },
        );
        mcf.cast()
    }
}

pub unsafe extern "C" fn create_loc_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: cf is valid during configuration; pcalloc zeroes the struct, so
    // the pointers start NULL (unset) and the hard-coded upstream fields are 0.
    let conf = unsafe { ngx_pcalloc((*cf).pool, size_of::<LocConf>()) as *mut LocConf };
    // SAFETY: NULL or a zeroed LocConf of ours.
    let Some(c) = (unsafe { conf.as_mut() }) else {
        return ptr::null_mut();
    };
    c.upstream.local = Unset::UNSET;
    c.upstream.connect_timeout = Unset::UNSET;
    c.upstream.send_timeout = Unset::UNSET;
    c.upstream.read_timeout = Unset::UNSET;

    // Hard-coded: rcache reads the whole reply itself and answers or
    // redirects on its own; nginx only carries the bytes.
    c.upstream.buffer_size = crate::read_size::MIN;
    c.upstream.buffering = 0;
    c.upstream.ignore_client_abort = 0;
    c.upstream.pass_request_headers = 0;
    c.upstream.pass_request_body = 0;
    c.upstream.next_upstream_tries = 0;
    c.upstream.next_upstream_timeout = 0;
    // Every failure goes back through the balancer (peer.get), where
    // rcache decides between another server and the fallback.
    c.upstream.next_upstream = (NGX_HTTP_UPSTREAM_FT_ERROR
        | NGX_HTTP_UPSTREAM_FT_TIMEOUT
        | NGX_HTTP_UPSTREAM_FT_INVALID_HEADER
        | NGX_HTTP_UPSTREAM_FT_NOLIVE
        | NGX_HTTP_UPSTREAM_FT_NON_IDEMPOTENT) as ngx_uint_t;

    c.bypass = Unset::UNSET;
    c.methods = 0;
    c.keepalive = UNSET;
    c.max_size = Unset::UNSET;
    c.gzip_flag = UNSET;
    c.front = Unset::UNSET;
    c.store = UNSET;
    c.store_statuses = Unset::UNSET;
    c.store_max_size = Unset::UNSET;
    c.store_ttl = Unset::UNSET;
    c.store_bypass = Unset::UNSET;
    c.store_args = UNSET;
    c.purge = UNSET;
    c.stale = Unset::UNSET;
    c.lock = UNSET;
    c.lock_timeout = Unset::UNSET;
    c.lock_age = Unset::UNSET;
    c.hit_for_pass = Unset::UNSET;
    conf.cast()
}

pub unsafe extern "C" fn merge_loc_conf(
    cf: *mut ngx_conf_t,
    parent: *mut c_void,
    child: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes two LocConf created by create_loc_conf and the
    // configuration being merged.
    let (cf, prev, conf) = unsafe {
        (
            &mut *cf,
            &*(parent as *const LocConf),
            &mut *(child as *mut LocConf),
        )
    };

    merge(
        &mut conf.upstream.local,
        prev.upstream.local,
        ptr::null_mut(),
    );
    let u = &mut conf.upstream;
    merge(
        &mut u.connect_timeout,
        prev.upstream.connect_timeout,
        DEFAULT_CONNECT_TIMEOUT,
    );
    merge(
        &mut u.send_timeout,
        prev.upstream.send_timeout,
        DEFAULT_SEND_TIMEOUT,
    );
    merge(
        &mut u.read_timeout,
        prev.upstream.read_timeout,
        DEFAULT_READ_TIMEOUT,
    );

    let Some(clcf) = NgxHttpCoreModule::location_conf_mut(cf) else {
        return NGX_CONF_ERROR;
    };
    // `if` and `limit_except` blocks take over their location's rcache_pass (as
    // proxy_pass does); nested locations do not.
    if conf.upstream.upstream.is_null() && clcf.noname() != 0 {
        conf.upstream.upstream = prev.upstream.upstream;
        conf.target = prev.target;
        conf.pass_handler = prev.pass_handler;
        if clcf.lmt_excpt() != 0 && clcf.handler.is_none() {
            clcf.handler = conf.pass_handler;
        }
    }

    if conf.key.is_null() {
        conf.key = prev.key;
    }
    if conf.fallback.is_null() {
        conf.fallback = prev.fallback;
    }
    merge(&mut conf.bypass, prev.bypass, ptr::null_mut());
    if conf.methods == 0 {
        conf.methods = if prev.methods == 0 {
            DEFAULT_METHODS
        } else {
            prev.methods
        };
    }
    merge(&mut conf.keepalive, prev.keepalive, DEFAULT_KEEPALIVE);
    merge(&mut conf.max_size, prev.max_size, DEFAULT_MAX_SIZE);
    merge(&mut conf.gzip_flag, prev.gzip_flag, 0);
    merge(&mut conf.front, prev.front, ptr::null_mut());
    merge(&mut conf.store, prev.store, 0);
    merge(
        &mut conf.store_statuses,
        prev.store_statuses,
        ptr::null_mut(),
    );
    merge(
        &mut conf.store_max_size,
        prev.store_max_size,
        DEFAULT_STORE_MAX_SIZE,
    );
    merge(&mut conf.store_ttl, prev.store_ttl, DEFAULT_STORE_TTL);
    merge(&mut conf.store_bypass, prev.store_bypass, ptr::null_mut());
    merge(&mut conf.store_args, prev.store_args, 0);
    let purge_here = conf.purge != UNSET;
    merge(&mut conf.purge, prev.purge, 0);
    merge(&mut conf.stale, prev.stale, 0);
    merge(&mut conf.lock, prev.lock, 0);
    merge(
        &mut conf.lock_timeout,
        prev.lock_timeout,
        DEFAULT_LOCK_TIMEOUT,
    );
    merge(&mut conf.lock_age, prev.lock_age, DEFAULT_LOCK_AGE);
    merge(
        &mut conf.hit_for_pass,
        prev.hit_for_pass,
        DEFAULT_HIT_FOR_PASS,
    );

    // rcache_pass here, and still the location's handler (no later *_pass took over).
    let passes_here = matches!(
        (clcf.handler, conf.pass_handler),
        (Some(installed), Some(ours)) if ptr::fn_addr_eq(installed, ours)
    );
    if purge_here && !passes_here {
        // Reported after parsing: name the location rather than a line.
        ngx_log_error!(
            NGX_LOG_EMERG,
            cf.log,
            "\"rcache_purge\" in location \"{}\" needs \"rcache_pass\" in the same location",
            clcf.name
        );
        return NGX_CONF_ERROR;
    }
    if conf.upstream.upstream.is_null() {
        return NGX_CONF_OK;
    }

    let Some(mcf) = HttpRcacheModule::main_conf_mut(cf) else {
        return NGX_CONF_ERROR;
    };
    if conf.store == 1 {
        mcf.store_used = true;
    }
    if conf.uses_meta() {
        mcf.meta_used = true;
    }
    if let Some(fallback) = named_fallback(conf) {
        let Some(server) = NgxHttpCoreModule::server_conf_mut(cf) else {
            return NGX_CONF_ERROR;
        };
        // SAFETY: named_fallbacks is an array of NamedFallback in the conf pool.
        let slot = unsafe { ngx_array_push(mcf.named_fallbacks) as *mut NamedFallback };
        if slot.is_null() {
            return NGX_CONF_ERROR;
        }
        // SAFETY: slot is a fresh element of that array.
        unsafe { ptr::write(slot, NamedFallback { server, fallback }) };
    }
    NGX_CONF_OK
}

/// A literal `rcache_fallback @name`, to check once named locations are known.
fn named_fallback(conf: &LocConf) -> Option<*mut Fallback> {
    let fb = conf.fallback()?;
    let literal = fb.target.lengths.is_null();
    (literal && fb.target.value.as_bytes().starts_with(b"@")).then_some(conf.fallback)
}

/// Postconfiguration: every `rcache_fallback @name` must name a location of
/// the server it is used in — caught by `nginx -t`, not at the first MISS.
///
/// # Safety
/// `cf` must be the finished http{} configuration (named locations are
/// indexed by then).
pub fn check_named_fallbacks(cf: &ngx_conf_t, mcf: &MainConf) -> bool {
    // SAFETY: the checks were recorded by merge_loc_conf for live confs.
    let checks = unsafe { (*mcf.named_fallbacks).as_slice::<NamedFallback>() };
    for check in checks {
        // SAFETY: both pointers were taken from live confs while merging.
        let (fb, server) = unsafe { (&*check.fallback, &*check.server) };
        let name = fb.target.value.as_bytes();
        if named_locations(server).any(|l| l.name.as_bytes() == name) {
            continue;
        }
        // SAFETY: fb.file is the NUL-terminated name of a configuration file.
        let file = unsafe { CStr::from_ptr(fb.file.cast()) };
        ngx_log_error!(
            NGX_LOG_EMERG,
            cf.log,
            "\"rcache_fallback\" directive names location \"{}\", which is not \
             defined in the server using it, in {}:{}",
            fb.target.value,
            String::from_utf8_lossy(file.to_bytes()),
            fb.line
        );
        return false;
    }
    true
}

/// The named locations of a server (a NULL-terminated array).
fn named_locations(
    server: &ngx_http_core_srv_conf_t,
) -> impl Iterator<Item = &ngx_http_core_loc_conf_t> {
    let mut next = server.named_locations;
    core::iter::from_fn(move || {
        // SAFETY: NULL, or an array of location pointers ending in NULL.
        unsafe {
            let l = next.as_ref()?.as_ref()?;
            next = next.add(1);
            Some(l)
        }
    })
}

/// A configuration value's "not set" marker (`NGX_CONF_UNSET*` in C).
pub trait Unset: Copy + PartialEq {
    const UNSET: Self;
}

impl Unset for isize {
    const UNSET: Self = -1;
}

impl Unset for i64 {
    const UNSET: Self = -1;
}

impl Unset for usize {
    const UNSET: Self = usize::MAX;
}

impl<T> Unset for *mut T {
    const UNSET: Self = usize::MAX as *mut T;
}

/// `NGX_CONF_UNSET` for `ngx_int_t` and `ngx_flag_t`.
pub const UNSET: ngx_int_t = -1;

/// `ngx_conf_merge_*_value`: the parent's value if unset here, the default if
/// unset there too.
fn merge<T: Unset>(conf: &mut T, prev: T, default: T) {
    if *conf == T::UNSET {
        *conf = if prev == T::UNSET { default } else { prev };
    }
}

/// What a directive handler returns for a directive given twice; nginx
/// prints `"rcache_x" directive is duplicate`.
pub fn is_duplicate() -> *mut c_char {
    c"is duplicate".as_ptr().cast_mut()
}

/// The arguments of the directive being parsed (the name first).
pub fn args(cf: &ngx_conf_t) -> &[ngx_str_t] {
    // SAFETY: during a directive handler cf->args holds its ngx_str_t arguments.
    unsafe { (*cf.args).as_slice() }
}

/// The main conf while parsing, for directive handlers outside this file.
pub fn main_conf_mut(cf: &ngx_conf_t) -> Option<&'static mut MainConf> {
    HttpRcacheModule::main_conf_mut(cf)
}

/// The `upstream {}` block being parsed, for its directives.
pub fn upstream_block_mut(cf: &ngx_conf_t) -> Option<&'static mut ngx_http_upstream_srv_conf_t> {
    ngx::http::NgxHttpUpstreamModule::server_conf_mut(cf)
}

/// `ngx_conf_log_error(NGX_LOG_EMERG, ...)`, then `NGX_CONF_ERROR`.
pub fn conf_error(cf: &ngx_conf_t, message: core::fmt::Arguments) -> *mut c_char {
    let cf = ptr::from_ref(cf).cast_mut();
    ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", message);
    NGX_CONF_ERROR
}

/// Whether an nginx call succeeded.
pub fn ok(rc: ngx_int_t) -> bool {
    Status(rc) == Status::NGX_OK
}

/// `rcache_fallback URI | @NAME;`
pub unsafe extern "C" fn set_fallback(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with the configuration being
    // parsed and this module's LocConf.
    let (cf, lcf) = unsafe { (&mut *cf, &mut *(conf as *mut LocConf)) };
    if !lcf.fallback.is_null() {
        return is_duplicate();
    }
    let value = args(cf)[1];
    // A literal must name a URI or a named location; a value starting with
    // a variable is checked when it is evaluated.
    if !matches!(value.as_bytes().first(), Some(b'/' | b'@' | b'$')) {
        return conf_error(
            cf,
            format_args!(
                "\"rcache_fallback\" must be a URI starting with \"/\" or a named location \
                 starting with \"@\", not \"{value}\""
            ),
        );
    }

    // SAFETY: allocated from the configuration pool; zeroed, then filled.
    let Some(fb) =
        (unsafe { (ngx_pcalloc(cf.pool, size_of::<Fallback>()) as *mut Fallback).as_mut() })
    else {
        return NGX_CONF_ERROR;
    };
    // SAFETY: while parsing, cf->conf_file is the file being read.
    let file = unsafe { &*cf.conf_file };
    fb.file = file.file.name.data;
    fb.line = file.line;
    let (target, query) = split_query(value);
    if !compile(cf, target, &mut fb.target) {
        return NGX_CONF_ERROR;
    }
    if let Some(query) = query {
        // SAFETY: allocated from the configuration pool, zeroed.
        let cv = unsafe {
            ngx_pcalloc(cf.pool, size_of::<ngx_http_complex_value_t>())
                as *mut ngx_http_complex_value_t
        };
        // SAFETY: NULL or a zeroed complex value.
        let Some(args) = (unsafe { cv.as_mut() }) else {
            return NGX_CONF_ERROR;
        };
        if !compile(cf, query, args) {
            return NGX_CONF_ERROR;
        }
        fb.args = cv;
    }
    lcf.fallback = fb;
    NGX_CONF_OK
}

/// `/path?args` → (`/path`, `args`); the query is split at the first literal `?`.
fn split_query(value: ngx_str_t) -> (ngx_str_t, Option<ngx_str_t>) {
    let Some(q) = value.as_bytes().iter().position(|&b| b == b'?') else {
        return (value, None);
    };
    let path = ngx_str_t {
        len: q,
        data: value.data,
    };
    let query = ngx_str_t {
        len: value.len - q - 1,
        // SAFETY: q < len: the query starts inside the same string.
        data: unsafe { value.data.add(q + 1) },
    };
    (path, Some(query))
}

/// Compiles `value` (which may contain variables) into `cv`.
fn compile(cf: &mut ngx_conf_t, mut value: ngx_str_t, cv: &mut ngx_http_complex_value_t) -> bool {
    // SAFETY: ccv is zeroed, then filled as ngx_http_compile_complex_value
    // expects; it reads value and writes cv.
    unsafe {
        let mut ccv: ngx_http_compile_complex_value_t = core::mem::zeroed();
        ccv.cf = cf;
        ccv.value = &mut value;
        ccv.complex_value = cv;
        ok(ngx_http_compile_complex_value(&mut ccv))
    }
}

/// Methods `rcache_methods` accepts (the methods nginx parses).
const METHODS: &[(&[u8], u32)] = &[
    (b"GET", NGX_HTTP_GET),
    (b"HEAD", NGX_HTTP_HEAD),
    (b"POST", NGX_HTTP_POST),
    (b"PUT", NGX_HTTP_PUT),
    (b"DELETE", NGX_HTTP_DELETE),
    (b"MKCOL", NGX_HTTP_MKCOL),
    (b"COPY", NGX_HTTP_COPY),
    (b"MOVE", NGX_HTTP_MOVE),
    (b"OPTIONS", NGX_HTTP_OPTIONS),
    (b"PROPFIND", NGX_HTTP_PROPFIND),
    (b"PROPPATCH", NGX_HTTP_PROPPATCH),
    (b"LOCK", NGX_HTTP_LOCK),
    (b"UNLOCK", NGX_HTTP_UNLOCK),
    (b"PATCH", NGX_HTTP_PATCH),
    (b"TRACE", NGX_HTTP_TRACE),
];

/// Parses a method name into its `NGX_HTTP_*` bit.
pub fn method_bit(name: &[u8]) -> Option<u32> {
    METHODS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, bit)| bit)
}

/// `rcache_methods METHOD ...;`
pub unsafe extern "C" fn set_methods(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as set_fallback.
    let (cf, lcf) = unsafe { (&mut *cf, &mut *(conf as *mut LocConf)) };
    if lcf.methods != 0 {
        return is_duplicate();
    }
    let mut mask = 0;
    for name in &args(cf)[1..] {
        match method_bit(name.as_bytes()) {
            Some(bit) => mask |= bit as ngx_uint_t,
            None => {
                return conf_error(
                    cf,
                    format_args!("invalid method \"{name}\" in the \"rcache_methods\" directive"),
                )
            }
        }
    }
    lcf.methods = mask;
    NGX_CONF_OK
}

/// `rcache_store_statuses CODE ...;`
pub unsafe extern "C" fn set_store_statuses(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as set_fallback.
    let (cf, lcf) = unsafe { (&mut *cf, &mut *(conf as *mut LocConf)) };
    if lcf.store_statuses != Unset::UNSET {
        return is_duplicate();
    }
    let codes = &args(cf)[1..];
    // SAFETY: an array in the configuration pool.
    let list = unsafe { ngx_array_create(cf.pool, codes.len(), size_of::<u16>()) };
    if list.is_null() {
        return NGX_CONF_ERROR;
    }
    for code in codes {
        // SAFETY: code is an argument string of the directive.
        let status = unsafe { ngx_atoi(code.data, code.len) };
        if !(200..=599).contains(&status) {
            return conf_error(
                cf,
                format_args!(
                    "invalid status \"{code}\" in the \"rcache_store_statuses\" directive"
                ),
            );
        }
        // SAFETY: list is an array of u16.
        let slot = unsafe { ngx_array_push(list) as *mut u16 };
        if slot.is_null() {
            return NGX_CONF_ERROR;
        }
        // SAFETY: slot is a fresh element of list.
        unsafe { *slot = status as u16 };
    }
    lcf.store_statuses = list;
    NGX_CONF_OK
}

/// `rcache_purge [soft | hard];`
pub unsafe extern "C" fn set_purge(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as set_fallback.
    let (cf, lcf) = unsafe { (&mut *cf, &mut *(conf as *mut LocConf)) };
    if lcf.purge != UNSET {
        return is_duplicate();
    }
    lcf.purge = match args(cf).get(1).map(|a| a.as_bytes()) {
        None | Some(b"hard") => PURGE_HARD,
        Some(b"soft") => PURGE_SOFT,
        Some(_) => {
            let value = args(cf)[1];
            return conf_error(
                cf,
                format_args!(
                    "invalid value \"{value}\" in the \"rcache_purge\" directive, it must be \
                     \"soft\" or \"hard\""
                ),
            );
        }
    };
    NGX_CONF_OK
}

/// The value a num slot has just set, for its post handler.
///
/// # Safety
/// `data` must be the `ngx_int_t` a num slot wrote.
unsafe fn num_slot_value(data: *mut c_void) -> ngx_int_t {
    // SAFETY: per the contract above.
    unsafe { *(data as *const ngx_int_t) }
}

/// `rcache_gzip_flag` must fit memcached's 32-bit flags. (nginx's own bounds
/// check would not name the directive in its message.)
unsafe extern "C" fn check_gzip_flag(
    _cf: *mut ngx_conf_t,
    _post: *mut c_void,
    data: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls a num slot's post handler with the value just set.
    if (0..=u32::MAX as ngx_int_t).contains(&unsafe { num_slot_value(data) }) {
        return NGX_CONF_OK;
    }
    c"must be between 0 and 4294967295 (memcached flags are 32 bits)"
        .as_ptr()
        .cast_mut()
}

/// `rcache_keepalive` counts connections.
unsafe extern "C" fn check_keepalive(
    _cf: *mut ngx_conf_t,
    _post: *mut c_void,
    data: *mut c_void,
) -> *mut c_char {
    // SAFETY: as check_gzip_flag.
    if (0..=65535).contains(&unsafe { num_slot_value(data) }) {
        return NGX_CONF_OK;
    }
    c"must be between 0 and 65535".as_ptr().cast_mut()
}

pub static mut GZIP_FLAG_POST: ngx_conf_post_t = ngx_conf_post_t {
    post_handler: Some(check_gzip_flag),
};

pub static mut KEEPALIVE_POST: ngx_conf_post_t = ngx_conf_post_t {
    post_handler: Some(check_keepalive),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_case_sensitive_and_known() {
        assert_eq!(method_bit(b"GET"), Some(NGX_HTTP_GET));
        assert_eq!(method_bit(b"PATCH"), Some(NGX_HTTP_PATCH));
        assert_eq!(method_bit(b"get"), None);
        assert_eq!(method_bit(b"FETCH"), None);
        assert_eq!(method_bit(b""), None);
    }
}
