//! Fast access to the C bitfields on rcache's hot path.
//!
//! bindgen's accessors read and write a bitfield one bit at a time: `set_len` of a
//! variable value (28 bits) or `set_count` of a request (16 bits) cost hundreds of
//! instructions each, several times per HIT. A [`Field`] finds where a field lives once,
//! by setting it on a zeroed struct with bindgen's own setter and looking which bits
//! changed, and then reads and writes it with one load and one store. If the place cannot
//! be found that way (a field that spans more than four bytes), the accessors are used.

use std::sync::OnceLock;

use ngx::ffi::*;

/// Where a field lives in its struct: `mask` (shifted by `shift`) over the 32 bits at
/// `byte`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    byte: usize,
    shift: u32,
    mask: u32,
}

impl Field {
    /// The field that `set_all` sets to all ones on a zeroed `T` (plain data).
    fn find<T>(set_all: impl FnOnce(&mut T)) -> Option<Field> {
        // SAFETY: T is a C struct of plain data: all zeroes is a valid value.
        let mut t: Box<T> = Box::new(unsafe { core::mem::zeroed() });
        set_all(&mut t);
        let size = size_of::<T>();
        // SAFETY: the struct's own bytes.
        let bytes =
            unsafe { core::slice::from_raw_parts(core::ptr::from_ref(&*t).cast::<u8>(), size) };
        let first = bytes.iter().position(|&b| b != 0)?;
        let last = bytes.iter().rposition(|&b| b != 0)?;
        let byte = first.min(size.checked_sub(4)?);
        if last >= byte + 4 {
            return None;
        }
        let word = u32::from_le_bytes(bytes[byte..byte + 4].try_into().ok()?);
        let shift = word.trailing_zeros();
        let mask = word >> shift;
        // Contiguous ones: the field itself.
        (mask.count_ones() == 32 - mask.leading_zeros()).then_some(Field { byte, shift, mask })
    }

    fn word<T>(&self, t: *const T) -> *mut u32 {
        // SAFETY (for the callers): `find` checked that the four bytes are inside T.
        t.cast::<u8>()
            .wrapping_add(self.byte)
            .cast::<u32>()
            .cast_mut()
    }

    /// The field's value in `t`.
    pub fn get<T>(&self, t: &T) -> u32 {
        // SAFETY: four bytes inside `t` (see `find`).
        let word = u32::from_le(unsafe { self.word(t).read_unaligned() });
        (word >> self.shift) & self.mask
    }

    /// Sets the field in `t` to `value` (cut to its width); the other bits stay.
    pub fn set<T>(&self, t: &mut T, value: u32) {
        let at = self.word(t);
        // SAFETY: four bytes inside `t` (see `find`), written back whole.
        unsafe {
            let word = u32::from_le(at.read_unaligned());
            let word = (word & !(self.mask << self.shift)) | ((value & self.mask) << self.shift);
            at.write_unaligned(word.to_le());
        }
    }
}

macro_rules! field {
    ($name:ident, $t:ty, $setter:ident) => {
        fn $name() -> Option<Field> {
            static FIELD: OnceLock<Option<Field>> = OnceLock::new();
            *FIELD.get_or_init(|| Field::find::<$t>(|t| t.$setter(u32::MAX)))
        }
    };
}

field!(request_count, ngx_http_request_t, set_count);
field!(value_len, ngx_variable_value_t, set_len);
field!(value_valid, ngx_variable_value_t, set_valid);
field!(value_no_cacheable, ngx_variable_value_t, set_no_cacheable);
field!(value_not_found, ngx_variable_value_t, set_not_found);
field!(value_escape, ngx_variable_value_t, set_escape);

/// `r->count++` on `main`, a main request: one more reference on it.
pub fn hold(main: &mut ngx_http_request_t) {
    match request_count() {
        Some(f) => {
            let n = f.get(main);
            f.set(main, n + 1);
        }
        None => main.set_count(main.count() + 1),
    }
}

/// The flags of a variable value rcache writes.
#[derive(Clone, Copy, Debug, Default)]
pub struct ValueFlags {
    pub valid: bool,
    pub no_cacheable: bool,
    pub not_found: bool,
    pub escape: bool,
}

/// Where a variable value's length and flags live: one 32-bit word (as in C: `len:28` and
/// four one-bit flags), so that they are written with one load and one store.
#[derive(Clone, Copy, Debug)]
struct ValueLayout {
    /// The length; its `byte` is the word's.
    len: Field,
    valid: u32,
    no_cacheable: u32,
    not_found: u32,
    escape: u32,
}

fn value_layout() -> Option<ValueLayout> {
    static LAYOUT: OnceLock<Option<ValueLayout>> = OnceLock::new();
    *LAYOUT.get_or_init(|| {
        let fields = [
            value_len()?,
            value_valid()?,
            value_no_cacheable()?,
            value_not_found()?,
            value_escape()?,
        ];
        // Each flag's bits, in the 32-bit word where the length starts.
        let byte = fields[0].byte;
        let bit = |f: Field| -> Option<u32> {
            let shift = f.shift + 8 * u32::try_from(f.byte.checked_sub(byte)?).ok()?;
            let width = 32 - f.mask.leading_zeros();
            (shift + width <= 32).then(|| f.mask << shift)
        };
        Some(ValueLayout {
            len: fields[0],
            valid: bit(fields[1])?,
            no_cacheable: bit(fields[2])?,
            not_found: bit(fields[3])?,
            escape: bit(fields[4])?,
        })
    })
}

/// Sets `v`'s length and flags.
pub fn set_value(v: &mut ngx_variable_value_t, len: u32, flags: ValueFlags) {
    let Some(l) = value_layout() else {
        v.set_len(len);
        v.set_valid(u32::from(flags.valid));
        v.set_no_cacheable(u32::from(flags.no_cacheable));
        v.set_not_found(u32::from(flags.not_found));
        v.set_escape(u32::from(flags.escape));
        return;
    };
    let all = (l.len.mask << l.len.shift) | l.valid | l.no_cacheable | l.not_found | l.escape;
    let mut bits = (len & l.len.mask) << l.len.shift;
    for (on, bit) in [
        (flags.valid, l.valid),
        (flags.no_cacheable, l.no_cacheable),
        (flags.not_found, l.not_found),
        (flags.escape, l.escape),
    ] {
        if on {
            bits |= bit;
        }
    }
    let at = l.len.word(v);
    // SAFETY: four bytes inside `v` (see `Field::find`), written back whole.
    unsafe {
        let word = u32::from_le(at.read_unaligned());
        at.write_unaligned(((word & !all) | bits).to_le());
    }
}

/// `v`'s length (bindgen's getter reads it bit by bit).
pub fn value_len_of(v: &ngx_variable_value_t) -> u32 {
    value_len().map_or_else(|| v.len(), |f| f.get(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_paths_are_taken() {
        assert!(request_count().is_some());
        assert!(value_layout().is_some());
    }

    #[test]
    fn the_request_count_is_found_and_incremented_as_the_accessors_see_it() {
        let f = request_count().expect("count's place");
        assert!(f.mask >= 0xff, "{f:?}");
        // SAFETY: all zeroes is a valid request.
        let mut r: Box<ngx_http_request_t> = Box::new(unsafe { core::mem::zeroed() });
        r.set_subrequests(7);
        for n in 1..=300 {
            hold(&mut r);
            assert_eq!(r.count(), n);
        }
        assert_eq!(r.subrequests(), 7, "its neighbours are left alone");
        r.set_count(f.mask);
        hold(&mut r);
        assert_eq!(r.count(), 0, "wraps as the C field does");
    }

    #[test]
    fn a_variable_value_is_written_as_the_accessors_see_it() {
        // One word, as in C: the fast path is the one taken (and tested below).
        assert!(value_layout().is_some());
        // SAFETY: all zeroes is a valid value.
        let mut v: ngx_variable_value_t = unsafe { core::mem::zeroed() };
        for (len, flags) in [
            (
                3,
                ValueFlags {
                    valid: true,
                    ..ValueFlags::default()
                },
            ),
            (
                250_000,
                ValueFlags {
                    not_found: true,
                    escape: true,
                    ..ValueFlags::default()
                },
            ),
            (
                0,
                ValueFlags {
                    no_cacheable: true,
                    valid: true,
                    ..ValueFlags::default()
                },
            ),
        ] {
            set_value(&mut v, len, flags);
            assert_eq!(v.len(), len);
            assert_eq!(value_len_of(&v), len);
            assert_eq!(v.valid(), u32::from(flags.valid));
            assert_eq!(v.no_cacheable(), u32::from(flags.no_cacheable));
            assert_eq!(v.not_found(), u32::from(flags.not_found));
            assert_eq!(v.escape(), u32::from(flags.escape));
        }
    }
}
