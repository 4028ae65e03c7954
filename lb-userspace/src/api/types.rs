//! The control API between lbd and lbctl: HTTP/1.1 with JSON bodies over the
//! Unix socket (`curl --unix-socket /run/lb/lbd.sock http://lb/v1/status`).
//!
//! Reads are `GET`; every change is a `POST` of a [`Change`] to
//! [`PATH_CHANGE`], so the daemon has one place that validates, applies,
//! persists and audits changes. Errors come back as a non-2xx status with an
//! [`ErrorBody`]: 400 invalid request, 403 not allowed, 404 unknown VIP or
//! backend, 409 conflict (already exists), 500 the kernel refused.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use crate::announce::Reason;
pub use crate::model::Change;
use crate::model::{AnnounceWhen, Forwarding, HealthSpec, Scheduler, TierPolicy, TierShare, VipId};

pub const PATH_STATUS: &str = "/v1/status";
pub const PATH_STATS: &str = "/v1/stats";
/// `GET /v1/explain?src=ADDR&sport=PORT&vip=ADDR[:PORT]/PROTO[&dport=PORT]`
pub const PATH_EXPLAIN: &str = "/v1/explain";
pub const PATH_CHANGE: &str = "/v1/change";
/// `POST` with a [`ReloadRequest`].
pub const PATH_RELOAD: &str = "/v1/reload";
/// `GET`: the node's announcements and drain ([`NodeStatus`]).
pub const PATH_NODE: &str = "/v1/node";
/// `GET`: every node's report from the store, and the drift among them
/// ([`crate::store::report::ClusterView`]).
pub const PATH_CLUSTER: &str = "/v1/cluster";
/// `POST` a [`ClusterForget`].
pub const PATH_CLUSTER_FORGET: &str = "/v1/cluster/forget";
/// `POST` a [`StoreImport`]: make the store hold these VIPs.
pub const PATH_STORE_IMPORT: &str = "/v1/store/import";
/// `POST` a [`StoreRegister`]: a backend under a new lease ([`StoreLease`]).
pub const PATH_STORE_REGISTER: &str = "/v1/store/register";
/// `POST` a [`StoreLease`]: renews it once ([`StoreRenewed`]).
pub const PATH_STORE_RENEW: &str = "/v1/store/renew";
/// `GET`: the store's VIPs ([`StoreExport`]).
pub const PATH_STORE_EXPORT: &str = "/v1/store/export";
/// `GET /v1/debug?after=N`: the decision trace's state and its lines
/// numbered N and later ([`TraceView`]).
pub const PATH_DEBUG: &str = "/v1/debug";

/// The decision trace, as `GET /v1/debug` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceView {
    pub on: bool,
    /// The VIP traced (`None`: every VIP).
    pub vip: Option<String>,
    pub seconds_left: u64,
    /// Records per second and CPU the data path writes at most.
    pub rate_limit: u64,
    /// Records the rate limit left out since lbd started.
    pub suppressed: u64,
    /// Lines numbered from the `after` asked for, oldest first.
    pub lines: Vec<TraceLine>,
    /// The number to ask for next.
    pub next: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceLine {
    pub seq: u64,
    pub line: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeResult {
    /// What changed, one line per effect, for the operator.
    pub summary: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadRequest {
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadResult {
    /// The difference between the running state and the config file, one
    /// line per change (`+ vip ...`, `- backend ...`, `~ weight ...`).
    pub diff: Vec<String>,
    pub applied: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub interface: String,
    /// "native" or "generic".
    pub xdp_mode: String,
    pub program_id: u32,
    pub uptime_secs: u64,
    pub pin_dir: String,
    /// `[store]`: the link to the cluster's desired state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreStatus>,
    pub vips: Vec<VipStatus>,
}

/// A node's link to the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub node: String,
    /// The desired state's revision the maps hold.
    pub applied_revision: i64,
    /// The store has been read since lbd started.
    pub read: bool,
    pub reachable: bool,
    /// Since when the store has been reachable (or not), RFC 3339.
    pub since: String,
    /// The last failure to reach it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A later revision this node refused, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Nothing is announced until the store has been read.
    pub announcing_held: bool,
    /// How backend health is decided now (`local`, `quorum of N live
    /// nodes`, or the local fallback while the store is unreachable).
    #[serde(default)]
    pub health_decision: String,
}

/// `lbctl store import`: the VIPs the store should hold (all of them:
/// VIPs in the store and not here are removed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreImport {
    pub state: crate::state::DesiredState,
    #[serde(default)]
    pub dry_run: bool,
}

/// What an import did (or would do).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreImportResult {
    pub diff: Vec<String>,
    pub applied: bool,
    /// The desired state's revision after it (before it, for a dry run).
    pub revision: i64,
}

/// `lbctl cluster forget NODE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterForget {
    pub node: String,
}

/// `lbctl backend register`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreRegister {
    pub vip: String,
    pub addr: IpAddr,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub tier: Option<u8>,
    pub ttl_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreLease {
    pub lease: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreRenewed {
    /// False: the lease had expired (its backend is gone); register again.
    pub alive: bool,
}

/// `lbctl store export`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreExport {
    pub revision: i64,
    pub vips: Vec<crate::store::layout::StoredVip>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipStatus {
    pub vip: VipId,
    pub name: String,
    pub scheduler: Scheduler,
    pub forwarding: Forwarding,
    pub stateless: bool,
    pub packets: u64,
    pub bytes: u64,
    /// Packets and bytes per second over the daemon's last sampling second.
    #[serde(default)]
    pub pps: f64,
    #[serde(default)]
    pub bps: f64,
    /// Every backend is down and the VIP sends to all of them (fail open).
    #[serde(default)]
    pub fail_open: bool,
    /// The VIP's health check, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<HealthSpec>,
    /// A fingerprint of the live Maglev table by backend address (16 hex
    /// digits; `None`: no backend in it). Nodes with the same VIPs,
    /// backends, weights and health show the same value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_checksum: Option<String>,
    /// VIPs with backends beyond tier 0: the tier settings, and each tier's
    /// backends and share of new flows, nearest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier_policy: Option<TierPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<TierShare>,
    /// `backends_from`: the source and how it is doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryStatus>,
    pub backends: Vec<BackendStatus>,
}

/// A VIP's discovery source, for status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryStatus {
    /// `dns_srv NAME` or `dns NAME`.
    pub source: String,
    pub refresh: String,
    /// Backends it lists (as the fail-static rules let through).
    pub found: usize,
    /// Backends it no longer lists, draining before they leave.
    pub draining: usize,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_answer: Option<String>,
    /// Lookups fail since then: the set is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the fail-static rules hold back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// Records of the last answer that were left out, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
    /// The last answer could not be applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub addr: IpAddr,
    /// From the VIP's source (`backends_from`), not its list.
    #[serde(default)]
    pub discovered: bool,
    /// The configured weight (kept while drained).
    pub weight: u32,
    /// 0 = local; higher = farther away.
    #[serde(default)]
    pub tier: u8,
    /// "up", "down" (health) or "unchecked".
    pub health: String,
    /// The backend's own health check, in place of the VIP's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<HealthSpec>,
    pub drained: bool,
    /// The next hop is resolved (interface and MACs known).
    pub next_hop: bool,
    /// The next hop's egress MTU, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The largest packet a client may send that still fits once
    /// encapsulated; larger ones are answered with ICMP "too big".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_mtu: Option<u32>,
    /// Least-connections VIPs: the backend's active connections as the data
    /// path counts them (first packet to FIN or RST, or until its entry
    /// expires or is evicted; reconciled with the connection table every
    /// second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_connections: Option<u64>,
    pub packets: u64,
    pub bytes: u64,
    #[serde(default)]
    pub pps: f64,
    #[serde(default)]
    pub bps: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Global counters by label (`lb_common::Counter::label`).
    pub counters: Vec<(String, u64)>,
    pub vips: Vec<TrafficRow>,
    pub backends: Vec<TrafficRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrafficRow {
    pub vip: VipId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<IpAddr>,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explain {
    pub vip: VipId,
    pub flow: String,
    /// "connection table" or "maglev table".
    pub source: String,
    pub backend: Option<IpAddr>,
    /// Human-readable reasoning, line by line.
    pub reasons: Vec<String>,
}

/// `GET /v1/node`: what this node announces, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub drained: bool,
    /// When it was last drained or undrained (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// `[announce] table`; `None`: lbd writes no routes.
    pub table: Option<u32>,
    pub when: Option<AnnounceWhen>,
    /// The routing protocol number on lbd's routes.
    pub protocol: u8,
    pub addresses: Vec<AddressStatus>,
    /// Routes added or removed since lbd started.
    pub changes: u64,
    /// The last failure to update the table, if the last try failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressStatus {
    pub address: IpAddr,
    /// lbd's route to it is in the table.
    pub announced: bool,
    /// It should be.
    pub wanted: bool,
    pub reason: Reason,
    /// The reason, for people.
    pub why: String,
}
