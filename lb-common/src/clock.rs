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
//! per load (`calibrate`): a kernel's tick rate is a build option that user
//! space cannot reliably read.

/// CLOCK_MONOTONIC (ns) at tick count `ticks`.
#[inline(always)]
pub fn tick_clock_ns(ticks: u64, tick_ns: u64, offset_ns: u64) -> u64 {
    ticks.wrapping_mul(tick_ns).wrapping_add(offset_ns)
}

/// The tick rates (`CONFIG_HZ`) the kernel's architectures offer.
pub const KERNEL_HZ: [u64; 12] = [24, 32, 48, 64, 100, 128, 250, 256, 300, 512, 1000, 1024];

/// How far a measured tick may be from the nearest rate's before the
/// measurement is refused (the closest pair, 250 and 256 Hz, is 2.4% apart).
pub const TICK_TOLERANCE_PPM: u64 = 5_000;

/// The kernel's tick length for `hz` (`TICK_NSEC`: rounded to the nearest ns).
pub const fn tick_nsec(hz: u64) -> u64 {
    (1_000_000_000 + hz / 2) / hz
}

/// Two readings of (tick count, CLOCK_MONOTONIC ns), each taken just after
/// the tick count changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickEdge {
    pub ticks: u64,
    pub mono_ns: u64,
}

/// The clock's `(tick_ns, offset_ns)` from two tick edges: the tick length
/// is the measured one snapped to the nearest kernel rate's, refused when
/// farther from it than `TICK_TOLERANCE_PPM` (an edge seen late, say by a
/// preempted reader), and the offset puts the later edge at its time.
pub fn calibrate(first: TickEdge, last: TickEdge) -> Option<(u64, u64)> {
    let ticks = last.ticks.checked_sub(first.ticks).filter(|t| *t > 0)?;
    let span = last.mono_ns.checked_sub(first.mono_ns)?;
    let measured = span / ticks;
    let tick_ns = KERNEL_HZ
        .iter()
        .map(|hz| tick_nsec(*hz))
        .min_by_key(|t| t.abs_diff(measured))?;
    if tick_ns.abs_diff(measured) * 1_000_000 > tick_ns * TICK_TOLERANCE_PPM {
        return None;
    }
    let offset_ns = last.mono_ns.wrapping_sub(last.ticks.wrapping_mul(tick_ns));
    Some((tick_ns, offset_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(ticks: u64, mono_ns: u64) -> TickEdge {
        TickEdge { ticks, mono_ns }
    }

    #[test]
    fn each_kernel_rate_is_recognised_from_four_ticks_read_a_little_late() {
        // The kernel's jiffies start near 2^32 - 300 * HZ.
        let start = (1u64 << 32) - 300 * 250;
        for hz in KERNEL_HZ {
            let tick = tick_nsec(hz);
            let t0 = 7_000_000_000;
            let first = edge(start, t0 + 3_000);
            let last = edge(start + 4, t0 + 4 * tick + 1_000);
            let (tick_ns, offset) = calibrate(first, last).unwrap();
            assert_eq!(tick_ns, tick, "{hz} Hz");
            let now = tick_clock_ns(start + 4, tick_ns, offset);
            assert_eq!(now, last.mono_ns);
            // One tick later, one tick's time later.
            assert_eq!(tick_clock_ns(start + 5, tick_ns, offset), now + tick);
        }
    }

    #[test]
    fn a_measurement_between_rates_or_without_ticks_is_refused() {
        // 3.7 ms per tick: neither 250 nor 300 Hz.
        assert_eq!(calibrate(edge(10, 0), edge(14, 4 * 3_700_000)), None);
        assert_eq!(calibrate(edge(10, 0), edge(10, 5_000_000)), None);
        assert_eq!(calibrate(edge(10, 9), edge(14, 5)), None);
    }

    #[test]
    fn the_clock_wraps_like_the_counter_instead_of_overflowing() {
        let (tick, offset) = calibrate(edge(100, 1_000), edge(104, 1_000 + 4_000_000)).unwrap();
        assert_eq!(tick, 1_000_000);
        // An offset below zero (the counter is ahead of the clock).
        assert_eq!(tick_clock_ns(104, tick, offset), 4_001_000);
        assert_eq!(
            tick_clock_ns(u64::MAX, tick, 0),
            u64::MAX.wrapping_mul(tick)
        );
    }
}
