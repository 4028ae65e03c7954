//! A backend as an operator gives it, and the rules a VIP's settings and
//! backend set must follow, so every input path (config file, API, stored
//! state) refuses the same things with the same words.

use std::net::IpAddr;

use super::{
    defaults::{MAX_TIER, MAX_WEIGHT, MIN_HEALTHY_RANGE, OVERPROVISIONING_RANGE},
    vip::{Forwarding, Scheduler, VipId, VipSettings},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackendSpec {
    pub addr: IpAddr,
    /// 0 = drained: no new flows, established ones stay.
    pub weight: u32,
    /// 0 = local; higher = farther away (`model::tier`).
    #[serde(default)]
    pub tier: u8,
}

/// Why a VIP or backend set is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("table size {0} is not a prime between 2 and {max}", max = lb_common::MAGLEV_MAX_SIZE)]
    TableSize(u32),
    #[error("backend {backend} is {}, but VIP {vip} is {}: ipip forwarding keeps the family (IPv4 in IPv4, IPv6 in IPv6)", family(.backend), family(&.vip.addr))]
    FamilyMismatch { vip: VipId, backend: IpAddr },
    #[error("backend {backend} of VIP {vip}: weight {weight} is out of range 0..={MAX_WEIGHT}")]
    Weight {
        vip: VipId,
        backend: IpAddr,
        weight: u32,
    },
    #[error("backend {backend} of VIP {vip}: tier {tier} is out of range 0..={MAX_TIER}")]
    Tier {
        vip: VipId,
        backend: IpAddr,
        tier: u8,
    },
    #[error("VIP {vip}: overprovisioning {} is out of range {}..={}", *.percent as f64 / 100.0, *OVERPROVISIONING_RANGE.start() as f64 / 100.0, *OVERPROVISIONING_RANGE.end() as f64 / 100.0)]
    Overprovisioning { vip: VipId, percent: u32 },
    #[error("VIP {vip}: min_healthy {value} is out of range {}..={}", MIN_HEALTHY_RANGE.start(), MIN_HEALTHY_RANGE.end())]
    MinHealthy { vip: VipId, value: u32 },
    #[error("backend {backend} is listed twice for VIP {vip}")]
    DuplicateBackend { vip: VipId, backend: IpAddr },
    #[error("backend address {0} is not usable (unspecified, multicast or broadcast)")]
    BadBackendAddr(IpAddr),
    #[error("VIP address {0} is not usable (unspecified, multicast or broadcast)")]
    BadVipAddr(IpAddr),
    #[error("VIP {vip}: scheduler {} needs the connection table (a flow must stay where it was placed): drop `stateless` (`conntrack = false` in the config file) or use maglev or source-hash", .scheduler.name())]
    StatelessScheduler { vip: VipId, scheduler: Scheduler },
    #[error("VIP {vip}: {count} weighted backends do not fit the {} array of table_size {size}; raise table_size", .scheduler.name())]
    SequenceTooShort {
        vip: VipId,
        scheduler: Scheduler,
        count: usize,
        size: u32,
    },
}

fn family(a: &IpAddr) -> &'static str {
    if a.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// An address a VIP or a backend may have (not 0.0.0.0, multicast or the
/// broadcast address).
pub fn usable(a: &IpAddr) -> bool {
    !(a.is_unspecified() || a.is_multicast() || *a == IpAddr::from([255, 255, 255, 255]))
}

/// Checks a VIP's own settings.
pub fn validate_vip(vip: &VipId, settings: &VipSettings) -> Result<(), SpecError> {
    if !usable(&vip.addr) {
        return Err(SpecError::BadVipAddr(vip.addr));
    }
    let size = settings.table_size;
    if size > lb_common::MAGLEV_MAX_SIZE || !is_prime(size) {
        return Err(SpecError::TableSize(size));
    }
    if !OVERPROVISIONING_RANGE.contains(&settings.tiers.overprovisioning) {
        return Err(SpecError::Overprovisioning {
            vip: *vip,
            percent: settings.tiers.overprovisioning,
        });
    }
    if !MIN_HEALTHY_RANGE.contains(&settings.tiers.min_healthy) {
        return Err(SpecError::MinHealthy {
            vip: *vip,
            value: settings.tiers.min_healthy,
        });
    }
    if settings.stateless && settings.scheduler.needs_conntrack() {
        return Err(SpecError::StatelessScheduler {
            vip: *vip,
            scheduler: settings.scheduler,
        });
    }
    Ok(())
}

/// Checks a VIP's backend set as a whole.
pub fn validate_backends(
    vip: &VipId,
    settings: &VipSettings,
    backends: &[BackendSpec],
) -> Result<(), SpecError> {
    for (i, b) in backends.iter().enumerate() {
        if !usable(&b.addr) {
            return Err(SpecError::BadBackendAddr(b.addr));
        }
        if settings.forwarding == Forwarding::Ipip && b.addr.is_ipv4() != vip.addr.is_ipv4() {
            return Err(SpecError::FamilyMismatch {
                vip: *vip,
                backend: b.addr,
            });
        }
        if b.weight > MAX_WEIGHT {
            return Err(SpecError::Weight {
                vip: *vip,
                backend: b.addr,
                weight: b.weight,
            });
        }
        if b.tier > MAX_TIER {
            return Err(SpecError::Tier {
                vip: *vip,
                backend: b.addr,
                tier: b.tier,
            });
        }
        if backends[..i].iter().any(|o| o.addr == b.addr) {
            return Err(SpecError::DuplicateBackend {
                vip: *vip,
                backend: b.addr,
            });
        }
    }
    let weighted = backends.iter().filter(|b| b.weight > 0).count();
    // Round-robin needs a place per backend in its sequence; least-connections
    // tells its candidate list from its Maglev table by length, which only
    // works while a table has room for every backend.
    if settings.scheduler.needs_conntrack() && weighted > settings.table_size as usize {
        return Err(SpecError::SequenceTooShort {
            vip: *vip,
            scheduler: settings.scheduler,
            count: weighted,
            size: settings.table_size,
        });
    }
    Ok(())
}

/// Whether `n` is prime (trial division; fast enough for table sizes).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    // u64 so that `d * d` cannot overflow for `n` near `u32::MAX`.
    let n = n as u64;
    let mut d = 3u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}
