//! Integration-test fixtures: real nginx, real memcached, a scripted fake memcached, the
//! fallback app, and a raw HTTP client. Use from a test file with `mod common;` and
//! `use common::*;`.
//!
//! ```ignore
//! mod common;
//! use common::*;
//!
//! #[test]
//! fn hit() {
//!     let mc = Memcached::start();
//!     mc.set_raw(b"/page", b"<h1>hi</h1>", 0, 0);
//!     let app = App::start();
//!     let nginx = Nginx::builder()
//!         .var("mc", mc.port())
//!         .var("app", app.port())
//!         .http("server { listen 127.0.0.1:{port};
//!                  location / { rcache_pass 127.0.0.1:{mc}; rcache_fallback @app; }
//!                  location @app { proxy_pass http://127.0.0.1:{app}; } }")
//!         .start();
//!     let r = http::get(nginx.port(), "/page");
//!     assert_eq!(r.body, b"<h1>hi</h1>");
//!     assert_eq!(nginx.wait_access_entries(1, SECOND)[0].rcache, "HIT");
//! }
//! ```
//!
//! Every server listens on 127.0.0.1 on an ephemeral port, so tests run in parallel
//! (threads and several test binaries). Every process is owned by its fixture and stopped
//! by PID on drop (also when the test panics; nginx then prints its config and log tails).
//!
//! Environment:
//! * `RCACHE_NGINX`: nginx binary (default: the vendored build, `$DEP_NGINX_BUILD_DIR/nginx`
//!   from compile time). For Debian's nginx: `RCACHE_NGINX=/usr/sbin/nginx`.
//! * `RCACHE_MODULE`: the module .so (default: the newer of `target/<profile>/deps/` and
//!   `target/<profile>/librcache.so`). A module only loads into the nginx version it was
//!   built for: with `RCACHE_NGINX=/usr/sbin/nginx` point this at a build for 1.22.
//! * `RCACHE_MEMCACHED`: memcached binary (default `memcached` from PATH).
//! * `RCACHE_PYTHON`: Python with pymemcache and pylibmc (default `target/pyenv/bin/python3`).
//! * `RCACHE_KEEP_TMP`: keep the per-fixture temp dirs under `$TMPDIR/rcache-tests/`.
//!
//! Fixtures (see each module for details):
//! * [`Nginx`] (`nginx.rs`): builder with `.http()`, `.var()`, `.workers()`,
//!   `.with_module()`, `.check_config()`; reload, quit, logs, worker PIDs.
//! * [`Memcached`] (`memcached.rs`): the real server; `client()`, `set_raw()` with flags,
//!   `stats()`, pause/resume/restart.
//! * [`FakeMemcached`], [`Step`], [`Blackhole`] (`fake_memcached.rs`): scripted faults.
//! * [`App`] (`app.rs`): the fallback app; echoes what it received ([`Echo`]).
//! * [`http`]: the client (`get`, `request`, `KeepAliveClient`, `load`, `send_raw`).
//! * [`python`]: keys written by the real clients (pymemcache, pylibmc) through
//!   `tests/scripts/write_keys.py` (env `RCACHE_PYTHON`, default `target/pyenv`, made by
//!   `scripts/python-env.sh`).
#![allow(dead_code)] // each test binary uses a different subset

pub mod app;
pub mod django;
pub mod fake_memcached;
pub mod http;
pub mod memcached;
pub mod nginx;
pub mod process;
pub mod python;
mod server;
pub mod sha256;

#[allow(unused_imports)]
pub use app::{App, AppRequest, AppResponse, Echo};
#[allow(unused_imports)]
pub use fake_memcached::{split, truncated, value_reply, Blackhole, FakeMemcached, Step, MISS};
#[allow(unused_imports)]
pub use memcached::{Flagged, Memcached};
#[allow(unused_imports)]
pub use nginx::{AccessEntry, ConfigCheck, Nginx, Shutdown};
#[allow(unused_imports)]
pub use process::{free_port, is_stopped, wait_until, Frozen};
#[allow(unused_imports)]
pub use sha256::sha256_hex;

use std::time::Duration;

/// One second, for timeouts in assertions.
pub const SECOND: Duration = Duration::from_secs(1);

/// Deterministic pseudo-random bytes (xorshift) covering every value, CR, LF and NUL
/// included: page bodies that would expose any byte mangling.
pub fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `data` gzip-compressed (a page as an app would store it with `rcache_gzip_flag`).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}
