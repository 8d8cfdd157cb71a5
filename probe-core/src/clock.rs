//! The probe's clock: `CLOCK_MONOTONIC` nanoseconds, plus the anchor pair that
//! converts them to unix time.
//!
//! Monotonic time is shared by every process on a host, so the frontend's emit
//! times and the engine core's step times merge on one axis without any
//! exchange between the processes. It is read once per step, inside Rust.

use crate::event::ClockAnchor;
use std::time::{SystemTime, UNIX_EPOCH};

/// `CLOCK_MONOTONIC` in nanoseconds.
#[inline]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists
    // on Linux and macOS, so the call cannot fail.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// Unix time in nanoseconds.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Read an anchor pair. The unix reading is bracketed by two monotonic ones and
/// paired with their midpoint; the tightest of a few tries is kept, so the pair
/// is accurate to well under a microsecond on an idle core.
pub fn anchor() -> ClockAnchor {
    let mut best = (
        u64::MAX,
        ClockAnchor {
            mono_ns: 0,
            unix_ns: 0,
        },
    );
    for _ in 0..5 {
        let a = monotonic_ns();
        let u = unix_ns();
        let b = monotonic_ns();
        let width = b.saturating_sub(a);
        if width < best.0 {
            best = (
                width,
                ClockAnchor {
                    mono_ns: a + width / 2,
                    unix_ns: u,
                },
            );
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_back() {
        let mut last = monotonic_ns();
        for _ in 0..10_000 {
            let now = monotonic_ns();
            assert!(now >= last);
            last = now;
        }
    }

    #[test]
    fn anchor_converts_to_now() {
        let a = anchor();
        let converted = a.to_unix(monotonic_ns());
        let now = unix_ns();
        // Same instant within a generous second (a wall clock step could move it).
        assert!(converted.abs_diff(now) < 1_000_000_000);
    }
}
