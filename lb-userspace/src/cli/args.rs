//! lbctl's command line: the clap tree and the value parsers.
//!
//! Every argument lbctl can check without the daemon is checked here, by a
//! clap value parser, so a malformed one is a usage error (exit status 2)
//! before any request is sent.

use std::{net::IpAddr, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::service::{Forwarding, Scheduler, VipId, MAX_WEIGHT};

/// Where lbd listens unless told otherwise (the config file's default).
pub const DEFAULT_SOCKET: &str = crate::config::DEFAULT_CONTROL_SOCKET;

/// Control the lb XDP load balancer through lbd's control socket.
#[derive(Debug, Parser)]
#[command(name = "lbctl", version, propagate_version = true)]
pub struct Cli {
    /// lbd's control socket.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
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
        /// Relative weight, 0..=65535 (the daemon's default when omitted).
        #[arg(long, value_name = "N", value_parser = weight_parser())]
        weight: Option<u32>,
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
}

impl From<SchedulerArg> for Scheduler {
    fn from(s: SchedulerArg) -> Self {
        match s {
            SchedulerArg::Maglev => Scheduler::Maglev,
            SchedulerArg::SourceHash => Scheduler::SourceHash,
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

        let c = parse(&["vip", "add", "10.100.0.1/udp"]).unwrap();
        let Command::Vip(VipCommand::Add(a)) = c.command else {
            panic!("{c:?}")
        };
        assert_eq!(a.vip.port, 0);
        assert_eq!(Scheduler::from(a.scheduler), Scheduler::default());
        assert_eq!(Forwarding::from(a.forwarding), Forwarding::default());
        assert!(!a.stateless);
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
    fn backend_commands() {
        let c = parse(&["backend", "set", "web", "10.0.0.3", "--weight", "65535"]).unwrap();
        let Command::Backend(BackendCommand::Set { target, weight }) = c.command else {
            panic!("{c:?}")
        };
        assert_eq!(target.vip, "web");
        assert_eq!(target.addr, "10.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(weight, 65535);

        let c = parse(&["backend", "add", "10.100.0.1:80/tcp", "2001:db8::2"]).unwrap();
        let Command::Backend(BackendCommand::Add { target, weight }) = c.command else {
            panic!("{c:?}")
        };
        assert_eq!(target.vip, "10.100.0.1:80/tcp");
        assert!(target.addr.is_ipv6());
        assert_eq!(weight, None);
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
