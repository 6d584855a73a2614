//! Memcached keys: escaping and the length limit.
//!
//! Keys are escaped exactly as stock nginx escapes `$memcached_key`
//! (`ngx_escape_uri(..., NGX_ESCAPE_MEMCACHED)`): control bytes 0x00-0x1f,
//! space and `%` become `%XX` (upper-case hex). Every other byte is sent as is,
//! so deployments that already write keys for `memcached_pass` keep their keys.
//! After escaping, no key byte can end a text-protocol command line (CR, LF) or
//! split it into more tokens (space), so nothing from the URL can inject a
//! command.

/// Longest key memcached accepts in the text protocol.
pub const MAX_KEY_LEN: usize = 250;

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Whether `byte` is escaped in a memcached key.
#[inline]
pub fn needs_escape(byte: u8) -> bool {
    byte <= b' ' || byte == b'%'
}

/// Length of `raw` once escaped.
pub fn escaped_len(raw: &[u8]) -> usize {
    raw.len() + 2 * raw.iter().filter(|&&b| needs_escape(b)).count()
}

/// Writes `raw`, escaped, to `out`, which must be exactly `escaped_len(raw)`
/// bytes (the caller has that length already: it checks it against
/// [`MAX_KEY_LEN`]). Returns the number of bytes written.
pub fn write_escaped(raw: &[u8], out: &mut [u8]) -> usize {
    if out.len() == raw.len() {
        // The usual key: nothing to escape.
        out.copy_from_slice(raw);
        return raw.len();
    }
    let mut n = 0;
    for &b in raw {
        if needs_escape(b) {
            out[n] = b'%';
            out[n + 1] = HEX[usize::from(b >> 4)];
            out[n + 2] = HEX[usize::from(b & 0x0f)];
            n += 3;
        } else {
            out[n] = b;
            n += 1;
        }
    }
    n
}

/// Escapes `raw` into a new vector.
#[cfg(test)]
fn escape(raw: &[u8]) -> Vec<u8> {
    let mut out = vec![0; escaped_len(raw)];
    let n = write_escaped(raw, &mut out);
    debug_assert_eq!(n, out.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_keys_are_unchanged() {
        assert_eq!(escape(b"/about/"), b"/about/");
        assert_eq!(
            escape(b".\xc3\xa9t\xc3\xa9?x=1&y=~"),
            b".\xc3\xa9t\xc3\xa9?x=1&y=~"
        );
        assert_eq!(escape(b""), b"");
    }

    #[test]
    fn space_percent_and_controls_are_escaped_like_stock_nginx() {
        assert_eq!(escape(b"/a b"), b"/a%20b");
        assert_eq!(escape(b"/100%"), b"/100%25");
        assert_eq!(
            escape(b"/x\r\nset y 0 0 1\r\n"),
            b"/x%0D%0Aset%20y%200%200%201%0D%0A"
        );
        assert_eq!(escape(b"\x00\x1f\x7f"), b"%00%1F\x7f");
    }

    #[test]
    fn matches_the_nginx_memcached_table_for_every_byte() {
        // ngx_string.c, ngx_escape_uri(): the "memcached" bitmap escapes
        // 0x00-0x1f (word 0 = 0xffffffff) and ' ', '%' (word 1 = 0x00000021).
        let table: [u32; 8] = [0xffff_ffff, 0x0000_0021, 0, 0, 0, 0, 0, 0];
        for b in 0..=255u8 {
            let stock = table[usize::from(b >> 5)] & (1 << (b & 0x1f)) != 0;
            assert_eq!(needs_escape(b), stock, "byte {b:#04x}");
        }
    }

    #[test]
    fn escaped_keys_never_contain_protocol_delimiters() {
        let raw: Vec<u8> = (0..=255u8).collect();
        let key = escape(&raw);
        assert_eq!(key.len(), escaped_len(&raw));
        assert!(!key
            .iter()
            .any(|&b| b == b' ' || b == b'\r' || b == b'\n' || b == 0));
    }

    #[test]
    fn length_is_measured_after_escaping() {
        let raw = vec![b' '; 84];
        assert_eq!(escaped_len(&raw), 252);
        assert!(escaped_len(&raw) > MAX_KEY_LEN);
        assert!(escaped_len(&[b'a'; MAX_KEY_LEN]) <= MAX_KEY_LEN);
    }
}
