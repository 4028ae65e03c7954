//! lbd's config file (TOML, by default `/etc/lb/lb.toml`).
//!
//! The file is read with serde; unknown keys are errors, and every error
//! names the file, the line and the key (`/etc/lb/lb.toml:12: vip[1] "api":
//! key `weigth` is not allowed (expected one of address, weight, drained)`).
//!
//! Reading happens in three steps, each refusing what it can see:
//! 1. TOML syntax ([`toml::de::DeTable`], which keeps every key's and
//!    value's byte span, so later errors can say where they are);
//! 2. shape: serde into the `Raw*` structs (unknown keys, wrong types,
//!    missing keys, unknown enum values);
//! 3. values: each key's own rules (ports, durations, prefixes, health
//!    timing), then the VIP set as a whole ([`Config::desired_state`]:
//!    duplicates, address families, encap sources, [`DesiredState::validate`]).
//!
//! [`load`] and [`parse`] run all three, so a [`Config`] they return always
//! gives a valid desired state.

use std::{
    collections::HashMap,
    fmt, fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use toml::{
    de::{DeTable, DeValue},
    Spanned,
};

use crate::{
    maps::{AttachMode, EncapSources, Limits, LoadOptions},
    service::{self, BackendSpec, Forwarding, Proto, Scheduler, SpecError, VipId, VipSettings},
    state::{BackendDesired, DesiredState, StateError, VipDesired, DEFAULT_WEIGHT},
};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/lb/lb.toml";
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/lb/lbd.sock";
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9469);
pub const DEFAULT_STATE_DIR: &str = "/var/lib/lb";
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(900);
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Bounds of the connection-table idle timeouts.
pub const IDLE_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(7 * 24 * 3600));

pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_millis(500);
pub const DEFAULT_HEALTH_RISE: u32 = 2;
pub const DEFAULT_HEALTH_FALL: u32 = 3;
/// Bounds of a health check's interval.
pub const HEALTH_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(3600));
/// Bounds of `rise` and `fall`.
pub const HEALTH_COUNT_RANGE: std::ops::RangeInclusive<u32> = 1..=100;
/// Bounds of an HTTP check's `expect_status`.
pub const HEALTH_STATUS_RANGE: std::ops::RangeInclusive<u16> = 100..=599;

/// Bounds of `[icmp] too_big_per_second`.
pub const TOO_BIG_RATE_RANGE: std::ops::RangeInclusive<u32> = 1..=100_000;

/// The daemon's configuration, as read from the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from (named in error messages).
    pub path: PathBuf,
    pub interface: String,
    pub xdp_mode: AttachMode,
    pub control_socket: PathBuf,
    pub metrics_listen: SocketAddr,
    pub state_dir: PathBuf,
    /// Members of this group may use the read-only API requests.
    pub read_group: Option<String>,
    pub tcp_idle_timeout: Duration,
    pub udp_idle_timeout: Duration,
    pub encap: EncapSources,
    /// `[limits]`: the balancer's capacity (a change needs a restart).
    pub limits: Limits,
    /// `[icmp] too_big` / `too_big_per_second`: answers per second and CPU
    /// to packets too big for the egress MTU once encapsulated; `None`: off
    /// (such packets are dropped, counted).
    pub too_big_per_second: Option<u32>,
    /// In file order.
    pub vips: Vec<VipConfig>,
}

/// One `[[vip]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipConfig {
    pub id: VipId,
    /// Name, settings, backends (in file order) and health check.
    pub desired: VipDesired,
    pub lines: VipLines,
}

/// Where a `[[vip]]` entry's keys are in the file (1-based lines), for
/// messages about it. A key that is absent has the entry's line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipLines {
    /// The `[[vip]]` header.
    pub entry: usize,
    pub name: usize,
    pub address: usize,
    pub forwarding: usize,
    pub table_size: usize,
    /// One per backend, in the order of `VipDesired::backends`.
    pub backends: Vec<usize>,
}

/// A health check (a VIP's `[vip.health]`, or a backend's own `health =
/// {...}` merged over it), with every default filled in. Persisted in the
/// desired state (JSON), durations as humantime strings; also the body of
/// the `vip-health` and `backend-health` changes, where omitted keys take
/// the config file's defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    pub kind: HealthKind,
    /// The port probed; the VIP's port unless set (0 only with kind `none`
    /// on a port-less VIP). 0 in a request means "the VIP's port".
    #[serde(default)]
    pub port: u16,
    /// HTTP request path (`/` by default); empty for other kinds.
    #[serde(default)]
    pub path: String,
    /// HTTP only; `None` = any 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    #[serde(with = "humantime_str", default = "default_interval")]
    pub interval: Duration,
    /// Always shorter than `interval`.
    #[serde(with = "humantime_str", default = "default_timeout")]
    pub timeout: Duration,
    /// Consecutive successes that bring a backend up.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that take a backend down.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

fn default_interval() -> Duration {
    DEFAULT_HEALTH_INTERVAL
}
fn default_timeout() -> Duration {
    DEFAULT_HEALTH_TIMEOUT
}
fn default_rise() -> u32 {
    DEFAULT_HEALTH_RISE
}
fn default_fall() -> u32 {
    DEFAULT_HEALTH_FALL
}

impl HealthSpec {
    /// A check of `kind` with the config file's defaults: the VIP's port,
    /// path `/` for http, interval 1s, timeout 500ms, rise 2, fall 3.
    pub fn new(kind: HealthKind) -> Self {
        HealthSpec {
            kind,
            port: 0,
            path: if kind == HealthKind::Http {
                "/".into()
            } else {
                String::new()
            },
            expect_status: None,
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            rise: DEFAULT_HEALTH_RISE,
            fall: DEFAULT_HEALTH_FALL,
        }
    }

    /// Whether it probes at all (kind `none` does not).
    pub fn is_active(&self) -> bool {
        self.kind != HealthKind::None
    }

    /// Fills in what comes from the VIP (port 0 = the VIP's port `vip_port`,
    /// an empty http path = `/`), then [`validate`](Self::validate)s: the
    /// spec as lbd stores it.
    pub fn resolve(mut self, vip_port: u16) -> Result<HealthSpec, HealthError> {
        if self.port == 0 {
            self.port = vip_port;
        }
        if self.kind == HealthKind::Http && self.path.is_empty() {
            self.path = "/".into();
        }
        self.validate(vip_port)?;
        Ok(self)
    }

    /// The config file's rules for a health check of a VIP with port
    /// `vip_port` (0 = every port): a port to probe unless kind `none`, and
    /// [`validate_settings`](Self::validate_settings).
    pub fn validate(&self, vip_port: u16) -> Result<(), HealthError> {
        if self.port == 0 && self.kind != HealthKind::None {
            return Err(HealthError::PortRequired {
                kind: self.kind,
                vip_port,
            });
        }
        self.validate_settings()
    }

    /// The rules that do not depend on the VIP: `path` and `expect_status`
    /// only for http (the path starting with '/', no whitespace), the
    /// status 100..=599, the interval 10ms..=1h, 0 < timeout < interval,
    /// rise and fall 1..=100.
    pub fn validate_settings(&self) -> Result<(), HealthError> {
        let kind = self.kind;
        if kind == HealthKind::Http {
            let p = &self.path;
            if !p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(HealthError::Path(p.clone()));
            }
        } else if !self.path.is_empty() {
            return Err(HealthError::OnlyHttp { key: "path", kind });
        }
        match self.expect_status {
            Some(_) if kind != HealthKind::Http => {
                return Err(HealthError::OnlyHttp {
                    key: "expect_status",
                    kind,
                })
            }
            Some(s) if !HEALTH_STATUS_RANGE.contains(&s) => {
                return Err(HealthError::ExpectStatus(s))
            }
            _ => {}
        }
        let (min, max) = HEALTH_INTERVAL_RANGE;
        if self.interval < min || self.interval > max {
            return Err(HealthError::Interval(self.interval));
        }
        if self.timeout.is_zero() || self.timeout >= self.interval {
            return Err(HealthError::Timeout {
                timeout: self.timeout,
                interval: self.interval,
            });
        }
        for (key, value) in [("rise", self.rise), ("fall", self.fall)] {
            if !HEALTH_COUNT_RANGE.contains(&value) {
                return Err(HealthError::Count { key, value });
            }
        }
        Ok(())
    }
}

/// Why a health check is refused; [`key`](Self::key) names the key at
/// fault (the config file's, which lbctl's flags follow).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthError {
    /// Port 0 for a check that probes (on a VIP without a port, when
    /// `vip_port` is 0).
    PortRequired {
        kind: HealthKind,
        vip_port: u16,
    },
    /// `path` or `expect_status` on a check that is not http.
    OnlyHttp {
        key: &'static str,
        kind: HealthKind,
    },
    Path(String),
    ExpectStatus(u16),
    Interval(Duration),
    Timeout {
        timeout: Duration,
        interval: Duration,
    },
    /// `rise` or `fall` out of range.
    Count {
        key: &'static str,
        value: u32,
    },
}

impl HealthError {
    pub fn key(&self) -> &'static str {
        match self {
            HealthError::PortRequired { .. } => "port",
            HealthError::OnlyHttp { key, .. } | HealthError::Count { key, .. } => key,
            HealthError::Path(_) => "path",
            HealthError::ExpectStatus(_) => "expect_status",
            HealthError::Interval(_) => "interval",
            HealthError::Timeout { .. } => "timeout",
        }
    }

    /// What is wrong, without the key.
    pub fn detail(&self) -> String {
        let d = |d: &Duration| humantime::format_duration(*d).to_string();
        match self {
            HealthError::PortRequired { kind, vip_port: 0 } => format!(
                "required: the VIP has no port (it takes every port), so the {kind} check needs one"
            ),
            HealthError::PortRequired { kind, .. } => {
                format!("required: the {kind} check has port 0")
            }
            HealthError::OnlyHttp { kind, .. } => {
                format!("only for kind = \"http\" (this check is \"{kind}\")")
            }
            HealthError::Path(p) => format!("{p:?} must start with '/' and have no whitespace"),
            HealthError::ExpectStatus(s) => format!(
                "{s} is out of range {}..={}",
                HEALTH_STATUS_RANGE.start(),
                HEALTH_STATUS_RANGE.end()
            ),
            HealthError::Interval(i) => {
                let (min, max) = HEALTH_INTERVAL_RANGE;
                format!("{} is out of range {}..={}", d(i), d(&min), d(&max))
            }
            HealthError::Timeout { timeout, interval } => format!(
                "the timeout {} must be more than 0 and less than the interval {}",
                d(timeout),
                d(interval)
            ),
            HealthError::Count { value, .. } => format!(
                "{value} is out of range {}..={}",
                HEALTH_COUNT_RANGE.start(),
                HEALTH_COUNT_RANGE.end()
            ),
        }
    }
}

/// In the config file's words: ``key `port` is required: ...``,
/// ``key `rise`: 0 is out of range 1..=100``.
impl fmt::Display for HealthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let detail = self.detail();
        match self {
            HealthError::PortRequired { .. } | HealthError::OnlyHttp { .. } => {
                write!(f, "key `{}` is {detail}", self.key())
            }
            _ => write!(f, "key `{}`: {detail}", self.key()),
        }
    }
}

impl std::error::Error for HealthError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    /// A TCP connection is accepted.
    Tcp,
    /// An HTTP GET answers with the expected status.
    Http,
    /// A UDP probe is not refused (no ICMP port unreachable).
    Udp,
    /// No check: backends are always up.
    None,
}

impl fmt::Display for HealthKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthKind::Tcp => "tcp",
            HealthKind::Http => "http",
            HealthKind::Udp => "udp",
            HealthKind::None => "none",
        })
    }
}

/// Durations as humantime strings (`"1s 500ms"`) in serde.
mod humantime_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// Why the config file is refused: `FILE:LINE[:COLUMN]: MESSAGE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based; `None` when the error is about the whole file.
    pub line: Option<usize>,
    /// 1-based, in characters; syntax errors only.
    pub column: Option<usize>,
    /// What is wrong, naming the VIP and the key where there is one.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn new(path: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.to_path_buf(),
            line,
            column: None,
            message: message.into(),
        }
    }
}

/// Reads and checks the config file: everything `lbd` needs to know is
/// wrong with it, short of what only the system can tell (the interface,
/// the group).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let bytes =
        fs::read(path).map_err(|e| ConfigError::new(path, None, format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = 1 + valid.iter().filter(|b| **b == b'\n').count();
        ConfigError::new(path, Some(line), "the file is not valid UTF-8")
    })?;
    parse(path, &text)
}

/// Parses and checks config text; `path` is only used in messages and kept
/// in [`Config::path`].
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let src = Source { path, text };
    let table = DeTable::parse(text).map_err(|e| src.syntax_error(&e))?;
    let index = Index::new(&table);
    let raw = RawConfig::deserialize(toml::de::Deserializer::from(table))
        .map_err(|e| src.shape_error(&index, &e))?;
    let config = src.convert(raw)?;
    config.desired_state()?;
    Ok(config)
}

impl Config {
    /// The desired state the file asks for, checked as a whole: VIPs unique
    /// by address, port and protocol and by name, backends of the VIP's
    /// family for `ipip`, an `[encap]` source for each `ipip` family, and
    /// [`DesiredState::validate`].
    pub fn desired_state(&self) -> Result<DesiredState, ConfigError> {
        let mut state = DesiredState::default();
        let mut ids: HashMap<VipId, &VipConfig> = HashMap::new();
        let mut names: HashMap<&str, &VipConfig> = HashMap::new();
        for v in &self.vips {
            let name = &v.desired.name;
            if let Some(first) = ids.get(&v.id) {
                return Err(self.error(
                    v.lines.address,
                    format!(
                        "vip {name:?}: VIP {} is already defined by vip {:?} (line {})",
                        v.id, first.desired.name, first.lines.entry
                    ),
                ));
            }
            if let Some(first) = names.get(name.as_str()) {
                return Err(self.error(
                    v.lines.name,
                    format!(
                        "vip {name:?}: key `name`: {name:?} is already the name of VIP {} (line {})",
                        first.id, first.lines.entry
                    ),
                ));
            }
            ids.insert(v.id, v);
            names.insert(name, v);

            service::validate_vip(&v.id, &v.desired.settings).map_err(|e| self.spec_error(v, e))?;
            // The operator's weights, drained or not, must be in range.
            let specs: Vec<BackendSpec> = v
                .desired
                .backends
                .iter()
                .map(|b| BackendSpec {
                    addr: b.addr,
                    weight: b.weight,
                })
                .collect();
            service::validate_backends(&v.id, &v.desired.settings, &specs)
                .map_err(|e| self.spec_error(v, e))?;

            if v.desired.settings.forwarding == Forwarding::Ipip {
                let (has, family, v46) = match v.id.addr {
                    IpAddr::V4(_) => (self.encap.v4.is_some(), "IPv4", "v4"),
                    IpAddr::V6(_) => (self.encap.v6.is_some(), "IPv6", "v6"),
                };
                if !has {
                    return Err(self.error(
                        v.lines.forwarding,
                        format!(
                            "vip {name:?}: ipip forwarding of {family} VIP {} needs an outer \
                             source address: set source_{v46} or source_{v46}_prefix in [encap]",
                            v.id
                        ),
                    ));
                }
            }
            state.vips.insert(v.id, v.desired.clone());
        }
        state.validate().map_err(|e| self.state_error(e))?;
        state
            .check_capacity(&self.limits)
            .map_err(|e| self.state_error(e))?;
        Ok(state)
    }

    /// The program's load-time settings this file fixes.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            tcp_idle_timeout: self.tcp_idle_timeout,
            udp_idle_timeout: self.udp_idle_timeout,
            limits: self.limits,
            ..LoadOptions::default()
        }
    }

    /// The VIP a name or `ADDR[:PORT]/PROTO` names.
    pub fn vip(&self, vip: &str) -> Option<&VipConfig> {
        let id = crate::state::parse_vip(vip).ok();
        self.vips
            .iter()
            .find(|v| Some(v.id) == id)
            .or_else(|| self.vips.iter().find(|v| v.desired.name == vip))
    }

    fn error(&self, line: usize, message: String) -> ConfigError {
        ConfigError::new(&self.path, Some(line), message)
    }

    fn spec_error(&self, v: &VipConfig, e: SpecError) -> ConfigError {
        let backend_line = |addr: IpAddr, last: bool| {
            let mut lines = v
                .desired
                .backends
                .iter()
                .zip(&v.lines.backends)
                .filter(|(b, _)| b.addr == addr)
                .map(|(_, l)| *l);
            let line = if last {
                lines.next_back()
            } else {
                lines.next()
            };
            line.unwrap_or(v.lines.entry)
        };
        let line = match &e {
            SpecError::TableSize(_) => v.lines.table_size,
            SpecError::DuplicateBackend { backend, .. } => backend_line(*backend, true),
            SpecError::BadBackendAddr(backend)
            | SpecError::FamilyMismatch { backend, .. }
            | SpecError::Weight { backend, .. } => backend_line(*backend, false),
            // BadVipAddr, and whatever else is about the VIP itself.
            _ => v.lines.address,
        };
        self.error(line, format!("vip {:?}: {e}", v.desired.name))
    }

    fn state_error(&self, e: StateError) -> ConfigError {
        let line = match &e {
            StateError::TooManyVips { max, .. } => {
                self.vips.get(*max as usize).map(|v| v.lines.entry)
            }
            // The first VIP (in file order) whose table no longer fits.
            StateError::TablePool { max, .. } => {
                let mut need = 0u64;
                self.vips
                    .iter()
                    .find(|v| {
                        need += 2 * u64::from(v.desired.settings.table_size);
                        need > u64::from(*max)
                    })
                    .map(|v| v.lines.table_size)
            }
            StateError::DuplicateName(name) => self
                .vips
                .iter()
                .filter(|v| &v.desired.name == name)
                .nth(1)
                .map(|v| v.lines.name),
            _ => None,
        };
        ConfigError::new(&self.path, line, e.to_string())
    }
}

// ---------------------------------------------------------------------------
// The file's shape, for serde.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interface: Spanned<String>,
    xdp_mode: Option<AttachMode>,
    control_socket: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    read_group: Option<Spanned<String>>,
    tcp_idle_timeout: Option<Spanned<String>>,
    udp_idle_timeout: Option<Spanned<String>>,
    encap: Option<RawEncap>,
    limits: Option<RawLimits>,
    icmp: Option<RawIcmp>,
    #[serde(default)]
    vip: Vec<Spanned<RawVip>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIcmp {
    too_big: Option<bool>,
    too_big_per_second: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_vips: Option<Spanned<i64>>,
    table_pool: Option<Spanned<i64>>,
    conntrack_size: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEncap {
    source_v4: Option<Spanned<String>>,
    source_v4_prefix: Option<Spanned<String>>,
    source_v6: Option<Spanned<String>>,
    source_v6_prefix: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    /// Optional: without it the VIP is named by its identity
    /// (`10.100.0.1:80/tcp`), as IPVS and Katran name services.
    name: Option<Spanned<String>>,
    address: Spanned<String>,
    port: Option<Spanned<i64>>,
    protocol: Proto,
    scheduler: Option<Scheduler>,
    forwarding: Option<Spanned<Forwarding>>,
    conntrack: Option<bool>,
    table_size: Option<Spanned<i64>>,
    #[serde(default)]
    backends: Vec<Spanned<RawBackend>>,
    health: Option<Spanned<RawHealth>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Spanned<String>,
    weight: Option<Spanned<i64>>,
    drained: Option<bool>,
    /// The backend's own health check, merged over `[vip.health]`.
    health: Option<Spanned<RawHealth>>,
}

/// `[vip.health]` or a backend's `health = { ... }`: the same keys. `kind` is
/// optional here because a backend's table may take it from the VIP's;
/// `[vip.health]` without it is refused in `Source::vip`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    kind: Option<HealthKind>,
    port: Option<Spanned<i64>>,
    path: Option<Spanned<String>>,
    expect_status: Option<Spanned<i64>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
}

/// One table of health keys (`[vip.health]` or a backend's `health`), with
/// where it is.
struct HealthLayer<'a> {
    span: Range<usize>,
    kind: Option<HealthKind>,
    port: Option<&'a Spanned<i64>>,
    path: Option<&'a Spanned<String>>,
    expect_status: Option<&'a Spanned<i64>>,
    interval: Option<&'a Spanned<String>>,
    timeout: Option<&'a Spanned<String>>,
    rise: Option<&'a Spanned<i64>>,
    fall: Option<&'a Spanned<i64>>,
}

impl<'a> HealthLayer<'a> {
    fn new(h: &'a Spanned<RawHealth>) -> Self {
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

// ---------------------------------------------------------------------------
// Steps 1 and 3: the text, for line numbers, and the value rules.

struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

type Checked<T> = Result<T, ConfigError>;

impl Source<'_> {
    /// 1-based line and column (in characters) of a byte offset.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text.as_bytes()[..offset];
        let line = 1 + before.iter().filter(|b| **b == b'\n').count();
        let start = before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let column = 1 + String::from_utf8_lossy(&before[start..]).chars().count();
        (line, column)
    }

    /// An error at `span`: `ctx: message`.
    fn at(&self, span: Range<usize>, ctx: &str, message: impl fmt::Display) -> ConfigError {
        let message = if ctx.is_empty() {
            message.to_string()
        } else {
            format!("{ctx}: {message}")
        };
        ConfigError::new(self.path, Some(self.line_col(span.start).0), message)
    }

    fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
        let mut message = e.message().trim_end().replace('\n', "; ");
        let (line, column) = match e.span() {
            Some(span) => {
                if message == "duplicate key" {
                    if let Some(key) = self.text.get(span.clone()) {
                        message = format!("duplicate key `{}`", key.trim());
                    }
                }
                let (l, c) = self.line_col(span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        ConfigError {
            path: self.path.to_path_buf(),
            line,
            column,
            message,
        }
    }

    /// A serde error (unknown key, wrong type, missing key, unknown value),
    /// told with the VIP and key it is about.
    fn shape_error(&self, index: &Index, e: &toml::de::Error) -> ConfigError {
        let msg = e.message();
        let Some(span) = e.span() else {
            return ConfigError::new(self.path, None, tidy(msg));
        };
        let line = Some(self.line_col(span.start).0);
        let at_top = span == index.top || (span.is_empty() && span.start == 0);

        if let Some(rest) = msg.strip_prefix("unknown field `") {
            let (key, expected) = rest.split_once('`').unwrap_or((rest, ""));
            let table = match index.by_key(&span) {
                Some(entry) => &entry.path[..entry.path.len() - 1],
                None if at_top => &[],
                None => index.by_value(&span).map_or(&[][..], |e| &e.path[..]),
            };
            let expected = expected
                .trim_start_matches(", ")
                .trim_start_matches("expected one of ")
                .trim_start_matches("expected ")
                .replace('`', "")
                .replace(" or ", ", ");
            let expected = if expected == "there are no fields" {
                String::new()
            } else {
                format!(" (expected one of {expected})")
            };
            let message = format!("key `{key}` is not allowed{expected}");
            return ConfigError::new(self.path, line, index.with_context(table, message));
        }
        if let Some(rest) = msg.strip_prefix("missing field `") {
            let key = rest.trim_end_matches('`');
            let table = match index.by_value(&span) {
                Some(entry) if !at_top => &entry.path[..],
                _ => &[],
            };
            let message = format!("key `{key}` is required");
            return ConfigError::new(self.path, line, index.with_context(table, message));
        }
        let entry = if at_top { None } else { index.by_value(&span) };
        let message = match entry {
            Some(entry) => match entry.path.split_last() {
                Some((Seg::Key(key), table)) => {
                    index.with_context(table, format!("key `{key}`: {}", tidy(msg)))
                }
                _ => index.with_context(&entry.path, tidy(msg)),
            },
            None => tidy(msg),
        };
        ConfigError::new(self.path, line, message)
    }

    fn convert(&self, raw: RawConfig) -> Checked<Config> {
        let interface = self.interface(&raw.interface)?;
        let path = |v: &Option<Spanned<String>>, key: &str, default: &str| -> Checked<PathBuf> {
            match v {
                None => Ok(PathBuf::from(default)),
                Some(v) if v.get_ref().is_empty() => {
                    Err(self.at(v.span(), "", format!("key `{key}`: the path is empty")))
                }
                Some(v) => Ok(PathBuf::from(v.get_ref())),
            }
        };
        let control_socket = path(
            &raw.control_socket,
            "control_socket",
            DEFAULT_CONTROL_SOCKET,
        )?;
        let state_dir = path(&raw.state_dir, "state_dir", DEFAULT_STATE_DIR)?;
        let metrics_listen = match &raw.metrics_listen {
            None => DEFAULT_METRICS_LISTEN,
            Some(v) => v.get_ref().trim().parse().map_err(|_| {
                self.at(
                    v.span(),
                    "",
                    format!(
                        "key `metrics_listen`: {:?} is not ADDRESS:PORT (e.g. \"127.0.0.1:9469\" \
                         or \"[::1]:9469\")",
                        v.get_ref()
                    ),
                )
            })?,
        };
        let read_group = match &raw.read_group {
            None => None,
            Some(g) if g.get_ref().trim().is_empty() => {
                return Err(self.at(g.span(), "", "key `read_group`: the group name is empty"))
            }
            Some(g) => Some(g.get_ref().trim().to_string()),
        };
        let idle = |v: &Option<Spanned<String>>, key: &str, default| -> Checked<Duration> {
            let Some(v) = v else { return Ok(default) };
            let d = self.duration(v, "", key)?;
            let (min, max) = IDLE_TIMEOUT_RANGE;
            if d < min || d > max {
                return Err(self.at(
                    v.span(),
                    "",
                    format!(
                        "key `{key}`: {} is out of range {}..={}",
                        v.get_ref(),
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                ));
            }
            Ok(d)
        };
        let tcp_idle_timeout = idle(
            &raw.tcp_idle_timeout,
            "tcp_idle_timeout",
            DEFAULT_TCP_IDLE_TIMEOUT,
        )?;
        let udp_idle_timeout = idle(
            &raw.udp_idle_timeout,
            "udp_idle_timeout",
            DEFAULT_UDP_IDLE_TIMEOUT,
        )?;
        let encap = match &raw.encap {
            None => EncapSources::default(),
            Some(e) => self.encap(e)?,
        };
        let limits = match &raw.limits {
            None => Limits::default(),
            Some(l) => self.limits(l)?,
        };
        let too_big_per_second = match &raw.icmp {
            None => Some(crate::maps::DEFAULT_TOO_BIG_PER_SEC),
            Some(i) => {
                let rate = match &i.too_big_per_second {
                    None => crate::maps::DEFAULT_TOO_BIG_PER_SEC,
                    Some(v) => self.int(v, "[icmp]", "too_big_per_second", TOO_BIG_RATE_RANGE)?,
                };
                i.too_big.unwrap_or(true).then_some(rate)
            }
        };
        let vips = raw
            .vip
            .iter()
            .enumerate()
            .map(|(i, v)| self.vip(i, v))
            .collect::<Checked<_>>()?;
        Ok(Config {
            path: self.path.to_path_buf(),
            interface,
            xdp_mode: raw.xdp_mode.unwrap_or(AttachMode::Auto),
            control_socket,
            metrics_listen,
            state_dir,
            read_group,
            tcp_idle_timeout,
            udp_idle_timeout,
            encap,
            limits,
            too_big_per_second,
            vips,
        })
    }

    fn limits(&self, l: &RawLimits) -> Checked<Limits> {
        use crate::maps::{CONNTRACK_SIZE_RANGE, MAX_VIPS_RANGE, TABLE_POOL_RANGE};
        let d = Limits::default();
        let key = |v: &Option<Spanned<i64>>, name: &str, default: u32, range| match v {
            None => Ok(default),
            Some(v) => self.int(v, "[limits]", name, range),
        };
        Ok(Limits {
            max_vips: key(&l.max_vips, "max_vips", d.max_vips, MAX_VIPS_RANGE)?,
            table_pool: key(&l.table_pool, "table_pool", d.table_pool, TABLE_POOL_RANGE)?,
            conntrack_size: key(
                &l.conntrack_size,
                "conntrack_size",
                d.conntrack_size,
                CONNTRACK_SIZE_RANGE,
            )?,
        })
    }

    /// Linux's rules for interface names (`dev_valid_name`).
    fn interface(&self, v: &Spanned<String>) -> Checked<String> {
        let name = v.get_ref();
        let problem = if name.is_empty() {
            Some("the name is empty")
        } else if name.len() > 15 {
            Some("the name is longer than 15 bytes")
        } else if name == "." || name == ".." {
            Some("not an interface name")
        } else if name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
        {
            Some("interface names have no '/', ':' or whitespace")
        } else {
            None
        };
        match problem {
            Some(p) => Err(self.at(v.span(), "", format!("key `interface`: {name:?}: {p}"))),
            None => Ok(name.clone()),
        }
    }

    fn duration(&self, v: &Spanned<String>, ctx: &str, key: &str) -> Checked<Duration> {
        humantime::parse_duration(v.get_ref().trim()).map_err(|e| {
            self.at(
                v.span(),
                ctx,
                format!(
                    "key `{key}`: {:?} is not a duration like \"1s\" or \"500ms\" ({e})",
                    v.get_ref()
                ),
            )
        })
    }

    fn int<T>(
        &self,
        v: &Spanned<i64>,
        ctx: &str,
        key: &str,
        range: std::ops::RangeInclusive<T>,
    ) -> Checked<T>
    where
        T: TryFrom<i64> + PartialOrd + fmt::Display + Copy,
    {
        match T::try_from(*v.get_ref()) {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(self.at(
                v.span(),
                ctx,
                format!(
                    "key `{key}`: {} is out of range {}..={}",
                    v.get_ref(),
                    range.start(),
                    range.end()
                ),
            )),
        }
    }

    fn encap(&self, e: &RawEncap) -> Checked<EncapSources> {
        let ctx = "[encap]";
        let v4 = self.source(ctx, "v4", &e.source_v4, &e.source_v4_prefix, 32, |s| {
            Ipv4Addr::from_str(s)
                .ok()
                .map(|a| (u32::from(a) as u128, a))
        })?;
        let v6 = self.source(ctx, "v6", &e.source_v6, &e.source_v6_prefix, 128, |s| {
            Ipv6Addr::from_str(s).ok().map(|a| (u128::from(a), a))
        })?;
        Ok(EncapSources { v4, v6 })
    }

    /// `source_vN` (an address) or `source_vN_prefix` (`ADDR/LEN`, the host
    /// bits zero): the outer source of one family.
    fn source<A: fmt::Display + Copy + Into<IpAddr>>(
        &self,
        ctx: &str,
        family: &str,
        addr: &Option<Spanned<String>>,
        prefix: &Option<Spanned<String>>,
        bits: u8,
        parse: impl Fn(&str) -> Option<(u128, A)>,
    ) -> Checked<Option<(A, u8)>> {
        let not_addr = |v: &Spanned<String>, key: &str, what: &str| {
            self.at(
                v.span(),
                ctx,
                format!("key `{key}`: {:?} is not an IP{family} {what}", v.get_ref()),
            )
        };
        let usable = |a: A, v: &Spanned<String>, key: &str| {
            let ip: IpAddr = a.into();
            if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255])
            {
                Err(self.at(
                    v.span(),
                    ctx,
                    format!("key `{key}`: {ip} is not usable as a source address"),
                ))
            } else {
                Ok(())
            }
        };
        match (addr, prefix) {
            (Some(_), Some(p)) => Err(self.at(
                p.span(),
                ctx,
                format!(
                    "key `source_{family}_prefix`: set either source_{family} or \
                     source_{family}_prefix, not both"
                ),
            )),
            (Some(v), None) => {
                let key = format!("source_{family}");
                let (_, a) =
                    parse(v.get_ref().trim()).ok_or_else(|| not_addr(v, &key, "address"))?;
                usable(a, v, &key)?;
                Ok(Some((a, bits)))
            }
            (None, Some(v)) => {
                let key = format!("source_{family}_prefix");
                let s = v.get_ref().trim();
                let bad = || not_addr(v, &key, "prefix (ADDRESS/LENGTH)");
                let (a, len) = s.split_once('/').ok_or_else(bad)?;
                let (n, a) = parse(a).ok_or_else(bad)?;
                let len: u8 = len
                    .parse()
                    .ok()
                    .filter(|l| (1..=bits).contains(l))
                    .ok_or_else(bad)?;
                let host_mask = (1u128 << (bits - len)) - 1;
                if n & host_mask != 0 {
                    let net = network(n & !host_mask, bits);
                    return Err(self.at(
                        v.span(),
                        ctx,
                        format!("key `{key}`: {s} has host bits set (did you mean {net}/{len}?)"),
                    ));
                }
                usable(a, v, &key)?;
                Ok(Some((a, len)))
            }
            (None, None) => Ok(None),
        }
    }

    fn vip(&self, i: usize, sv: &Spanned<RawVip>) -> Checked<VipConfig> {
        let v = sv.get_ref();
        let line = |span: Range<usize>| self.line_col(span.start).0;
        let entry = line(sv.span());

        let given = v.name.as_ref().map(|n| n.get_ref().trim());
        if let (Some(n), Some(name)) = (&v.name, given) {
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err(self.at(
                    n.span(),
                    &format!("vip[{i}]"),
                    format!("key `name`: {:?} is not a usable name", n.get_ref()),
                ));
            }
        }
        let ctx = match given {
            Some(name) => format!("vip {name:?}"),
            None => format!("vip[{i}]"),
        };
        let addr: IpAddr = v.address.get_ref().trim().parse().map_err(|_| {
            self.at(
                v.address.span(),
                &ctx,
                format!(
                    "key `address`: {:?} is not an IP address",
                    v.address.get_ref()
                ),
            )
        })?;
        let port = match &v.port {
            None => 0,
            Some(p) if *p.get_ref() == 0 => {
                return Err(self.at(
                    p.span(),
                    &ctx,
                    "key `port`: port 0 is not allowed: omit port for every port",
                ))
            }
            Some(p) => self.int(p, &ctx, "port", 1..=u16::MAX)?,
        };
        let id = VipId {
            addr,
            port,
            proto: v.protocol,
        };
        let table_size = match &v.table_size {
            None => VipSettings::default().table_size,
            Some(t) => {
                let n = *t.get_ref();
                match u32::try_from(n) {
                    Ok(n) if n <= lb_common::MAGLEV_MAX_SIZE && crate::maglev::is_prime(n) => n,
                    _ => {
                        return Err(self.at(
                            t.span(),
                            &ctx,
                            format!(
                                "key `table_size`: {n} is not a prime between 2 and {}",
                                lb_common::MAGLEV_MAX_SIZE
                            ),
                        ))
                    }
                }
            }
        };
        let settings = VipSettings {
            scheduler: v.scheduler.unwrap_or_default(),
            forwarding: v
                .forwarding
                .as_ref()
                .map(|f| *f.get_ref())
                .unwrap_or_default(),
            stateless: !v.conntrack.unwrap_or(true),
            table_size,
        };

        let mut backends = Vec::with_capacity(v.backends.len());
        let mut backend_lines = Vec::with_capacity(v.backends.len());
        for (j, sb) in v.backends.iter().enumerate() {
            let b = sb.get_ref();
            let addr: IpAddr = b.address.get_ref().trim().parse().map_err(|_| {
                self.at(
                    b.address.span(),
                    &format!("{ctx}: backends[{j}]"),
                    format!(
                        "key `address`: {:?} is not an IP address",
                        b.address.get_ref()
                    ),
                )
            })?;
            let bctx = format!("{ctx}: backend {addr}");
            let weight = match &b.weight {
                None => DEFAULT_WEIGHT,
                Some(w) => self.int(w, &bctx, "weight", crate::state::WEIGHT_RANGE)?,
            };
            backends.push(BackendDesired {
                addr,
                weight,
                drained: b.drained.unwrap_or(false),
                health: None,
            });
            backend_lines.push(line(sb.span()));
        }

        let vip_layer = v.health.as_ref().map(HealthLayer::new);
        let health = match &vip_layer {
            None => None,
            // Worded as the other missing keys are (see `shape_error`): serde
            // cannot require `kind` of a struct that backends' tables share.
            Some(h) if h.kind.is_none() => {
                let table = match given {
                    Some(name) => format!("vip[{i}] {name:?}: [vip.health]"),
                    None => format!("vip[{i}]: [vip.health]"),
                };
                return Err(self.at(h.span.clone(), &table, "key `kind` is required"));
            }
            Some(h) => Some(self.health(&format!("{ctx}: [vip.health]"), port, h, None)?),
        };
        // Each backend's own check: its keys over the VIP's.
        for (sb, desired) in v.backends.iter().zip(&mut backends) {
            if let Some(h) = &sb.get_ref().health {
                let bctx = format!("{ctx}: backend {}: [vip.backends.health]", desired.addr);
                let layer = HealthLayer::new(h);
                desired.health = Some(self.health(&bctx, port, &layer, vip_layer.as_ref())?);
            }
        }

        Ok(VipConfig {
            id,
            desired: VipDesired {
                name: given.map_or_else(|| id.to_string(), str::to_string),
                settings,
                backends,
                health,
            },
            lines: VipLines {
                entry,
                name: v.name.as_ref().map_or(entry, |n| line(n.span())),
                address: line(v.address.span()),
                forwarding: v.forwarding.as_ref().map_or(entry, |f| line(f.span())),
                table_size: v.table_size.as_ref().map_or(entry, |t| line(t.span())),
                backends: backend_lines,
            },
        })
    }

    /// A health check from its table `over` and, for a backend's own check,
    /// the VIP's table `base` under it (`over`'s keys win; the VIP's
    /// http-only keys are not inherited by a check of another kind). Each
    /// value is read where it is; the rules ([`HealthSpec::validate`]) are
    /// then told at the key that breaks them.
    fn health(
        &self,
        ctx: &str,
        vip_port: u16,
        over: &HealthLayer,
        base: Option<&HealthLayer>,
    ) -> Checked<HealthSpec> {
        let Some(kind) = over.kind.or(base.and_then(|b| b.kind)) else {
            return Err(self.at(
                over.span.clone(),
                ctx,
                "key `kind` is required: the VIP has no [vip.health] to take it from",
            ));
        };
        let http = kind == HealthKind::Http;
        // Each key's value and whether the VIP's table gave it.
        macro_rules! pick {
            ($key:ident, $inherit:expr) => {
                match (over.$key, base.and_then(|b| b.$key).filter(|_| $inherit)) {
                    (Some(v), _) => Some((v, false)),
                    (None, Some(v)) => Some((v, true)),
                    (None, None) => None,
                }
            };
        }
        let port_v = pick!(port, true);
        let path_v = pick!(path, http);
        let status_v = pick!(expect_status, http);
        let interval_v = pick!(interval, true);
        let timeout_v = pick!(timeout, true);
        let rise_v = pick!(rise, true);
        let fall_v = pick!(fall, true);

        let port = match port_v {
            Some((p, _)) => self.int(p, ctx, "port", 1..=u16::MAX)?,
            None => 0,
        };
        let expect_status = match status_v {
            // Not http: refused below as only for http, whatever its value.
            Some((s, _)) if !http => Some(self.int(s, ctx, "expect_status", 0..=u16::MAX)?),
            Some((s, _)) => Some(self.int(s, ctx, "expect_status", HEALTH_STATUS_RANGE)?),
            None => None,
        };
        let interval = match interval_v {
            None => DEFAULT_HEALTH_INTERVAL,
            Some((v, _)) => self.duration(v, ctx, "interval")?,
        };
        let timeout = match timeout_v {
            None => DEFAULT_HEALTH_TIMEOUT,
            Some((v, _)) => self.duration(v, ctx, "timeout")?,
        };
        let count = |v: Option<(&Spanned<i64>, bool)>, key: &str, default: u32| match v {
            None => Ok(default),
            Some((v, _)) => self.int(v, ctx, key, HEALTH_COUNT_RANGE),
        };
        let spec = HealthSpec {
            kind,
            port,
            path: path_v.map(|(p, _)| p.get_ref().clone()).unwrap_or_default(),
            expect_status,
            interval,
            timeout,
            rise: count(rise_v, "rise", DEFAULT_HEALTH_RISE)?,
            fall: count(fall_v, "fall", DEFAULT_HEALTH_FALL)?,
        };
        // A key's place: where it was given, else the table's.
        let span_of = |given: Option<Range<usize>>| given.unwrap_or_else(|| over.span.clone());
        spec.resolve(vip_port).map_err(|e| match &e {
            HealthError::PortRequired { .. } => self.at(over.span.clone(), ctx, &e),
            HealthError::OnlyHttp { key, .. } => {
                let given = match *key {
                    "path" => over.path.map(|p| p.span()),
                    _ => over.expect_status.map(|s| s.span()),
                };
                self.at(span_of(given), ctx, &e)
            }
            HealthError::Path(_) => self.at(span_of(path_v.map(|(p, _)| p.span())), ctx, &e),
            HealthError::ExpectStatus(_) => {
                self.at(span_of(status_v.map(|(s, _)| s.span())), ctx, &e)
            }
            HealthError::Interval(_) => {
                self.at(span_of(interval_v.map(|(i, _)| i.span())), ctx, &e)
            }
            HealthError::Count { key, .. } => {
                let given = if *key == "rise" { rise_v } else { fall_v };
                self.at(span_of(given.map(|(v, _)| v.span())), ctx, &e)
            }
            HealthError::Timeout { timeout, interval } => {
                // Blame what this table set: its timeout, else its interval;
                // for a backend's own check, the VIP's table comes last.
                let (span, key) = [
                    (over.timeout, "timeout"),
                    (over.interval, "interval"),
                    (base.and_then(|b| b.timeout), "timeout"),
                    (base.and_then(|b| b.interval), "interval"),
                ]
                .into_iter()
                .find_map(|(v, key)| v.map(|v| (v.span(), key)))
                .unwrap_or((over.span.clone(), "timeout"));
                let from = match timeout_v {
                    None => " (the default)",
                    Some((_, true)) => " (from [vip.health])",
                    Some((_, false)) => "",
                };
                self.at(
                    span,
                    ctx,
                    format!(
                        "key `{key}`: the timeout {}{from} must be more than 0 and less than \
                         the interval {}",
                        humantime::format_duration(*timeout),
                        humantime::format_duration(*interval)
                    ),
                )
            }
        })
    }
}

/// The network address of a prefix, for messages.
fn network(n: u128, bits: u8) -> IpAddr {
    if bits == 32 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

/// Serde's wording, for operators.
fn tidy(msg: &str) -> String {
    let mut msg = msg
        .trim_end()
        .replace("unknown variant", "unknown value")
        .replace("expected i64", "expected an integer")
        .replace("expected a sequence", "expected an array")
        .replace("invalid type: map", "invalid type: table");
    // "expected struct RawBackend" -> "expected a table"
    while let Some(at) = msg.find("expected struct ") {
        let rest = &msg[at + "expected struct ".len()..];
        let end = rest
            .find(|c: char| !c.is_alphanumeric() && c != '_')
            .unwrap_or(rest.len());
        msg = format!("{}expected a table{}", &msg[..at], &rest[end..]);
    }
    msg
}

// ---------------------------------------------------------------------------
// Step 2's locations: where every key and value is, so a serde error (which
// has a span but no key path) can name its VIP and key.

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

struct Entry {
    path: Vec<Seg>,
    key: Option<Range<usize>>,
    value: Range<usize>,
    string: Option<String>,
}

struct Index {
    /// The document's own span (where "missing field" errors of top-level
    /// keys point).
    top: Range<usize>,
    entries: Vec<Entry>,
}

impl Index {
    fn new(doc: &Spanned<DeTable<'_>>) -> Index {
        let mut index = Index {
            top: doc.span(),
            entries: Vec::new(),
        };
        index.table(&mut Vec::new(), doc.get_ref());
        index
    }

    fn table(&mut self, path: &mut Vec<Seg>, t: &DeTable<'_>) {
        for (k, v) in t.iter() {
            path.push(Seg::Key(k.get_ref().to_string()));
            self.push(path, Some(k.span()), v);
            path.pop();
        }
    }

    fn push(&mut self, path: &mut Vec<Seg>, key: Option<Range<usize>>, v: &Spanned<DeValue<'_>>) {
        self.entries.push(Entry {
            path: path.clone(),
            key,
            value: v.span(),
            string: v.get_ref().as_str().map(str::to_string),
        });
        if let Some(t) = v.get_ref().as_table() {
            self.table(path, t);
        } else if let Some(a) = v.get_ref().as_array() {
            for (i, item) in a.iter().enumerate() {
                path.push(Seg::Index(i));
                self.push(path, None, item);
                path.pop();
            }
        }
    }

    /// The entry whose key is at `span`.
    fn by_key(&self, span: &Range<usize>) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key.as_ref() == Some(span))
    }

    /// The innermost entry whose value holds `span`.
    fn by_value(&self, span: &Range<usize>) -> Option<&Entry> {
        self.entries
            .iter()
            .filter(|e| e.value.start <= span.start && span.end <= e.value.end)
            .min_by_key(|e| (e.value.len(), std::cmp::Reverse(e.path.len())))
    }

    fn string(&self, path: &[Seg]) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.path == path)
            .and_then(|e| e.string.as_deref())
    }

    /// `message` prefixed with where `table` is: `vip[1] "api": backend
    /// 10.0.0.2: [vip.health]: ...`.
    fn with_context(&self, table: &[Seg], message: String) -> String {
        let mut parts = Vec::new();
        let mut rest = table;
        let mut prefix = "";
        if let [Seg::Key(k), Seg::Index(i), tail @ ..] = table {
            if k == "vip" {
                let mut path = table[..2].to_vec();
                path.push(Seg::Key("name".into()));
                parts.push(match self.string(&path) {
                    Some(name) => format!("vip[{i}] {name:?}"),
                    None => format!("vip[{i}]"),
                });
                rest = tail;
                prefix = "vip.";
                if let [Seg::Key(k), Seg::Index(j), tail @ ..] = rest {
                    if k == "backends" {
                        let mut path = table[..4].to_vec();
                        path.push(Seg::Key("address".into()));
                        parts.push(match self.string(&path) {
                            Some(addr) => format!("backend {addr}"),
                            None => format!("backends[{j}]"),
                        });
                        rest = tail;
                        prefix = "vip.backends.";
                    }
                }
            }
        }
        if !rest.is_empty() {
            let mut name = prefix.to_string();
            for (n, seg) in rest.iter().enumerate() {
                match seg {
                    Seg::Key(k) if n == 0 => name.push_str(k),
                    Seg::Key(k) => {
                        name.push('.');
                        name.push_str(k);
                    }
                    Seg::Index(i) => name.push_str(&format!("[{i}]")),
                }
            }
            parts.push(format!("[{name}]"));
        }
        parts.push(message);
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/etc/lb/lb.toml";

    const EXAMPLE: &str = r#"interface = "eth0"               # where the balancer attaches (required)
xdp_mode = "auto"
control_socket = "/run/lb/lbd.sock"
metrics_listen = "127.0.0.1:9469"
state_dir = "/var/lib/lb"
read_group = "lbview"
tcp_idle_timeout = "15m"

[encap]
source_v4 = "192.0.2.10"

[[vip]]
name = "web"
address = "10.100.0.1"
port = 80
protocol = "tcp"
scheduler = "maglev"
forwarding = "ipip"
conntrack = true
table_size = 65537
backends = [ { address = "10.0.0.2", weight = 100 }, { address = "10.0.0.3" } ]
[vip.health]
kind = "http"
port = 80
path = "/healthz"
expect_status = 200
interval = "1s"
timeout = "500ms"
rise = 2
fall = 3
"#;

    fn ok(text: &str) -> Config {
        parse(Path::new(PATH), text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The error for `text`, checked to be on `line` and to mention each of
    /// `words`.
    fn bad(text: &str, line: usize, words: &[&str]) -> ConfigError {
        let e = parse(Path::new(PATH), text).expect_err("config should be refused");
        let shown = e.to_string();
        assert_eq!(e.line, Some(line), "{shown}");
        assert!(
            shown.starts_with(&format!("{PATH}:{line}:")),
            "{shown}: should start with the file and line"
        );
        for w in words {
            assert!(shown.contains(w), "{shown}: should mention {w}");
        }
        e
    }

    #[test]
    fn names_are_optional_and_default_to_the_identity() {
        let minimal = "interface = \"eth0\"\n[encap]\nsource_v4 = \"192.0.2.10\"\n\
                       [[vip]]\naddress = \"10.100.0.1\"\nport = 80\nprotocol = \"tcp\"\n\
                       backends = [ { address = \"10.0.0.2\" } ]\n\
                       [[vip]]\naddress = \"10.100.0.1\"\nprotocol = \"udp\"\n\
                       backends = [ { address = \"10.0.0.2\" } ]\n";
        let state = ok(minimal).desired_state().unwrap();
        let names: Vec<&str> = state.vips.values().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["10.100.0.1/udp", "10.100.0.1:80/tcp"]);
        // A name given must still be unique, also against an identity.
        let clash = format!(
            "{minimal}[[vip]]\nname = \"10.100.0.1:80/tcp\"\naddress = \"10.100.0.9\"\n\
             protocol = \"tcp\"\nbackends = [ {{ address = \"10.0.0.2\" }} ]\n"
        );
        let e = parse(Path::new(PATH), &clash).expect_err("a duplicate name");
        assert!(e.to_string().contains("already the name of VIP"), "{e}");
    }

    #[test]
    fn limits_are_read_checked_and_applied_to_the_state() {
        assert_eq!(ok(EXAMPLE).limits, Limits::default());
        let with =
            |limits: &str| example_with("[encap]", &format!("[limits]\n{limits}\n\n[encap]"));
        let c = ok(&with(
            "max_vips = 2\ntable_pool = 300000\nconntrack_size = 65536",
        ));
        assert_eq!(
            c.limits,
            Limits {
                max_vips: 2,
                table_pool: 300_000,
                conntrack_size: 65_536
            }
        );
        assert_eq!(c.load_options().limits, c.limits);
        bad(
            &with("max_vips = 0"),
            10,
            &["[limits]", "max_vips", "out of range"],
        );
        bad(
            &with("conntrack_size = 10"),
            10,
            &["conntrack_size", "out of range"],
        );
        bad(&with("max_vip = 2"), 10, &["max_vip"]);

        // Over the limits: the whole state is refused, naming the key.
        let second = "\n[[vip]]\nname = \"dns\"\naddress = \"10.100.0.2\"\nport = 53\n\
                      protocol = \"udp\"\ntable_size = 251\nbackends = [ { address = \"10.0.0.2\" } ]\n";
        bad(
            &format!("{}{second}", with("max_vips = 1")),
            35,
            &["2 VIPs configured", "max_vips"],
        );
        bad(
            &format!("{}{second}", with("table_pool = 131074")),
            40,
            &["131576 slots", "table_pool"],
        );
        ok(&format!("{}{second}", with("table_pool = 131576")));
    }

    /// The example with `replace` applied (which must change something).
    fn example_with(from: &str, to: &str) -> String {
        assert!(EXAMPLE.contains(from), "{from}");
        EXAMPLE.replacen(from, to, 1)
    }

    fn vip_id(s: &str) -> VipId {
        s.parse().unwrap()
    }

    #[test]
    fn example_parses() {
        let c = ok(EXAMPLE);
        assert_eq!(c.path, Path::new(PATH));
        assert_eq!(c.interface, "eth0");
        assert_eq!(c.xdp_mode, AttachMode::Auto);
        assert_eq!(c.control_socket, Path::new("/run/lb/lbd.sock"));
        assert_eq!(c.metrics_listen, "127.0.0.1:9469".parse().unwrap());
        assert_eq!(c.state_dir, Path::new("/var/lib/lb"));
        assert_eq!(c.read_group.as_deref(), Some("lbview"));
        assert_eq!(c.tcp_idle_timeout, Duration::from_secs(900));
        assert_eq!(c.udp_idle_timeout, Duration::from_secs(300));
        assert_eq!(
            c.encap,
            EncapSources {
                v4: Some(("192.0.2.10".parse().unwrap(), 32)),
                v6: None
            }
        );
        assert_eq!(c.load_options().tcp_idle_timeout, Duration::from_secs(900));

        let state = c.desired_state().unwrap();
        let id = vip_id("10.100.0.1:80/tcp");
        let expected = DesiredState {
            vips: [(
                id,
                VipDesired {
                    name: "web".into(),
                    settings: VipSettings {
                        scheduler: Scheduler::Maglev,
                        forwarding: Forwarding::Ipip,
                        stateless: false,
                        table_size: 65537,
                    },
                    backends: vec![
                        BackendDesired {
                            addr: "10.0.0.2".parse().unwrap(),
                            weight: 100,
                            drained: false,
                            health: None,
                        },
                        BackendDesired {
                            addr: "10.0.0.3".parse().unwrap(),
                            weight: DEFAULT_WEIGHT,
                            drained: false,
                            health: None,
                        },
                    ],
                    health: Some(HealthSpec {
                        kind: HealthKind::Http,
                        port: 80,
                        path: "/healthz".into(),
                        expect_status: Some(200),
                        interval: Duration::from_secs(1),
                        timeout: Duration::from_millis(500),
                        rise: 2,
                        fall: 3,
                    }),
                },
            )]
            .into(),
        };
        assert_eq!(state, expected);
        assert_eq!(c.vips[0].lines.entry, 12);
        assert_eq!(c.vips[0].lines.backends, vec![21, 21]);
        assert_eq!(c.vip("web").unwrap().id, id);
        assert_eq!(c.vip("10.100.0.1:80/tcp").unwrap().desired.name, "web");

        // The desired state (health included) survives its JSON persistence.
        let json = serde_json::to_string(&state).unwrap();
        assert!(json.contains(r#""interval":"1s""#), "{json}");
        assert_eq!(serde_json::from_str::<DesiredState>(&json).unwrap(), state);
    }

    #[test]
    fn defaults() {
        let c = ok(r#"
interface = "eth1"
[encap]
source_v4_prefix = "192.0.2.0/24"
[[vip]]
name = "dns"
address = "10.100.0.53"
protocol = "udp"
scheduler = "source-hash"
conntrack = false
backends = [{ address = "10.0.0.2", drained = true }]
[vip.health]
kind = "udp"
port = 53
"#);
        assert_eq!(c.xdp_mode, AttachMode::Auto);
        assert_eq!(c.control_socket, Path::new(DEFAULT_CONTROL_SOCKET));
        assert_eq!(c.metrics_listen, DEFAULT_METRICS_LISTEN);
        assert_eq!(c.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(c.read_group, None);
        assert_eq!(c.encap.v4, Some(("192.0.2.0".parse().unwrap(), 24)));
        let v = &c.vips[0];
        assert_eq!(v.id, vip_id("10.100.0.53/udp"));
        assert_eq!(v.desired.settings.scheduler, Scheduler::SourceHash);
        assert!(v.desired.settings.stateless);
        assert_eq!(
            v.desired.settings.table_size,
            VipSettings::default().table_size
        );
        assert_eq!(
            v.desired.backends,
            vec![BackendDesired {
                addr: "10.0.0.2".parse().unwrap(),
                weight: DEFAULT_WEIGHT,
                drained: true,
                health: None,
            }]
        );
        let h = v.desired.health.as_ref().unwrap();
        assert_eq!(
            (
                h.port,
                h.path.as_str(),
                h.interval,
                h.timeout,
                h.rise,
                h.fall
            ),
            (
                53,
                "",
                DEFAULT_HEALTH_INTERVAL,
                DEFAULT_HEALTH_TIMEOUT,
                2,
                3
            )
        );
        assert_eq!(h.expect_status, None);

        // A VIP with a port gives its health check that port.
        let c = ok(&example_with("port = 80\npath", "path"));
        assert_eq!(c.vips[0].desired.health.as_ref().unwrap().port, 80);
        // No VIPs at all is a valid (empty) config.
        let c = ok("interface = \"eth0\"\nxdp_mode = \"generic\"\n");
        assert_eq!(c.xdp_mode, AttachMode::Generic);
        assert!(c.desired_state().unwrap().vips.is_empty());
    }

    #[test]
    fn ipv6_vip() {
        let c = ok(r#"
interface = "eth0"
xdp_mode = "native"
metrics_listen = "[::1]:9469"
udp_idle_timeout = "2m 30s"
[encap]
source_v6_prefix = "2001:db8:ffff::/96"
[[vip]]
name = "web6"
address = "2001:db8::1"
port = 443
protocol = "tcp"
backends = [
  { address = "2001:db8:1::2", weight = 10 },
  { address = "2001:db8:1::3", weight = 0 },
]
[[vip]]
name = "any6"
address = "2001:db8::2"
protocol = "udp"
forwarding = "l2dsr"
backends = [{ address = "2001:db8:1::4" }]
"#);
        assert_eq!(c.xdp_mode, AttachMode::Native);
        assert_eq!(c.metrics_listen, "[::1]:9469".parse().unwrap());
        assert_eq!(c.udp_idle_timeout, Duration::from_secs(150));
        assert_eq!(c.encap.v6, Some(("2001:db8:ffff::".parse().unwrap(), 96)));
        let state = c.desired_state().unwrap();
        let web6 = &state.vips[&vip_id("[2001:db8::1]:443/tcp")];
        assert_eq!(web6.backends[1].weight, 0);
        assert_eq!(c.vips[0].lines.backends, vec![14, 15]);
        let any6 = &state.vips[&vip_id("2001:db8::2/udp")];
        assert_eq!(any6.settings.forwarding, Forwarding::L2dsr);
    }

    #[test]
    fn unknown_keys() {
        let e = bad(
            &example_with("read_group", "read_grup = \"x\"\nread_group"),
            6,
            &["key `read_grup` is not allowed", "interface", "vip"],
        );
        assert_eq!(e.message.matches("expected one of").count(), 1);
        bad(
            &example_with("conntrack = true", "contrack = true"),
            19,
            &[
                "vip[0] \"web\"",
                "key `contrack` is not allowed",
                "conntrack",
            ],
        );
        bad(
            &example_with("weight = 100", "weigth = 100"),
            21,
            &[
                "vip[0] \"web\": backend 10.0.0.2: key `weigth` is not allowed \
                 (expected one of address, weight, drained, health)",
            ],
        );
        bad(
            &example_with("rise = 2", "raise = 2"),
            29,
            &["vip[0] \"web\": [vip.health]: key `raise` is not allowed"],
        );
        bad(
            &example_with("source_v4 =", "source_v5 ="),
            10,
            &["[encap]: key `source_v5` is not allowed"],
        );
        // A backend's own health check takes the [vip.health] keys only.
        bad(
            &example_with(
                "{ address = \"10.0.0.3\" }",
                "{ address = \"10.0.0.3\", health = { port = 8080, raise = 3 } }",
            ),
            21,
            &[
                "vip[0] \"web\": backend 10.0.0.3: [vip.backends.health]: key `raise` is not \
                 allowed (expected one of kind, port, path",
            ],
        );
    }

    #[test]
    fn bad_values() {
        bad(
            &example_with("protocol = \"tcp\"", "protocol = \"sctp\""),
            16,
            &["vip[0] \"web\": key `protocol`", "sctp", "tcp", "udp"],
        );
        bad(
            &example_with("xdp_mode = \"auto\"", "xdp_mode = \"fast\""),
            2,
            &["key `xdp_mode`", "fast", "native"],
        );
        bad(
            &example_with("address = \"10.100.0.1\"", "address = \"10.100.0.x\""),
            14,
            &[
                "vip \"web\": key `address`",
                "10.100.0.x",
                "not an IP address",
            ],
        );
        bad(
            &example_with("address = \"10.0.0.3\"", "address = \"10.0.0\""),
            21,
            &["vip \"web\": backends[1]: key `address`", "\"10.0.0\""],
        );
        bad(
            &example_with("port = 80", "port = \"80\""),
            15,
            &["key `port`", "expected an integer"],
        );
        bad(
            &example_with("port = 80", "port = 65536"),
            15,
            &["key `port`", "65536", "1..=65535"],
        );
        bad(
            &example_with(
                "metrics_listen = \"127.0.0.1:9469\"",
                "metrics_listen = \"localhost\"",
            ),
            4,
            &["key `metrics_listen`", "localhost"],
        );
        bad(
            &example_with("\"15m\"", "\"15 minutes-ish\""),
            7,
            &["key `tcp_idle_timeout`", "not a duration"],
        );
        bad(
            &example_with("table_size = 65537", "table_size = 1000"),
            20,
            &["key `table_size`", "1000", "prime"],
        );
        bad(
            &example_with("backends = [", "backends = [ \"10.0.0.9\","),
            21,
            &["vip[0] \"web\": backends[0]", "expected a table"],
        );
        bad(
            &example_with("interface = \"eth0\"", "interface = \"eth0 with spaces\""),
            1,
            &["key `interface`"],
        );
    }

    #[test]
    fn missing_keys() {
        bad(
            &example_with("interface = \"eth0\"", "#"),
            1,
            &["key `interface` is required"],
        );
        // Also when the file starts with a table.
        bad(
            "[encap]\nsource_v4 = \"192.0.2.1\"\n",
            1,
            &["key `interface` is required"],
        );
        bad("", 1, &["key `interface` is required"]);
        bad(
            &example_with("protocol = \"tcp\"\n", ""),
            12,
            &["vip[0] \"web\": key `protocol` is required"],
        );
        bad(
            &example_with("{ address = \"10.0.0.3\" }", "{ weight = 1 }"),
            21,
            &["vip[0] \"web\": backends[1]: key `address` is required"],
        );
        bad(
            &example_with("kind = \"http\"\n", ""),
            22,
            &["[vip.health]: key `kind` is required"],
        );
    }

    #[test]
    fn port_zero() {
        bad(
            &example_with("port = 80", "port = 0"),
            15,
            &["vip \"web\": key `port`", "omit port for every port"],
        );
        // A port-less VIP needs a port for its health check...
        bad(
            &example_with("port = 80\nprotocol", "protocol").replace("port = 80\npath", "path"),
            21,
            &["[vip.health]: key `port` is required", "every port"],
        );
        // ... unless it has none.
        let c = ok(&EXAMPLE
            .replace("port = 80\n", "")
            .replace("kind = \"http\"", "kind = \"none\"")
            .replace("path = \"/healthz\"\nexpect_status = 200\n", ""));
        assert_eq!(c.vips[0].id, vip_id("10.100.0.1/tcp"));
        assert_eq!(c.vips[0].desired.health.as_ref().unwrap().port, 0);
    }

    #[test]
    fn duplicates() {
        let second = r#"
[[vip]]
name = "web2"
address = "10.100.0.1"
port = 80
protocol = "tcp"
"#;
        bad(
            &format!("{EXAMPLE}{second}"),
            34,
            &[
                "vip \"web2\"",
                "10.100.0.1:80/tcp",
                "already defined by vip \"web\" (line 12)",
            ],
        );
        // Another protocol is another VIP.
        ok(&format!("{EXAMPLE}{}", second.replace("tcp", "udp")));
        bad(
            &format!(
                "{EXAMPLE}{}",
                second.replace("web2", "web").replace("80", "81")
            ),
            33,
            &[
                "vip \"web\": key `name`",
                "already the name of VIP 10.100.0.1:80/tcp (line 12)",
            ],
        );
        bad(
            &example_with("{ address = \"10.0.0.3\" }", "{ address = \"10.0.0.2\" }"),
            21,
            &["vip \"web\"", "backend 10.0.0.2 is listed twice"],
        );
        bad(
            &example_with(
                "xdp_mode = \"auto\"",
                "xdp_mode = \"auto\"\nxdp_mode = \"native\"",
            ),
            3,
            &["duplicate key `xdp_mode`"],
        );
    }

    #[test]
    fn families() {
        let text = example_with(
            "backends = [ { address = \"10.0.0.2\", weight = 100 }, { address = \"10.0.0.3\" } ]",
            "backends = [\n  { address = \"10.0.0.2\" },\n  { address = \"2001:db8::2\" },\n]",
        );
        let e = bad(
            &text,
            23,
            &["vip \"web\": backend 2001:db8::2 is IPv6, but VIP 10.100.0.1:80/tcp is IPv4: ipip forwarding keeps the family"],
        );
        assert!(e
            .to_string()
            .starts_with("/etc/lb/lb.toml:23: vip \"web\": backend"));
        // l2dsr does not encapsulate, so mixed families are fine there.
        ok(&text.replace("forwarding = \"ipip\"", "forwarding = \"l2dsr\""));

        // ipip needs an outer source of the VIP's family.
        bad(
            &example_with("source_v4 = \"192.0.2.10\"", ""),
            18,
            &["vip \"web\"", "source_v4 or source_v4_prefix", "[encap]"],
        );
        bad(
            &example_with("source_v4 = \"192.0.2.10\"", "source_v6 = \"2001:db8::10\""),
            18,
            &["source_v4"],
        );
        bad(
            &example_with("source_v4 = \"192.0.2.10\"", "source_v4 = \"2001:db8::10\""),
            10,
            &["[encap]: key `source_v4`", "not an IPv4 address"],
        );
        bad(
            &example_with(
                "source_v4 = \"192.0.2.10\"",
                "source_v4 = \"192.0.2.10\"\nsource_v4_prefix = \"192.0.2.0/24\"",
            ),
            11,
            &["[encap]", "not both"],
        );
        bad(
            &example_with(
                "source_v4 = \"192.0.2.10\"",
                "source_v4_prefix = \"192.0.2.10/24\"",
            ),
            10,
            &["key `source_v4_prefix`", "host bits", "192.0.2.0/24"],
        );
        bad(
            &example_with(
                "source_v4 = \"192.0.2.10\"",
                "source_v4_prefix = \"192.0.2.0/33\"",
            ),
            10,
            &["key `source_v4_prefix`"],
        );
    }

    #[test]
    fn weights() {
        bad(
            &example_with("weight = 100", "weight = 70000"),
            21,
            &[
                "vip \"web\": backend 10.0.0.2: key `weight`",
                "70000",
                "0..=65535",
            ],
        );
        bad(
            &example_with("weight = 100", "weight = -1"),
            21,
            &["key `weight`", "-1"],
        );
        // A drained backend keeps its (valid) weight.
        let c = ok(&example_with("weight = 100", "weight = 7, drained = true"));
        assert_eq!(c.vips[0].desired.backends[0].effective_weight(), 0);
        assert_eq!(c.vips[0].desired.backends[0].weight, 7);
    }

    #[test]
    fn health_rules() {
        bad(
            &example_with("timeout = \"500ms\"", "timeout = \"1s\""),
            28,
            &["[vip.health]: key `timeout`", "less than the interval 1s"],
        );
        bad(
            &example_with("timeout = \"500ms\"\n", "")
                .replace("interval = \"1s\"", "interval = \"200ms\""),
            27,
            &["key `interval`", "500ms (the default)"],
        );
        bad(
            &example_with("interval = \"1s\"", "interval = \"5ms\""),
            27,
            &["key `interval`", "10ms"],
        );
        bad(
            &example_with("kind = \"http\"", "kind = \"tcp\""),
            25,
            &["vip \"web\": [vip.health]: key `path` is only for kind = \"http\""],
        );
        bad(
            &example_with("kind = \"http\"", "kind = \"tcp\"").replace("path = \"/healthz\"\n", ""),
            25,
            &["key `expect_status` is only for kind = \"http\""],
        );
        bad(
            &example_with("kind = \"http\"", "kind = \"icmp\""),
            23,
            &["key `kind`", "icmp"],
        );
        bad(
            &example_with("rise = 2", "rise = 0"),
            29,
            &["key `rise`", "1..=100"],
        );
        bad(&example_with("fall = 3", "fall = 101"), 30, &["key `fall`"]);
        bad(
            &example_with("\"/healthz\"", "\"healthz\""),
            25,
            &["key `path`", "must start with '/'"],
        );
        bad(
            &example_with("expect_status = 200", "expect_status = 42"),
            26,
            &["key `expect_status`", "100..=599"],
        );
    }

    /// `EXAMPLE` with the backends one per line: 10.0.0.2 on line 22 with
    /// `b2`'s keys, 10.0.0.3 on line 23 with `b3`'s.
    fn example_backends(b2: &str, b3: &str) -> String {
        example_with(
            "backends = [ { address = \"10.0.0.2\", weight = 100 }, { address = \"10.0.0.3\" } ]",
            &format!(
                "backends = [\n  {{ address = \"10.0.0.2\"{b2} }},\n  {{ address = \"10.0.0.3\"{b3} }},\n]"
            ),
        )
    }

    #[test]
    fn backend_health_overrides() {
        // The backend's keys over the VIP's; the rest inherited.
        let c = ok(&example_backends(
            "",
            ", health = { port = 8080, path = \"/ready\", rise = 5 }",
        ));
        let v = &c.vips[0].desired;
        let vip = v.health.clone().unwrap();
        assert_eq!(v.backends[0].health, None);
        assert_eq!(
            v.backends[1].health,
            Some(HealthSpec {
                port: 8080,
                path: "/ready".into(),
                rise: 5,
                ..vip.clone()
            })
        );
        assert_eq!(v.health_of(&v.backends[0]), Some(&vip));
        assert_eq!(v.health_of(&v.backends[1]).unwrap().port, 8080);
        // It survives the state file.
        let state = c.desired_state().unwrap();
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<DesiredState>(&json).unwrap(), state);

        // Another kind does not inherit the VIP's http-only keys; `none`
        // leaves the backend unchecked.
        let c = ok(&example_backends(
            ", health = { kind = \"tcp\" }",
            ", health = { kind = \"none\" }",
        ));
        let v = &c.vips[0].desired;
        let tcp = v.backends[0].health.clone().unwrap();
        assert_eq!(
            (tcp.kind, tcp.port, tcp.path.as_str()),
            (HealthKind::Tcp, 80, "")
        );
        assert_eq!(tcp.expect_status, None);
        assert_eq!(tcp.interval, vip.interval);
        assert!(v.active_check(&v.backends[0]).is_some());
        assert_eq!(v.active_check(&v.backends[1]), None);

        // Without [vip.health], the backend's own check needs a kind...
        let no_vip_health = |b3: &str| {
            example_backends("", b3).replace(&EXAMPLE[EXAMPLE.find("[vip.health]").unwrap()..], "")
        };
        bad(
            &no_vip_health(", health = { port = 8080 }"),
            23,
            &[
                "vip \"web\": backend 10.0.0.3: [vip.backends.health]: key `kind` is required: \
                 the VIP has no [vip.health]",
            ],
        );
        // ... and then has the defaults, and the VIP's port.
        let c = ok(&no_vip_health(", health = { kind = \"http\" }"));
        let v = &c.vips[0].desired;
        assert_eq!(v.health, None);
        assert_eq!(v.active_check(&v.backends[0]), None);
        let h = v.backends[1].health.clone().unwrap();
        assert_eq!(
            h,
            HealthSpec {
                port: 80,
                ..HealthSpec::new(HealthKind::Http)
            }
        );

        // The same rules, told at the backend's line and key.
        bad(
            &example_backends("", ", health = { timeout = \"2s\" }"),
            23,
            &[
                "vip \"web\": backend 10.0.0.3: [vip.backends.health]: key `timeout`: the \
                 timeout 2s must be more than 0 and less than the interval 1s",
            ],
        );
        bad(
            &example_backends("", ", health = { interval = \"300ms\" }"),
            23,
            &["key `interval`: the timeout 500ms (from [vip.health]) must be more than 0"],
        );
        bad(
            &no_vip_health(", health = { kind = \"tcp\", interval = \"300ms\" }"),
            23,
            &["key `interval`: the timeout 500ms (the default) must be"],
        );
        bad(
            &example_backends(", health = { kind = \"udp\", path = \"/x\" }", ""),
            22,
            &[
                "backend 10.0.0.2: [vip.backends.health]: key `path` is only for kind = \"http\" \
               (this check is \"udp\")",
            ],
        );
        bad(
            &example_backends("", ", health = { path = \"ready\" }"),
            23,
            &["key `path`: \"ready\" must start with '/'"],
        );
        bad(
            &example_backends("", ", health = { fall = 0 }"),
            23,
            &["backend 10.0.0.3: [vip.backends.health]: key `fall`: 0 is out of range 1..=100"],
        );
        bad(
            &example_backends("", ", health = { port = 0 }"),
            23,
            &["key `port`: 0 is out of range 1..=65535"],
        );
        bad(
            &example_backends("", ", health = { kind = \"ping\" }"),
            23,
            &["key `kind`", "ping"],
        );
        // A port-less VIP: the backend's own check needs a port unless the
        // VIP's check gives one.
        let portless = example_backends("", ", health = { kind = \"tcp\" }")
            .replace("port = 80\nprotocol", "protocol");
        ok(&portless);
        bad(
            &portless.replace("port = 80\npath", "path"),
            24,
            &["[vip.health]: key `port` is required"],
        );
        bad(
            &no_vip_health(", health = { kind = \"tcp\" }")
                .replace("port = 80\nprotocol", "protocol"),
            22,
            &[
                "backend 10.0.0.3: [vip.backends.health]: key `port` is required: the VIP \
                 has no port",
            ],
        );
    }

    #[test]
    fn health_specs_validate_like_the_file() {
        let tcp = HealthSpec::new(HealthKind::Tcp);
        // Port 0 is the VIP's; a port-less VIP needs one.
        assert_eq!(tcp.clone().resolve(80).unwrap().port, 80);
        assert_eq!(
            tcp.clone().resolve(0).unwrap_err().to_string(),
            "key `port` is required: the VIP has no port (it takes every port), so the tcp \
             check needs one"
        );
        assert_eq!(tcp.validate(80).unwrap_err().key(), "port");
        let none = HealthSpec::new(HealthKind::None).resolve(0).unwrap();
        assert_eq!(none.port, 0);
        // An empty http path is `/`.
        let http = HealthSpec {
            path: String::new(),
            ..HealthSpec::new(HealthKind::Http)
        };
        assert_eq!(http.resolve(80).unwrap().path, "/");

        let bad = |f: &dyn Fn(&mut HealthSpec), kind: HealthKind| {
            let mut h = HealthSpec::new(kind);
            f(&mut h);
            h.resolve(8080).unwrap_err()
        };
        let ms = Duration::from_millis;
        use HealthKind::{Http, Tcp};
        for (e, key, text) in [
            (
                bad(&|h| h.interval = ms(5), Tcp),
                "interval",
                "5ms is out of range 10ms..=1h",
            ),
            (
                bad(&|h| h.interval = ms(3_600_001), Tcp),
                "interval",
                "out of range",
            ),
            (
                bad(&|h| h.timeout = ms(1000), Tcp),
                "timeout",
                "the timeout 1s must be more than 0 and less than the interval 1s",
            ),
            (bad(&|h| h.timeout = ms(0), Tcp), "timeout", "more than 0"),
            (
                bad(&|h| h.rise = 0, Tcp),
                "rise",
                "0 is out of range 1..=100",
            ),
            (
                bad(&|h| h.fall = 101, Tcp),
                "fall",
                "101 is out of range 1..=100",
            ),
            (
                bad(&|h| h.path = "/x".into(), Tcp),
                "path",
                "only for kind = \"http\" (this check is \"tcp\")",
            ),
            (
                bad(&|h| h.expect_status = Some(200), HealthKind::Udp),
                "expect_status",
                "only for kind",
            ),
            (
                bad(&|h| h.expect_status = Some(600), Http),
                "expect_status",
                "600 is out of range 100..=599",
            ),
            (
                bad(&|h| h.path = "x".into(), Http),
                "path",
                "must start with '/'",
            ),
            (
                bad(&|h| h.path = "/a b".into(), Http),
                "path",
                "no whitespace",
            ),
        ] {
            assert_eq!(e.key(), key, "{e}");
            assert!(e.to_string().contains(text), "{e}: should say {text}");
        }
        // The rules that need no VIP (what lbctl checks before asking).
        assert!(HealthSpec::new(Tcp).validate_settings().is_ok());

        // Requests may leave out what has a default.
        let h: HealthSpec = serde_json::from_str(r#"{"kind":"http","port":8080}"#).unwrap();
        assert_eq!(
            h,
            HealthSpec {
                port: 8080,
                path: String::new(),
                ..HealthSpec::new(Http)
            }
        );
        assert_eq!(h.resolve(80).unwrap().path, "/");
    }

    #[test]
    fn malformed_toml() {
        let e = bad(
            &example_with("[[vip]]", "[[vip]"),
            12,
            &["unclosed array table"],
        );
        assert_eq!(e.column, Some(7));
        assert!(e.to_string().starts_with("/etc/lb/lb.toml:12:7: "), "{e}");
        let e = bad(&example_with("port = 80", "port = 80 80"), 15, &[]);
        assert!(e.column.is_some());
    }

    #[test]
    fn load_reads_files() {
        let dir = std::env::temp_dir().join(format!("lb-config-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.toml");
        fs::write(&path, EXAMPLE).unwrap();
        let c = load(&path).unwrap();
        assert_eq!(c.path, path);
        assert_eq!(c.vips.len(), 1);

        fs::write(&path, example_with("port = 80", "port = 0")).unwrap();
        let e = load(&path).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{}:15: ", path.display())),
            "{e}"
        );

        let missing = dir.join("missing.toml");
        let e = load(&missing).unwrap_err();
        assert_eq!(e.line, None);
        assert!(e
            .to_string()
            .starts_with(&format!("{}: cannot read", missing.display())));

        fs::write(&path, b"interface = \"eth0\"\n# \xff\n").unwrap();
        assert_eq!(load(&path).unwrap_err().line, Some(2));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn health_spec_json() {
        let h = HealthSpec {
            kind: HealthKind::Tcp,
            port: 8080,
            path: String::new(),
            expect_status: None,
            interval: Duration::from_millis(1500),
            timeout: Duration::from_micros(250_500),
            rise: 1,
            fall: 100,
        };
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<HealthSpec>(&json).unwrap(), h);
    }
}
