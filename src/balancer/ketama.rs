//! Ketama consistent hashing, as libmemcached does it for pylibmc with
//! `behaviors={"ketama": True, "hash": "md5"}` (and `{"ketama_weighted": True}`).
//!
//! libmemcached (`libmemcached/hosts.cc`, `update_continuum`) puts points for every server
//! on a circle of u32 values and a key goes to the first point at or after its hash,
//! wrapping around. Points and keys are hashed with MD5, read as the little-endian u32 of
//! the digest's first 4 bytes:
//!
//! * plain ketama: 100 points per server, point `i` (0..100) = md5(`"host-i"`) — or
//!   `"host:port-i"` off port 11211;
//! * weighted: 160 points in all per server at equal weights, scaled by weight; every
//!   md5(`"host-i"`) gives 4 points (its four little-endian u32 words).
//!
//! Points are sorted by value, then by server index. With a single server libmemcached
//! skips hashing: every key goes to it.

use md5::{Digest, Md5};

use super::servers::ServerName;

const POINTS_PER_SERVER: u32 = 100;
const POINTS_PER_SERVER_WEIGHTED: u32 = 160;

/// A continuum: sorted `(point, server index)`.
#[derive(Debug, Clone)]
pub struct Continuum {
    points: Vec<(u32, u32)>,
    servers: usize,
}

impl Continuum {
    /// The continuum of `servers` (with their weights, used when `weighted`).
    pub fn new(servers: &[(ServerName, u32)], weighted: bool) -> Continuum {
        let mut points = Vec::new();
        let total_weight: u64 = servers.iter().map(|(_, w)| u64::from(*w)).sum();
        let live = servers.len() as f32;
        for (index, (name, weight)) in servers.iter().enumerate() {
            let index = index as u32;
            if weighted {
                // libmemcached's float arithmetic, kept as it is so the counts match.
                let pct = *weight as f32 / total_weight as f32;
                let per_server = ((pct * POINTS_PER_SERVER_WEIGHTED as f32 / 4.0 * live
                    + 0.000_000_000_1_f32) as f64)
                    .floor() as u32
                    * 4;
                for i in 0..per_server / 4 {
                    let digest = md5(name.libmemcached_point(i).as_bytes());
                    for word in digest.chunks_exact(4) {
                        points.push((
                            u32::from_le_bytes([word[0], word[1], word[2], word[3]]),
                            index,
                        ));
                    }
                }
            } else {
                for i in 0..POINTS_PER_SERVER {
                    points.push((key_hash(name.libmemcached_point(i).as_bytes()), index));
                }
            }
        }
        points.sort_unstable();
        Continuum {
            points,
            servers: servers.len(),
        }
    }

    /// The server for `key` (already hashed with [`key_hash`]); `None` without servers.
    pub fn pick_hash(&self, hash: u32) -> Option<usize> {
        if self.servers <= 1 || self.points.is_empty() {
            return (self.servers == 1).then_some(0);
        }
        let at = self.points.partition_point(|&(point, _)| point < hash);
        let (_, index) = self.points.get(at).unwrap_or(&self.points[0]);
        Some(*index as usize)
    }

    /// The server for `key`.
    pub fn pick(&self, key: &[u8]) -> Option<usize> {
        self.pick_hash(key_hash(key))
    }
}

/// libmemcached's MD5 key hash: the first 4 digest bytes, little-endian.
pub fn key_hash(data: &[u8]) -> u32 {
    let d = md5(data);
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

fn md5(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three(weights: [u32; 3]) -> Vec<(ServerName, u32)> {
        (0..3)
            .map(|i| {
                (
                    ServerName::Tcp {
                        host: "127.0.0.1".into(),
                        port: 22001 + i as u16,
                    },
                    weights[i],
                )
            })
            .collect()
    }

    fn check(c: &Continuum, observed: &[usize], tail: [usize; 4]) {
        for (i, &server) in observed.iter().enumerate() {
            let key = format!("/p/{i}");
            assert_eq!(c.pick(key.as_bytes()), Some(server), "{key}");
        }
        assert_eq!(c.pick(b"/a%20b"), Some(tail[0]));
        assert_eq!(c.pick("/café".as_bytes()), Some(tail[1]));
        assert_eq!(c.pick(b"/x"), Some(tail[2]));
        assert_eq!(
            c.pick(format!("/{}", "k".repeat(249)).as_bytes()),
            Some(tail[3])
        );
    }

    // Where pylibmc 1.6.3 (libmemcached-awesome 1.1.4, Debian 12) put /p/0 .. /p/39 on
    // three servers, observed with real memcached instances.
    #[test]
    fn matches_pylibmc_ketama_md5() {
        let c = Continuum::new(&three([1, 1, 1]), false);
        check(
            &c,
            &[
                1, 1, 1, 1, 0, 0, 2, 0, 2, 0, 2, 2, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0, 0,
                1, 1, 0, 2, 0, 2, 2, 1, 0, 0, 0, 1,
            ],
            [0, 2, 2, 2],
        );
    }

    #[test]
    fn matches_pylibmc_ketama_weighted() {
        let c = Continuum::new(&three([1, 1, 1]), true);
        check(
            &c,
            &[
                1, 1, 2, 1, 2, 2, 2, 0, 1, 1, 1, 1, 1, 2, 0, 1, 2, 2, 1, 2, 2, 0, 0, 0, 0, 0, 2, 2,
                2, 0, 0, 2, 1, 1, 1, 1, 0, 2, 1, 1,
            ],
            [2, 2, 0, 2],
        );
        let c = Continuum::new(&three([1, 2, 5]), true);
        check(
            &c,
            &[
                1, 2, 2, 1, 2, 2, 2, 0, 2, 2, 1, 2, 1, 2, 0, 1, 2, 2, 1, 2, 2, 0, 0, 0, 2, 0, 2, 2,
                2, 1, 2, 2, 0, 2, 2, 2, 2, 2, 1, 2,
            ],
            [2, 2, 2, 2],
        );
    }

    #[test]
    fn one_server_takes_every_key_and_none_takes_none() {
        let one = Continuum::new(&three([1, 1, 1])[..1], false);
        assert_eq!(one.pick(b"/anything"), Some(0));
        assert_eq!(Continuum::new(&[], false).pick(b"/x"), None);
    }

    #[test]
    fn keys_past_the_last_point_wrap_to_the_first() {
        let c = Continuum::new(&three([1, 1, 1]), false);
        let (first_server, last) = (c.points[0].1 as usize, c.points.last().unwrap().0);
        assert_eq!(c.pick_hash(u32::MAX), Some(first_server));
        assert!(last < u32::MAX);
        assert_eq!(c.pick_hash(0), Some(first_server));
    }
}
