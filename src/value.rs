//! A value as read from memcached: in one piece, or in two when it was larger
//! than the first read (`upstream.rs` then reads the rest into a second buffer
//! instead of copying what it already has into a bigger one). A plain page is
//! sent as is, one buffer per piece; only the paths that need one slice (a
//! stored page's headers, gunzip, multipart ranges) join the pieces.

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
