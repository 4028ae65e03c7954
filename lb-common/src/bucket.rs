//! A per-CPU token bucket in integer nanoseconds, for the program's rate
//! limits (the decision trace, ICMP "too big" answers). The kernel zeroes a
//! new entry; the first call then finds the clock far past `last_ns` and
//! fills the bucket to its burst.

/// One CPU's bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Credit in ns: one event costs `1e9 / per_sec`.
    pub credit_ns: u64,
    pub last_ns: u64,
    /// Events refused.
    pub refused: u64,
}
const _: () = assert!(size_of::<TokenBucket>() == 24);

/// Whether the bucket lets one more event through at `now_ns`, at most
/// `per_sec` a second in bursts of up to `burst`; takes its cost if so,
/// counts a refusal if not. `per_sec == 0` refuses everything.
#[inline(always)]
pub fn take(b: &mut TokenBucket, now_ns: u64, per_sec: u64, burst: u64) -> bool {
    if per_sec == 0 {
        b.refused += 1;
        return false;
    }
    let cost = 1_000_000_000 / per_sec;
    let max = burst.saturating_mul(cost);
    let credit = b.credit_ns.saturating_add(now_ns.saturating_sub(b.last_ns));
    b.credit_ns = if credit > max { max } else { credit };
    b.last_ns = now_ns;
    if b.credit_ns >= cost {
        b.credit_ns -= cost;
        true
    } else {
        b.refused += 1;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let (rate, burst) = (200, 50);
        let mut b = TokenBucket::default();
        let t = 10_000_000_000;
        let first = (0..1000).filter(|_| take(&mut b, t, rate, burst)).count() as u64;
        assert_eq!(first, burst);
        assert_eq!(b.refused, 1000 - burst);
        // Half a second later: half a second's worth.
        let later = t + 500_000_000;
        let next = (0..1000)
            .filter(|_| take(&mut b, later, rate, burst))
            .count() as u64;
        assert_eq!(next, 50.min(rate / 2));
        let mut off = TokenBucket::default();
        assert!(!take(&mut off, t, 0, burst));
    }
}
