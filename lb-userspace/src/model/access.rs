//! Who may do what over the TLS API: a role per client identity.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::change::Change;

/// What a client may do, each role including the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Status, stats, explain, node and cluster status, the trace's lines.
    Read,
    /// Drain and undrain (backends and the node), weights, health checks,
    /// the decision trace.
    Operate,
    /// Everything: VIPs and backends added and removed, reloads, store
    /// import, registrations.
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Read => "read",
            Role::Operate => "operate",
            Role::Admin => "admin",
        })
    }
}

impl Change {
    /// The least role that may make this change.
    pub fn role(&self) -> Role {
        match self {
            Change::BackendSet { .. }
            | Change::BackendDrain { .. }
            | Change::BackendUndrain { .. }
            | Change::VipHealth { .. }
            | Change::BackendHealth { .. }
            | Change::DebugOn { .. }
            | Change::DebugOff
            | Change::NodeDrain
            | Change::NodeUndrain => Role::Operate,
            Change::VipAdd { .. }
            | Change::VipDel { .. }
            | Change::VipSet { .. }
            | Change::BackendAdd { .. }
            | Change::BackendDel { .. } => Role::Admin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_ones_below() {
        assert!(Role::Admin > Role::Operate && Role::Operate > Role::Read);
        let drain = Change::BackendDrain {
            vip: "web".into(),
            addr: "10.0.0.2".parse().unwrap(),
        };
        assert_eq!(drain.role(), Role::Operate);
        assert_eq!(Change::VipDel { vip: "web".into() }.role(), Role::Admin);
    }
}
