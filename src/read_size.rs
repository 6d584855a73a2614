//! How much the first read of a lookup asks memcached for.
//!
//! A reply that does not fit the first read costs a second buffer, a `FIONREAD` and
//! another `recv`. A location's pages are usually alike in size, so each location
//! remembers (in its worker) what its recent replies needed: the first read grows at
//! once to hold the last large reply, and shrinks slowly, by 1/32 per reply that uses
//! less than half of it (from the maximum to the minimum in ~90 replies). The size is a
//! hint only: it starts again from the minimum after a reload, and a reply of any size
//! is still read whole.

/// The first read of a location that has not seen a large reply yet.
pub const MIN: usize = 16 * 1024;

/// Larger replies still take a second buffer: a first read is allocated before its
/// size is known, and small pages should not each pay for a huge one.
pub const MAX: usize = 256 * 1024;

/// Sizes are rounded up to this, so that pages a little larger than the last one fit.
const STEP: usize = 16 * 1024;

/// The first-read size for the next lookup, after one whose reply needed `needed`
/// bytes of buffer with a first read of `current` bytes.
pub fn next(current: usize, needed: usize) -> usize {
    let fit = needed.div_ceil(STEP).saturating_mul(STEP).clamp(MIN, MAX);
    if needed.saturating_mul(2) < current {
        // A thirty-second at a time: small pages among large ones leave them one read.
        (current - current / 32).max(fit)
    } else {
        // Grown at once (or topped up) to hold this reply.
        current.max(fit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_at_once_to_hold_the_reply_rounded_up() {
        assert_eq!(next(MIN, 100 * 1024 + 20), 112 * 1024);
        assert_eq!(next(MIN, MIN + 1), 32 * 1024);
    }

    #[test]
    fn never_grows_past_the_maximum() {
        assert_eq!(next(MIN, 1024 * 1024), MAX);
        assert_eq!(next(MAX, 10 * 1024 * 1024), MAX);
    }

    #[test]
    fn stays_while_replies_use_at_least_half() {
        assert_eq!(next(112 * 1024, 100 * 1024), 112 * 1024);
        assert_eq!(next(112 * 1024, 56 * 1024), 112 * 1024);
        assert_eq!(next(MIN, 1024), MIN);
    }

    #[test]
    fn shrinks_a_thirty_second_at_a_time_down_to_what_replies_need() {
        assert_eq!(next(128 * 1024, 1024), 124 * 1024);
        let mut size = MAX;
        for _ in 0..90 {
            size = next(size, 1024);
        }
        assert_eq!(size, MIN);
        let mut size = MAX;
        for _ in 0..100 {
            size = next(size, 40 * 1024);
        }
        assert!(
            (48 * 1024..=80 * 1024).contains(&size),
            "stops once the replies use half of it: {size}"
        );
    }

    #[test]
    fn small_replies_among_large_ones_leave_them_one_read() {
        let large = 100 * 1024 + 20;
        let mut size = next(MIN, large);
        for _ in 0..100 {
            size = next(size, 2 * 1024);
            assert!(size >= large, "{size}");
            size = next(size, large);
        }
    }
}
