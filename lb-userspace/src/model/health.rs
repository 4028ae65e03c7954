//! Health checks: what is probed and how often ([`HealthSpec`]), with the
//! config file's defaults filled in, and why one is refused
//! ([`HealthError`]).

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

use super::defaults::{
    DEFAULT_HEALTH_FALL, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_RISE, DEFAULT_HEALTH_TIMEOUT,
    HEALTH_COUNT_RANGE, HEALTH_INTERVAL_RANGE, HEALTH_STATUS_RANGE,
};

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

/// Who decides that a backend is down (`health_decision`): this node's
/// checks alone, or a majority of the live nodes sharing the store (each
/// publishes what its checks see), so every node builds the same table even
/// when one node's path to a backend fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthDecision {
    #[default]
    Local,
    Quorum,
}

impl fmt::Display for HealthDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthDecision::Local => "local",
            HealthDecision::Quorum => "quorum",
        })
    }
}

/// Durations as humantime strings (`"1s 500ms"`) in serde.
pub(super) mod humantime_str {
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
