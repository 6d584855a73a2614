//! The format of pages rcache stores in memcached (`rcache_store`).
//!
//! A stored page carries the few response headers that make it the same response again,
//! in front of the body:
//!
//! ```text
//! RCACHE/1\r\n
//! Status: 404\r\n                          (only when not 200)
//! Content-Type: text/html; charset=utf-8\r\n
//! Content-Encoding: gzip\r\n
//! \r\n
//! <body>
//! ```
//!
//! and is marked with the flag bit [`STORED_FLAG`], so that values applications write
//! themselves (flags 0 or 16) are still served as raw bytes.

/// The memcached flag bit of pages rcache stored: bit 24 (16777216).
pub const STORED_FLAG: u32 = 1 << 24;

/// The flag of rcache's hit-for-pass marker (`rcache_hit_for_pass`): an empty value that
/// says "this page's response is not cacheable: go straight to the app".
pub const PASS_FLAG: u32 = 1 << 25;

const MAGIC: &[u8] = b"RCACHE/1\r\n";

/// The response headers a stored page keeps, in the case they are written back: what
/// makes it the same response, and the security headers frameworks send with every page
/// (Django's SecurityMiddleware and XFrameOptionsMiddleware, Rails' defaults), whose loss
/// would drop a site's clickjacking or sniffing protection on every HIT.
pub const KEPT_HEADERS: &[&str] = &[
    "Location",
    "Content-Type",
    "Content-Encoding",
    "Content-Language",
    "Cache-Control",
    "ETag",
    "Last-Modified",
    "Link",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "Referrer-Policy",
    "Content-Security-Policy",
    "Cross-Origin-Opener-Policy",
    "Permissions-Policy",
    "Strict-Transport-Security",
];

/// The kept header named `name` (any case), as it is written back.
pub fn kept_header(name: &[u8]) -> Option<&'static str> {
    KEPT_HEADERS
        .iter()
        .copied()
        .find(|h| h.as_bytes().eq_ignore_ascii_case(name))
}

/// Appends the stored form of a page with `status` to `out`. Headers not in
/// [`KEPT_HEADERS`], and values with a line break, are left out.
pub fn encode(status: u16, headers: &[(&[u8], &[u8])], body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(MAGIC);
    if status != 200 {
        out.extend_from_slice(format!("Status: {status}\r\n").as_bytes());
    }
    for &(name, value) in headers {
        let Some(name) = kept_header(name) else {
            continue;
        };
        if value.iter().any(|&b| b == b'\r' || b == b'\n') {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Size of the stored form, to allocate once.
pub fn encoded_len(status: u16, headers: &[(&[u8], &[u8])], body: &[u8]) -> usize {
    let mut n = MAGIC.len() + 2 + body.len();
    if status != 200 {
        n += format!("Status: {status}\r\n").len();
    }
    for &(name, value) in headers {
        if kept_header(name).is_some() && !value.iter().any(|&b| b == b'\r' || b == b'\n') {
            n += name.len() + 2 + value.len() + 2;
        }
    }
    n
}

/// A stored page, read back.
#[derive(Debug, PartialEq, Eq)]
pub struct Page<'a> {
    pub status: u16,
    pub headers: Vec<(&'static str, &'a [u8])>,
    pub body: &'a [u8],
}

/// Reads a value stored with [`STORED_FLAG`]; `None` if it is not in the stored form.
pub fn decode(value: &[u8]) -> Option<Page<'_>> {
    let mut rest = value.strip_prefix(MAGIC)?;
    let mut status = 200;
    let mut headers = Vec::new();
    loop {
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        let line = &rest[..end];
        rest = &rest[end + 2..];
        if line.is_empty() {
            return Some(Page {
                status,
                headers,
                body: rest,
            });
        }
        let colon = line.iter().position(|&b| b == b':')?;
        let value = line[colon + 1..]
            .strip_prefix(b" ")
            .unwrap_or(&line[colon + 1..]);
        // A value from memcached is not trusted: a bare LF or CR (or any control byte)
        // would go into the response headers as it is.
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return None;
        }
        if &line[..colon] == b"Status" {
            status = core::str::from_utf8(value).ok()?.parse().ok()?;
            if !(200..=599).contains(&status) {
                return None;
            }
            continue;
        }
        headers.push((kept_header(&line[..colon])?, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_value_with_a_control_byte_is_not_a_stored_page() {
        for value in [&b"te\nxt/html"[..], b"text/html\r", b"a\0b", b"a\x7fb"] {
            let mut v = b"RCACHE/1\r\nContent-Type: ".to_vec();
            v.extend_from_slice(value);
            v.extend_from_slice(b"\r\n\r\nbody");
            assert!(decode(&v).is_none(), "{value:?}");
        }
        let tab = b"RCACHE/1\r\nContent-Type: text/html;\tcharset=utf-8\r\n\r\nbody";
        assert!(decode(tab).is_some());
    }

    #[test]
    fn round_trip_keeps_the_kept_headers_only() {
        let headers: &[(&[u8], &[u8])] = &[
            (b"content-type", b"text/html; charset=utf-8"),
            (b"Set-Cookie", b"session=1"),
            (b"Content-Encoding", b"gzip"),
            (b"Connection", b"keep-alive"),
            (b"ETag", b"\"abc\""),
            (b"X-Injected", b"a\r\nSet-Cookie: b"),
            (b"Cache-Control", b"bad\r\nvalue"),
            (b"x-frame-options", b"DENY"),
        ];
        let body = b"\x1f\x8b binary \r\n\r\n body";
        let mut out = Vec::new();
        encode(200, headers, body, &mut out);
        assert_eq!(out.len(), encoded_len(200, headers, body));
        let page = decode(&out).unwrap();
        assert_eq!(page.status, 200);
        assert_eq!(
            page.headers,
            vec![
                ("Content-Type", &b"text/html; charset=utf-8"[..]),
                ("Content-Encoding", &b"gzip"[..]),
                ("ETag", &b"\"abc\""[..]),
                ("X-Frame-Options", &b"DENY"[..]),
            ]
        );
        assert_eq!(page.body, body);
    }

    #[test]
    fn an_empty_page() {
        let mut out = Vec::new();
        encode(200, &[], b"", &mut out);
        assert_eq!(out, b"RCACHE/1\r\n\r\n");
        assert_eq!(
            decode(&out),
            Some(Page {
                status: 200,
                headers: vec![],
                body: b""
            })
        );
    }

    #[test]
    fn other_statuses_and_redirects_keep_their_status_and_location() {
        let headers: &[(&[u8], &[u8])] = &[(b"Location", b"/new/")];
        let mut out = Vec::new();
        encode(301, headers, b"moved", &mut out);
        assert_eq!(out.len(), encoded_len(301, headers, b"moved"));
        assert!(out.starts_with(b"RCACHE/1\r\nStatus: 301\r\nLocation: /new/\r\n\r\n"));
        let page = decode(&out).unwrap();
        assert_eq!(page.status, 301);
        assert_eq!(page.headers, vec![("Location", &b"/new/"[..])]);
        assert_eq!(decode(b"RCACHE/1\r\nStatus: 99\r\n\r\n"), None);
        assert_eq!(decode(b"RCACHE/1\r\nStatus: abc\r\n\r\n"), None);
    }

    #[test]
    fn values_not_in_the_stored_form_are_refused() {
        assert_eq!(decode(b"<html>raw page</html>"), None);
        assert_eq!(decode(b"RCACHE/1\r\nContent-Type: text/html\r\n"), None);
        assert_eq!(decode(b"RCACHE/1\r\nSet-Cookie: x\r\n\r\nbody"), None);
        assert_eq!(decode(b"RCACHE/1\r\nno colon\r\n\r\nbody"), None);
        assert_eq!(decode(b"RCACHE/2\r\n\r\nbody"), None);
    }

    #[test]
    fn the_flag_is_outside_what_clients_use() {
        // pymemcache/pylibmc/python-memcached use the low bits (pickle 1, int 2, long 4,
        // zlib 8, text 16).
        assert_eq!(STORED_FLAG, 16_777_216);
        assert_eq!(STORED_FLAG & 0xff, 0);
    }
}
