//! A value as read from memcached: in one piece, or in two when it was larger
//! than the first read (`upstream.rs` then reads the rest into a second buffer
//! instead of copying what it already has into a bigger one). A plain page is
//! sent as is, one buffer per piece; only the paths that need one slice (a
//! stored page's headers, gunzip, multipart ranges) join the pieces.
//!
//! Which values are pages at all is decided by their flags ([`is_page`]).

use crate::store::page::STORED_FLAG;

/// Flags of values that are pages: 0 or 16 (raw bytes / UTF-8 text as
/// pymemcache and pylibmc store `bytes` and `str`), plus the gzip bits; or a
/// page rcache stored itself (`STORED_FLAG`).
pub fn is_page(flags: u32, gzip_mask: u32) -> bool {
    flags == STORED_FLAG || matches!(flags & !gzip_mask, 0 | 16)
}

/// The bytes of a value, in at most two pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Value<'a> {
    head: &'a [u8],
    tail: &'a [u8],
}

impl<'a> Value<'a> {
    /// A value in one piece.
    pub fn whole(bytes: &'a [u8]) -> Self {
        Self {
            head: bytes,
            tail: &[],
        }
    }

    /// A value whose first bytes are `head` and the rest `tail`.
    pub fn split(head: &'a [u8], tail: &'a [u8]) -> Self {
        Self { head, tail }
    }

    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// The value as one slice, if it is in one piece.
    pub fn as_slice(&self) -> Option<&'a [u8]> {
        match (self.head.is_empty(), self.tail.is_empty()) {
            (_, true) => Some(self.head),
            (true, false) => Some(self.tail),
            (false, false) => None,
        }
    }

    /// The non-empty pieces, in order.
    pub fn pieces(&self) -> impl Iterator<Item = &'a [u8]> {
        [self.head, self.tail].into_iter().filter(|p| !p.is_empty())
    }

    /// Copies the value into `out`, which must be exactly [`len`](Self::len) bytes.
    pub fn copy_to(&self, out: &mut [u8]) {
        let (head, tail) = out.split_at_mut(self.head.len());
        head.copy_from_slice(self.head);
        tail.copy_from_slice(self.tail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_flags_0_and_16() {
        assert!(is_page(0, 0));
        assert!(is_page(16, 0));
        for other in [1, 2, 4, 8, 17, 32, 1 << 31, 3] {
            assert!(!is_page(other, 0), "{other}");
        }
    }

    #[test]
    fn pages_rcache_stored() {
        assert!(is_page(STORED_FLAG, 0));
        assert!(!is_page(STORED_FLAG | 1, 0));
        assert!(!is_page(STORED_FLAG | 2, 2));
    }

    #[test]
    fn gzip_bits_are_allowed_on_top() {
        assert!(is_page(2, 2));
        assert!(is_page(2 | 16, 2));
        assert!(!is_page(2 | 1, 2));
        assert!(!is_page(2, 4));
    }

    #[test]
    fn one_piece_is_a_slice_two_are_not() {
        let v = Value::whole(b"abc");
        assert_eq!(v.as_slice(), Some(&b"abc"[..]));
        assert_eq!(v.pieces().collect::<Vec<_>>(), [b"abc"]);

        let v = Value::split(b"", b"abc");
        assert_eq!(v.as_slice(), Some(&b"abc"[..]));
        assert_eq!(v.pieces().count(), 1);

        let v = Value::split(b"ab", b"cde");
        assert_eq!(v.as_slice(), None);
        assert_eq!(v.len(), 5);
        assert_eq!(v.pieces().collect::<Vec<_>>(), [&b"ab"[..], &b"cde"[..]]);
        let mut out = [0u8; 5];
        v.copy_to(&mut out);
        assert_eq!(&out, b"abcde");

        let empty = Value::whole(b"");
        assert_eq!(empty.len(), 0);
        assert_eq!(empty.pieces().count(), 0);
        assert_eq!(empty.as_slice(), Some(&b""[..]));
    }
}
