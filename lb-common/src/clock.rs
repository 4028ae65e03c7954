//! The balancer's clock: CLOCK_MONOTONIC at tick resolution, computed from
//! the kernel's tick counter (`jiffies`).
//!
//! Why not a clock helper: `bpf_jiffies64` is the one time source the
//! verifier inlines (a load of the counter), where `bpf_ktime_get_coarse_ns`
//! is a call into the kernel on every packet of every flow, which the
//! connection table needs only to see whether its entry went idle.
//! Idle timeouts are seconds; a tick is 1 to 10 ms.
//!
//! The kernel advances `jiffies` by one every `TICK_NSEC` of
//! CLOCK_MONOTONIC, so `ticks * tick_ns + offset_ns` is CLOCK_MONOTONIC as
//! of the last tick, the time user space reads, writes into entries and
//! compares them with. The loader measures `tick_ns` and `offset_ns` once
//! per load (`calibrate_tick`, `earliest_offset`): a kernel's tick rate is a build option that user
//! space cannot reliably read.

/// CLOCK_MONOTONIC (ns) at tick count `ticks`.
#[inline(always)]
pub fn tick_clock_ns(ticks: u64, tick_ns: u64, offset_ns: u64) -> u64 {
    ticks.wrapping_mul(tick_ns).wrapping_add(offset_ns)
}

/// The tick rates (`CONFIG_HZ`) x86-64 and arm64 kernels can be built with.
/// The closest pair, 250 and 300 Hz, is 17% apart in tick length.
pub const KERNEL_HZ: [u64; 4] = [100, 250, 300, 1000];

/// How far a measured tick may be from the nearest rate's before the
/// measurement is refused: more than any span of `MIN_SPAN_TICKS` can be off
/// (a reading lies inside its tick, so the span is off by under one tick),
/// less than halfway between 250 and 300 Hz.
pub const TICK_TOLERANCE_PPM: u64 = 80_000;
/// Ticks two readings must be apart for the tolerance to hold.
pub const MIN_SPAN_TICKS: u64 = 16;

/// The kernel's tick length for `hz` (`TICK_NSEC`: rounded to the nearest ns).
pub const fn tick_nsec(hz: u64) -> u64 {
    (1_000_000_000 + hz / 2) / hz
}

/// A reading of (tick count, CLOCK_MONOTONIC ns) taken together: the time
/// lies inside the tick the count names, however late the reader was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickEdge {
    pub ticks: u64,
    pub mono_ns: u64,
}

/// The tick length from two readings at least `MIN_SPAN_TICKS` apart: the
/// measured one snapped to the nearest kernel rate's, refused when farther
/// from it than `TICK_TOLERANCE_PPM` (a kernel built with another rate).
pub fn calibrate_tick(first: TickEdge, last: TickEdge) -> Option<u64> {
    let ticks = last.ticks.checked_sub(first.ticks)?;
    if ticks < MIN_SPAN_TICKS {
        return None;
    }
    let span = last.mono_ns.checked_sub(first.mono_ns)?;
    let measured = span / ticks;
    let tick_ns = KERNEL_HZ
        .iter()
        .map(|hz| tick_nsec(*hz))
        .min_by_key(|t| t.abs_diff(measured))?;
    if tick_ns.abs_diff(measured) * 1_000_000 > tick_ns * TICK_TOLERANCE_PPM {
        return None;
    }
    Some(tick_ns)
}

/// The offset that puts each tick at its start: the earliest of the
/// readings' times less their ticks (a reading is never before its tick
/// began, and the earliest is the one read closest to it).
pub fn earliest_offset(tick_ns: u64, readings: impl IntoIterator<Item = TickEdge>) -> Option<u64> {
    let mut best: Option<u64> = None;
    for r in readings {
        let offset = r.mono_ns.wrapping_sub(r.ticks.wrapping_mul(tick_ns));
        // Compared as a difference: offsets may wrap.
        best = match best {
            Some(b) if (offset.wrapping_sub(b) as i64) >= 0 => Some(b),
            _ => Some(offset),
        };
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(ticks: u64, mono_ns: u64) -> TickEdge {
        TickEdge { ticks, mono_ns }
    }

    #[test]
    fn each_kernel_rate_is_recognised_even_from_readings_late_by_most_of_a_tick() {
        // The kernel's jiffies start near 2^32 - 300 * HZ.
        let start = (1u64 << 32) - 300 * 250;
        for hz in KERNEL_HZ {
            let tick = tick_nsec(hz);
            let t0 = 7_000_000_000;
            let n = MIN_SPAN_TICKS;
            // The first reading on time, the last late by 90% of a tick.
            let first = edge(start, t0);
            let last = edge(start + n, t0 + n * tick + tick * 9 / 10);
            assert_eq!(calibrate_tick(first, last), Some(tick), "{hz} Hz");
            // And the other way round.
            let first = edge(start, t0 + tick * 9 / 10);
            let last = edge(start + n, t0 + n * tick);
            assert_eq!(calibrate_tick(first, last), Some(tick), "{hz} Hz");
        }
    }

    #[test]
    fn the_earliest_reading_sets_the_offset() {
        let tick = tick_nsec(250);
        let start = (1u64 << 32) - 300 * 250;
        let t0 = 7_000_000_000;
        let readings = [
            edge(start, t0 + 2_000_000),
            edge(start + 1, t0 + tick + 3_000),
            edge(start + 2, t0 + 2 * tick + 1_500_000),
        ];
        let offset = earliest_offset(tick, readings).unwrap();
        assert_eq!(tick_clock_ns(start + 1, tick, offset), t0 + tick + 3_000);
        assert_eq!(
            tick_clock_ns(start + 2, tick, offset),
            t0 + 2 * tick + 3_000
        );
    }

    #[test]
    fn a_measurement_off_every_rate_or_too_short_is_refused() {
        let n = MIN_SPAN_TICKS;
        // 2 ms per tick: 500 Hz, not a rate of these kernels.
        assert_eq!(
            calibrate_tick(edge(10, 0), edge(10 + n, n * 2_000_000)),
            None
        );
        assert_eq!(calibrate_tick(edge(10, 0), edge(14, 4 * 4_000_000)), None);
        assert_eq!(calibrate_tick(edge(10, 9), edge(10 + n, 5)), None);
    }

    #[test]
    fn the_clock_wraps_like_the_counter_instead_of_overflowing() {
        let tick = tick_nsec(1000);
        // An offset below zero (the counter is ahead of the clock).
        let offset = earliest_offset(tick, [edge(104, 4_001_000)]).unwrap();
        assert_eq!(tick_clock_ns(104, tick, offset), 4_001_000);
        assert_eq!(
            tick_clock_ns(u64::MAX, tick, 0),
            u64::MAX.wrapping_mul(tick)
        );
    }
}
