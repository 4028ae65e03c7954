//! `[announce]`: which VIP addresses lbd announces, as host routes in a
//! kernel routing table of its own that the node's BGP speaker (BIRD, FRR)
//! imports and exports to the routers. lbd never speaks BGP itself.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// The routing protocol number on every route lbd writes (`proto 108` in
/// `ip route`): how lbd (and an operator) tells its routes from others in
/// the table. Not 0 (unspec), 1 (redirect), 2 (kernel) or 12 (BIRD), which
/// BIRD 2's kernel protocol does not learn, nor any number iproute2 or FRR
/// assign (3-18, 42, 99, 186-198).
pub const ROUTE_PROTOCOL: u8 = 108;

/// Tables the kernel itself uses: `unspec` (0), `default` (253), `main`
/// (254) and `local` (255). Writing VIP routes there would change how the
/// node forwards, not only what it announces.
pub const RESERVED_TABLES: [(u32, &str); 4] = [
    (0, "unspec"),
    (253, "default"),
    (254, "main"),
    (255, "local"),
];

/// When an address is announced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnnounceWhen {
    /// While lbd runs with the balancer attached and at least one VIP on the
    /// address has a healthy backend (fail-open does not count).
    #[default]
    Healthy,
    /// While lbd runs with the balancer attached.
    Always,
    /// Nothing is announced (for VRRP pairs and static routing); with a
    /// table given, lbd still removes its own routes from it.
    Never,
}

impl AnnounceWhen {
    pub fn as_str(self) -> &'static str {
        match self {
            AnnounceWhen::Healthy => "healthy",
            AnnounceWhen::Always => "always",
            AnnounceWhen::Never => "never",
        }
    }
}

impl fmt::Display for AnnounceWhen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AnnounceWhen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "healthy" => Ok(AnnounceWhen::Healthy),
            "always" => Ok(AnnounceWhen::Always),
            "never" => Ok(AnnounceWhen::Never),
            _ => Err(format!("{s:?} is not one of healthy, always, never")),
        }
    }
}

/// The `[announce]` section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announce {
    /// The kernel routing table lbd owns (`None` only with `when = never`).
    pub table: Option<u32>,
    pub when: AnnounceWhen,
}

/// Why `table` cannot be lbd's, if it cannot.
pub fn table_problem(table: u32) -> Option<String> {
    RESERVED_TABLES
        .iter()
        .find(|(n, _)| *n == table)
        .map(|(n, name)| {
            format!("{n} is the kernel's `{name}` table; give lbd a table of its own (e.g. 100)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_tables_are_refused() {
        for t in [0, 253, 254, 255] {
            assert!(table_problem(t).is_some(), "{t}");
        }
        for t in [1, 100, 252, 256, u32::MAX] {
            assert_eq!(table_problem(t), None, "{t}");
        }
    }

    #[test]
    fn the_protocol_is_one_bird_learns() {
        assert!(![0, 1, 2, 12].contains(&ROUTE_PROTOCOL));
    }
}
