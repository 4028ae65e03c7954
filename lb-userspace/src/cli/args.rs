//! lbctl's command line: the clap tree and the value parsers.
//!
//! Every argument lbctl can check without the daemon is checked here, by a
//! clap value parser, so a malformed one is a usage error (exit status 2)
//! before any request is sent.

use std::{net::IpAddr, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::model::{
    defaults::{HEALTH_COUNT_RANGE, HEALTH_STATUS_RANGE, MAX_TIER, MAX_WEIGHT},
    Forwarding, HealthError, HealthKind, HealthSpec, Scheduler, VipId,
};

/// Where lbd listens unless told otherwise (the config file's default).
pub const DEFAULT_SOCKET: &str = crate::model::defaults::DEFAULT_CONTROL_SOCKET;

/// Control the lb XDP load balancer through lbd's control socket.
#[derive(Debug, Parser)]
#[command(name = "lbctl", version, propagate_version = true)]
pub struct Cli {
    /// lbd's control socket.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// lbd's TLS API (`https://HOST:PORT`, its api_listen) instead of the
    /// socket; with --ca, and --cert and --key for the client certificate.
    #[arg(long, global = true, value_name = "URL", requires = "ca")]
    pub server: Option<String>,
    /// The CA lbd's API certificate is signed by.
    #[arg(long, global = true, value_name = "PATH")]
    pub ca: Option<PathBuf>,
    /// This client's certificate (its SAN or CN is its identity in lbd's
    /// [api_roles]).
    #[arg(long, global = true, value_name = "PATH", requires = "key")]
    pub cert: Option<PathBuf>,
    #[arg(long, global = true, value_name = "PATH", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Print the daemon's JSON response (pretty) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The balancer, its VIPs and their backends with health and traffic.
    Status,
    /// Add, remove and list VIPs.
    #[command(subcommand)]
    Vip(VipCommand),
    /// Add, remove, reweight and drain a VIP's backends.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Global counters and per-VIP and per-backend traffic.
    Stats(StatsArgs),
    /// Which backend a flow goes to, and why.
    Explain(ExplainArgs),
    /// The data path's per-packet decision trace: `debug on` / `debug off`
    /// switch it; `debug` alone follows it until it ends.
    Debug {
        #[command(subcommand)]
        action: Option<DebugAction>,
    },
    /// This node's announcements: drain (withdraw every VIP route, keep
    /// forwarding what still arrives), undrain, status.
    #[command(subcommand)]
    Node(NodeCommand),
    /// The shared desired state ([store] in lbd's config).
    #[command(subcommand)]
    Store(StoreCommand),
    /// Every node sharing the store: its revision, whether it is current,
    /// and any drift.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Re-read the config file and apply the difference.
    Reload {
        /// Only show what would change.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print a shell completion script (no daemon needed).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Withdraw every route of this node; survives a restart of lbd.
    Drain,
    /// Announce again what this node should announce.
    Undrain,
    /// Each VIP address: announced or not, and why.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Make the store hold exactly the VIPs of FILE (an lbd config, or a
    /// file of [[vip]] tables, or what `store export` printed), in one
    /// transaction.
    Import {
        file: PathBuf,
        /// Only show the difference with what the store holds.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the store's VIPs (JSON that `store import` reads back).
    Export,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// One line per node: applied revision, current or not, drift; and
    /// the members that no longer report.
    Status,
    /// Stop listing a member that is gone for good as missing (refused
    /// while it still reports).
    Forget { node: String },
}

#[derive(Debug, Subcommand)]
pub enum DebugAction {
    /// Trace every packet's decision (VIP, flow, verdict or drop reason,
    /// backend, table or connection entry), rate-limited, for a while.
    On {
        /// Only this VIP (ADDR[:PORT]/PROTO or its name).
        #[arg(long, value_parser = parse_vip_ref)]
        vip: Option<String>,
        /// How long (1..=3600; default 60).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=lb_common::debug::DEBUG_MAX_SECONDS))]
        seconds: Option<u64>,
    },
    /// Stop tracing.
    Off,
}

#[derive(Debug, Subcommand)]
pub enum VipCommand {
    /// List the VIPs.
    #[command(visible_alias = "ls")]
    List,
    /// Add a VIP (without backends).
    Add(VipAddArgs),
    /// Remove a VIP and its backends.
    #[command(visible_alias = "rm")]
    Del {
        /// ADDR[:PORT]/PROTO or the VIP's name.
        #[arg(value_parser = parse_vip_ref)]
        vip: String,
    },
    /// Change a VIP's settings at run time: its scheduler (new flows only;
    /// established flows stay where they are).
    Set {
        /// ADDR[:PORT]/PROTO or the VIP's name.
        #[arg(value_parser = parse_vip_ref)]
        vip: String,
        #[arg(long, value_enum)]
        scheduler: SchedulerArg,
    },
    /// Set the VIP's health check (`--kind none`: no checks; its backends
    /// are put back up). Backends with their own check keep it.
    #[command(mut_arg("kind", |a| a.required(true)))]
    Health {
        /// ADDR[:PORT]/PROTO or the VIP's name.
        #[arg(value_parser = parse_vip_ref)]
        vip: String,
        #[command(flatten)]
        check: HealthArgs,
    },
}

#[derive(Debug, Args)]
pub struct VipAddArgs {
    /// ADDR[:PORT]/PROTO, e.g. 10.100.0.1:80/tcp or [2001:db8::1]:443/tcp;
    /// without a port the VIP takes every port.
    #[arg(value_parser = parse_vip_id)]
    pub vip: VipId,
    /// A name to refer to the VIP by.
    #[arg(long, value_parser = parse_name)]
    pub name: Option<String>,
    #[arg(long, value_enum, default_value_t = SchedulerArg::default())]
    pub scheduler: SchedulerArg,
    #[arg(long, value_enum, default_value_t = ForwardingArg::default())]
    pub forwarding: ForwardingArg,
    /// No connection table: every packet is placed by the Maglev table alone.
    #[arg(long)]
    pub stateless: bool,
    /// Maglev table size: a prime, at most 65537 (the default). Larger tables
    /// move fewer flows when a backend leaves.
    #[arg(long, value_name = "PRIME")]
    pub table_size: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// List a VIP's backends.
    #[command(visible_alias = "ls")]
    List {
        /// ADDR[:PORT]/PROTO or the VIP's name.
        #[arg(value_parser = parse_vip_ref)]
        vip: String,
    },
    /// Add a backend to a VIP.
    Add {
        #[command(flatten)]
        target: BackendTarget,
        #[command(flatten)]
        place: Placement,
    },
    /// Remove a backend from a VIP.
    #[command(visible_alias = "rm")]
    Del {
        #[command(flatten)]
        target: BackendTarget,
    },
    /// Change a backend's weight.
    Set {
        #[command(flatten)]
        target: BackendTarget,
        /// Relative weight, 0..=65535.
        #[arg(long, value_name = "N", value_parser = weight_parser(), required = true)]
        weight: u32,
    },
    /// Send a backend no new flows; established ones stay (weight is kept).
    Drain {
        #[command(flatten)]
        target: BackendTarget,
    },
    /// Give a drained backend new flows again, at its kept weight.
    Undrain {
        #[command(flatten)]
        target: BackendTarget,
    },
    /// Give a backend its own health check in place of the VIP's
    /// (`--kind none`: not checked), or drop it with --clear.
    #[command(mut_arg("kind", |a| a.required_unless_present("clear")))]
    Health {
        #[command(flatten)]
        target: BackendTarget,
        #[command(flatten)]
        check: HealthArgs,
        /// Drop the backend's own check: the VIP's applies again.
        #[arg(long, conflicts_with = "HealthArgs")]
        clear: bool,
    },
    /// Register a backend in the store (a VIP with backends_from
    /// registered = true) and keep its lease alive until stopped: the
    /// heartbeat of a script or an agent. Stopped, the lease expires after
    /// --ttl and the backend drains, then leaves.
    Register {
        #[command(flatten)]
        target: BackendTarget,
        #[command(flatten)]
        place: Placement,
        /// The lease: how long the backend stays after the last renewal.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
        ttl: Duration,
    },
}

/// A health check's settings; what is left out takes the config file's
/// defaults.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// What a check does; `none` turns checks off.
    #[arg(long, value_enum)]
    pub kind: Option<HealthKindArg>,
    /// The port probed [default: the VIP's port].
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// The HTTP request path (http only) [default: /].
    #[arg(long, value_name = "PATH", value_parser = parse_health_path)]
    pub path: Option<String>,
    /// The HTTP status that passes (http only) [default: any 2xx].
    #[arg(long, value_name = "CODE", value_parser = status_parser())]
    pub expect_status: Option<u16>,
    /// Time between checks, 10ms..=1h (e.g. 1s, 500ms) [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// How long a check may take, less than the interval [default: 500ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Consecutive passes that bring a backend up, 1..=100 [default: 2].
    #[arg(long, value_name = "N", value_parser = count_parser())]
    pub rise: Option<u32>,
    /// Consecutive failures that take a backend down, 1..=100 [default: 3].
    #[arg(long, value_name = "N", value_parser = count_parser())]
    pub fall: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HealthKindArg {
    /// A TCP connection is accepted.
    Tcp,
    /// An HTTP GET answers with the expected status.
    Http,
    /// A UDP probe is not refused (no ICMP port unreachable).
    Udp,
    /// No check.
    None,
}

impl From<HealthKindArg> for HealthKind {
    fn from(k: HealthKindArg) -> Self {
        match k {
            HealthKindArg::Tcp => HealthKind::Tcp,
            HealthKindArg::Http => HealthKind::Http,
            HealthKindArg::Udp => HealthKind::Udp,
            HealthKindArg::None => HealthKind::None,
        }
    }
}

impl HealthArgs {
    /// Whether any setting besides the kind was given.
    fn has_settings(&self) -> bool {
        self.port.is_some()
            || self.path.is_some()
            || self.expect_status.is_some()
            || self.interval.is_some()
            || self.timeout.is_some()
            || self.rise.is_some()
            || self.fall.is_some()
    }

    /// The check asked for, with the config file's defaults (port 0: the
    /// VIP's), checked by the rules that need no VIP; `None` without
    /// `--kind`. A refusal is a usage error, with the flag at fault.
    pub fn spec(&self) -> Result<Option<HealthSpec>, String> {
        let Some(kind) = self.kind.map(HealthKind::from) else {
            return Ok(None);
        };
        if kind == HealthKind::None && self.has_settings() {
            return Err("--kind none takes no other check settings".into());
        }
        let defaults = HealthSpec::new(kind);
        let h = HealthSpec {
            kind,
            port: self.port.unwrap_or(defaults.port),
            path: self.path.clone().unwrap_or(defaults.path),
            expect_status: self.expect_status,
            interval: self.interval.unwrap_or(defaults.interval),
            timeout: self.timeout.unwrap_or(defaults.timeout),
            rise: self.rise.unwrap_or(defaults.rise),
            fall: self.fall.unwrap_or(defaults.fall),
        };
        h.validate_settings().map_err(|e| match e {
            // Broken by the default timeout: the interval is at fault.
            HealthError::Timeout { timeout, interval } if self.timeout.is_none() => format!(
                "--interval: the timeout {} (the default) must be less than the interval {}",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
            e => format!("--{}: {}", e.key().replace('_', "-"), e.detail()),
        })?;
        Ok(Some(h))
    }
}

/// A new backend's weight and tier (`backend add`, `backend register`).
#[derive(Debug, Args)]
pub struct Placement {
    /// Relative weight, 0..=65535 (the daemon's default when omitted).
    #[arg(long, value_name = "N", value_parser = weight_parser())]
    pub weight: Option<u32>,
    /// 0 = local (the default); higher = farther away: new flows spill
    /// to it as nearer tiers lose healthy backends.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=i64::from(MAX_TIER)))]
    pub tier: Option<u8>,
}

#[derive(Debug, Args)]
pub struct BackendTarget {
    /// ADDR[:PORT]/PROTO or the VIP's name.
    #[arg(value_parser = parse_vip_ref)]
    pub vip: String,
    /// The backend's IP address.
    pub addr: IpAddr,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Redraw every interval with per-second rates, until Ctrl-C.
    #[arg(long, short)]
    pub watch: bool,
    /// Time between samples with --watch (e.g. 1s, 500ms, 2m).
    #[arg(long, short, value_name = "DURATION", default_value = "1s",
          value_parser = parse_interval, requires = "watch")]
    pub interval: Duration,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The client's address and port: 198.51.100.7:40000 or [2001:db8::7]:40000.
    #[arg(value_name = "SRC:PORT", value_parser = parse_source)]
    pub src: SocketAddr,
    /// ADDR[:PORT]/PROTO or the VIP's name.
    #[arg(value_parser = parse_vip_ref)]
    pub vip: String,
    /// Destination port, for a VIP that takes every port.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub dport: Option<u16>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum SchedulerArg {
    /// Maglev over the 5-tuple.
    #[default]
    Maglev,
    /// Maglev over the source address: a client sticks to one backend.
    SourceHash,
    /// Weighted round-robin over new flows.
    RoundRobin,
    /// Weighted least-connections: the fewest active connections per weight.
    LeastConnections,
}

impl From<SchedulerArg> for Scheduler {
    fn from(s: SchedulerArg) -> Self {
        match s {
            SchedulerArg::Maglev => Scheduler::Maglev,
            SchedulerArg::SourceHash => Scheduler::SourceHash,
            SchedulerArg::RoundRobin => Scheduler::RoundRobin,
            SchedulerArg::LeastConnections => Scheduler::LeastConnections,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ForwardingArg {
    /// IPIP / IP6IP6 encapsulation to the backend.
    #[default]
    Ipip,
    /// L2 direct server return: rewrite the Ethernet destination only.
    L2dsr,
}

impl From<ForwardingArg> for Forwarding {
    fn from(f: ForwardingArg) -> Self {
        match f {
            ForwardingArg::Ipip => Forwarding::Ipip,
            ForwardingArg::L2dsr => Forwarding::L2dsr,
        }
    }
}

fn weight_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(0..=i64::from(MAX_WEIGHT))
}

/// `ADDR[:PORT]/PROTO`, parsed: for `vip add`, which needs a VIP identity.
pub fn parse_vip_id(s: &str) -> Result<VipId, String> {
    s.parse()
}

/// A VIP reference: `ADDR[:PORT]/PROTO` or a name, passed to the daemon
/// as written (it resolves both).
pub fn parse_vip_ref(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("expected ADDR[:PORT]/PROTO or a VIP name".into());
    }
    Ok(s.to_string())
}

fn parse_name(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("a VIP name cannot be empty".into());
    }
    Ok(s.to_string())
}

/// `ADDR:PORT`, IPv6 in brackets: `198.51.100.7:40000`, `[2001:db8::7]:40000`.
pub fn parse_source(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("expected ADDR:PORT, e.g. 198.51.100.7:40000 or [2001:db8::7]:40000 (got {s:?})")
    })
}

fn status_parser() -> clap::builder::RangedI64ValueParser<u16> {
    clap::value_parser!(u16)
        .range(i64::from(*HEALTH_STATUS_RANGE.start())..=i64::from(*HEALTH_STATUS_RANGE.end()))
}

fn count_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32)
        .range(i64::from(*HEALTH_COUNT_RANGE.start())..=i64::from(*HEALTH_COUNT_RANGE.end()))
}

/// An HTTP check's path: `/` and no whitespace.
fn parse_health_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{s:?} must start with '/' and have no whitespace"));
    }
    Ok(s.to_string())
}

/// A duration above zero: `1s`, `500ms`, `1m 30s`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<f64>() {
        Ok(secs) if (0.0..1e9).contains(&secs) => Duration::from_secs_f64(secs),
        Ok(_) => return Err(format!("{s:?} is not a positive duration")),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?,
    };
    if d.is_zero() {
        return Err(format!("{s:?}: the duration must be more than 0"));
    }
    Ok(d)
}

/// A positive duration: `1s`, `500ms`, `2m`; a bare number is seconds.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
        Ok(_) => return Err(format!("{s:?} is not a positive duration")),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?,
    };
    if d < Duration::from_millis(100) {
        return Err(format!("{s:?}: the interval must be at least 100ms"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{error::ErrorKind, CommandFactory};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("lbctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_sources() {
        assert_eq!(
            parse_source("[2001:db8::7]:40000").unwrap(),
            "[2001:db8::7]:40000".parse::<SocketAddr>().unwrap()
        );
        let v4 = parse_source("198.51.100.7:40000").unwrap();
        assert_eq!(v4.port(), 40000);
        assert_eq!(v4.ip(), "198.51.100.7".parse::<IpAddr>().unwrap());
        for bad in [
            "198.51.100.7",
            "2001:db8::7:40000",
            "[2001:db8::7]",
            "x:1",
            "",
        ] {
            assert!(parse_source(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_intervals() {
        assert_eq!(parse_interval("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_interval("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_interval("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_interval("0.5").unwrap(), Duration::from_millis(500));
        for bad in ["0", "0s", "10ms", "-1", "soon", "inf", "NaN"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn globals_go_anywhere() {
        let c = parse(&["vip", "list", "--json", "--socket", "/tmp/x.sock"]).unwrap();
        assert!(c.json);
        assert_eq!(c.socket, PathBuf::from("/tmp/x.sock"));
        let c = parse(&["--json", "status"]).unwrap();
        assert!(c.json);
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn vip_add() {
        let c = parse(&[
            "vip",
            "add",
            "[2001:db8::1]:443/tcp",
            "--name",
            "web6",
            "--scheduler",
            "source-hash",
            "--forwarding",
            "l2dsr",
            "--stateless",
            "--table-size",
            "251",
        ])
        .unwrap();
        let Command::Vip(VipCommand::Add(a)) = c.command else {
            panic!("{c:?}")
        };
        assert_eq!(a.vip, "[2001:db8::1]:443/tcp".parse::<VipId>().unwrap());
        assert_eq!(a.name.as_deref(), Some("web6"));
        assert_eq!(Scheduler::from(a.scheduler), Scheduler::SourceHash);
        assert_eq!(Forwarding::from(a.forwarding), Forwarding::L2dsr);
        assert!(a.stateless);
        assert_eq!(a.table_size, Some(251));

        let c = parse(&["vip", "add", "10.100.0.1/udp"]).unwrap();
        let Command::Vip(VipCommand::Add(a)) = c.command else {
            panic!("{c:?}")
        };
        assert_eq!(a.vip.port, 0);
        assert_eq!(Scheduler::from(a.scheduler), Scheduler::default());
        assert_eq!(Forwarding::from(a.forwarding), Forwarding::default());
        assert!(!a.stateless);
        assert_eq!(a.table_size, None);
    }

    #[test]
    fn vip_set_takes_the_new_schedulers() {
        for (name, s) in [
            ("round-robin", Scheduler::RoundRobin),
            ("least-connections", Scheduler::LeastConnections),
            ("maglev", Scheduler::Maglev),
        ] {
            let c = parse(&["vip", "set", "web", "--scheduler", name]).unwrap();
            let Command::Vip(VipCommand::Set { vip, scheduler }) = c.command else {
                panic!("{c:?}")
            };
            assert_eq!((vip.as_str(), Scheduler::from(scheduler)), ("web", s));
        }
        assert!(parse(&["vip", "set", "web"]).is_err(), "nothing to set");
    }

    /// Malformed arguments are usage errors, which clap exits with 2.
    #[test]
    fn bad_arguments_are_usage_errors() {
        for args in [
            &["vip", "add", "10.100.0.1:80"][..],
            &["vip", "add", "10.100.0.1:80/sctp"],
            &["vip", "add", "10.100.0.1:0/tcp"],
            &["vip", "add", "10.100.0.1:80/tcp", "--scheduler", "rr"],
            &["vip", "add", "10.100.0.1:80/tcp", "--name", ""],
            &["vip", "del", ""],
            &["backend", "add", "web", "10.0.0.300"],
            &["backend", "add", "web", "10.0.0.3", "--weight", "65536"],
            &["backend", "add", "web", "10.0.0.3", "--weight", "-1"],
            &["backend", "set", "web", "10.0.0.3"],
            &["backend", "set", "web", "10.0.0.3", "--weight", "heavy"],
            &["stats", "--interval", "1s"],
            &["stats", "--watch", "--interval", "0s"],
            &["explain", "198.51.100.7", "10.100.0.1:80/tcp"],
            &["explain", "198.51.100.7:40000", "web", "--dport", "0"],
            &["completions", "tcsh"],
            &["vip", "health", "web"],
            &["vip", "health", "web", "--kind", "icmp"],
            &["vip", "health", "web", "--kind", "tcp", "--port", "0"],
            &[
                "vip",
                "health",
                "web",
                "--kind",
                "tcp",
                "--interval",
                "soon",
            ],
            &["vip", "health", "web", "--kind", "tcp", "--timeout", "0s"],
            &["vip", "health", "web", "--kind", "tcp", "--rise", "0"],
            &["vip", "health", "web", "--kind", "tcp", "--fall", "101"],
            &[
                "vip", "health", "web", "--kind", "http", "--path", "healthz",
            ],
            &[
                "vip",
                "health",
                "web",
                "--kind",
                "http",
                "--expect-status",
                "600",
            ],
            &["vip", "health", "web", "--clear"],
            &["backend", "health", "web", "10.0.0.3"],
            &[
                "backend", "health", "web", "10.0.0.3", "--clear", "--kind", "tcp",
            ],
            &[
                "backend", "health", "web", "10.0.0.3", "--clear", "--port", "80",
            ],
            &[],
        ] {
            let e = parse(args).expect_err(&format!("{args:?}"));
            assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
            assert!(
                !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion),
                "{args:?}"
            );
        }
    }

    #[test]
    fn node_commands() {
        for (args, want) in [
            (&["node", "drain"][..], "Drain"),
            (&["node", "undrain"][..], "Undrain"),
            (&["node", "status"][..], "Status"),
        ] {
            let c = parse(args).unwrap();
            let Command::Node(n) = c.command else {
                panic!("{c:?}")
            };
            assert_eq!(format!("{n:?}"), want);
        }
        let c = parse(&["node", "status", "--json"]).unwrap();
        assert!(c.json && matches!(c.command, Command::Node(NodeCommand::Status)));
        assert!(parse(&["node"]).is_err());
        assert!(parse(&["node", "drain", "now"]).is_err());
    }

    #[test]
    fn backend_commands() {
        let c = parse(&["backend", "set", "web", "10.0.0.3", "--weight", "65535"]).unwrap();
        let Command::Backend(BackendCommand::Set { target, weight }) = c.command else {
            panic!("{c:?}")
        };
        assert_eq!(target.vip, "web");
        assert_eq!(target.addr, "10.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(weight, 65535);

        let c = parse(&["backend", "add", "10.100.0.1:80/tcp", "2001:db8::2"]).unwrap();
        let Command::Backend(BackendCommand::Add {
            target,
            place: Placement { weight, .. },
        }) = c.command
        else {
            panic!("{c:?}")
        };
        assert_eq!(target.vip, "10.100.0.1:80/tcp");
        assert!(target.addr.is_ipv6());
        assert_eq!(weight, None);
    }

    fn health_args(args: &[&str]) -> HealthArgs {
        match parse(args).unwrap().command {
            Command::Vip(VipCommand::Health { check, .. })
            | Command::Backend(BackendCommand::Health { check, .. }) => check,
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn health_commands() {
        // The config file's defaults; port 0 is the VIP's.
        let h = health_args(&["vip", "health", "web", "--kind", "http"]);
        assert_eq!(h.spec().unwrap(), Some(HealthSpec::new(HealthKind::Http)));
        assert_eq!(h.spec().unwrap().unwrap().path, "/");

        let h = health_args(&[
            "backend",
            "health",
            "web",
            "10.0.0.3",
            "--kind",
            "http",
            "--port",
            "8080",
            "--path",
            "/ready",
            "--expect-status",
            "204",
            "--interval",
            "2s",
            "--timeout",
            "1.5",
            "--rise",
            "1",
            "--fall",
            "100",
        ]);
        assert_eq!(
            h.spec().unwrap(),
            Some(HealthSpec {
                kind: HealthKind::Http,
                port: 8080,
                path: "/ready".into(),
                expect_status: Some(204),
                interval: Duration::from_secs(2),
                timeout: Duration::from_millis(1500),
                rise: 1,
                fall: 100,
            })
        );

        let c = parse(&["backend", "health", "web", "10.0.0.3", "--clear"]).unwrap();
        let Command::Backend(BackendCommand::Health {
            target,
            check,
            clear,
        }) = c.command
        else {
            panic!("{c:?}")
        };
        assert!(clear);
        assert_eq!(target.addr, "10.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(check.spec().unwrap(), None);

        let h = health_args(&["vip", "health", "web", "--kind", "none"]);
        assert_eq!(h.spec().unwrap().unwrap().kind, HealthKind::None);
    }

    /// What clap takes flag by flag but the rules refuse together (a usage
    /// error too, see `commands`).
    #[test]
    fn health_rules_name_the_flag() {
        let refused = |args: &[&str]| {
            let mut all = vec!["vip", "health", "web"];
            all.extend_from_slice(args);
            health_args(&all).spec().unwrap_err()
        };
        assert_eq!(
            refused(&["--kind", "tcp", "--interval", "200ms"]),
            "--interval: the timeout 500ms (the default) must be less than the interval 200ms"
        );
        assert_eq!(
            refused(&["--kind", "tcp", "--timeout", "2s"]),
            "--timeout: the timeout 2s must be more than 0 and less than the interval 1s"
        );
        assert!(
            refused(&["--kind", "udp", "--interval", "5ms", "--timeout", "1ms"])
                .starts_with("--interval: 5ms is out of range 10ms..=1h")
        );
        assert!(refused(&["--kind", "tcp", "--interval", "2h"]).starts_with("--interval: "));
        assert!(refused(&["--kind", "tcp", "--path", "/x"])
            .starts_with("--path: only for kind = \"http\""));
        assert!(refused(&["--kind", "udp", "--expect-status", "200"])
            .starts_with("--expect-status: only for kind"));
        assert_eq!(
            refused(&["--kind", "none", "--rise", "3"]),
            "--kind none takes no other check settings"
        );
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("10ms").unwrap(), Duration::from_millis(10));
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0.25").unwrap(), Duration::from_millis(250));
        for bad in ["0", "0s", "-1", "soon", "inf", "NaN", "1e300", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn explain_and_stats() {
        let c = parse(&["explain", "[2001:db8::7]:40000", "[2001:db8::1]:443/tcp"]).unwrap();
        let Command::Explain(e) = c.command else {
            panic!("{c:?}")
        };
        assert_eq!(e.src.port(), 40000);
        assert_eq!(e.vip, "[2001:db8::1]:443/tcp");
        assert_eq!(e.dport, None);

        let c = parse(&["stats", "--watch", "--interval", "250ms"]).unwrap();
        let Command::Stats(s) = c.command else {
            panic!("{c:?}")
        };
        assert!(s.watch);
        assert_eq!(s.interval, Duration::from_millis(250));
    }
}
