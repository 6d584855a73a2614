//! Directives, their defaults, and merging.
//!
//! Every directive of SPEC.md's table lives here. Values that nginx's own slot
//! functions can parse (times, sizes, numbers, complex values, predicates) use
//! them, so syntax errors are reported by `nginx -t` exactly as for nginx's own
//! directives (`"rcache_read_timeout" directive invalid value in ...`).

use core::ffi::{c_char, c_void, CStr};
use core::mem::offset_of;
use core::ptr;

use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::*;
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};
use ngx::{ngx_conf_log_error, ngx_string};

use crate::front::{self, FrontConf};
use crate::handler;
use crate::target::Target;

const UNSET_PTR: *mut c_void = usize::MAX as *mut c_void;
const UNSET_MSEC: ngx_msec_t = ngx_msec_t::MAX;
const UNSET_SIZE: usize = usize::MAX;
const UNSET: ngx_int_t = -1;

/// Defaults (SPEC.md): a cache must fail fast.
const DEFAULT_CONNECT_TIMEOUT: ngx_msec_t = 200;
const DEFAULT_SEND_TIMEOUT: ngx_msec_t = 200;
const DEFAULT_READ_TIMEOUT: ngx_msec_t = 500;
const DEFAULT_KEEPALIVE: ngx_int_t = 64;
const DEFAULT_MAX_SIZE: usize = 4 * 1024 * 1024;
const DEFAULT_STORE_MAX_SIZE: usize = 1024 * 1024;
const DEFAULT_STORE_TTL: time_t = 300;
const DEFAULT_METHODS: ngx_uint_t = (NGX_HTTP_GET | NGX_HTTP_HEAD) as ngx_uint_t;

/// First read from memcached: large enough that a typical page (header line,
/// value and `END`) arrives in one `recv`; larger values get a buffer sized
/// from the length in the reply.
pub const FIRST_READ_SIZE: usize = 16 * 1024;

/// Per-location configuration.
#[repr(C)]
pub struct LocConf {
    /// Timeouts and the upstream (`rcache_pass`) for nginx's upstream framework.
    pub upstream: ngx_http_upstream_conf_t,
    /// `rcache_key`; NULL means `$uri`.
    pub key: *mut ngx_http_complex_value_t,
    /// `rcache_fallback`; NULL means none.
    pub fallback: *mut Fallback,
    /// `rcache_bypass` predicates; NULL means none.
    pub bypass: *mut ngx_array_t,
    /// `rcache_methods` as a bitmask of `NGX_HTTP_*` methods.
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
    /// `rcache_purge`.
    pub purge: ngx_flag_t,
}

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
    /// Every upstream used by `rcache_pass`, as `*mut Target`.
    pub targets: *mut ngx_array_t,
    /// Indexes of `$rcache_status` and `$rcache_front` in `r->variables`.
    pub status_index: ngx_int_t,
    pub front_index: ngx_int_t,
    pub store_index: ngx_int_t,
    /// Some location has `rcache_store on`: the capture filters are needed.
    pub store_used: bool,
    /// Named-location fallbacks to verify once every server's named
    /// locations are known, as `NamedFallback`.
    pub named_fallbacks: *mut ngx_array_t,
}

/// A location using `rcache_fallback @name`, and the server it is in.
#[repr(C)]
pub struct NamedFallback {
    pub server: *mut ngx_http_core_srv_conf_t,
    pub fallback: *mut Fallback,
}

pub unsafe extern "C" fn create_main_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: cf is valid during configuration; pcalloc zeroes the struct.
    unsafe {
        let mcf = ngx_pcalloc((*cf).pool, size_of::<MainConf>()) as *mut MainConf;
        if mcf.is_null() {
            return ptr::null_mut();
        }
        (*mcf).targets = ngx_array_create((*cf).pool, 4, size_of::<*mut Target>());
        if (*mcf).targets.is_null() {
            return ptr::null_mut();
        }
        (*mcf).named_fallbacks = ngx_array_create((*cf).pool, 4, size_of::<NamedFallback>());
        if (*mcf).named_fallbacks.is_null() {
            return ptr::null_mut();
        }
        (*mcf).status_index = UNSET;
        (*mcf).front_index = UNSET;
        (*mcf).store_index = UNSET;
        mcf.cast()
    }
}

pub unsafe extern "C" fn create_loc_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: cf is valid during configuration; pcalloc zeroes the struct, so
    // the pointers start NULL (unset) and the hard-coded upstream fields are 0.
    unsafe {
        let conf = ngx_pcalloc((*cf).pool, size_of::<LocConf>()) as *mut LocConf;
        if conf.is_null() {
            return ptr::null_mut();
        }
        let c = &mut *conf;
        c.upstream.local = UNSET_PTR.cast();
        c.upstream.connect_timeout = UNSET_MSEC;
        c.upstream.send_timeout = UNSET_MSEC;
        c.upstream.read_timeout = UNSET_MSEC;

        // Hard-coded: rcache reads the whole reply itself and answers or
        // redirects on its own; nginx only carries the bytes.
        c.upstream.buffer_size = FIRST_READ_SIZE;
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

        c.bypass = UNSET_PTR.cast();
        c.methods = 0;
        c.keepalive = UNSET;
        c.max_size = UNSET_SIZE;
        c.gzip_flag = UNSET;
        c.front = UNSET_PTR.cast();
        c.store = UNSET;
        c.store_statuses = UNSET_PTR.cast();
        c.store_max_size = UNSET_SIZE;
        c.store_ttl = UNSET as time_t;
        c.store_bypass = UNSET_PTR.cast();
        c.store_args = UNSET;
        c.purge = UNSET;
        conf.cast()
    }
}

pub unsafe extern "C" fn merge_loc_conf(
    cf: *mut ngx_conf_t,
    parent: *mut c_void,
    child: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes two LocConf created by create_loc_conf.
    let (prev, conf) = unsafe { (&*(parent as *const LocConf), &mut *(child as *mut LocConf)) };

    merge_ptr(&mut conf.upstream.local, prev.upstream.local);
    merge_msec(
        &mut conf.upstream.connect_timeout,
        prev.upstream.connect_timeout,
        DEFAULT_CONNECT_TIMEOUT,
    );
    merge_msec(
        &mut conf.upstream.send_timeout,
        prev.upstream.send_timeout,
        DEFAULT_SEND_TIMEOUT,
    );
    merge_msec(
        &mut conf.upstream.read_timeout,
        prev.upstream.read_timeout,
        DEFAULT_READ_TIMEOUT,
    );
    // SAFETY: while merging, cf->ctx is the location being merged.
    let Some(clcf) = (unsafe { NgxHttpCoreModule::location_conf_mut(&*cf) }) else {
        return NGX_CONF_ERROR;
    };
    // `if` and `limit_except` blocks take over their location's rcache_pass (as
    // proxy_pass does); nested locations do not.
    if conf.upstream.upstream.is_null() && clcf.noname() != 0 {
        conf.upstream.upstream = prev.upstream.upstream;
        conf.target = prev.target;
        if clcf.lmt_excpt() != 0 && clcf.handler.is_none() && !conf.upstream.upstream.is_null() {
            clcf.handler = Some(handler::content_handler);
        }
    }

    if conf.key.is_null() {
        conf.key = prev.key;
    }
    if conf.fallback.is_null() {
        conf.fallback = prev.fallback;
    }
    merge_ptr(&mut conf.bypass, prev.bypass);
    if conf.methods == 0 {
        conf.methods = if prev.methods == 0 {
            DEFAULT_METHODS
        } else {
            prev.methods
        };
    }
    merge_int(&mut conf.keepalive, prev.keepalive, DEFAULT_KEEPALIVE);
    if conf.max_size == UNSET_SIZE {
        conf.max_size = if prev.max_size == UNSET_SIZE {
            DEFAULT_MAX_SIZE
        } else {
            prev.max_size
        };
    }
    merge_int(&mut conf.gzip_flag, prev.gzip_flag, 0);
    merge_ptr(&mut conf.front, prev.front);
    merge_int(&mut conf.store, prev.store, 0);
    merge_ptr(&mut conf.store_statuses, prev.store_statuses);
    if conf.store_max_size == UNSET_SIZE {
        conf.store_max_size = if prev.store_max_size == UNSET_SIZE {
            DEFAULT_STORE_MAX_SIZE
        } else {
            prev.store_max_size
        };
    }
    if conf.store_ttl == UNSET as time_t {
        conf.store_ttl = if prev.store_ttl == UNSET as time_t {
            DEFAULT_STORE_TTL
        } else {
            prev.store_ttl
        };
    }
    merge_ptr(&mut conf.store_bypass, prev.store_bypass);
    merge_int(&mut conf.store_args, prev.store_args, 0);
    let purge_here = conf.purge == 1;
    merge_int(&mut conf.purge, prev.purge, 0);
    let ours: unsafe extern "C" fn(*mut ngx_http_request_t) -> ngx_int_t = handler::content_handler;
    if purge_here && !clcf.handler.is_some_and(|h| ptr::fn_addr_eq(h, ours)) {
        // Reported after parsing: name the location rather than a line.
        ngx::ngx_log_error!(
            NGX_LOG_EMERG,
            // SAFETY: cf is the configuration being merged.
            unsafe { (*cf).log },
            "\"rcache_purge\" in location \"{}\" needs \"rcache_pass\" in the same location",
            clcf.name
        );
        return NGX_CONF_ERROR;
    }

    // SAFETY: nginx merges with cf->ctx set to the server being merged.
    if !conf.upstream.upstream.is_null() && !unsafe { remember_named_fallback(cf, conf) } {
        return NGX_CONF_ERROR;
    }
    if conf.store == 1 && !conf.upstream.upstream.is_null() {
        // SAFETY: as above; our main conf.
        unsafe {
            let ctx = (*cf).ctx as *mut ngx_http_conf_ctx_t;
            let mcf = *(*ctx).main_conf.add(crate::module().ctx_index) as *mut MainConf;
            (*mcf).store_used = true;
        }
    }
    NGX_CONF_OK
}

/// Queues the check of a `@name` fallback used by an rcache location.
///
/// # Safety
/// `cf` must be the configuration being merged, its ctx the current server's.
unsafe fn remember_named_fallback(cf: *mut ngx_conf_t, conf: &LocConf) -> bool {
    // SAFETY: per the contract above; the main conf is ours.
    unsafe {
        let Some(fb) = conf.fallback.as_ref() else {
            return true;
        };
        if !fb.target.lengths.is_null() || !fb.target.value.as_bytes().starts_with(b"@") {
            return true;
        }
        let ctx = (*cf).ctx as *mut ngx_http_conf_ctx_t;
        let server =
            *(*ctx).srv_conf.add(ngx_http_core_module.ctx_index) as *mut ngx_http_core_srv_conf_t;
        let mcf = *(*ctx).main_conf.add(crate::module().ctx_index) as *mut MainConf;
        let slot = ngx_array_push((*mcf).named_fallbacks) as *mut NamedFallback;
        if slot.is_null() {
            return false;
        }
        ptr::write(
            slot,
            NamedFallback {
                server,
                fallback: conf.fallback,
            },
        );
        true
    }
}

/// Postconfiguration: every `rcache_fallback @name` must name a location of
/// the server it is used in — caught by `nginx -t`, not at the first MISS.
///
/// # Safety
/// `cf` must be the finished http{} configuration (named locations are
/// indexed by then).
pub unsafe fn check_named_fallbacks(cf: *mut ngx_conf_t, mcf: *const MainConf) -> bool {
    // SAFETY: the checks were recorded by merge_loc_conf for live confs.
    unsafe {
        for check in (*(*mcf).named_fallbacks).as_slice::<NamedFallback>() {
            let fb = &*check.fallback;
            let name = fb.target.value.as_bytes();
            let mut found = false;
            let mut named = (*check.server).named_locations;
            while !named.is_null() && !(*named).is_null() {
                if (**named).name.as_bytes() == name {
                    found = true;
                    break;
                }
                named = named.add(1);
            }
            if !found {
                ngx::ngx_log_error!(
                    NGX_LOG_EMERG,
                    (*cf).log,
                    "\"rcache_fallback\" directive names location \"{}\", which is not \
                     defined in the server using it, in {}:{}",
                    fb.target.value,
                    String::from_utf8_lossy(CStr::from_ptr(fb.file.cast()).to_bytes()),
                    fb.line
                );
                return false;
            }
        }
    }
    true
}

fn merge_ptr<T>(conf: &mut *mut T, prev: *mut T) {
    if *conf == UNSET_PTR.cast() {
        *conf = if prev == UNSET_PTR.cast() {
            ptr::null_mut()
        } else {
            prev
        };
    }
}

fn merge_msec(conf: &mut ngx_msec_t, prev: ngx_msec_t, default: ngx_msec_t) {
    if *conf == UNSET_MSEC {
        *conf = if prev == UNSET_MSEC { default } else { prev };
    }
}

fn merge_int(conf: &mut ngx_int_t, prev: ngx_int_t, default: ngx_int_t) {
    if *conf == UNSET {
        *conf = if prev == UNSET { default } else { prev };
    }
}

/// The arguments of the directive being parsed.
///
/// # Safety
/// `cf` must be the `ngx_conf_t` passed to a directive handler.
unsafe fn args<'a>(cf: *mut ngx_conf_t) -> &'a [ngx_str_t] {
    // SAFETY: during a directive handler cf->args holds its ngx_str_t arguments.
    unsafe { (*(*cf).args).as_slice() }
}

/// `rcache_pass ADDRESS | UPSTREAM;`
unsafe extern "C" fn set_pass(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: conf is this module's LocConf; cf is valid while parsing.
    unsafe {
        let lcf = &mut *(conf as *mut LocConf);
        if !lcf.upstream.upstream.is_null() {
            return c"is duplicate".as_ptr().cast_mut();
        }
        let value = args(cf)[1];

        let mut url: ngx_url_t = core::mem::zeroed();
        url.url = value;
        url.set_no_resolve(1);

        // Parse once here so a bad address is reported with this directive's
        // name, then let nginx create (or find) the upstream.
        let mut probe = url;
        if ngx_parse_url((*cf).pool, &mut probe) != NGX_OK as ngx_int_t {
            let err = if probe.err.is_null() {
                "invalid address"
            } else {
                CStr::from_ptr(probe.err)
                    .to_str()
                    .unwrap_or("invalid address")
            };
            ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "{} in \"{}\" of the \"rcache_pass\" directive",
                err,
                value
            );
            return NGX_CONF_ERROR;
        }

        let uscf = ngx_http_upstream_add(cf, &mut url, 0);
        if uscf.is_null() {
            return NGX_CONF_ERROR;
        }
        lcf.upstream.upstream = uscf;
        lcf.target = match Target::for_upstream(cf, uscf) {
            Some(t) => t,
            None => return NGX_CONF_ERROR,
        };

        let Some(clcf) = NgxHttpCoreModule::location_conf_mut(&*cf) else {
            return NGX_CONF_ERROR;
        };
        clcf.handler = Some(handler::content_handler);
        if clcf.name.as_bytes().ends_with(b"/") {
            clcf.set_auto_redirect(1);
        }
        NGX_CONF_OK
    }
}

/// `rcache_fallback URI | @NAME;`
unsafe extern "C" fn set_fallback(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: conf is this module's LocConf; cf is valid while parsing.
    unsafe {
        let lcf = &mut *(conf as *mut LocConf);
        if !lcf.fallback.is_null() {
            return c"is duplicate".as_ptr().cast_mut();
        }
        let value = args(cf)[1];
        // A literal must name a URI or a named location; a value starting with
        // a variable is checked when it is evaluated.
        if !matches!(value.as_bytes().first(), Some(b'/' | b'@' | b'$')) {
            ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "\"rcache_fallback\" must be a URI starting with \"/\" or a named location \
                 starting with \"@\", not \"{}\"",
                value
            );
            return NGX_CONF_ERROR;
        }

        let fb = ngx_pcalloc((*cf).pool, size_of::<Fallback>()) as *mut Fallback;
        if fb.is_null() {
            return NGX_CONF_ERROR;
        }
        (*fb).file = (*(*cf).conf_file).file.name.data;
        (*fb).line = (*(*cf).conf_file).line;
        let (target, query) = match value.as_bytes().iter().position(|&b| b == b'?') {
            Some(q) => (
                ngx_str_t {
                    len: q,
                    data: value.data,
                },
                Some(ngx_str_t {
                    len: value.len - q - 1,
                    data: value.data.add(q + 1),
                }),
            ),
            None => (value, None),
        };
        if !compile(cf, target, &mut (*fb).target) {
            return NGX_CONF_ERROR;
        }
        if let Some(query) = query {
            let cv = ngx_pcalloc((*cf).pool, size_of::<ngx_http_complex_value_t>())
                as *mut ngx_http_complex_value_t;
            if cv.is_null() || !compile(cf, query, cv) {
                return NGX_CONF_ERROR;
            }
            (*fb).args = cv;
        }
        lcf.fallback = fb;
        NGX_CONF_OK
    }
}

/// Compiles `value` (which may contain variables) into `cv`.
///
/// # Safety
/// `cf` must be the configuration being parsed; `cv` must be writable.
unsafe fn compile(
    cf: *mut ngx_conf_t,
    mut value: ngx_str_t,
    cv: *mut ngx_http_complex_value_t,
) -> bool {
    // SAFETY: ccv is zeroed, then filled as ngx_http_compile_complex_value
    // expects.
    unsafe {
        let mut ccv: ngx_http_compile_complex_value_t = core::mem::zeroed();
        ccv.cf = cf;
        ccv.value = &mut value;
        ccv.complex_value = cv;
        ngx_http_compile_complex_value(&mut ccv) == NGX_OK as ngx_int_t
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
unsafe extern "C" fn set_methods(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: conf is this module's LocConf; cf is valid while parsing.
    unsafe {
        let lcf = &mut *(conf as *mut LocConf);
        if lcf.methods != 0 {
            return c"is duplicate".as_ptr().cast_mut();
        }
        let mut mask = 0;
        for name in &args(cf)[1..] {
            match method_bit(name.as_bytes()) {
                Some(bit) => mask |= bit as ngx_uint_t,
                None => {
                    ngx_conf_log_error!(
                        NGX_LOG_EMERG,
                        cf,
                        "invalid method \"{}\" in the \"rcache_methods\" directive",
                        name
                    );
                    return NGX_CONF_ERROR;
                }
            }
        }
        lcf.methods = mask;
        NGX_CONF_OK
    }
}

/// `rcache_store_statuses CODE ...;`
unsafe extern "C" fn set_store_statuses(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: conf is this module's LocConf; cf is valid while parsing.
    unsafe {
        let lcf = &mut *(conf as *mut LocConf);
        if lcf.store_statuses != UNSET_PTR.cast() {
            return c"is duplicate".as_ptr().cast_mut();
        }
        let args = &args(cf)[1..];
        let list = ngx_array_create((*cf).pool, args.len(), size_of::<u16>());
        if list.is_null() {
            return NGX_CONF_ERROR;
        }
        for arg in args {
            let code = ngx_atoi(arg.data, arg.len);
            if !(200..=599).contains(&code) {
                ngx_conf_log_error!(
                    NGX_LOG_EMERG,
                    cf,
                    "invalid status \"{}\" in the \"rcache_store_statuses\" directive",
                    arg
                );
                return NGX_CONF_ERROR;
            }
            let slot = ngx_array_push(list) as *mut u16;
            if slot.is_null() {
                return NGX_CONF_ERROR;
            }
            *slot = code as u16;
        }
        lcf.store_statuses = list;
        NGX_CONF_OK
    }
}

/// `rcache_purge;`
unsafe extern "C" fn set_purge(
    _cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: conf is this module's LocConf.
    unsafe {
        let lcf = &mut *(conf as *mut LocConf);
        if lcf.purge != UNSET {
            return c"is duplicate".as_ptr().cast_mut();
        }
        lcf.purge = 1;
    }
    NGX_CONF_OK
}

/// `rcache_gzip_flag` must fit memcached's 32-bit flags. (nginx's own bounds
/// check would not name the directive in its message.)
unsafe extern "C" fn check_gzip_flag(
    _cf: *mut ngx_conf_t,
    _post: *mut c_void,
    data: *mut c_void,
) -> *mut c_char {
    // SAFETY: the post handler of a num slot gets the ngx_int_t just set.
    let value = unsafe { *(data as *const ngx_int_t) };
    if (0..=u32::MAX as ngx_int_t).contains(&value) {
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
    // SAFETY: the post handler of a num slot gets the ngx_int_t just set.
    let value = unsafe { *(data as *const ngx_int_t) };
    if (0..=65535).contains(&value) {
        return NGX_CONF_OK;
    }
    c"must be between 0 and 65535".as_ptr().cast_mut()
}

static mut GZIP_FLAG_POST: ngx_conf_post_t = ngx_conf_post_t {
    post_handler: Some(check_gzip_flag),
};

static mut KEEPALIVE_POST: ngx_conf_post_t = ngx_conf_post_t {
    post_handler: Some(check_keepalive),
};

const ANY: u32 = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;
const LOC_OFFSET: ngx_uint_t = NGX_HTTP_LOC_CONF_OFFSET;

const fn command(
    name: ngx_str_t,
    type_: u32,
    set: unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char,
    offset: usize,
    post: *mut c_void,
) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: type_ as ngx_uint_t,
        set: Some(set),
        conf: LOC_OFFSET,
        offset,
        post,
    }
}

/// The module's directives.
pub static mut COMMANDS: [ngx_command_t; 22] = [
    command(
        ngx_string!("rcache_pass"),
        NGX_HTTP_LOC_CONF | NGX_HTTP_LIF_CONF | NGX_CONF_TAKE1,
        set_pass,
        0,
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_key"),
        ANY | NGX_CONF_TAKE1,
        ngx_http_set_complex_value_slot,
        offset_of!(LocConf, key),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_fallback"),
        ANY | NGX_CONF_TAKE1,
        set_fallback,
        0,
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_bypass"),
        ANY | NGX_CONF_1MORE,
        ngx_http_set_predicate_slot,
        offset_of!(LocConf, bypass),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_methods"),
        ANY | NGX_CONF_1MORE,
        set_methods,
        0,
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_connect_timeout"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_msec_slot,
        offset_of!(LocConf, upstream.connect_timeout),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_send_timeout"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_msec_slot,
        offset_of!(LocConf, upstream.send_timeout),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_read_timeout"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_msec_slot,
        offset_of!(LocConf, upstream.read_timeout),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_keepalive"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_num_slot,
        offset_of!(LocConf, keepalive),
        ptr::addr_of_mut!(KEEPALIVE_POST).cast(),
    ),
    command(
        ngx_string!("rcache_max_size"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_size_slot,
        offset_of!(LocConf, max_size),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_gzip_flag"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_num_slot,
        offset_of!(LocConf, gzip_flag),
        ptr::addr_of_mut!(GZIP_FLAG_POST).cast(),
    ),
    command(
        ngx_string!("rcache_store"),
        ANY | NGX_CONF_FLAG,
        ngx_conf_set_flag_slot,
        offset_of!(LocConf, store),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_store_statuses"),
        ANY | NGX_CONF_1MORE,
        set_store_statuses,
        0,
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_store_max_size"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_size_slot,
        offset_of!(LocConf, store_max_size),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_store_ttl"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_sec_slot,
        offset_of!(LocConf, store_ttl),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_store_bypass"),
        ANY | NGX_CONF_1MORE,
        ngx_http_set_predicate_slot,
        offset_of!(LocConf, store_bypass),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_store_args"),
        ANY | NGX_CONF_FLAG,
        ngx_conf_set_flag_slot,
        offset_of!(LocConf, store_args),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_purge"),
        NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS,
        set_purge,
        0,
        ptr::null_mut(),
    ),
    ngx_command_t {
        name: ngx_string!("rcache_front_zone"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(front::set_zone),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    command(
        ngx_string!("rcache_front"),
        ANY | NGX_CONF_TAKE123,
        front::set_front,
        offset_of!(LocConf, front),
        ptr::null_mut(),
    ),
    ngx_command_t {
        name: ngx_string!("rcache_hash"),
        type_: (NGX_HTTP_UPS_CONF | NGX_CONF_TAKE12) as ngx_uint_t,
        set: Some(crate::balancer::set_hash),
        conf: NGX_HTTP_SRV_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t::empty(),
];

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
