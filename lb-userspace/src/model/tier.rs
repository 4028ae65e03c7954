//! Tiers: how new flows spill from a VIP's local backends (tier 0) to
//! farther ones (tier 1, 2, … — another rack, another site) as the nearer
//! tiers lose healthy backends.
//!
//! `spill` follows Envoy's priority levels, integer arithmetic included, so
//! operators can carry their numbers over: a tier's health is
//! `min(100, overprovisioning × healthy / total)` (percent; backends
//! counted, drained ones not at all), each tier in order takes as much of
//! the remaining load as its health (scaled up when the tiers' health sums
//! to less than 100), and what rounding leaves goes to the first tier with
//! any health. `strict` keeps every new flow on the nearest tiers while they
//! have at least `min_healthy` healthy backends between them.
//!
//! The result is a weight per backend for the ordinary table builders: the
//! data path knows nothing of tiers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    backend::BackendSpec,
    defaults::{DEFAULT_MIN_HEALTHY, DEFAULT_OVERPROVISIONING},
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierMode {
    /// Envoy's priority levels: traffic moves in proportion to lost health.
    #[default]
    Spill,
    /// All or nothing: the next tier only once the nearer ones are short of
    /// `min_healthy` healthy backends.
    Strict,
}

impl TierMode {
    pub fn name(self) -> &'static str {
        match self {
            TierMode::Spill => "spill",
            TierMode::Strict => "strict",
        }
    }
}

/// A VIP's tier settings (`[vip.tiers]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierPolicy {
    pub mode: TierMode,
    /// Spill: the overprovisioning factor in percent (Envoy's 1.4 is 140):
    /// a tier keeps all its traffic while 100/140 = 72% of it is healthy.
    pub overprovisioning: u32,
    /// Strict: the fewest healthy backends the nearer tiers must have
    /// between them to keep all new flows.
    pub min_healthy: u32,
}

impl Default for TierPolicy {
    fn default() -> Self {
        TierPolicy {
            mode: TierMode::Spill,
            overprovisioning: DEFAULT_OVERPROVISIONING,
            min_healthy: DEFAULT_MIN_HEALTHY,
        }
    }
}

/// One backend as the tier plan sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierMember {
    pub tier: u8,
    /// Configured weight; 0 (drained) takes no part.
    pub weight: u32,
    /// Passes its health checks (or is not checked).
    pub up: bool,
}

impl TierMember {
    pub fn new(spec: &BackendSpec, up: bool) -> TierMember {
        TierMember {
            tier: spec.tier,
            weight: spec.weight,
            up,
        }
    }
}

/// A tier's part of a VIP's new flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierShare {
    pub tier: u8,
    /// Weighted (not drained) backends.
    pub total: u32,
    pub healthy: u32,
    /// Percent of new flows (0..=100; the tiers' shares sum to 100 unless no
    /// backend is healthy).
    pub share: u32,
}

/// What the table is built from: a weight per member (0: no new flows;
/// the member's established flows stay), each tier's share, and whether
/// no member is healthy and the weights fail open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierPlan {
    pub weights: Vec<u32>,
    pub shares: Vec<TierShare>,
    pub fail_open: bool,
}

/// The resolution of spill weights: each tier's share is spread over its
/// healthy backends as `share × weight × SPILL_SCALE / tier weight`, fine
/// enough for any table (a 65537-slot Maglev table resolves 1/65537).
const SPILL_SCALE: u64 = 1000;

/// The plan for a VIP's backends.
///
/// When one tier takes every new flow (always so with a single tier) its
/// backends keep their configured weights, so a VIP without tiers builds
/// exactly the table it built before tiers existed.
pub fn plan(policy: &TierPolicy, members: &[TierMember]) -> TierPlan {
    // Each tier's counts and the weight of its healthy backends, nearest first.
    let mut tiers: BTreeMap<u8, (TierShare, u64)> = BTreeMap::new();
    for m in members.iter().filter(|m| m.weight > 0) {
        let (s, healthy_weight) = tiers.entry(m.tier).or_insert((
            TierShare {
                tier: m.tier,
                total: 0,
                healthy: 0,
                share: 0,
            },
            0,
        ));
        s.total += 1;
        if m.up {
            s.healthy += 1;
            *healthy_weight += u64::from(m.weight);
        }
    }
    let mut shares: Vec<TierShare> = tiers.values().map(|(s, _)| *s).collect();
    let healthy_weight = |tier: u8| tiers.get(&tier).map_or(0, |t| t.1);

    if shares.iter().all(|s| s.healthy == 0) {
        // Nothing healthy: the nearest tier fails open (every one of its
        // weighted backends, at its weight), as a single tier does.
        let nearest = shares.first().map(|s| s.tier);
        if let Some(s) = shares.first_mut() {
            s.share = 100;
        }
        let weights = members
            .iter()
            .map(|m| if Some(m.tier) == nearest { m.weight } else { 0 })
            .collect();
        return TierPlan {
            weights,
            fail_open: nearest.is_some(),
            shares,
        };
    }

    match policy.mode {
        TierMode::Spill => {
            let health: Vec<u32> = shares
                .iter()
                .map(|s| tier_health(policy.overprovisioning, s.healthy, s.total))
                .collect();
            for (s, load) in shares.iter_mut().zip(distribute(&health)) {
                s.share = load;
            }
        }
        TierMode::Strict => {
            // The nearest tiers that reach `min_healthy` together (all of
            // them if none do), shared by weight.
            let mut healthy = 0;
            let mut used = 0;
            for s in &shares {
                used += 1;
                healthy += s.healthy;
                if healthy >= policy.min_healthy {
                    break;
                }
            }
            let weights: Vec<u64> = shares[..used]
                .iter()
                .map(|s| healthy_weight(s.tier))
                .collect();
            for (s, load) in shares.iter_mut().zip(proportional(&weights)) {
                s.share = load;
            }
        }
    }

    let loaded = shares.iter().filter(|s| s.share > 0).count();
    let weights = members
        .iter()
        .map(|m| {
            let share = shares
                .iter()
                .find(|s| s.tier == m.tier)
                .map_or(0, |s| s.share);
            if !m.up || m.weight == 0 || share == 0 {
                0
            } else if loaded == 1 || policy.mode == TierMode::Strict {
                m.weight
            } else {
                let w =
                    u64::from(share) * u64::from(m.weight) * SPILL_SCALE / healthy_weight(m.tier);
                w.clamp(1, u64::from(u32::MAX)) as u32
            }
        })
        .collect();
    TierPlan {
        weights,
        shares,
        fail_open: false,
    }
}

/// A tier's health in percent: Envoy's `min(100, factor × healthy / total)`.
fn tier_health(overprovisioning: u32, healthy: u32, total: u32) -> u32 {
    if total == 0 {
        return 0;
    }
    let h = u64::from(overprovisioning) * u64::from(healthy) / u64::from(total);
    h.min(100) as u32
}

/// Envoy's load distribution over priority levels: each level in order
/// takes as much of what is left as its health, scaled by the total health
/// when that is under 100; the rounding left over goes to the first level
/// with any health. Sums to 100 unless every health is 0.
fn distribute(health: &[u32]) -> Vec<u32> {
    let total = health.iter().sum::<u32>().min(100);
    if total == 0 {
        return vec![0; health.len()];
    }
    let mut left = 100u32;
    let mut loads: Vec<u32> = health
        .iter()
        .map(|h| {
            let load = (h * 100 / total).min(left);
            left -= load;
            load
        })
        .collect();
    if let Some(first) = health.iter().position(|h| *h > 0) {
        loads[first] += left;
    }
    loads
}

/// Percent shares of `weights` (integer, the rounding to the first non-zero).
fn proportional(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let mut shares: Vec<u32> = weights.iter().map(|w| (w * 100 / total) as u32).collect();
    let left = 100 - shares.iter().sum::<u32>();
    if let Some(first) = weights.iter().position(|w| *w > 0) {
        shares[first] += left;
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `healthy` of `total` tier-`tier` members, weight 100.
    fn tier(tier: u8, healthy: u32, total: u32) -> Vec<TierMember> {
        (0..total)
            .map(|i| TierMember {
                tier,
                weight: 100,
                up: i < healthy,
            })
            .collect()
    }

    fn shares(policy: &TierPolicy, tiers: &[(u8, u32, u32)]) -> Vec<u32> {
        let members: Vec<TierMember> = tiers.iter().flat_map(|t| tier(t.0, t.1, t.2)).collect();
        plan(policy, &members)
            .shares
            .iter()
            .map(|s| s.share)
            .collect()
    }

    #[test]
    fn envoy_examples() {
        let p = TierPolicy::default();
        // Envoy's priority-level table: P0 health → P0/P1 load, with P1
        // fully healthy.
        assert_eq!(shares(&p, &[(0, 100, 100), (1, 100, 100)]), [100, 0]);
        assert_eq!(shares(&p, &[(0, 72, 100), (1, 100, 100)]), [100, 0]);
        assert_eq!(shares(&p, &[(0, 71, 100), (1, 100, 100)]), [99, 1]);
        assert_eq!(shares(&p, &[(0, 50, 100), (1, 100, 100)]), [70, 30]);
        assert_eq!(shares(&p, &[(0, 25, 100), (1, 100, 100)]), [35, 65]);
        assert_eq!(shares(&p, &[(0, 0, 100), (1, 100, 100)]), [0, 100]);
        // Both degraded: the loads are normalised to the total health.
        assert_eq!(shares(&p, &[(0, 25, 100), (1, 25, 100)]), [50, 50]);
        assert_eq!(shares(&p, &[(0, 20, 100), (1, 10, 100)]), [67, 33]);
        // Three levels: P0 50% (70), P1 50% (70, takes the remaining 30), P2 none.
        assert_eq!(
            shares(&p, &[(0, 5, 10), (1, 5, 10), (2, 10, 10)]),
            [70, 30, 0]
        );
    }

    #[test]
    fn overprovisioning_is_configurable() {
        let p = TierPolicy {
            overprovisioning: 100,
            ..Default::default()
        };
        // Without headroom, every lost backend moves its share.
        assert_eq!(shares(&p, &[(0, 3, 4), (1, 4, 4)]), [75, 25]);
        assert_eq!(
            shares(&TierPolicy::default(), &[(0, 3, 4), (1, 4, 4)]),
            [100, 0]
        );
    }

    #[test]
    fn one_tier_keeps_its_weights() {
        let members = vec![
            TierMember {
                tier: 0,
                weight: 7,
                up: true,
            },
            TierMember {
                tier: 0,
                weight: 3,
                up: false,
            },
            TierMember {
                tier: 0,
                weight: 0,
                up: true,
            },
        ];
        let plan = plan(&TierPolicy::default(), &members);
        assert_eq!(plan.weights, [7, 0, 0]);
        assert!(!plan.fail_open);
        assert_eq!(
            plan.shares,
            [TierShare {
                tier: 0,
                total: 2,
                healthy: 1,
                share: 100
            }]
        );
    }

    #[test]
    fn spill_weights_follow_the_shares() {
        let mut members = tier(0, 1, 2);
        members.extend(tier(1, 2, 2));
        let plan = plan(&TierPolicy::default(), &members);
        // P0 50% healthy: 70/30; its one healthy backend carries all 70.
        assert_eq!(plan.weights, [70_000, 0, 15_000, 15_000]);
    }

    #[test]
    fn nothing_healthy_fails_open_in_the_nearest_tier() {
        let mut members = tier(1, 0, 2);
        members.extend(tier(2, 0, 1));
        let plan = plan(&TierPolicy::default(), &members);
        assert!(plan.fail_open);
        assert_eq!(plan.weights, [100, 100, 0]);
        assert_eq!(plan.shares[0].share, 100);
        assert!(!super::plan(&TierPolicy::default(), &[]).fail_open);
    }

    #[test]
    fn strict_moves_only_below_min_healthy() {
        let p = TierPolicy {
            mode: TierMode::Strict,
            min_healthy: 2,
            ..Default::default()
        };
        assert_eq!(shares(&p, &[(0, 2, 4), (1, 4, 4)]), [100, 0]);
        // One healthy local backend is short of two: tier 1 joins, shared
        // by weight (1 + 4 backends of weight 100).
        assert_eq!(shares(&p, &[(0, 1, 4), (1, 4, 4)]), [20, 80]);
        assert_eq!(shares(&p, &[(0, 0, 4), (1, 4, 4)]), [0, 100]);
        let mut members = tier(0, 1, 2);
        members.extend(tier(1, 1, 1));
        assert_eq!(plan(&p, &members).weights, [100, 0, 100]);
    }
}
