//! The cluster's one desired state, in etcd (`[store]` in lbd's config).
//!
//! With a store, the VIPs (settings, backends, weights, drain, health
//! checks, tiers) come from it, and the config file keeps what belongs to
//! the node. Every node watches the store and applies each revision whole,
//! exactly as a reload is applied; a change through lbctl on any node is a
//! transaction that succeeds only if the store has not changed since the
//! revision the change was planned against.
//!
//! Key layout, under `prefix` (default `/lb/v1`):
//!
//! | key | value | written by |
//! | --- | --- | --- |
//! | `desired/vips/<proto>/<address>/<port>` | one VIP as JSON ([`layout::StoredVip`]) | changes, `lbctl store import` |
//! | `desired/revision` | who made the last change, and what ([`layout::ChangeNote`]); every change rewrites it, so its mod revision is the desired state's revision | changes, import |
//! | `nodes/<node>` | the node's report ([`report::NodeReport`]), on a lease kept alive while the node reaches the store | each lbd |
//!
//! [`layout`] encodes and decodes those keys (no I/O: unit-tested),
//! [`report`] is what a node publishes and how `lbctl cluster status`
//! reads drift from the reports, [`etcd`] talks to etcd.

pub mod etcd;
pub mod layout;
pub mod report;

use std::path::PathBuf;

/// `[store]`: where the desired state lives and how this node reaches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreSettings {
    /// `endpoints`: etcd's client URLs (`http://10.0.0.1:2379`; `https://`
    /// with `tls_ca`).
    pub endpoints: Vec<String>,
    /// `prefix`: every key of lb's is under it.
    pub prefix: String,
    /// `node_name` (default: the host name): this node's name in the store.
    pub node: String,
    /// `tls_ca`, `tls_cert`, `tls_key`.
    pub tls: Option<StoreTls>,
    /// `announce_before_read` (default false): whether a node that starts
    /// without reaching the store announces its last persisted state. By
    /// default it forwards that state but announces nothing until it has
    /// read the store, so a node that was away long does not attract
    /// traffic for VIPs the cluster has since changed.
    pub announce_before_read: bool,
}

/// TLS to etcd: the CA that signed etcd's server certificates and,
/// optionally, this node's client certificate and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreTls {
    pub ca: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
}
