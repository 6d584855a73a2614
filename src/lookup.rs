//! What an rcache request asks memcached: its per-request context, set by
//! `upstream::prepare` in the content phase and read by the upstream
//! callbacks and the balancers (which need the key to choose its server).

use core::cell::Cell;
use core::ptr;
use core::slice;

use ngx::ffi::*;
use ngx::http::{HttpModule, Request};

use crate::meta::MetaFlags;
use crate::protocol::ValueHeader;
use crate::HttpRcacheModule;

/// What a lookup sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `get <key>`.
    Get,
    /// `delete <key>` (`rcache_purge`).
    Delete,
    /// `mg <key> v f t c [R<stale>]` (`rcache_stale`, `rcache_purge soft`).
    MetaGet,
    /// `md <key> I [T<stale>]` (`rcache_purge soft`).
    Invalidate,
}

impl Command {
    /// A `PURGE` request's command.
    pub fn is_purge(self) -> bool {
        matches!(self, Command::Delete | Command::Invalidate)
    }

    /// The command's name, as sent.
    pub fn name(self) -> &'static str {
        match self {
            Command::Get => "get",
            Command::Delete => "delete",
            Command::MetaGet => "mg",
            Command::Invalidate => "md",
        }
    }
}

/// Per-request state of a lookup (in the request's pool).
pub struct Lookup {
    /// The command line, e.g. `get <key>\r\n`.
    pub request: *mut ngx_chain_t,
    /// The escaped key, inside `request`.
    key: *const u8,
    key_len: usize,
    pub command: Command,
    /// Whether this request's response may become the page (a GET that `rcache_store`
    /// would store): only such a request regenerates a stale page it wins.
    pub may_regenerate: bool,
    /// memcached's reply was no valid answer: counted as a failure of the server.
    pub malformed: Cell<bool>,
    /// Set while the rest of a large value is read into a second buffer.
    pub head: Cell<Option<Head>>,
    /// The return flags of an `mg` reply whose value is read in two buffers.
    pub meta_flags: Cell<MetaFlags>,
    /// Lookups so far that found another request rendering the page (`rcache_lock`).
    pub waits: Cell<u32>,
    /// When the first of them was (`ngx_current_msec`).
    pub waiting_since: Cell<ngx_msec_t>,
    /// Milliseconds spent on memcached attempts so far (`$rcache_lookup_time`).
    pub time_ms: Cell<ngx_msec_t>,
    /// Runs the lookup again on a new upstream (set by the exchange that owns it,
    /// `upstream::restart`; called by `wait.rs` when a waiter's timer fires).
    pub restart: Option<Restart>,
}

/// See [`Lookup::restart`].
pub type Restart = unsafe fn(*mut ngx_http_request_t) -> ngx::core::Status;

/// The first read of a value larger than it: where the value's first bytes
/// are, and the buffer that holds them (given back to nginx on a retry).
#[derive(Clone, Copy)]
pub struct Head {
    pub header: ValueHeader,
    pub value: *const u8,
    pub len: usize,
    pub buffer_start: *mut u8,
    pub buffer_end: *mut u8,
}

impl Head {
    /// The value's first bytes (in the request's pool).
    pub fn value<'a>(&self) -> &'a [u8] {
        // SAFETY: value points into the first read buffer, in r->pool.
        unsafe { slice::from_raw_parts(self.value, self.len) }
    }
}

impl Lookup {
    /// A lookup of the key at `key` (inside `request`'s buffer).
    pub fn new(
        request: *mut ngx_chain_t,
        key: &[u8],
        command: Command,
        restart: Restart,
    ) -> Lookup {
        Lookup {
            request,
            key: key.as_ptr(),
            key_len: key.len(),
            command,
            may_regenerate: true,
            malformed: Cell::new(false),
            head: Cell::new(None),
            meta_flags: Cell::new(MetaFlags::default()),
            waits: Cell::new(0),
            waiting_since: Cell::new(0),
            time_ms: Cell::new(0),
            restart: Some(restart),
        }
    }

    /// The escaped key, as sent to memcached.
    pub fn key(&self) -> &[u8] {
        // SAFETY: key points into the request buffer, which lives in r->pool.
        unsafe { slice::from_raw_parts(self.key, self.key_len) }
    }

    /// The lookup of `r`, if it has one (in `r`'s pool: it lives as long as
    /// the request, not just as long as the reference to it).
    pub fn of<'a>(r: &ngx_http_request_t) -> Option<&'a Lookup> {
        // SAFETY: Request is a transparent wrapper of ngx_http_request_t; the
        // ctx slot holds NULL or the Lookup set by `set`.
        let r = unsafe { Request::from_ngx_http_request(ptr::from_ref(r).cast_mut()) };
        r.get_module_ctx::<Lookup>(HttpRcacheModule::module())
    }

    /// Makes `lookup` (in `r`'s pool) the lookup of `r`.
    pub fn set(r: &mut ngx_http_request_t, lookup: *mut Lookup) {
        // SAFETY: as `of`.
        let r = unsafe { Request::from_ngx_http_request(r) };
        r.set_module_ctx(lookup.cast(), HttpRcacheModule::module());
    }
}

/// Whether `u` is an rcache lookup (rcache tags its output).
pub fn is_rcache(u: &ngx_http_upstream_t) -> bool {
    ptr::eq(
        u.output.tag.cast::<ngx_module_t>(),
        HttpRcacheModule::module(),
    )
}
