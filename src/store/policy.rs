//! Which responses `rcache_store` keeps, and for how long.
//!
//! Cacheable by default: a GET without a query string (unless `rcache_store_args on`),
//! not excluded by `rcache_store_bypass`, answered with a status of
//! `rcache_store_statuses` (200), without `Set-Cookie`, without `Cache-Control: private`,
//! `no-store` or `no-cache`, without a `Vary` other than `Accept-Encoding` (rcache's key
//! does not vary with request headers), with no content coding or gzip, and a body of at
//! most `rcache_store_max_size`.
//!
//! TTL: `X-Accel-Expires` (seconds, or `@` + a Unix time), else `Cache-Control:
//! s-maxage`, else `max-age`, else `rcache_store_ttl`. A TTL of 0 means not stored.

use core::fmt;

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Method,
    QueryString,
    Bypass,
    Status,
    SetCookie,
    CacheControl,
    Vary,
    ContentEncoding,
    ZeroTtl,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Method => "not a GET",
            Reason::QueryString => "the request has a query string",
            Reason::Bypass => "rcache_store_bypass",
            Reason::Status => "status not in rcache_store_statuses",
            Reason::SetCookie => "Set-Cookie",
            Reason::CacheControl => "Cache-Control private, no-store or no-cache",
            Reason::Vary => "Vary other than Accept-Encoding",
            Reason::ContentEncoding => "a content coding other than gzip",
            Reason::ZeroTtl => "a TTL of 0",
        })
    }
}

/// What the response says about caching.
#[derive(Debug, Default)]
pub struct Response<'a> {
    pub status: u16,
    pub set_cookie: bool,
    /// Every `Cache-Control` header value.
    pub cache_control: Vec<&'a [u8]>,
    /// Every `Vary` header value.
    pub vary: Vec<&'a [u8]>,
    pub x_accel_expires: Option<&'a [u8]>,
    pub content_encoding: Option<&'a [u8]>,
}

/// How long to keep a cacheable response, in seconds, or why not to keep it.
pub fn decide(
    resp: &Response,
    statuses: &[u16],
    default_ttl: u32,
    now: i64,
) -> Result<u32, Reason> {
    if !statuses.contains(&resp.status) {
        return Err(Reason::Status);
    }
    if resp.set_cookie {
        return Err(Reason::SetCookie);
    }
    let directives: Vec<(String, Option<&[u8]>)> = resp
        .cache_control
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .filter_map(directive)
        .collect();
    if directives
        .iter()
        .any(|(name, _)| matches!(name.as_str(), "private" | "no-store" | "no-cache"))
    {
        return Err(Reason::CacheControl);
    }
    let varies_otherwise = resp
        .vary
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(trim)
        .any(|f| !f.is_empty() && !f.eq_ignore_ascii_case(b"accept-encoding"));
    if varies_otherwise {
        return Err(Reason::Vary);
    }
    if let Some(ce) = resp.content_encoding {
        let ce = trim(ce);
        if !ce.is_empty()
            && !ce.eq_ignore_ascii_case(b"gzip")
            && !ce.eq_ignore_ascii_case(b"identity")
        {
            return Err(Reason::ContentEncoding);
        }
    }

    let ttl = if let Some(xae) = resp.x_accel_expires {
        x_accel_expires(trim(xae), now)
    } else {
        let seconds = |name: &str| {
            directives
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| v.and_then(number))
        };
        seconds("s-maxage").or_else(|| seconds("max-age"))
    }
    .unwrap_or(default_ttl);
    if ttl == 0 {
        return Err(Reason::ZeroTtl);
    }
    Ok(ttl)
}

/// `X-Accel-Expires`: seconds, or `@` and the Unix time it expires at (0 if past);
/// `None` if unreadable (then the other rules apply).
fn x_accel_expires(value: &[u8], now: i64) -> Option<u32> {
    match value.strip_prefix(b"@") {
        Some(at) => {
            let at = i64::from(number(at)?);
            Some(u32::try_from((at - now).max(0)).unwrap_or(u32::MAX))
        }
        None => number(value),
    }
}

/// A `Cache-Control` directive: lower-cased name and its value (quotes removed).
fn directive(part: &[u8]) -> Option<(String, Option<&[u8]>)> {
    let part = trim(part);
    if part.is_empty() {
        return None;
    }
    let (name, value) = match part.iter().position(|&b| b == b'=') {
        Some(eq) => {
            let v = trim(&part[eq + 1..]);
            let v = v
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(v);
            (trim(&part[..eq]), Some(v))
        }
        None => (part, None),
    };
    Some((String::from_utf8_lossy(name).to_ascii_lowercase(), value))
}

/// A non-negative decimal number of seconds, saturated at u32::MAX.
fn number(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u32, |n, &d| {
        n.saturating_mul(10).saturating_add(u32::from(d - b'0'))
    }))
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// memcached's `exptime` for a TTL: seconds up to 30 days, a Unix time beyond (memcached
/// reads larger numbers as absolute times).
pub fn exptime(ttl: u32, now: i64) -> u64 {
    const THIRTY_DAYS: u32 = 60 * 60 * 24 * 30;
    if ttl <= THIRTY_DAYS {
        u64::from(ttl)
    } else {
        (now.max(0) as u64).saturating_add(u64::from(ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn ok() -> Response<'static> {
        Response {
            status: 200,
            ..Default::default()
        }
    }

    fn decide_default(r: &Response) -> Result<u32, Reason> {
        decide(r, &[200], 300, NOW)
    }

    #[test]
    fn a_plain_200_is_stored_for_the_default_ttl() {
        assert_eq!(decide_default(&ok()), Ok(300));
    }

    #[test]
    fn statuses_cookies_and_cache_control_exclude() {
        let mut r = ok();
        r.status = 404;
        assert_eq!(decide_default(&r), Err(Reason::Status));
        assert_eq!(decide(&r, &[200, 404], 300, NOW), Ok(300));

        let mut r = ok();
        r.set_cookie = true;
        assert_eq!(decide_default(&r), Err(Reason::SetCookie));

        for cc in [
            &b"private"[..],
            b"public, no-store",
            b"No-Cache",
            b"max-age=60, private=\"Set-Cookie\"",
        ] {
            let mut r = ok();
            r.cache_control = vec![cc];
            assert_eq!(decide_default(&r), Err(Reason::CacheControl), "{cc:?}");
        }
    }

    #[test]
    fn vary_only_on_accept_encoding() {
        for (vary, result) in [
            (&b"Accept-Encoding"[..], Ok(300)),
            (b"accept-encoding, Accept-Encoding", Ok(300)),
            (b"*", Err(Reason::Vary)),
            (b"Accept-Encoding, Cookie", Err(Reason::Vary)),
            (b"Accept-Language", Err(Reason::Vary)),
        ] {
            let mut r = ok();
            r.vary = vec![vary];
            assert_eq!(decide_default(&r), result, "{vary:?}");
        }
    }

    #[test]
    fn content_codings() {
        for (ce, result) in [
            (&b"gzip"[..], Ok(300)),
            (b"identity", Ok(300)),
            (b"br", Err(Reason::ContentEncoding)),
            (b"deflate", Err(Reason::ContentEncoding)),
        ] {
            let mut r = ok();
            r.content_encoding = Some(ce);
            assert_eq!(decide_default(&r), result, "{ce:?}");
        }
    }

    #[test]
    fn ttl_sources_in_order() {
        let mut r = ok();
        r.cache_control = vec![b"public, max-age=60"];
        assert_eq!(decide_default(&r), Ok(60));
        r.cache_control = vec![b"max-age=60, s-maxage=\"120\""];
        assert_eq!(decide_default(&r), Ok(120), "s-maxage wins");
        r.x_accel_expires = Some(b" 30 ");
        assert_eq!(decide_default(&r), Ok(30), "X-Accel-Expires wins");
        r.x_accel_expires = Some(b"@1800000100");
        assert_eq!(decide_default(&r), Ok(100), "absolute time");
        r.x_accel_expires = Some(b"@1700000000");
        assert_eq!(decide_default(&r), Err(Reason::ZeroTtl), "in the past");
        r.x_accel_expires = Some(b"0");
        assert_eq!(decide_default(&r), Err(Reason::ZeroTtl));
        r.x_accel_expires = Some(b"soon");
        assert_eq!(decide_default(&r), Ok(300), "unreadable: the default");

        let mut r = ok();
        r.cache_control = vec![b"max-age=0"];
        assert_eq!(decide_default(&r), Err(Reason::ZeroTtl));
        r.cache_control = vec![b"max-age=99999999999"];
        assert_eq!(decide_default(&r), Ok(u32::MAX));
    }

    #[test]
    fn long_ttls_become_absolute_exptimes() {
        assert_eq!(exptime(300, NOW), 300);
        assert_eq!(exptime(2_592_000, NOW), 2_592_000);
        assert_eq!(exptime(2_592_001, NOW), NOW as u64 + 2_592_001);
    }
}
