//! Which server a key belongs to: the algorithms of the client libraries, over one
//! upstream's servers (pure).

use super::ketama::Continuum;
use super::servers::ServerName;
use super::{modula, rendezvous};

/// A client's way of spreading keys over servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// pymemcache `HashClient` (Django's `PyMemcacheCache`).
    Rendezvous,
    /// libmemcached ketama with MD5 (pylibmc `{"ketama": True, "hash": "md5"}`).
    Ketama,
    /// libmemcached weighted ketama (pylibmc `{"ketama_weighted": True}`).
    KetamaWeighted,
    /// libmemcached's default: `one_at_a_time(key) % n` (pylibmc without behaviors).
    Modula,
}

impl Algorithm {
    /// Parses the arguments of `rcache_hash`: `rendezvous`, `ketama [weighted]`,
    /// `modula`.
    pub fn parse(args: &[&[u8]]) -> Option<Algorithm> {
        match args {
            [b"rendezvous"] => Some(Algorithm::Rendezvous),
            [b"ketama"] => Some(Algorithm::Ketama),
            [b"ketama", b"weighted"] => Some(Algorithm::KetamaWeighted),
            [b"modula"] => Some(Algorithm::Modula),
            _ => None,
        }
    }
}

/// Where keys go, for one upstream's servers (in the order of its `server` lines).
#[derive(Debug)]
pub enum Ring {
    Rendezvous(Vec<String>),
    Ketama(Continuum),
    Modula(usize),
}

impl Ring {
    /// The ring of `servers` (name and weight) for `algorithm`.
    pub fn new(algorithm: Algorithm, servers: &[(ServerName, u32)]) -> Ring {
        match algorithm {
            Algorithm::Rendezvous => {
                Ring::Rendezvous(servers.iter().map(|(n, _)| n.pymemcache_node()).collect())
            }
            Algorithm::Ketama => Ring::Ketama(Continuum::new(servers, false)),
            Algorithm::KetamaWeighted => Ring::Ketama(Continuum::new(servers, true)),
            Algorithm::Modula => Ring::Modula(servers.len()),
        }
    }

    /// The index of the server `key` (as sent to memcached, escaped) belongs to.
    pub fn pick(&self, key: &[u8]) -> Option<usize> {
        match self {
            Ring::Rendezvous(nodes) => rendezvous::pick(nodes, key),
            Ring::Ketama(continuum) => continuum.pick(key),
            Ring::Modula(n) => modula::pick(*n, key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_directive_arguments() {
        assert_eq!(
            Algorithm::parse(&[b"rendezvous"]),
            Some(Algorithm::Rendezvous)
        );
        assert_eq!(Algorithm::parse(&[b"ketama"]), Some(Algorithm::Ketama));
        assert_eq!(
            Algorithm::parse(&[b"ketama", b"weighted"]),
            Some(Algorithm::KetamaWeighted)
        );
        assert_eq!(Algorithm::parse(&[b"modula"]), Some(Algorithm::Modula));
        assert_eq!(Algorithm::parse(&[b"Ketama"]), None);
        assert_eq!(Algorithm::parse(&[b"modula", b"weighted"]), None);
        assert_eq!(Algorithm::parse(&[b"crc32"]), None);
        assert_eq!(Algorithm::parse(&[]), None);
    }

    #[test]
    fn every_ring_places_every_key_on_a_listed_server() {
        let servers: Vec<_> = (0..5)
            .map(|i| {
                (
                    ServerName::Tcp {
                        host: format!("10.0.0.{i}"),
                        port: 11211,
                    },
                    1,
                )
            })
            .collect();
        for alg in [
            Algorithm::Rendezvous,
            Algorithm::Ketama,
            Algorithm::KetamaWeighted,
            Algorithm::Modula,
        ] {
            let ring = Ring::new(alg, &servers);
            let mut seen = [0usize; 5];
            for i in 0..5000 {
                let s = ring.pick(format!("/k/{i}").as_bytes()).unwrap();
                seen[s] += 1;
            }
            // Every server gets a fair share (each algorithm spreads keys evenly).
            assert!(seen.iter().all(|&n| n > 500), "{alg:?}: {seen:?}");
        }
    }
}
