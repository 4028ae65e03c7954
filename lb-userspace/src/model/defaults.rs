//! Every default and every allowed range of what an operator sets, in one
//! place: the config file, lbctl's flags and the API all take them from
//! here, so a bound is never written twice. Where the data path fixes a
//! bound (map sizes, the largest Maglev table), it comes from `lb_common`.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    ops::RangeInclusive,
    time::Duration,
};

// --- Where lbd finds and keeps things -------------------------------------

pub const DEFAULT_CONFIG_PATH: &str = "/etc/lb/lb.toml";
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/lb/lbd.sock";
/// Loopback only unless configured.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9469);
pub const DEFAULT_STATE_DIR: &str = "/var/lib/lb";

// --- The connection table -------------------------------------------------

/// IPVS's TCP established timeout.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(900);
/// IPVS's UDP timeout.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Bounds of the connection-table idle timeouts.
pub const IDLE_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(7 * 24 * 3600));

// --- Capacity (`[limits]`; a change needs a restart) ----------------------

pub const DEFAULT_MAX_VIPS: u32 = lb_common::DEFAULT_MAX_VIPS;
pub const DEFAULT_TABLE_POOL: u32 = lb_common::DEFAULT_TABLE_POOL;
pub const DEFAULT_CONNTRACK_SIZE: u32 = lb_common::CONNTRACK_MAX;
pub const MAX_VIPS_RANGE: RangeInclusive<u32> = 1..=lb_common::MAX_VIPS;
/// At least one table of 2 slots; at most 2^28 slots (1 GiB of table).
pub const TABLE_POOL_RANGE: RangeInclusive<u32> = 2..=(1 << 28);
/// The kernel splits the connection table's LRU over the possible CPUs, so
/// a very small table would leave each CPU a handful of flows.
pub const CONNTRACK_SIZE_RANGE: RangeInclusive<u32> = 1024..=(1 << 26);

// --- VIPs and backends ----------------------------------------------------

/// Table size used when a VIP does not ask for another one. Prime: the
/// largest table the data path takes, for the finest weights.
pub const DEFAULT_TABLE_SIZE: u32 = lb_common::MAGLEV_MAX_SIZE;
/// Largest weight a backend may have. Weights are relative; this bound keeps
/// the Maglev arithmetic far from overflow and matches IPVS's range.
pub const MAX_WEIGHT: u32 = 65535;
/// Bounds for weights, for messages (0 = drained).
pub const WEIGHT_RANGE: RangeInclusive<u32> = 0..=MAX_WEIGHT;
/// Weight of a backend added without one.
pub const DEFAULT_WEIGHT: u32 = 100;

// --- Tiers (`tier` per backend, `[vip.tiers]`) ----------------------------

/// The farthest tier a backend may have (0 = local).
pub const MAX_TIER: u8 = 15;
/// Envoy's overprovisioning factor, 1.4, in percent.
pub const DEFAULT_OVERPROVISIONING: u32 = 140;
/// Bounds of `overprovisioning`, in percent (1.0 ..= 10.0).
pub const OVERPROVISIONING_RANGE: RangeInclusive<u32> = 100..=1000;
/// Strict tiers: one healthy backend keeps a tier's traffic.
pub const DEFAULT_MIN_HEALTHY: u32 = 1;
pub const MIN_HEALTHY_RANGE: RangeInclusive<u32> = 1..=lb_common::MAX_BACKENDS;

// --- Discovery (fail static) ----------------------------------------------

/// An empty answer replaces a non-empty set only after persisting this long.
pub const DEFAULT_HOLD_EMPTY: Duration = Duration::from_secs(30);
/// One answer may remove at most this share of a set at once...
pub const DEFAULT_MAX_REMOVE_PERCENT: u32 = 50;
/// ...unless it persists this long.
pub const DEFAULT_HOLD_REMOVAL: Duration = Duration::from_secs(30);
/// How often a source is asked unless configured otherwise.
pub const DEFAULT_DISCOVERY_REFRESH: Duration = Duration::from_secs(10);
pub const DISCOVERY_REFRESH_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(3600));
/// A backend its source no longer lists drains this long, then leaves:
/// long enough for most requests in flight to finish.
pub const DEFAULT_DISCOVERY_DRAIN: Duration = Duration::from_secs(300);
/// The longest hold or drain a source may ask for.
pub const DISCOVERY_HOLD_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// One DNS query may take this long; then the source counts as failed
/// (stale) for this round.
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(2);

// --- The shared store (`[store]`) ----------------------------------------

/// Where lb's keys live in etcd; the `v1` names the key layout's version.
pub const DEFAULT_STORE_PREFIX: &str = "/lb/v1";
/// A node's status key lives this long without a keep-alive: a node cut
/// off from the store disappears from `lbctl cluster status` after it.
pub const STORE_NODE_TTL: Duration = Duration::from_secs(10);
/// How often a node proves its link to the store (a keep-alive of its
/// status lease); a failure marks the store unreachable.
pub const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long one request to the store may take before the store counts as
/// unreachable: short, because a node cut off should say so quickly (it
/// keeps forwarding meanwhile).
pub const STORE_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// etcd's default `--max-txn-ops`: a change or an import writing more
/// keys than this in one transaction is refused by etcd, so lb says so
/// first.
pub const STORE_MAX_TXN_OPS: usize = 128;
/// How long a change through lbctl waits for this node to apply the
/// revision it committed before answering "committed, not yet applied".
pub const STORE_APPLY_WAIT: Duration = Duration::from_secs(5);

// --- Health checks --------------------------------------------------------

pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_millis(500);
pub const DEFAULT_HEALTH_RISE: u32 = 2;
pub const DEFAULT_HEALTH_FALL: u32 = 3;
/// Bounds of a health check's interval.
pub const HEALTH_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(3600));
/// Bounds of `rise` and `fall`.
pub const HEALTH_COUNT_RANGE: RangeInclusive<u32> = 1..=100;
/// Bounds of an HTTP check's `expect_status`.
pub const HEALTH_STATUS_RANGE: RangeInclusive<u16> = 100..=599;

// --- ICMP "too big" answers -----------------------------------------------

/// Answers per second and CPU unless configured otherwise.
pub const DEFAULT_TOO_BIG_PER_SEC: u32 = 100;
/// The most answers one CPU sends at once after a quiet spell.
pub const TOO_BIG_MAX_BURST: u32 = 100;
/// Bounds of `[icmp] too_big_per_second`.
pub const TOO_BIG_RATE_RANGE: RangeInclusive<u32> = 1..=100_000;
