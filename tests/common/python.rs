//! The real memcached clients applications write with, driven through Python.
//!
//! `rcache_hash` must find each key on the server the application's client put it on, so
//! the cluster tests write keys with those very clients (pymemcache, pylibmc/libmemcached)
//! and never with a reimplementation of their hashing. [`write_keys`] runs
//! `tests/scripts/write_keys.py` (see its docstring) with:
//!
//! * env `RCACHE_PYTHON`, else `<crate>/target/pyenv/bin/python3`, the venv that
//!   `scripts/python-env.sh` creates (Debian's python3 and pylibmc, pymemcache from PyPI).
//!
//! Values are [`value_of`]`(key)`: `"v:" + key`, stored as a `str` for even positions in
//! the key list (flags 16) and as `bytes` for odd ones (flags 0).

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use super::process::{env_path, TempDir};

/// A client library configured as an application configures it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writer {
    /// pymemcache `HashClient` with Django `PyMemcacheCache`'s options: rendezvous.
    Pymemcache,
    /// pylibmc `behaviors={"ketama": True, "hash": "md5"}`.
    PylibmcKetama,
    /// pylibmc `behaviors={"ketama_weighted": True}`, servers `host:port:weight`.
    PylibmcKetamaWeighted,
    /// pylibmc without behaviors (libmemcached's modula over one_at_a_time).
    PylibmcModula,
    /// pylibmc `behaviors={"ketama": True}` alone: libmemcached's key hash stays
    /// one_at_a_time, which no `rcache_hash` matches (for tests of a mismatch).
    PylibmcKetamaDefaultHash,
}

impl Writer {
    pub const ALL: [Writer; 4] = [
        Writer::Pymemcache,
        Writer::PylibmcKetama,
        Writer::PylibmcKetamaWeighted,
        Writer::PylibmcModula,
    ];

    /// The CLIENT argument of write_keys.py.
    pub fn script_name(self) -> &'static str {
        match self {
            Writer::Pymemcache => "pymemcache",
            Writer::PylibmcKetama => "pylibmc-ketama",
            Writer::PylibmcKetamaWeighted => "pylibmc-ketama-weighted",
            Writer::PylibmcModula => "pylibmc-modula",
            Writer::PylibmcKetamaDefaultHash => "pylibmc-ketama-default-hash",
        }
    }

    /// The `rcache_hash` arguments that match this client.
    pub fn rcache_hash(self) -> &'static str {
        match self {
            Writer::Pymemcache => "rendezvous",
            Writer::PylibmcKetama => "ketama",
            Writer::PylibmcKetamaWeighted => "ketama weighted",
            Writer::PylibmcModula => "modula",
            Writer::PylibmcKetamaDefaultHash => {
                panic!("no rcache_hash matches pylibmc ketama without \"hash\": \"md5\"")
            }
        }
    }

    /// Whether the server list carries weights (`host:port:weight`).
    pub fn weighted(self) -> bool {
        self == Writer::PylibmcKetamaWeighted
    }
}

/// The Python interpreter with pymemcache and pylibmc; panics with how to get one.
pub fn python() -> PathBuf {
    let path = env_path("RCACHE_PYTHON").unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python3")
    });
    assert!(
        path.is_file(),
        "no Python with the memcached clients at {}: run scripts/python-env.sh (creates \
         target/pyenv with pymemcache and pylibmc) or set RCACHE_PYTHON=/path/to/python3",
        path.display()
    );
    path
}

/// `<crate>/tests/scripts/<name>`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scripts")
        .join(name)
}

/// The value write_keys.py stores for `key`.
pub fn value_of(key: &str) -> Vec<u8> {
    format!("v:{key}").into_bytes()
}

/// What write_keys.py reported.
#[derive(Clone, Debug)]
pub struct WriteReport {
    pub written: usize,
    pub str_values: usize,
    pub bytes_values: usize,
    /// Time the sets took inside Python.
    pub seconds: f64,
    /// Wall time including the interpreter's start.
    pub wall_seconds: f64,
}

/// Writes every key of `keys` (with [`value_of`]) through `writer`'s client configured
/// with `servers` (`"host:port"`, or `"host:port:weight"` for the weighted writer), in
/// that order. Panics if Python fails or any set is not stored.
pub fn write_keys(writer: Writer, servers: &[String], keys: &[String]) -> WriteReport {
    assert!(
        keys.iter().all(|k| !k.is_empty() && !k.contains('\n')),
        "write_keys: keys must be non-empty single lines"
    );
    let dir = TempDir::new("python");
    let keys_file = dir.path().join("keys.txt");
    let mut text = keys.join("\n");
    text.push('\n');
    fs::write(&keys_file, text)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", keys_file.display()));
    let python = python();
    let started = Instant::now();
    let out = Command::new(&python)
        .arg(script("write_keys.py"))
        .arg(writer.script_name())
        .arg(&keys_file)
        .args(servers)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let wall_seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "write_keys.py {} {servers:?} failed ({}):\n{stderr}\n{stdout}",
        writer.script_name(),
        out.status
    );
    let field = |name: &str| -> f64 {
        let pat = format!("\"{name}\": ");
        let at = stdout
            .find(&pat)
            .unwrap_or_else(|| panic!("write_keys.py output has no {name:?}: {stdout}"));
        let rest = &stdout[at + pat.len()..];
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        rest[..end]
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("write_keys.py {name:?} is not a number ({e}): {stdout}"))
    };
    let report = WriteReport {
        written: field("written") as usize,
        str_values: field("str") as usize,
        bytes_values: field("bytes") as usize,
        seconds: field("seconds"),
        wall_seconds,
    };
    assert_eq!(
        report.written,
        keys.len(),
        "write_keys.py wrote {} of {} keys: {stdout}",
        report.written,
        keys.len()
    );
    report
}
