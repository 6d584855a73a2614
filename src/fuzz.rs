//! Generated-input tests of every parser that reads bytes from memcached, a client or an
//! app: the classic and meta reply parsers, the stored-page decoder, key escaping, gzip
//! decompression (bombs included) and the cacheability rules (`Cache-Control`,
//! `X-Accel-Expires`). Each runs on random bytes and on mutations of valid inputs, and
//! checks that nothing panics, that what a parser accepts lies within its input, and that
//! round-trippable formats give back what was put in.
//!
//! `cargo test` runs a fast form (`FAST` inputs per parser); `RCACHE_FUZZ_INPUTS=1000000
//! cargo test --release fuzz` the long one (`RCACHE_FUZZ_SEED` picks another sequence).
//! A failure prints the seed and the input.

use std::io::Write;

use crate::gzip::{self, GunzipError};
use crate::key;
use crate::meta::{self, MetaParsed, MetaReply};
use crate::protocol::{self, Parsed};
use crate::store::page::{self, KEPT_HEADERS};
use crate::store::policy;

/// Inputs per parser in the fast form.
const FAST: usize = 20_000;

/// xorshift64*: reproducible, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// A few random edits of `seed`: bytes flipped, inserted, deleted, a cut, a chunk
    /// repeated, a number made huge.
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..=self.below(4) {
            let at = self.below(v.len() + 1);
            match self.below(7) {
                0 if !v.is_empty() => {
                    let i = at.min(v.len() - 1);
                    v[i] ^= 1 << self.below(8);
                }
                1 => v.insert(at, self.next() as u8),
                2 if at < v.len() => {
                    v.remove(at);
                }
                3 => v.truncate(at),
                4 if at < v.len() => {
                    let end = (at + self.below(16)).min(v.len());
                    let chunk = v[at..end].to_vec();
                    v.splice(at..at, chunk);
                }
                5 => {
                    let huge: &[u8] = [
                        &b"4294967296"[..],
                        b"18446744073709551616",
                        b"99999999999999999999999",
                        b"-1",
                        b" ",
                    ][self.below(5)];
                    v.splice(at..at, huge.iter().copied());
                }
                _ => {
                    let special: &[u8] = [&b"\r\n"[..], b"\n", b"\r", b"\0", b":"][self.below(5)];
                    v.splice(at..at, special.iter().copied());
                }
            }
        }
        v
    }
}

/// Runs `check` on `inputs()` generated inputs: half random bytes, half mutations of one
/// of `seeds`.
fn fuzz(name: &str, seeds: &[Vec<u8>], max_random: usize, check: impl Fn(&[u8])) {
    let inputs = std::env::var("RCACHE_FUZZ_INPUTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(FAST);
    let seed = std::env::var("RCACHE_FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0x5eed_u64);
    let mut rng = Rng(seed ^ name.len() as u64 ^ 0x9e37_79b9_7f4a_7c15);
    for i in 0..inputs {
        let input = if i % 2 == 0 || seeds.is_empty() {
            rng.bytes(max_random)
        } else {
            let s = &seeds[rng.below(seeds.len())];
            rng.mutate(s)
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&input)));
        if let Err(e) = result {
            panic!(
                "{name}: input {i} (RCACHE_FUZZ_SEED={seed}) failed: {:?}\n{:?}",
                e.downcast_ref::<String>()
                    .map(String::as_str)
                    .or(e.downcast_ref::<&str>().copied()),
                String::from_utf8_lossy(&input)
            );
        }
    }
}

#[test]
fn classic_replies() {
    let key = b"/k";
    let seeds = vec![
        b"VALUE /k 0 5\r\nhello\r\nEND\r\n".to_vec(),
        b"VALUE /k 16777216 0\r\n\r\nEND\r\n".to_vec(),
        b"END\r\n".to_vec(),
        b"SERVER_ERROR out of memory\r\n".to_vec(),
    ];
    fuzz("classic replies", &seeds, 64, |buf| {
        // Every prefix too: replies arrive in pieces.
        for n in [buf.len(), buf.len() / 2, buf.len().saturating_sub(1)] {
            let part = &buf[..n];
            match protocol::parse_reply(part, key) {
                Ok(Parsed::Hit(h)) => {
                    let range = h.value_range();
                    assert!(range.end <= part.len());
                    assert_eq!(range.len(), h.len);
                    assert_eq!(h.reply_len(), Some(part.len()));
                }
                Ok(Parsed::NeedValue { header, reply_len }) => {
                    assert!(reply_len > part.len());
                    assert!(header.line_len <= part.len());
                }
                Ok(Parsed::NeedLine | Parsed::Miss) | Err(_) => {}
            }
        }
        let _ = protocol::parse_line_reply(buf);
        let _ = protocol::parse_value_rest(buf, buf.len() / 3, protocol::TRAILER);
    });
}

#[test]
fn meta_replies() {
    let seeds = vec![
        b"VA 5 f0 t29 c7 W X Z\r\nhello\r\n".to_vec(),
        b"VA 0 f33554432 t30 c1\r\n\r\n".to_vec(),
        b"HD c12\r\n".to_vec(),
        b"EN\r\n".to_vec(),
        b"EX\r\n".to_vec(),
        b"NS\r\n".to_vec(),
        b"CLIENT_ERROR bad command line format\r\n".to_vec(),
    ];
    fuzz(
        "meta replies",
        &seeds,
        64,
        |buf| match meta::parse_meta_reply(buf) {
            Ok(MetaParsed::Complete(MetaReply::Value { line_len, len, .. })) => {
                assert!(line_len + len + 2 <= buf.len());
            }
            Ok(MetaParsed::NeedValue {
                line_len,
                len,
                reply_len,
                ..
            }) => {
                assert!(reply_len > buf.len());
                assert_eq!(Some(reply_len), line_len.checked_add(len + 2));
            }
            _ => {}
        },
    );
}

fn stored_page(status: u16, headers: &[(&[u8], &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    page::encode(status, headers, body, &mut out);
    out
}

#[test]
fn stored_pages_decode_safely_and_never_carry_a_line_break_into_a_header() {
    let seeds = vec![
        stored_page(200, &[(b"Content-Type", b"text/html")], b"<p>hi</p>"),
        stored_page(301, &[(b"Location", b"/new"), (b"ETag", b"\"x\"")], b""),
    ];
    fuzz("stored pages", &seeds, 96, |buf| {
        if let Some(p) = page::decode(buf) {
            assert!((200..=599).contains(&p.status));
            assert!(p.body.len() <= buf.len());
            for (name, value) in &p.headers {
                assert!(KEPT_HEADERS.contains(name));
                assert!(
                    !value.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f),
                    "a control byte in {name}: {value:?}"
                );
            }
        }
    });
}

#[test]
fn stored_pages_round_trip() {
    let mut rng = Rng(7);
    for _ in 0..FAST / 4 {
        let status = [200u16, 203, 301, 302, 404, 410, 500][rng.below(7)];
        let mut headers: Vec<(&[u8], Vec<u8>)> = Vec::new();
        for _ in 0..rng.below(5) {
            let name = KEPT_HEADERS[rng.below(KEPT_HEADERS.len())].as_bytes();
            let value: Vec<u8> = (0..rng.below(40))
                .map(|_| b' ' + (rng.next() % 95) as u8)
                .collect();
            headers.push((name, value));
        }
        let body = rng.bytes(300);
        let refs: Vec<(&[u8], &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let encoded = stored_page(status, &refs, &body);
        assert_eq!(encoded.len(), page::encoded_len(status, &refs, &body));
        let p = page::decode(&encoded).expect("decodes");
        assert_eq!(p.status, status);
        assert_eq!(p.body, &body[..]);
        let got: Vec<(&[u8], &[u8])> = p.headers.iter().map(|(n, v)| (n.as_bytes(), *v)).collect();
        let want: Vec<(&[u8], &[u8])> = refs
            .iter()
            .map(|&(n, v)| (n, v.strip_prefix(b" ").unwrap_or(v)))
            .collect();
        assert_eq!(got.len(), want.len());
        for ((gn, gv), (wn, wv)) in got.iter().zip(&want) {
            assert_eq!(gn, wn);
            assert_eq!(gv.trim_ascii(), wv.trim_ascii());
        }
    }
}

/// `%XX` decoding, the inverse of [`key::write_escaped`].
fn unescape(escaped: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < escaped.len() {
        if escaped[i] == b'%' {
            let hex = std::str::from_utf8(&escaped[i + 1..i + 3]).expect("hex digits");
            out.push(u8::from_str_radix(hex, 16).expect("hex"));
            i += 3;
        } else {
            out.push(escaped[i]);
            i += 1;
        }
    }
    out
}

#[test]
fn keys_escape_into_one_token_and_back() {
    fuzz(
        "keys",
        &[b"/path/to page%20?q=1\r\n".to_vec()],
        300,
        |raw| {
            let n = key::escaped_len(raw);
            let mut out = vec![0; n];
            assert_eq!(key::write_escaped(raw, &mut out), n);
            assert!(!out.iter().any(|&b| b <= b' '), "{out:?}");
            assert_eq!(unescape(&out), raw);
        },
    );
}

fn gzipped(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

#[test]
fn gzip_values_decompress_within_the_limit_or_not_at_all() {
    let seeds = vec![
        gzipped(b"<p>a page</p>"),
        gzipped(&[b'x'; 5000]),
        gzipped(b""),
    ];
    const LIMIT: usize = 4096;
    fuzz("gzip", &seeds, 64, |gz| {
        if let Ok(size) = gzip::decompressed_size(gz, LIMIT) {
            assert!(size <= LIMIT);
            let mut out = vec![0; size];
            let _ = gzip::gunzip_into(gz, &mut out);
        }
    });
}

#[test]
fn a_gzip_bomb_is_refused_by_its_size_before_any_decompression() {
    // 64 MiB of zeros compress to about 64 KiB.
    let bomb = gzipped(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < 1 << 20);
    assert_eq!(
        gzip::decompressed_size(&bomb, 4 << 20),
        Err(GunzipError::TooLarge {
            size: 64 << 20,
            limit: 4 << 20
        })
    );
    // A trailer that lies (claims little, holds much) is caught while decompressing.
    let mut liar = bomb.clone();
    let n = liar.len();
    liar[n - 4..].copy_from_slice(&100u32.to_le_bytes());
    let size = gzip::decompressed_size(&liar, 4 << 20).expect("claims 100 bytes");
    let mut out = vec![0; size];
    assert_eq!(
        gzip::gunzip_into(&liar, &mut out),
        Err(GunzipError::Corrupt)
    );
}

#[test]
fn cache_control_and_x_accel_expires_never_panic_and_bound_the_ttl() {
    let seeds = vec![
        b"max-age=60, public".to_vec(),
        b"s-maxage=10, max-age=5".to_vec(),
        b"private, no-store".to_vec(),
        b"@1700000000".to_vec(),
        b"300".to_vec(),
    ];
    fuzz("cache rules", &seeds, 48, |value| {
        for (cc, xae) in [(Some(value), None), (None, Some(value))] {
            let resp = policy::Response {
                status: 200,
                cache_control: cc.into_iter().collect(),
                x_accel_expires: xae,
                ..Default::default()
            };
            if let Ok(ttl) = policy::decide(&resp, &[200], 300, 1_800_000_000) {
                assert!(ttl > 0);
                assert!(policy::exptime(ttl, 1_800_000_000) > 0);
            }
        }
    });
}

#[test]
fn decimals_parse_as_rust_does_or_not_at_all() {
    fuzz("decimals", &[b"12345".to_vec()], 24, |digits| {
        let ours = protocol::parse_decimal(digits);
        let std = std::str::from_utf8(digits)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok());
        assert_eq!(ours, std, "{digits:?}");
    });
}
