//! The memcached text protocol, as far as rcache speaks it: one `get <key>`
//! and its reply.
//!
//! A reply is parsed from the whole buffer received so far, every time more
//! bytes arrive: the header line is short, and re-reading it is cheaper than
//! carrying parser state across reads. The buffer must hold exactly one reply:
//! bytes after `END\r\n` mean the connection is out of step with the requests
//! sent on it, and that is an error, never something to skip over.

use core::fmt;
use core::ops::Range;

/// `get ` — the command prefix.
pub const GET: &[u8] = b"get ";
/// Line terminator.
pub const CRLF: &[u8] = b"\r\n";
/// What follows the value bytes of a `VALUE` reply.
pub const TRAILER: &[u8] = b"\r\nEND\r\n";
/// Longest acceptable header line, CRLF included. The longest valid one is
/// `VALUE <250-byte key> <u32> <u64> <u64>\r\n` = 311 bytes.
pub const MAX_LINE: usize = 512;

/// The header line of a `VALUE` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueHeader {
    /// The client flags stored with the value.
    pub flags: u32,
    /// Length of the value in bytes.
    pub len: usize,
    /// Length of the header line, CRLF included.
    pub line_len: usize,
}

impl ValueHeader {
    /// Size of the whole reply: header line, value, `\r\nEND\r\n`.
    pub fn reply_len(&self) -> Option<usize> {
        self.line_len
            .checked_add(self.len)?
            .checked_add(TRAILER.len())
    }

    /// Where the value bytes are in the reply.
    pub fn value_range(&self) -> Range<usize> {
        self.line_len..self.line_len + self.len
    }
}

/// What the bytes received so far amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// The header line has not fully arrived.
    NeedLine,
    /// The header line says a value follows; `reply_len` bytes in all are
    /// expected.
    NeedValue {
        header: ValueHeader,
        reply_len: usize,
    },
    /// `END`: the key is not stored.
    Miss,
    /// The whole reply is here and well formed.
    Hit(ValueHeader),
}

/// A reply that is not what a `get` of our key must produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// memcached answered `ERROR`, `CLIENT_ERROR ...` or `SERVER_ERROR ...`.
    ErrorReply(String),
    /// A line that is no reply to `get`.
    Malformed(String),
    /// No line end within [`MAX_LINE`] bytes.
    LineTooLong,
    /// `VALUE` for another key than the one asked for.
    WrongKey(String),
    /// Flags that are not a 32-bit decimal number.
    BadFlags(String),
    /// A value length that is not a decimal number.
    BadLength(String),
    /// The value is not followed by `\r\nEND\r\n`.
    BadTrailer,
    /// Bytes after the end of the reply.
    TrailingData(usize),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ErrorReply(line) => write!(f, "memcached answered \"{line}\""),
            Self::Malformed(line) => write!(f, "memcached sent invalid reply \"{line}\""),
            Self::LineTooLong => write!(
                f,
                "memcached sent a reply line longer than {MAX_LINE} bytes"
            ),
            Self::WrongKey(line) => write!(f, "memcached sent a value for another key: \"{line}\""),
            Self::BadFlags(line) => write!(f, "memcached sent invalid flags in \"{line}\""),
            Self::BadLength(line) => write!(f, "memcached sent invalid length in \"{line}\""),
            Self::BadTrailer => write!(f, "memcached sent a value not followed by END"),
            Self::TrailingData(n) => {
                write!(f, "memcached sent {n} unexpected bytes after the reply")
            }
        }
    }
}

/// Parses `buf`, everything received for `get <key>` so far.
pub fn parse_reply(buf: &[u8], key: &[u8]) -> Result<Parsed, ProtocolError> {
    let Some(lf) = find_lf(&buf[..buf.len().min(MAX_LINE)]) else {
        if buf.len() >= MAX_LINE {
            return Err(ProtocolError::LineTooLong);
        }
        return Ok(Parsed::NeedLine);
    };
    let line_len = lf + 1;
    let Some(line) = buf[..lf].strip_suffix(b"\r") else {
        return Err(ProtocolError::Malformed(printable(&buf[..lf])));
    };

    if let Some(rest) = line.strip_prefix(b"VALUE ") {
        let header = parse_value_line(line, rest, key, line_len)?;
        let reply_len = header
            .reply_len()
            .ok_or_else(|| ProtocolError::BadLength(printable(line)))?;
        return match buf.len() {
            n if n < reply_len => Ok(Parsed::NeedValue { header, reply_len }),
            n if n > reply_len => Err(ProtocolError::TrailingData(n - reply_len)),
            _ if &buf[header.value_range().end..] != TRAILER => Err(ProtocolError::BadTrailer),
            _ => Ok(Parsed::Hit(header)),
        };
    }

    if line == b"END" {
        return match buf.len() - line_len {
            0 => Ok(Parsed::Miss),
            extra => Err(ProtocolError::TrailingData(extra)),
        };
    }

    if line == b"ERROR" || line.starts_with(b"CLIENT_ERROR") || line.starts_with(b"SERVER_ERROR") {
        return Err(ProtocolError::ErrorReply(printable(line)));
    }

    Err(ProtocolError::Malformed(printable(line)))
}

/// Parses the rest of a `VALUE` reply whose first value bytes were set aside
/// (a value larger than the first read): `rest` is everything received since,
/// `missing` the number of value bytes still expected before `trailer`
/// (`\r\nEND\r\n` after `get`, `\r\n` after `mg`).
/// `Ok(true)` once the reply is complete and well formed.
pub fn parse_value_rest(
    rest: &[u8],
    missing: usize,
    trailer: &[u8],
) -> Result<bool, ProtocolError> {
    let expected = missing + trailer.len();
    match rest.len() {
        n if n < expected => Ok(false),
        n if n > expected => Err(ProtocolError::TrailingData(n - expected)),
        _ if &rest[missing..] != trailer => Err(ProtocolError::BadTrailer),
        _ => Ok(true),
    }
}

/// Where the first `\n` of `buf` is. Eight bytes at a time: every reply's
/// header line is searched, and a byte-at-a-time loop cost more than the rest
/// of the parse (measured with callgrind).
fn find_lf(buf: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    const LFS: u64 = u64::from_le_bytes([b'\n'; 8]);
    let words = buf.chunks_exact(8);
    let rest = words.remainder();
    for (i, word) in words.enumerate() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        // A byte of `x` is zero where the byte of `buf` is `\n`; the lowest
        // byte flagged by the classic zero-byte test is always a true one.
        let x = u64::from_le_bytes(bytes) ^ LFS;
        let zero = x.wrapping_sub(ONES) & !x & HIGHS;
        if zero != 0 {
            return Some(i * 8 + (zero.trailing_zeros() / 8) as usize);
        }
    }
    let tail = buf.len() - rest.len();
    rest.iter().position(|&b| b == b'\n').map(|i| tail + i)
}

/// `VALUE <key> <flags> <bytes>[ <cas>]`; `rest` is what follows `VALUE `.
fn parse_value_line(
    line: &[u8],
    rest: &[u8],
    key: &[u8],
    line_len: usize,
) -> Result<ValueHeader, ProtocolError> {
    let mut fields = rest.split(|&b| b == b' ');
    let (Some(got_key), Some(flags), Some(len), cas, None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProtocolError::Malformed(printable(line)));
    };
    if got_key != key {
        return Err(ProtocolError::WrongKey(printable(line)));
    }
    let flags = parse_decimal(flags)
        .and_then(|f| u32::try_from(f).ok())
        .ok_or_else(|| ProtocolError::BadFlags(printable(line)))?;
    let len = parse_decimal(len)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| ProtocolError::BadLength(printable(line)))?;
    if cas.is_some_and(|c| parse_decimal(c).is_none()) {
        return Err(ProtocolError::Malformed(printable(line)));
    }
    Ok(ValueHeader {
        flags,
        len,
        line_len,
    })
}

/// A non-empty run of ASCII digits that fits in a u64.
pub fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The one-line reply to a `set` or `delete`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineReply {
    /// `STORED`
    Stored,
    /// `NOT_STORED`
    NotStored,
    /// `DELETED`
    Deleted,
    /// `NOT_FOUND`
    NotFound,
}

/// Parses the reply to a `set` or `delete`: `None` until the line is complete.
pub fn parse_line_reply(buf: &[u8]) -> Result<Option<LineReply>, ProtocolError> {
    let Some(lf) = find_lf(&buf[..buf.len().min(MAX_LINE)]) else {
        if buf.len() >= MAX_LINE {
            return Err(ProtocolError::LineTooLong);
        }
        return Ok(None);
    };
    let Some(line) = buf[..lf].strip_suffix(b"\r") else {
        return Err(ProtocolError::Malformed(printable(&buf[..lf])));
    };
    if buf.len() > lf + 1 {
        return Err(ProtocolError::TrailingData(buf.len() - lf - 1));
    }
    match line {
        b"STORED" => Ok(Some(LineReply::Stored)),
        b"NOT_STORED" => Ok(Some(LineReply::NotStored)),
        b"DELETED" => Ok(Some(LineReply::Deleted)),
        b"NOT_FOUND" => Ok(Some(LineReply::NotFound)),
        _ if line == b"ERROR"
            || line.starts_with(b"CLIENT_ERROR")
            || line.starts_with(b"SERVER_ERROR") =>
        {
            Err(ProtocolError::ErrorReply(printable(line)))
        }
        _ => Err(ProtocolError::Malformed(printable(line))),
    }
}

/// `add <key> <flags> <exptime> <bytes>\r\n` for a value of `len` bytes (the value
/// and its `\r\n` follow). `add` stores only if the key is absent: a page the
/// application wrote meanwhile is never overwritten.
pub fn add_command(key: &[u8], flags: u32, exptime: u64, len: usize) -> Vec<u8> {
    let mut cmd = Vec::with_capacity(key.len() + 48);
    cmd.extend_from_slice(b"add ");
    cmd.extend_from_slice(key);
    cmd.extend_from_slice(format!(" {flags} {exptime} {len}\r\n").as_bytes());
    cmd
}

/// `delete ` — the command prefix of a purge.
pub const DELETE: &[u8] = b"delete ";

/// A log-safe rendering of a protocol line: at most 128 bytes, non-printable
/// bytes as `\xNN`.
pub fn printable(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes.iter().take(128) {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    if bytes.len() > 128 {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"/about/";

    fn value_reply(key: &[u8], flags: u32, value: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "VALUE {} {flags} {}\r\n",
            String::from_utf8_lossy(key),
            value.len()
        )
        .into_bytes();
        r.extend_from_slice(value);
        r.extend_from_slice(TRAILER);
        r
    }

    #[test]
    fn a_whole_value_is_a_hit() {
        let reply = value_reply(KEY, 16, b"<html>hi</html>");
        let Ok(Parsed::Hit(h)) = parse_reply(&reply, KEY) else {
            panic!("not a hit: {:?}", parse_reply(&reply, KEY));
        };
        assert_eq!(h.flags, 16);
        assert_eq!(&reply[h.value_range()], b"<html>hi</html>");
        assert_eq!(h.reply_len(), Some(reply.len()));
    }

    #[test]
    fn empty_value_and_value_containing_end_lines() {
        let empty = value_reply(KEY, 0, b"");
        assert!(matches!(parse_reply(&empty, KEY), Ok(Parsed::Hit(h)) if h.len == 0));

        let tricky = b"x\r\nEND\r\nVALUE /about/ 0 3\r\nabc\r\nEND\r\n";
        let reply = value_reply(KEY, 0, tricky);
        let Ok(Parsed::Hit(h)) = parse_reply(&reply, KEY) else {
            panic!()
        };
        assert_eq!(&reply[h.value_range()], tricky);
    }

    #[test]
    fn find_lf_agrees_with_a_plain_search() {
        // Every length up to 40 and every position, with bytes around `\n` that
        // would trip a sloppy word-at-a-time test (0x0b, 0x09, 0x8a, 0x00).
        for len in 0..40 {
            for fill in [b'a', 0x0b, 0x09, 0x8a, 0x00, 0xff] {
                let mut buf = vec![fill; len];
                assert_eq!(find_lf(&buf), None, "len {len} fill {fill}");
                for at in 0..len {
                    buf.fill(fill);
                    buf[at] = b'\n';
                    if at + 1 < len {
                        buf[at + 1] = b'\n';
                    }
                    assert_eq!(find_lf(&buf), Some(at), "len {len} fill {fill} at {at}");
                }
            }
        }
    }

    #[test]
    fn end_is_a_miss() {
        assert_eq!(parse_reply(b"END\r\n", KEY), Ok(Parsed::Miss));
    }

    #[test]
    fn the_rest_of_a_set_aside_value_is_complete_only_with_its_trailer() {
        let value: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let reply = value_reply(KEY, 0, &value);
        let h = match parse_reply(&reply[..1000], KEY) {
            Ok(Parsed::NeedValue { header, .. }) => header,
            other => panic!("{other:?}"),
        };
        // The first 1000 bytes were received; the value bytes among them set aside.
        let missing = h.len - (1000 - h.line_len);
        let rest = &reply[1000..];
        for cut in 0..rest.len() {
            assert_eq!(
                parse_value_rest(&rest[..cut], missing, TRAILER),
                Ok(false),
                "cut {cut}"
            );
        }
        assert_eq!(parse_value_rest(rest, missing, TRAILER), Ok(true));
        assert_eq!(&rest[..missing], &value[value.len() - missing..]);

        let mut extra = rest.to_vec();
        extra.extend_from_slice(b"END\r\n");
        assert_eq!(
            parse_value_rest(&extra, missing, TRAILER),
            Err(ProtocolError::TrailingData(5))
        );
        let mut bad = rest.to_vec();
        let n = bad.len();
        bad[n - 3] = b'X';
        assert_eq!(
            parse_value_rest(&bad, missing, TRAILER),
            Err(ProtocolError::BadTrailer)
        );
        // Nothing set aside: the whole value is in the rest.
        assert_eq!(parse_value_rest(b"abc\r\nEND\r\n", 3, TRAILER), Ok(true));
        assert_eq!(parse_value_rest(b"\r\nEND\r\n", 0, TRAILER), Ok(true));
    }

    #[test]
    fn every_split_point_of_a_hit_is_incomplete_until_the_last_byte() {
        let value: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let reply = value_reply(KEY, 0, &value);
        for cut in 0..reply.len() {
            match parse_reply(&reply[..cut], KEY) {
                Ok(Parsed::NeedLine) | Ok(Parsed::NeedValue { .. }) => {}
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        assert!(matches!(parse_reply(&reply, KEY), Ok(Parsed::Hit(_))));
    }

    #[test]
    fn the_expected_length_is_known_as_soon_as_the_header_line_is() {
        let reply = value_reply(KEY, 0, &[b'x'; 100_000]);
        let line_len = reply.iter().position(|&b| b == b'\n').unwrap() + 1;
        for cut in line_len..reply.len() {
            assert_eq!(
                parse_reply(&reply[..cut], KEY),
                Ok(Parsed::NeedValue {
                    header: ValueHeader {
                        flags: 0,
                        len: 100_000,
                        line_len
                    },
                    reply_len: reply.len()
                }),
                "cut at {cut}"
            );
            if cut > line_len + 10 {
                break;
            }
        }
        assert_eq!(
            parse_reply(&reply[..line_len - 1], KEY),
            Ok(Parsed::NeedLine)
        );
    }

    #[test]
    fn every_split_point_of_a_miss_is_incomplete() {
        for cut in 0..5 {
            assert_eq!(
                parse_reply(&b"END\r\n"[..cut], KEY),
                Ok(Parsed::NeedLine),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn bytes_after_the_reply_are_an_error() {
        let mut hit = value_reply(KEY, 0, b"abc");
        hit.extend_from_slice(b"END\r\n");
        assert_eq!(parse_reply(&hit, KEY), Err(ProtocolError::TrailingData(5)));
        assert_eq!(
            parse_reply(b"END\r\nVALUE", KEY),
            Err(ProtocolError::TrailingData(5))
        );
    }

    #[test]
    fn a_value_not_followed_by_end_is_an_error() {
        // The server claims 3 bytes but sends 5 before END: the trailer is wrong.
        let reply = b"VALUE /about/ 0 3\r\nabcde\r\nEND\r\n";
        assert_eq!(
            parse_reply(&reply[..reply.len() - 2], KEY),
            Err(ProtocolError::BadTrailer)
        );
    }

    #[test]
    fn a_value_for_another_key_is_an_error() {
        let reply = value_reply(b"/other/", 0, b"abc");
        assert!(matches!(
            parse_reply(&reply, KEY),
            Err(ProtocolError::WrongKey(_))
        ));
        // A key that merely starts with ours is another key too.
        let reply = value_reply(b"/about/x", 0, b"abc");
        assert!(matches!(
            parse_reply(&reply, KEY),
            Err(ProtocolError::WrongKey(_))
        ));
    }

    #[test]
    fn server_errors_are_errors() {
        for line in [
            &b"ERROR\r\n"[..],
            b"SERVER_ERROR out of memory\r\n",
            b"CLIENT_ERROR bad\r\n",
        ] {
            assert!(
                matches!(parse_reply(line, KEY), Err(ProtocolError::ErrorReply(_))),
                "{line:?}"
            );
        }
    }

    #[test]
    fn malformed_header_lines_are_errors() {
        let cases: &[&[u8]] = &[
            b"VALUE /about/ 0\r\n",
            b"VALUE /about/ x 3\r\n",
            b"VALUE /about/ 4294967296 3\r\n",
            b"VALUE /about/ 0 -3\r\n",
            b"VALUE /about/ 0 3x\r\n",
            b"VALUE /about/ 0 99999999999999999999999\r\n",
            b"VALUE /about/  0 3\r\n",
            b"VALUE /about/ 0 3 12 extra\r\n",
            b"VALUE /about/ 0 3 cas\r\n",
            b"VALUE /about/ 0 3\n",
            b"END\n",
            b"\r\n",
            b"HTTP/1.1 200 OK\r\n",
            b"STORED\r\n",
            b"\x00\x01\x02\r\n",
        ];
        for &line in cases {
            assert!(
                parse_reply(line, KEY).is_err(),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn a_cas_field_is_tolerated() {
        let reply = b"VALUE /about/ 0 3 42\r\nabc\r\nEND\r\n";
        assert!(matches!(parse_reply(reply, KEY), Ok(Parsed::Hit(h)) if h.len == 3));
    }

    #[test]
    fn a_huge_length_does_not_overflow() {
        let line = format!("VALUE /about/ 0 {}\r\n", usize::MAX);
        assert!(matches!(
            parse_reply(line.as_bytes(), KEY),
            Err(ProtocolError::BadLength(_))
        ));
    }

    #[test]
    fn garbage_without_a_line_end_is_bounded() {
        assert_eq!(
            parse_reply(&[b'x'; MAX_LINE - 1], KEY),
            Ok(Parsed::NeedLine)
        );
        assert_eq!(
            parse_reply(&[b'x'; MAX_LINE], KEY),
            Err(ProtocolError::LineTooLong)
        );
        assert_eq!(
            parse_reply(&[b'x'; 4096], KEY),
            Err(ProtocolError::LineTooLong)
        );
    }

    #[test]
    fn the_longest_valid_header_line_fits() {
        let key = vec![b'k'; 250];
        let line = format!(
            "VALUE {} {} {} {}\r\n",
            String::from_utf8_lossy(&key),
            u32::MAX,
            u64::MAX,
            u64::MAX
        );
        assert!(line.len() <= MAX_LINE);
        // The length is absurd, but the line is parsed, not rejected as too long.
        assert!(!matches!(
            parse_reply(line.as_bytes(), &key),
            Err(ProtocolError::LineTooLong)
        ));
    }

    #[test]
    fn one_line_replies() {
        assert_eq!(parse_line_reply(b"STORED\r\n"), Ok(Some(LineReply::Stored)));
        assert_eq!(
            parse_line_reply(b"NOT_STORED\r\n"),
            Ok(Some(LineReply::NotStored))
        );
        assert_eq!(
            parse_line_reply(b"DELETED\r\n"),
            Ok(Some(LineReply::Deleted))
        );
        assert_eq!(
            parse_line_reply(b"NOT_FOUND\r\n"),
            Ok(Some(LineReply::NotFound))
        );
        for cut in 0..b"STORED\r\n".len() {
            assert_eq!(
                parse_line_reply(&b"STORED\r\n"[..cut]),
                Ok(None),
                "cut {cut}"
            );
        }
        assert!(matches!(
            parse_line_reply(b"SERVER_ERROR out of memory storing object\r\n"),
            Err(ProtocolError::ErrorReply(_))
        ));
        assert!(matches!(
            parse_line_reply(b"STORED\r\nX"),
            Err(ProtocolError::TrailingData(1))
        ));
        assert!(parse_line_reply(b"VALUE x 0 1\r\n").is_err());
        assert!(parse_line_reply(b"STORED\n").is_err());
    }

    #[test]
    fn add_command_line() {
        assert_eq!(
            add_command(b"/p", 16777216, 300, 5),
            b"add /p 16777216 300 5\r\n"
        );
    }

    #[test]
    fn errors_render_control_bytes_safely() {
        let err = parse_reply(b"\x1b[31mevil\"\r\n", KEY).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\\x1b[31mevil\\x22"), "{text}");
    }
}
