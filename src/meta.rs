//! memcached's meta protocol (`mg`, `ms`, `md`), as far as stale pages and the
//! regeneration lock will speak it: the commands, and their replies (pure).
//!
//! Locations with `rcache_stale` or `rcache_purge soft` look pages up with `mg` (the
//! others keep the classic `get` of `protocol.rs`). The server's side of each behaviour
//! this relies on (recache `R`, the `W`/`Z`/`X` flags, `ms` with `C` and mode add, `md`
//! with `I`; vivify `N` for the lock to come) is checked against memcached 1.6.18 in
//! `tests/meta_protocol.rs`.
//!
//! As with `protocol.rs`, a reply is parsed from everything received so far, and the
//! buffer must hold exactly one reply.

use crate::protocol::{parse_decimal as decimal, printable, ProtocolError, CRLF, MAX_LINE};

/// The return flags of a meta reply that rcache asks for or acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetaFlags {
    /// `W`: this client won the right to recache the item (vivified, stale, or
    /// past the `R` threshold).
    pub win: bool,
    /// `Z`: another client has won already and not stored yet.
    pub won_already: bool,
    /// `X`: the item is stale (invalidated with `md ... I` or `ms ... I`).
    pub stale: bool,
    /// `f<flags>`: the client flags.
    pub client_flags: Option<u32>,
    /// `t<ttl>`: seconds left, -1 for none.
    pub ttl: Option<i64>,
    /// `c<cas>`: the CAS value.
    pub cas: Option<u64>,
}

/// A complete meta reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaReply {
    /// `VA <len> <flags>*`: the value is `value_range` of the buffer.
    Value {
        flags: MetaFlags,
        line_len: usize,
        len: usize,
    },
    /// `HD <flags>*`: success without a value (`ms`, `md`, `mg` without `v`).
    Header(MetaFlags),
    /// `EN`: `mg` found no item.
    NotFound,
    /// `NS`: `ms` did not store (mode add/replace condition not met).
    NotStored,
    /// `EX`: the CAS given with `C` did not match.
    Exists,
    /// `NF`: `ms`/`md` found no item (CAS or replace mode).
    NoItem,
}

/// What the bytes received so far amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaParsed {
    /// The reply line has not fully arrived.
    NeedLine,
    /// `VA`: `reply_len` bytes in all are expected.
    NeedValue {
        flags: MetaFlags,
        line_len: usize,
        len: usize,
        reply_len: usize,
    },
    /// The whole reply is here.
    Complete(MetaReply),
}

/// Parses `buf`, everything received for one meta command so far.
pub fn parse_meta_reply(buf: &[u8]) -> Result<MetaParsed, ProtocolError> {
    let window = &buf[..buf.len().min(MAX_LINE)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= MAX_LINE {
            return Err(ProtocolError::LineTooLong);
        }
        return Ok(MetaParsed::NeedLine);
    };
    let line_len = lf + 1;
    let Some(line) = buf[..lf].strip_suffix(b"\r") else {
        return Err(malformed(&buf[..lf]));
    };
    let mut words = line.split(|&b| b == b' ');
    let code = words.next().unwrap_or_default();

    let reply = match code {
        b"VA" => {
            let len = words
                .next()
                .and_then(decimal)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| ProtocolError::BadLength(printable(line)))?;
            let flags = return_flags(&mut words, line)?;
            let reply_len = line_len
                .checked_add(len)
                .and_then(|n| n.checked_add(CRLF.len()))
                .ok_or_else(|| ProtocolError::BadLength(printable(line)))?;
            if buf.len() < reply_len {
                return Ok(MetaParsed::NeedValue {
                    flags,
                    line_len,
                    len,
                    reply_len,
                });
            }
            if &buf[line_len + len..reply_len] != CRLF {
                return Err(ProtocolError::BadTrailer);
            }
            return complete(
                buf,
                reply_len,
                MetaReply::Value {
                    flags,
                    line_len,
                    len,
                },
            );
        }
        b"HD" => MetaReply::Header(return_flags(&mut words, line)?),
        b"EN" => MetaReply::NotFound,
        b"NS" => MetaReply::NotStored,
        b"EX" => MetaReply::Exists,
        b"NF" => MetaReply::NoItem,
        b"ERROR" | b"CLIENT_ERROR" | b"SERVER_ERROR" => {
            return Err(ProtocolError::ErrorReply(printable(line)))
        }
        _ => return Err(malformed(line)),
    };
    if !matches!(reply, MetaReply::Header(_)) && words.any(|w| !w.is_empty()) {
        return Err(malformed(line));
    }
    complete(buf, line_len, reply)
}

fn complete(buf: &[u8], reply_len: usize, reply: MetaReply) -> Result<MetaParsed, ProtocolError> {
    if buf.len() > reply_len {
        return Err(ProtocolError::TrailingData(buf.len() - reply_len));
    }
    Ok(MetaParsed::Complete(reply))
}

/// The return flags after the code (and a `VA`'s length). Flags rcache never asks for
/// (`k`, `O`, `s`, `h`, `l`, `b`) are accepted and ignored.
fn return_flags<'a>(
    words: impl Iterator<Item = &'a [u8]>,
    line: &[u8],
) -> Result<MetaFlags, ProtocolError> {
    let mut flags = MetaFlags::default();
    for word in words {
        let Some((&flag, token)) = word.split_first() else {
            return Err(malformed(line));
        };
        match flag {
            b'W' if token.is_empty() => flags.win = true,
            b'Z' if token.is_empty() => flags.won_already = true,
            b'X' if token.is_empty() => flags.stale = true,
            b'f' => {
                let value = decimal(token).and_then(|n| u32::try_from(n).ok());
                flags.client_flags =
                    Some(value.ok_or_else(|| ProtocolError::BadFlags(printable(line)))?);
            }
            b't' => {
                let ttl = if token == b"-1" {
                    Some(-1)
                } else {
                    decimal(token).and_then(|n| i64::try_from(n).ok())
                };
                flags.ttl = Some(ttl.ok_or_else(|| malformed(line))?);
            }
            b'c' => flags.cas = Some(decimal(token).ok_or_else(|| malformed(line))?),
            b'k' | b'O' | b's' | b'h' | b'l' | b'b' => {}
            _ => return Err(malformed(line)),
        }
    }
    Ok(flags)
}

fn malformed(line: &[u8]) -> ProtocolError {
    ProtocolError::Malformed(printable(line))
}

/// What an `mg` asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Get {
    /// `R<ttl>`: win the right to recache once fewer than `ttl` seconds are left.
    pub recache: Option<u32>,
    /// `N<ttl>`: on a miss, create an empty placeholder for `ttl` seconds and win it.
    pub vivify: Option<u32>,
}

/// What follows the key in `mg <key> v f t c [R<ttl>] [N<ttl>]\r\n`: the value with its flags,
/// TTL and CAS.
pub fn get_args(get: Get) -> Args {
    let mut args = Args::new(b" v f t c");
    if let Some(ttl) = get.recache {
        args.push(b" R");
        args.push_number(ttl);
    }
    if let Some(ttl) = get.vivify {
        args.push(b" N");
        args.push_number(ttl);
    }
    args.push(CRLF);
    args
}

/// What follows the key in `md <key> I [T<ttl>]\r\n`: mark the item stale (the next
/// `mg` wins the right to recache it, the others see `X` and `Z`), keeping it `ttl`
/// more seconds (or its own TTL).
pub fn invalidate_args(ttl: Option<u32>) -> Args {
    let mut args = Args::new(b" I");
    if let Some(ttl) = ttl {
        args.push(b" T");
        args.push_number(ttl);
    }
    args.push(CRLF);
    args
}

/// A command's arguments after the key, built on the stack: every lookup builds one,
/// and a heap allocation per request showed in the instruction counts.
#[derive(Clone, Copy)]
pub struct Args {
    buf: [u8; 48],
    len: usize,
}

impl Args {
    pub fn new(start: &[u8]) -> Args {
        let mut args = Args {
            buf: [0; 48],
            len: 0,
        };
        args.push(start);
        args
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn push_number(&mut self, n: impl Into<u64>) {
        let mut n: u64 = n.into();
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }
}

impl core::ops::Deref for Args {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// `ms <key> <len> F<flags> T<ttl> [C<cas> | ME]\r\n` (the value and CRLF follow): with
/// `cas`, only over the item that CAS names (`EX` if it changed since, `NF` if it is
/// gone); without, only if the key has no item (mode add: `NS` if it has).
pub fn set_command(key: &[u8], len: usize, flags: u32, ttl: u64, cas: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 64);
    out.extend_from_slice(b"ms ");
    out.extend_from_slice(key);
    out.extend_from_slice(format!(" {len} F{flags} T{ttl}").as_bytes());
    match cas {
        Some(cas) => out.extend_from_slice(format!(" C{cas}").as_bytes()),
        None => out.extend_from_slice(b" ME"),
    }
    out.extend_from_slice(CRLF);
    out
}

/// What follows the key in the `md` that hands an overdue regeneration on:
/// ` I C<cas> T<stale>\r\n` — marks the page stale again (the next `mg` wins), only if it
/// is still the item `cas` names (so that of several requests that find it overdue, one
/// hands it on), and gives it a whole stale window again, which also restarts the clock
/// [`regeneration_overdue`] reads.
pub fn take_over_args(cas: u64, stale: u32) -> Args {
    let mut args = Args::new(b" I C");
    args.push_number(cas);
    args.push(b" T");
    args.push_number(stale);
    args.push(CRLF);
    args
}

/// Whether the regeneration another request won (`Z`) has run longer than `lock_age`
/// seconds, so that one more request may regenerate the page (`rcache_lock_age`).
///
/// A page enters its stale window with `stale` seconds left (its TTL is freshness +
/// `stale`; a soft purge and a hand-over set it to `stale`), and a page anyone asks for
/// is won as it enters: the win is about `stale - ttl` seconds old. memcached counts in
/// whole seconds, so one more second is allowed. (A page nobody asked for until well
/// into its window looks older than its win is: a second request during that render may
/// then regenerate it too.)
pub fn regeneration_overdue(flags: &MetaFlags, stale: u32, lock_age: u32) -> bool {
    if !flags.won_already || stale == 0 {
        return false;
    }
    match flags.ttl {
        Some(ttl) if ttl >= 0 => i64::from(stale) - ttl > i64::from(lock_age) + 1,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> MetaReply {
        match parse_meta_reply(buf) {
            Ok(MetaParsed::Complete(reply)) => reply,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn value_replies_with_every_flag_memcached_returns() {
        let buf = b"VA 5 f16 t-1 c42 W Z X k/page s5\r\nhello\r\n";
        let reply = complete(buf);
        let MetaReply::Value { flags, .. } = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(
            flags,
            MetaFlags {
                win: true,
                won_already: true,
                stale: true,
                client_flags: Some(16),
                ttl: Some(-1),
                cas: Some(42),
            }
        );
        let MetaReply::Value { line_len, len, .. } = reply else {
            unreachable!()
        };
        assert_eq!(&buf[line_len..line_len + len], b"hello");
    }

    #[test]
    fn each_flag_on_its_own() {
        for (text, want) in [
            (
                "VA 0 W",
                MetaFlags {
                    win: true,
                    ..Default::default()
                },
            ),
            (
                "VA 0 Z",
                MetaFlags {
                    won_already: true,
                    ..Default::default()
                },
            ),
            (
                "VA 0 X",
                MetaFlags {
                    stale: true,
                    ..Default::default()
                },
            ),
            (
                "VA 0 f4294967295",
                MetaFlags {
                    client_flags: Some(u32::MAX),
                    ..Default::default()
                },
            ),
            (
                "VA 0 t30",
                MetaFlags {
                    ttl: Some(30),
                    ..Default::default()
                },
            ),
            (
                "VA 0 c18446744073709551615",
                MetaFlags {
                    cas: Some(u64::MAX),
                    ..Default::default()
                },
            ),
            ("VA 0", MetaFlags::default()),
        ] {
            let buf = format!("{text}\r\n\r\n");
            assert_eq!(
                complete(buf.as_bytes()),
                MetaReply::Value {
                    flags: want,
                    line_len: text.len() + 2,
                    len: 0
                },
                "{text}"
            );
        }
    }

    #[test]
    fn line_replies() {
        assert_eq!(complete(b"EN\r\n"), MetaReply::NotFound);
        assert_eq!(complete(b"NS\r\n"), MetaReply::NotStored);
        assert_eq!(complete(b"EX\r\n"), MetaReply::Exists);
        assert_eq!(complete(b"NF\r\n"), MetaReply::NoItem);
        assert_eq!(complete(b"HD\r\n"), MetaReply::Header(MetaFlags::default()));
        assert_eq!(
            complete(b"HD W c7\r\n"),
            MetaReply::Header(MetaFlags {
                win: true,
                cas: Some(7),
                ..Default::default()
            })
        );
    }

    #[test]
    fn every_split_point_waits_then_completes() {
        let buf = b"VA 11 f0 t300 c9 W\r\nhello world\r\n";
        for cut in 0..buf.len() {
            let parsed = parse_meta_reply(&buf[..cut]).unwrap();
            let line_end = buf.iter().position(|&b| b == b'\n').unwrap() + 1;
            if cut < line_end {
                assert_eq!(parsed, MetaParsed::NeedLine, "cut {cut}");
            } else {
                assert!(
                    matches!(parsed, MetaParsed::NeedValue { len: 11, reply_len, .. } if reply_len == buf.len()),
                    "cut {cut}: {parsed:?}"
                );
            }
        }
        assert!(matches!(parse_meta_reply(buf), Ok(MetaParsed::Complete(_))));
        for line in [&b"EN\r\n"[..], b"HD W\r\n"] {
            for cut in 0..line.len() {
                assert_eq!(parse_meta_reply(&line[..cut]), Ok(MetaParsed::NeedLine));
            }
        }
    }

    #[test]
    fn what_is_not_a_reply_is_an_error() {
        for bad in [
            &b"VA\r\n"[..],
            b"VA x\r\n",
            b"VA 5 f-1\r\nhello\r\n",
            b"VA 5 f4294967296\r\nhello\r\n",
            b"VA 5 tX\r\nhello\r\n",
            b"VA 5 Q\r\nhello\r\n",
            b"VA 5 W1\r\nhello\r\n",
            b"VA 5  \r\nhello\r\n",
            b"EN extra\r\n",
            b"VALUE /k 0 5\r\n",
            b"END\r\n",
            b"HD\n",
        ] {
            assert!(
                parse_meta_reply(bad).is_err(),
                "{:?} parsed as {:?}",
                String::from_utf8_lossy(bad),
                parse_meta_reply(bad)
            );
        }
        assert_eq!(
            parse_meta_reply(b"VA 2\r\nhiXY"),
            Err(ProtocolError::BadTrailer)
        );
        assert_eq!(
            parse_meta_reply(b"EN\r\nEN\r\n"),
            Err(ProtocolError::TrailingData(4))
        );
        assert_eq!(
            parse_meta_reply(b"VA 1\r\nx\r\nEN\r\n"),
            Err(ProtocolError::TrailingData(4))
        );
        assert!(matches!(
            parse_meta_reply(b"ERROR\r\n"),
            Err(ProtocolError::ErrorReply(_))
        ));
        assert!(matches!(
            parse_meta_reply(b"CLIENT_ERROR bad command line format\r\n"),
            Err(ProtocolError::ErrorReply(_))
        ));
        assert_eq!(
            parse_meta_reply(&[b'V'; MAX_LINE]),
            Err(ProtocolError::LineTooLong)
        );
    }

    #[test]
    fn commands() {
        assert_eq!(&*get_args(Get::default()), b" v f t c\r\n");
        let get = |recache, vivify| get_args(Get { recache, vivify });
        assert_eq!(&*get(Some(30), None), b" v f t c R30\r\n");
        assert_eq!(&*get(Some(u32::MAX), None), b" v f t c R4294967295\r\n");
        assert_eq!(&*get(Some(0), None), b" v f t c R0\r\n");
        assert_eq!(&*get(None, Some(5)), b" v f t c N5\r\n");
        assert_eq!(&*get(Some(30), Some(5)), b" v f t c R30 N5\r\n");
        assert_eq!(
            set_command(b"/p", 5, 16, 330, None),
            b"ms /p 5 F16 T330 ME\r\n"
        );
        assert_eq!(
            set_command(b"/p", 5, 0, 60, Some(9)),
            b"ms /p 5 F0 T60 C9\r\n"
        );
        assert_eq!(&*invalidate_args(Some(30)), b" I T30\r\n");
        assert_eq!(&*invalidate_args(None), b" I\r\n");
        assert_eq!(&*Args::new(b"\r\n"), b"\r\n");
    }

    #[test]
    fn a_regeneration_is_overdue_once_its_window_is_older_than_lock_age() {
        let z = |ttl| MetaFlags {
            won_already: true,
            ttl: Some(ttl),
            ..MetaFlags::default()
        };
        // rcache_stale 30, rcache_lock_age 5: won at ttl 29 (entering the window).
        assert!(!regeneration_overdue(&z(29), 30, 5));
        assert!(!regeneration_overdue(&z(24), 30, 5));
        assert!(regeneration_overdue(&z(23), 30, 5));
        assert!(regeneration_overdue(&z(0), 30, 5));
        // A page whose TTL the app set long: not in a window rcache_stale describes.
        assert!(!regeneration_overdue(&z(300), 30, 5));
        // No expiry, no stale window, nobody else at it: never.
        assert!(!regeneration_overdue(&z(-1), 30, 5));
        assert!(!regeneration_overdue(&z(0), 0, 5));
        let w = MetaFlags {
            win: true,
            ttl: Some(0),
            ..MetaFlags::default()
        };
        assert!(!regeneration_overdue(&w, 30, 5));
    }

    #[test]
    fn the_hand_over_is_conditional_on_the_cas_and_restarts_the_window() {
        assert_eq!(&take_over_args(77, 30)[..], b" I C77 T30\r\n");
    }
}
