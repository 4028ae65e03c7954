//! The config file's shape, for serde: every table and key it may have,
//! each value still with its span so later errors can say where it is.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::model::{
    AnnounceWhen, AttachMode, Forwarding, HealthDecision, HealthKind, Proto, Role, Scheduler,
    TierMode,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// Required of lbd's config; a file given to `lbctl store import` may
    /// hold VIPs only.
    pub(super) interface: Option<Spanned<String>>,
    pub(super) xdp_mode: Option<AttachMode>,
    pub(super) control_socket: Option<Spanned<String>>,
    pub(super) metrics_listen: Option<Spanned<String>>,
    pub(super) state_dir: Option<Spanned<String>>,
    pub(super) read_group: Option<Spanned<String>>,
    pub(super) tcp_idle_timeout: Option<Spanned<String>>,
    pub(super) udp_idle_timeout: Option<Spanned<String>>,
    pub(super) encap: Option<RawEncap>,
    pub(super) limits: Option<RawLimits>,
    pub(super) icmp: Option<RawIcmp>,
    pub(super) announce: Option<Spanned<RawAnnounce>>,
    pub(super) store: Option<Spanned<RawStore>>,
    pub(super) health_decision: Option<Spanned<HealthDecision>>,
    pub(super) discovery: Option<RawDiscovery>,
    pub(super) api_listen: Option<Spanned<String>>,
    pub(super) api_tls_cert: Option<Spanned<String>>,
    pub(super) api_tls_key: Option<Spanned<String>>,
    pub(super) api_client_ca: Option<Spanned<String>>,
    /// Client identity (a certificate's SAN or subject CN) → role.
    pub(super) api_roles: Option<Spanned<std::collections::BTreeMap<String, Spanned<Role>>>>,
    #[serde(default)]
    pub(super) vip: Vec<Spanned<RawVip>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnnounce {
    pub(super) table: Option<Spanned<i64>>,
    pub(super) when: Option<AnnounceWhen>,
}

/// `[store]`: the shared desired state.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) kind: Spanned<String>,
    pub(super) endpoints: Spanned<Vec<Spanned<String>>>,
    pub(super) prefix: Option<Spanned<String>>,
    pub(super) node_name: Option<Spanned<String>>,
    pub(super) tls_ca: Option<Spanned<String>>,
    pub(super) tls_cert: Option<Spanned<String>>,
    pub(super) tls_key: Option<Spanned<String>>,
    pub(super) announce_before_read: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIcmp {
    pub(super) too_big: Option<bool>,
    pub(super) too_big_per_second: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_vips: Option<Spanned<i64>>,
    pub(super) table_pool: Option<Spanned<i64>>,
    pub(super) conntrack_size: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEncap {
    pub(super) source_v4: Option<Spanned<String>>,
    pub(super) source_v4_prefix: Option<Spanned<String>>,
    pub(super) source_v6: Option<Spanned<String>>,
    pub(super) source_v6_prefix: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVip {
    /// Optional: without it the VIP is named by its identity
    /// (`10.100.0.1:80/tcp`), as IPVS and Katran name services.
    pub(super) name: Option<Spanned<String>>,
    pub(super) address: Spanned<String>,
    pub(super) port: Option<Spanned<i64>>,
    pub(super) protocol: Proto,
    pub(super) scheduler: Option<Spanned<Scheduler>>,
    pub(super) forwarding: Option<Spanned<Forwarding>>,
    pub(super) conntrack: Option<bool>,
    pub(super) table_size: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) backends: Vec<Spanned<RawBackend>>,
    pub(super) health: Option<Spanned<RawHealth>>,
    pub(super) tiers: Option<Spanned<RawTiers>>,
    pub(super) backends_from: Option<Spanned<RawBackendsFrom>>,
}

/// `backends_from = { dns_srv = "...", refresh = "10s" }` or
/// `{ dns = "...", port = 80 }`, with the fail-static rules.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackendsFrom {
    pub(super) dns_srv: Option<Spanned<String>>,
    pub(super) dns: Option<Spanned<String>>,
    /// Backends registered in the store (with leases).
    pub(super) registered: Option<bool>,
    pub(super) port: Option<Spanned<i64>>,
    pub(super) refresh: Option<Spanned<String>>,
    pub(super) hold_empty: Option<Spanned<String>>,
    /// Percent.
    pub(super) max_remove: Option<Spanned<i64>>,
    pub(super) hold_removal: Option<Spanned<String>>,
    pub(super) drain: Option<Spanned<String>>,
}

/// `[discovery]`: how this node asks discovery sources.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiscovery {
    pub(super) nameservers: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[vip.tiers]`: how new flows spill to farther tiers.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTiers {
    pub(super) mode: Option<TierMode>,
    pub(super) overprovisioning: Option<Spanned<f64>>,
    pub(super) min_healthy: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) address: Spanned<String>,
    pub(super) weight: Option<Spanned<i64>>,
    /// 0 = local (the default); higher = farther away.
    pub(super) tier: Option<Spanned<i64>>,
    pub(super) drained: Option<bool>,
    /// The backend's own health check, merged over `[vip.health]`.
    pub(super) health: Option<Spanned<RawHealth>>,
}

/// `[vip.health]` or a backend's `health = { ... }`: the same keys. `kind` is
/// optional here because a backend's table may take it from the VIP's;
/// `[vip.health]` without it is refused in `Source::vip`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) kind: Option<HealthKind>,
    pub(super) port: Option<Spanned<i64>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) expect_status: Option<Spanned<i64>>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) rise: Option<Spanned<i64>>,
    pub(super) fall: Option<Spanned<i64>>,
}

/// One table of health keys (`[vip.health]` or a backend's `health`), with
/// where it is.
pub(super) struct HealthLayer<'a> {
    pub(super) span: Range<usize>,
    pub(super) kind: Option<HealthKind>,
    pub(super) port: Option<&'a Spanned<i64>>,
    pub(super) path: Option<&'a Spanned<String>>,
    pub(super) expect_status: Option<&'a Spanned<i64>>,
    pub(super) interval: Option<&'a Spanned<String>>,
    pub(super) timeout: Option<&'a Spanned<String>>,
    pub(super) rise: Option<&'a Spanned<i64>>,
    pub(super) fall: Option<&'a Spanned<i64>>,
}

impl<'a> HealthLayer<'a> {
    pub(super) fn new(h: &'a Spanned<RawHealth>) -> Self {
        let r = h.get_ref();
        HealthLayer {
            span: h.span(),
            kind: r.kind,
            port: r.port.as_ref(),
            path: r.path.as_ref(),
            expect_status: r.expect_status.as_ref(),
            interval: r.interval.as_ref(),
            timeout: r.timeout.as_ref(),
            rise: r.rise.as_ref(),
            fall: r.fall.as_ref(),
        }
    }
}
