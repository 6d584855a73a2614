//! Server names as memcached clients write them.
//!
//! Clients place a key by hashing strings made of the server's name: pymemcache's
//! `"host:port"` (or the socket path), libmemcached's `"host-N"` / `"host:port-N"`. rcache
//! rebuilds those strings from the `server` lines of the `upstream {}` block, textually —
//! never from resolved addresses — so a `server` line must name each server exactly as the
//! application's client does (`memcache1.internal:11211`, not its IP address).

use core::fmt;

/// libmemcached's and pylibmc's default port.
pub const DEFAULT_PORT: u16 = 11211;

/// A memcached server, as named in a `server` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerName {
    /// `host:port`; an IPv6 host is kept without its brackets, as clients keep it.
    Tcp { host: String, port: u16 },
    /// `unix:/path`.
    Unix { path: String },
}

/// Why a `server` line cannot be used for hashing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// No `:port` (nginx would use 80; memcached clients 11211).
    NoPort,
    /// A port that is not a number from 1 to 65535.
    BadPort,
    /// Not valid UTF-8, or empty.
    BadName,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::NoPort => write!(
                f,
                "needs an explicit port (nginx would use 80, memcached clients use 11211)"
            ),
            NameError::BadPort => write!(f, "has an invalid port"),
            NameError::BadName => write!(f, "is not a valid server name"),
        }
    }
}

impl ServerName {
    /// Parses the address of a `server` line as written in the configuration.
    pub fn parse(text: &[u8]) -> Result<ServerName, NameError> {
        let text = core::str::from_utf8(text).map_err(|_| NameError::BadName)?;
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(NameError::BadName);
            }
            return Ok(ServerName::Unix {
                path: path.to_string(),
            });
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or(NameError::BadName)?;
            let port = after.strip_prefix(':').ok_or(NameError::NoPort)?;
            (host, port)
        } else {
            text.rsplit_once(':').ok_or(NameError::NoPort)?
        };
        if host.is_empty() {
            return Err(NameError::BadName);
        }
        let port: u16 = port.parse().map_err(|_| NameError::BadPort)?;
        if port == 0 {
            return Err(NameError::BadPort);
        }
        Ok(ServerName::Tcp {
            host: host.to_string(),
            port,
        })
    }

    /// The node name pymemcache's `HashClient` hashes: `"host:port"`, or the socket path.
    pub fn pymemcache_node(&self) -> String {
        match self {
            ServerName::Tcp { host, port } => format!("{host}:{port}"),
            ServerName::Unix { path } => path.clone(),
        }
    }

    /// The string libmemcached hashes for continuum point `index`: `"host-N"` on the
    /// default port, `"host:port-N"` otherwise; a socket counts as port 0.
    pub fn libmemcached_point(&self, index: u32) -> String {
        match self {
            ServerName::Tcp { host, port } if *port == DEFAULT_PORT => format!("{host}-{index}"),
            ServerName::Tcp { host, port } => format!("{host}:{port}-{index}"),
            ServerName::Unix { path } => format!("{path}:0-{index}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> ServerName {
        ServerName::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn parses_the_forms_of_a_server_line() {
        assert_eq!(
            ServerName::parse(b"127.0.0.1:11211"),
            Ok(tcp("127.0.0.1", 11211))
        );
        assert_eq!(
            ServerName::parse(b"mc1.internal:22122"),
            Ok(tcp("mc1.internal", 22122))
        );
        assert_eq!(ServerName::parse(b"[::1]:11211"), Ok(tcp("::1", 11211)));
        assert_eq!(
            ServerName::parse(b"unix:/run/mc.sock"),
            Ok(ServerName::Unix {
                path: "/run/mc.sock".into()
            })
        );
    }

    #[test]
    fn rejects_what_no_client_would_hash_alike() {
        assert_eq!(ServerName::parse(b"127.0.0.1"), Err(NameError::NoPort));
        assert_eq!(ServerName::parse(b"[::1]"), Err(NameError::NoPort));
        assert_eq!(ServerName::parse(b"host:0"), Err(NameError::BadPort));
        assert_eq!(ServerName::parse(b"host:70000"), Err(NameError::BadPort));
        assert_eq!(ServerName::parse(b"host:x"), Err(NameError::BadPort));
        assert_eq!(ServerName::parse(b":11211"), Err(NameError::BadName));
        assert_eq!(ServerName::parse(b"unix:"), Err(NameError::BadName));
        assert_eq!(ServerName::parse(b"\xff:1"), Err(NameError::BadName));
    }

    #[test]
    fn names_as_the_clients_write_them() {
        assert_eq!(tcp("127.0.0.1", 11211).pymemcache_node(), "127.0.0.1:11211");
        assert_eq!(tcp("::1", 11211).pymemcache_node(), "::1:11211");
        let unix = ServerName::Unix {
            path: "/run/mc.sock".into(),
        };
        assert_eq!(unix.pymemcache_node(), "/run/mc.sock");

        assert_eq!(tcp("10.0.0.1", 11211).libmemcached_point(7), "10.0.0.1-7");
        assert_eq!(
            tcp("10.0.0.1", 22122).libmemcached_point(0),
            "10.0.0.1:22122-0"
        );
        assert_eq!(unix.libmemcached_point(3), "/run/mc.sock:0-3");
    }
}
