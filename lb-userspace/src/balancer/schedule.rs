//! What a VIP's live array holds, by scheduler: the Maglev table (Maglev,
//! source hash), the smooth weighted sequence (round-robin) or the
//! least-connections candidates. Each is a pure function of the backend
//! set, ordered by backend address and never by id, so every node with the
//! same desired state writes the same array (and reports the same
//! checksum).

use lb_common::LC_EXACT_MAX;

use super::maglev::{self, MaglevBackend};
use crate::model::Scheduler;

/// The live array of a VIP with `scheduler` over `backends`, at most
/// `size` slots (the VIP's table size); empty when no backend has weight.
pub fn live_array(scheduler: Scheduler, backends: &[MaglevBackend], size: u32) -> Vec<u32> {
    match scheduler {
        Scheduler::Maglev | Scheduler::SourceHash => {
            let table = maglev::build_table(backends, size);
            if table.first().is_some_and(|id| *id != lb_common::NO_BACKEND) {
                table
            } else {
                Vec::new()
            }
        }
        Scheduler::RoundRobin => round_robin(backends, size),
        // The program tells the list from the table by its length
        // (`rules::lc_exact`): a table is longer than `LC_EXACT_MAX` because
        // it holds more backends than that, and validation refuses more
        // weighted backends than `size`.
        Scheduler::LeastConnections => {
            let weighted = by_address(backends);
            if weighted.len() <= (LC_EXACT_MAX.min(size)) as usize {
                weighted.iter().map(|b| b.id).collect()
            } else {
                live_array(Scheduler::Maglev, backends, size)
            }
        }
    }
}

/// The weighted backends in address order.
fn by_address(backends: &[MaglevBackend]) -> Vec<MaglevBackend> {
    let mut v: Vec<MaglevBackend> = backends.iter().filter(|b| b.weight > 0).copied().collect();
    v.sort_by_key(|b| b.key);
    v
}

/// The smooth weighted round-robin sequence. Over one period each backend
/// appears exactly weight / gcd times, spread out (5:1:1 gives
/// `a a b a c a a`, not `a a a a a b c`): nginx's smooth weighted
/// round-robin (each step every backend gains its weight in credit, the
/// richest, first in address order on a tie, is chosen and pays the total),
/// then [`separate`] for the repeats it leaves. Weights are divided by their
/// gcd; a period longer than `max_len` is scaled down to fit (shares then
/// hold to within the rounding), and backends beyond `max_len` get no place
/// (the caller refuses that many).
pub fn round_robin(backends: &[MaglevBackend], max_len: u32) -> Vec<u32> {
    let mut set = by_address(backends);
    set.truncate(max_len as usize);
    if set.is_empty() {
        return Vec::new();
    }
    let g = set.iter().fold(0, |g, b| gcd(g, b.weight));
    let mut weights: Vec<u64> = set.iter().map(|b| u64::from(b.weight / g)).collect();
    let total: u64 = weights.iter().sum();
    if total > u64::from(max_len) {
        // Every backend keeps one place; the room left is shared by weight.
        let n = set.len() as u64;
        let room = u64::from(max_len) - n;
        weights = weights
            .iter()
            .map(|w| 1 + (w - 1) * room / (total - n))
            .collect();
    }
    let total: i64 = weights.iter().sum::<u64>() as i64;
    let mut credit = vec![0i64; set.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..set.len() {
            credit[i] += weights[i] as i64;
            if credit[i] > credit[best] {
                best = i;
            }
        }
        credit[best] -= total;
        seq.push(set[best].id);
    }
    separate(&mut seq);
    seq
}

/// How far [`separate`] looks for a slot to swap with, and how many passes
/// it makes: enough for the repeats smooth round-robin leaves, and linear in
/// the period.
const SEPARATE_WINDOW: usize = 64;
const SEPARATE_PASSES: usize = 8;

/// Smooth round-robin can still put a backend in two adjacent slots (also
/// across the end of the period, which the cursor wraps over) where the
/// weights allow otherwise (4:4:7). Each such repeat is swapped with the
/// nearest slot that leaves fewer repeats around both; shares do not change.
fn separate(seq: &mut [u32]) {
    let n = seq.len();
    if n < 3 {
        return;
    }
    let repeats = |s: &[u32], i: usize| {
        usize::from(s[i] == s[(i + n - 1) % n]) + usize::from(s[i] == s[(i + 1) % n])
    };
    for _ in 0..SEPARATE_PASSES {
        let mut changed = false;
        for k in 0..n {
            let a = (k + 1) % n;
            if seq[k] != seq[a] {
                continue;
            }
            'search: for d in 1..SEPARATE_WINDOW.min(n) {
                for j in [(a + d) % n, (a + n - d) % n] {
                    if seq[j] == seq[a] {
                        continue;
                    }
                    let before = repeats(seq, a) + repeats(seq, j);
                    seq.swap(a, j);
                    if repeats(seq, a) + repeats(seq, j) < before {
                        changed = true;
                        break 'search;
                    }
                    seq.swap(a, j);
                }
            }
        }
        if !changed {
            return;
        }
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(id: u32, weight: u32) -> MaglevBackend {
        MaglevBackend {
            id,
            key: [id, 0, 0, 0],
            weight,
        }
    }

    fn names(seq: &[u32]) -> String {
        seq.iter().map(|id| (b'a' + *id as u8) as char).collect()
    }

    #[test]
    fn five_one_one_is_interleaved() {
        let seq = round_robin(&[b(0, 5), b(1, 1), b(2, 1)], 65537);
        assert_eq!(names(&seq), "aabacaa");
        // Weights are relative: 500:100:100 is the same sequence.
        assert_eq!(round_robin(&[b(0, 500), b(1, 100), b(2, 100)], 65537), seq);
    }

    #[test]
    fn exact_shares_and_no_needless_repeats() {
        for weights in [
            vec![1, 1, 1],
            vec![2, 1, 1],
            vec![3, 2, 2, 1],
            vec![7, 5, 3],
        ] {
            let set: Vec<_> = weights
                .iter()
                .enumerate()
                .map(|(i, w)| b(i as u32, *w))
                .collect();
            let seq = round_robin(&set, 65537);
            assert_eq!(seq.len() as u32, weights.iter().sum::<u32>());
            for (i, w) in weights.iter().enumerate() {
                assert_eq!(seq.iter().filter(|id| **id == i as u32).count() as u32, *w);
            }
            let total: u32 = weights.iter().sum();
            if 2 * weights.iter().max().unwrap() <= total {
                // Cyclically: the cursor wraps from the last slot to the first.
                let wrapped = seq.iter().zip(seq.iter().cycle().skip(1));
                assert!(
                    wrapped.clone().all(|(a, b)| a != b),
                    "{weights:?}: {}",
                    names(&seq)
                );
            }
        }
    }

    #[test]
    fn order_and_ids_do_not_matter_drained_backends_have_no_place() {
        let one = round_robin(&[b(0, 3), b(1, 1), b(2, 0)], 65537);
        let other = round_robin(&[b(2, 0), b(1, 1), b(0, 3)], 65537);
        assert_eq!(one, other);
        assert!(!one.contains(&2));
        assert!(round_robin(&[b(0, 0)], 65537).is_empty());
    }

    #[test]
    fn long_periods_are_scaled_into_the_table() {
        let seq = round_robin(&[b(0, 65535), b(1, 65534), b(2, 1)], 101);
        assert!(seq.len() <= 101, "{}", seq.len());
        let count = |id| seq.iter().filter(|s| **s == id).count();
        assert_eq!(count(2), 1, "every backend keeps a place");
        assert!(count(0).abs_diff(count(1)) <= 1);
    }

    #[test]
    fn least_connections_lists_candidates_up_to_the_bound() {
        let few: Vec<_> = (0..LC_EXACT_MAX)
            .map(|i| b(LC_EXACT_MAX - 1 - i, 1))
            .collect();
        let list = live_array(Scheduler::LeastConnections, &few, 65537);
        assert_eq!(list, (0..LC_EXACT_MAX).collect::<Vec<_>>(), "address order");
        let many: Vec<_> = (0..=LC_EXACT_MAX).map(|i| b(i, 1)).collect();
        assert_eq!(
            live_array(Scheduler::LeastConnections, &many, 65537).len(),
            65537,
            "the Maglev table, sampled"
        );
        assert!(live_array(Scheduler::LeastConnections, &[b(0, 0)], 65537).is_empty());
    }
}
