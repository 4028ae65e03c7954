//! `backends_from`: where a VIP's backends come from besides its list, and
//! the fail-static rules its answers pass through.

use std::{collections::BTreeMap, fmt, net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    defaults::{
        DEFAULT_DISCOVERY_DRAIN, DEFAULT_DISCOVERY_REFRESH, DEFAULT_HOLD_EMPTY,
        DEFAULT_HOLD_REMOVAL, DEFAULT_MAX_REMOVE_PERCENT, DISCOVERY_HOLD_MAX,
        DISCOVERY_REFRESH_RANGE,
    },
    vip::VipId,
};

/// What a source reports for one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    pub weight: u32,
    pub tier: u8,
}

/// A source's backends by address.
pub type Set = BTreeMap<IpAddr, Found>;

/// What to ask.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// SRV records: each target's addresses of the VIP's family, the SRV
    /// weight as the weight, the SRV priority's rank as the tier.
    DnsSrv(String),
    /// A or AAAA records (the VIP's family), every address at the default
    /// weight, tier 0.
    Dns(String),
    /// Backends registered in the store under a lease their agent keeps
    /// alive (`lbctl backend register`); gone when the lease expires.
    Registered,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::DnsSrv(n) => write!(f, "dns_srv {n}"),
            Source::Dns(n) => write!(f, "dns {n}"),
            Source::Registered => f.write_str("registrations in the store"),
        }
    }
}

/// A VIP's `backends_from`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendsFrom {
    pub source: Source,
    #[serde(with = "super::health::humantime_str")]
    pub refresh: Duration,
    /// An empty answer is applied once it has persisted this long.
    #[serde(with = "super::health::humantime_str")]
    pub hold_empty: Duration,
    /// One answer may remove at most this share (percent) of the set at
    /// once, unless it persists for `hold_removal`.
    pub max_remove_percent: u32,
    #[serde(with = "super::health::humantime_str")]
    pub hold_removal: Duration,
    /// A backend the source no longer lists stays this long drained (no
    /// new flows; established ones go on), then leaves.
    #[serde(with = "super::health::humantime_str")]
    pub drain: Duration,
}

impl BackendsFrom {
    pub fn new(source: Source) -> Self {
        BackendsFrom {
            source,
            refresh: DEFAULT_DISCOVERY_REFRESH,
            hold_empty: DEFAULT_HOLD_EMPTY,
            max_remove_percent: DEFAULT_MAX_REMOVE_PERCENT,
            hold_removal: DEFAULT_HOLD_REMOVAL,
            drain: DEFAULT_DISCOVERY_DRAIN,
        }
    }

    /// The rules a VIP's source must follow.
    pub fn validate(&self, vip: &VipId) -> Result<(), String> {
        let name = match &self.source {
            Source::DnsSrv(n) | Source::Dns(n) => n.as_str(),
            Source::Registered => "registered",
        };
        if name.is_empty()
            || name.len() > 253
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(format!(
                "VIP {vip}: backends_from: {name:?} is not a DNS name"
            ));
        }
        let (min, max) = DISCOVERY_REFRESH_RANGE;
        if self.refresh < min || self.refresh > max {
            return Err(format!(
                "VIP {vip}: backends_from: refresh {} is out of range {}..={}",
                humantime::format_duration(self.refresh),
                humantime::format_duration(min),
                humantime::format_duration(max)
            ));
        }
        let longest = DISCOVERY_HOLD_MAX;
        for (key, d) in [
            ("hold_empty", self.hold_empty),
            ("hold_removal", self.hold_removal),
            ("drain", self.drain),
        ] {
            if d > longest {
                return Err(format!(
                    "VIP {vip}: backends_from: {key} {} is longer than {}",
                    humantime::format_duration(d),
                    humantime::format_duration(longest)
                ));
            }
        }
        if self.max_remove_percent > 100 {
            return Err(format!(
                "VIP {vip}: backends_from: max_remove {}% is more than 100%",
                self.max_remove_percent
            ));
        }
        Ok(())
    }
}
