//! A change an operator asks for, from any input (lbctl through the API,
//! tests): one type, so one place turns it into the next desired state.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{
    health::HealthSpec,
    vip::{Forwarding, Scheduler, VipId},
};

/// A change an operator asks for. VIPs are named by `ADDR[:PORT]/PROTO` or by
/// their configured name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Change {
    VipAdd {
        vip: VipId,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        scheduler: Scheduler,
        #[serde(default)]
        forwarding: Forwarding,
        #[serde(default)]
        stateless: bool,
        /// Prime, at most 65537; `None` = 65537.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        table_size: Option<u32>,
    },
    VipDel {
        vip: String,
    },
    /// Changes a VIP's scheduler: new flows follow the new one, established
    /// flows keep their backends (connection table).
    VipSet {
        vip: String,
        scheduler: Scheduler,
    },
    BackendAdd {
        vip: String,
        addr: IpAddr,
        #[serde(default)]
        weight: Option<u32>,
        /// 0 (local) when omitted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tier: Option<u8>,
    },
    BackendDel {
        vip: String,
        addr: IpAddr,
    },
    BackendSet {
        vip: String,
        addr: IpAddr,
        weight: u32,
    },
    BackendDrain {
        vip: String,
        addr: IpAddr,
    },
    BackendUndrain {
        vip: String,
        addr: IpAddr,
    },
    /// Sets the VIP's health check (`None`: no checks; its backends without
    /// their own check become "unchecked" and are put back up). Port 0 is
    /// the VIP's port; checked with the config file's rules.
    VipHealth {
        vip: String,
        #[serde(default)]
        health: Option<HealthSpec>,
    },
    /// Gives a backend its own health check, in place of the VIP's (kind
    /// `none`: not checked), or with `None` drops it (the VIP's applies).
    BackendHealth {
        vip: String,
        addr: IpAddr,
        #[serde(default)]
        health: Option<HealthSpec>,
    },
    /// Switches the data path's decision trace on, for one VIP or all, for
    /// `seconds` (default 60, at most 3600). Not persisted: a restart ends it.
    DebugOn {
        #[serde(default)]
        vip: Option<String>,
        #[serde(default)]
        seconds: Option<u64>,
    },
    DebugOff,
    /// Withdraws every route of this node's (`[announce]`): routers send
    /// new traffic to other nodes, and the balancer keeps forwarding what
    /// still arrives. Persisted: it survives a restart.
    NodeDrain,
    /// Announces again what the node should announce.
    NodeUndrain,
}
