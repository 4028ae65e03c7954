//! Each lbctl command: its request, then the daemon's answer printed as a
//! table or, with `--json`, as it came.

use std::{
    io::{self, IsTerminal, Write},
    time::{Duration, Instant},
};

use clap::{error::ErrorKind, CommandFactory};
use serde::de::DeserializeOwned;

use super::{
    args::{
        BackendCommand, Cli, ClusterCommand, Command, DebugAction, ExplainArgs, HealthArgs,
        NodeCommand, StatsArgs, StoreCommand, VipAddArgs, VipCommand,
    },
    client::{decode, with_query, Client, TlsFiles},
    output, CliError,
};
use crate::{
    api::types::{
        Change, ClusterForget, ReloadRequest, ReloadResult, Stats, Status, StoreExport,
        StoreImport, StoreImportResult, StoreLease, StoreRegister, StoreRenewed, TraceView,
        PATH_CHANGE, PATH_CLUSTER, PATH_CLUSTER_FORGET, PATH_DEBUG, PATH_EXPLAIN, PATH_NODE,
        PATH_RELOAD, PATH_STATS, PATH_STATUS, PATH_STORE_EXPORT, PATH_STORE_IMPORT,
        PATH_STORE_REGISTER, PATH_STORE_RENEW,
    },
    model::HealthKind,
};

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let client = match &cli.server {
        None => Client::new(&cli.socket),
        Some(url) => Client::remote(
            url,
            TlsFiles {
                ca: cli.ca.as_deref().expect("clap requires --ca with --server"),
                cert: cli.cert.as_deref(),
                key: cli.key.as_deref(),
            },
        )?,
    };
    let json = cli.json;
    match cli.command {
        Command::Status => status(&client, json).await,
        Command::Vip(VipCommand::List) => vip_list(&client, json).await,
        Command::Vip(VipCommand::Add(a)) => change(&client, json, vip_add(a)).await,
        Command::Vip(VipCommand::Set { vip, scheduler }) => {
            let c = Change::VipSet {
                vip,
                scheduler: scheduler.into(),
            };
            change(&client, json, c).await
        }
        Command::Vip(VipCommand::Del { vip }) => {
            change(&client, json, Change::VipDel { vip }).await
        }
        Command::Vip(VipCommand::Health { vip, check }) => {
            change(&client, json, vip_health(vip, &check)?).await
        }
        Command::Backend(BackendCommand::List { vip }) => backend_list(&client, json, &vip).await,
        Command::Backend(BackendCommand::Register { target, place, ttl }) => {
            let req = StoreRegister {
                vip: target.vip,
                addr: target.addr,
                weight: place.weight,
                tier: place.tier,
                ttl_secs: ttl.as_secs(),
            };
            register(&client, &req).await
        }
        Command::Backend(b) => change(&client, json, backend_change(b)?).await,
        Command::Stats(a) if a.watch => stats_watch(&client, json, &a).await,
        Command::Stats(_) => stats(&client, json).await,
        Command::Explain(a) => explain(&client, json, &a).await,
        Command::Reload { dry_run } => reload(&client, json, dry_run).await,
        Command::Node(NodeCommand::Drain) => change(&client, json, Change::NodeDrain).await,
        Command::Node(NodeCommand::Undrain) => change(&client, json, Change::NodeUndrain).await,
        Command::Node(NodeCommand::Status) => {
            let raw = client.get(PATH_NODE).await?;
            print_answer(&raw, json, output::render_node)
        }
        Command::Store(StoreCommand::Import { file, dry_run }) => {
            let state = read_vips(&file)?;
            let raw = client
                .post(PATH_STORE_IMPORT, &StoreImport { state, dry_run })
                .await?;
            print_answer(&raw, json, |r: &StoreImportResult| {
                output::render_import(r, dry_run)
            })
        }
        Command::Store(StoreCommand::Export) => {
            let raw = client.get(PATH_STORE_EXPORT).await?;
            let export: StoreExport = decode(&raw)?;
            print_value(&export)
        }
        Command::Cluster(ClusterCommand::Forget { node }) => {
            let raw = client
                .post(PATH_CLUSTER_FORGET, &ClusterForget { node })
                .await?;
            print_answer(&raw, json, output::render_change)
        }
        Command::Cluster(ClusterCommand::Status) => {
            let raw = client.get(PATH_CLUSTER).await?;
            print_answer(&raw, json, output::render_cluster)
        }
        Command::Debug {
            action: Some(DebugAction::On { vip, seconds }),
        } => change(&client, json, Change::DebugOn { vip, seconds }).await,
        Command::Debug {
            action: Some(DebugAction::Off),
        } => change(&client, json, Change::DebugOff).await,
        Command::Debug { action: None } => debug_follow(&client, json).await,
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "lbctl", &mut out);
            write_out(&String::from_utf8_lossy(&out))
        }
    }
}

/// Writes to stdout; a closed pipe (`lbctl ... | head`) ends lbctl quietly.
fn write_out(s: &str) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    out.write_all(s.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe => CliError::BrokenPipe,
            _ => CliError::Other(format!("writing to stdout: {e}")),
        })
}

/// The daemon's JSON, as it came, indented.
fn print_json(raw: &[u8]) -> Result<(), CliError> {
    let text = output::reformat_json(raw, true)
        .map_err(|e| CliError::Other(format!("lbd sent invalid JSON: {e}")))?;
    write_out(&format!("{text}\n"))
}

/// A value lbctl picked out of a response, as JSON.
fn print_value<T: serde::Serialize>(v: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| CliError::Other(e.to_string()))?;
    write_out(&format!("{text}\n"))
}

/// The daemon's answer: as it came with `--json`, else decoded and
/// rendered as a table.
fn print_answer<T: DeserializeOwned>(
    raw: &[u8],
    json: bool,
    render: impl FnOnce(&T) -> String,
) -> Result<(), CliError> {
    if json {
        return print_json(raw);
    }
    write_out(&render(&decode::<T>(raw)?))
}

async fn status(client: &Client, json: bool) -> Result<(), CliError> {
    let raw = client.get(PATH_STATUS).await?;
    print_answer(&raw, json, output::render_status)
}

async fn vip_list(client: &Client, json: bool) -> Result<(), CliError> {
    let status: Status = decode(&client.get(PATH_STATUS).await?)?;
    if json {
        return print_value(&status.vips);
    }
    write_out(&output::render_vip_list(&status.vips))
}

async fn backend_list(client: &Client, json: bool, vip: &str) -> Result<(), CliError> {
    let status: Status = decode(&client.get(PATH_STATUS).await?)?;
    let v = output::find_vip(&status.vips, vip)
        .ok_or_else(|| CliError::Other(format!("unknown VIP {vip}")))?;
    if json {
        return print_value(v);
    }
    write_out(&output::render_vip(v))
}

fn vip_add(a: VipAddArgs) -> Change {
    Change::VipAdd {
        vip: a.vip,
        name: a.name,
        scheduler: a.scheduler.into(),
        forwarding: a.forwarding.into(),
        stateless: a.stateless,
        table_size: a.table_size,
    }
}

/// `vip health`: `--kind none` is no checks.
fn vip_health(vip: String, check: &HealthArgs) -> Result<Change, CliError> {
    let health = check
        .spec()
        .map_err(usage("vip"))?
        .filter(|h| h.kind != HealthKind::None);
    Ok(Change::VipHealth { vip, health })
}

/// A usage error of `lbctl GROUP health` found after parsing, told as clap
/// tells its own (with the subcommand's usage).
fn usage(group: &str) -> impl Fn(String) -> CliError + '_ {
    move |message| {
        let mut cli = Cli::command();
        cli.build();
        let error = match cli
            .find_subcommand_mut(group)
            .and_then(|g| g.find_subcommand_mut("health"))
        {
            Some(cmd) => cmd.error(ErrorKind::ValueValidation, &message),
            None => cli.error(ErrorKind::ValueValidation, &message),
        };
        CliError::Usage(error)
    }
}

fn backend_change(b: BackendCommand) -> Result<Change, CliError> {
    Ok(match b {
        BackendCommand::List { .. } | BackendCommand::Register { .. } => {
            unreachable!("not a change of the desired state")
        }
        BackendCommand::Add { target, place } => Change::BackendAdd {
            vip: target.vip,
            addr: target.addr,
            weight: place.weight,
            tier: place.tier,
        },
        BackendCommand::Del { target } => Change::BackendDel {
            vip: target.vip,
            addr: target.addr,
        },
        BackendCommand::Set { target, weight } => Change::BackendSet {
            vip: target.vip,
            addr: target.addr,
            weight,
        },
        BackendCommand::Drain { target } => Change::BackendDrain {
            vip: target.vip,
            addr: target.addr,
        },
        BackendCommand::Undrain { target } => Change::BackendUndrain {
            vip: target.vip,
            addr: target.addr,
        },
        // `--kind none` stays: the backend is not checked, whatever the
        // VIP's check. `--clear` (no kind) drops the backend's own check.
        BackendCommand::Health { target, check, .. } => Change::BackendHealth {
            vip: target.vip,
            addr: target.addr,
            health: check.spec().map_err(usage("backend"))?,
        },
    })
}

async fn change(client: &Client, json: bool, change: Change) -> Result<(), CliError> {
    let raw = client.post(PATH_CHANGE, &change).await?;
    print_answer(&raw, json, output::render_change)
}

async fn stats(client: &Client, json: bool) -> Result<(), CliError> {
    let raw = client.get(PATH_STATS).await?;
    print_answer(&raw, json, |s: &Stats| output::render_stats(s, None))
}

/// Samples every interval until Ctrl-C: a redrawn table with rates, or one
/// JSON object per line.
async fn stats_watch(client: &Client, json: bool, a: &StatsArgs) -> Result<(), CliError> {
    let tty = io::stdout().is_terminal();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut prev: Option<(Stats, Instant)> = None;
    let mut next = tokio::time::Instant::now();
    loop {
        let raw = tokio::select! {
            r = client.get(PATH_STATS) => r?,
            _ = &mut ctrl_c => return Ok(()),
        };
        let now = Instant::now();
        if json {
            let line = output::reformat_json(&raw, false)
                .map_err(|e| CliError::Other(format!("lbd sent invalid JSON: {e}")))?;
            write_out(&format!("{line}\n"))?;
        } else {
            let cur: Stats = decode(&raw)?;
            let rates = match &prev {
                Some((p, at)) => output::rates(p, &cur, now.duration_since(*at)),
                None => output::Rates::default(),
            };
            let mut screen = String::new();
            if tty {
                // Home, clear screen.
                screen.push_str("\x1b[H\x1b[2J");
            } else if prev.is_some() {
                screen.push('\n');
            }
            screen.push_str(&format!(
                "Every {}: lbd stats on {} (Ctrl-C to quit)\n\n",
                humantime::format_duration(a.interval),
                client.target()
            ));
            screen.push_str(&output::render_stats(&cur, Some(&rates)));
            write_out(&screen)?;
            prev = Some((cur, now));
        }
        // Fixed ticks, not interval-after-answer, so rates stay per interval.
        next += a.interval;
        let now = tokio::time::Instant::now();
        if next < now {
            next = now;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = &mut ctrl_c => return Ok(()),
        }
    }
}

/// The query of `GET /v1/explain`.
pub fn explain_query(a: &ExplainArgs) -> String {
    let mut params = vec![
        ("src", a.src.ip().to_string()),
        ("sport", a.src.port().to_string()),
        ("vip", a.vip.clone()),
    ];
    if let Some(p) = a.dport {
        params.push(("dport", p.to_string()));
    }
    with_query(PATH_EXPLAIN, &params)
}

async fn explain(client: &Client, json: bool, a: &ExplainArgs) -> Result<(), CliError> {
    let raw = client.get(&explain_query(a)).await?;
    print_answer(&raw, json, output::render_explain)
}

/// How often `lbctl debug` asks for new trace lines.
const DEBUG_POLL: Duration = Duration::from_millis(200);

/// Prints the trace's lines as they come, until the trace ends (or Ctrl-C);
/// with `--json`, one JSON object per line.
async fn debug_follow(client: &Client, json: bool) -> Result<(), CliError> {
    let mut next = 0;
    let mut first = true;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let view: TraceView = decode(
            &client
                .get(&with_query(PATH_DEBUG, &[("after", next.to_string())]))
                .await?,
        )?;
        if first && !json {
            match (&view.on, &view.vip) {
                (false, _) => write_out(
                    "no trace is on (start one with `lbctl debug on [--vip VIP] [--seconds N]`); \
                     its last lines:\n",
                )?,
                (true, vip) => write_out(&format!(
                    "tracing {} for {}s more (at most {} records per second and CPU); Ctrl-C stops following\n",
                    vip.as_deref().unwrap_or("every VIP"),
                    view.seconds_left,
                    view.rate_limit
                ))?,
            }
        }
        first = false;
        for l in &view.lines {
            if json {
                print_value(l)?;
            } else {
                write_out(&format!("{}\n", l.line))?;
            }
        }
        next = view.next;
        if !view.on {
            if !json {
                write_out(&format!(
                    "trace off ({} records left out by the rate limit since lbd started)\n",
                    view.suppressed
                ))?;
            }
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(DEBUG_POLL) => {}
            _ = &mut ctrl_c => return Ok(()),
        }
    }
}

/// Registers, then renews the lease every third of its TTL until killed;
/// a lease found expired (lbd or the store was away too long) is taken
/// again. Failures are said and retried, never fatal: the loop is the
/// heartbeat.
async fn register(client: &Client, req: &StoreRegister) -> Result<(), CliError> {
    let every = Duration::from_secs(req.ttl_secs.max(1)).div_f64(3.0);
    let mut lease: Option<i64> = None;
    loop {
        match lease {
            None => match client.post(PATH_STORE_REGISTER, req).await {
                Ok(raw) => {
                    let r: StoreLease = decode(&raw)?;
                    write_out(&format!(
                        "registered {} in {} (lease {:x}, {}s); renewing every {:?} until stopped\n",
                        req.addr, req.vip, r.lease, req.ttl_secs, every
                    ))?;
                    lease = Some(r.lease);
                }
                // A refusal (no such VIP, not taking registrations) is final.
                Err(CliError::Daemon { status, message }) if status.is_client_error() => {
                    return Err(CliError::Daemon { status, message })
                }
                Err(e) => eprintln!("lbctl: registering: {e}; retrying"),
            },
            Some(l) => match client
                .post(PATH_STORE_RENEW, &StoreLease { lease: l })
                .await
            {
                Ok(raw) => {
                    let alive: StoreRenewed = decode(&raw)?;
                    if !alive.alive {
                        eprintln!("lbctl: lease {l:x} expired; registering again");
                        lease = None;
                        continue;
                    }
                }
                Err(e) => eprintln!("lbctl: renewing lease {l:x}: {e}; retrying"),
            },
        }
        tokio::time::sleep(every).await;
    }
}

/// The VIPs of a file for `store import`: JSON as `store export` prints
/// it, else TOML as lbd's config has them.
fn read_vips(file: &std::path::Path) -> Result<crate::state::DesiredState, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Other(format!("{}: {e}", file.display())))?;
    if text.trim_start().starts_with('{') {
        let export: StoreExport = serde_json::from_str(&text)
            .map_err(|e| CliError::Other(format!("{}: not a store export: {e}", file.display())))?;
        let state = crate::state::DesiredState {
            vips: export
                .vips
                .into_iter()
                .map(|v| (v.vip, v.desired))
                .collect(),
        };
        state
            .validate()
            .map_err(|e| CliError::Other(format!("{}: {e}", file.display())))?;
        return Ok(state);
    }
    crate::config::load_vips(file).map_err(|e| CliError::Other(e.to_string()))
}

async fn reload(client: &Client, json: bool, dry_run: bool) -> Result<(), CliError> {
    let raw = client.post(PATH_RELOAD, &ReloadRequest { dry_run }).await?;
    print_answer(&raw, json, |r: &ReloadResult| {
        output::render_reload(r, dry_run)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("lbctl").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn explain_queries_are_encoded() {
        let Command::Explain(a) =
            parse(&["explain", "198.51.100.7:40000", "10.100.0.1:80/tcp"]).command
        else {
            panic!()
        };
        assert_eq!(
            explain_query(&a),
            "/v1/explain?src=198.51.100.7&sport=40000&vip=10.100.0.1%3A80%2Ftcp"
        );
        let Command::Explain(a) = parse(&[
            "explain",
            "[2001:db8::7]:40000",
            "2001:db8::1/udp",
            "--dport",
            "53",
        ])
        .command
        else {
            panic!()
        };
        assert_eq!(
            explain_query(&a),
            "/v1/explain?src=2001%3Adb8%3A%3A7&sport=40000&vip=2001%3Adb8%3A%3A1%2Fudp&dport=53"
        );
    }

    #[test]
    fn changes_map_to_the_api() {
        let Command::Backend(b) = parse(&["backend", "drain", "web", "10.0.0.2"]).command else {
            panic!()
        };
        assert_eq!(
            backend_change(b).unwrap(),
            Change::BackendDrain {
                vip: "web".into(),
                addr: "10.0.0.2".parse().unwrap()
            }
        );
        let Command::Backend(b) =
            parse(&["backend", "add", "web", "10.0.0.2", "--weight", "0"]).command
        else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(backend_change(b).unwrap()).unwrap(),
            serde_json::json!({"op": "backend-add", "vip": "web", "addr": "10.0.0.2", "weight": 0})
        );
        let Command::Vip(VipCommand::Add(a)) = parse(&[
            "vip",
            "add",
            "10.100.0.1:80/tcp",
            "--scheduler",
            "source-hash",
        ])
        .command
        else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(vip_add(a)).unwrap(),
            serde_json::json!({"op": "vip-add", "vip": "10.100.0.1:80/tcp", "name": null,
                "scheduler": "source-hash", "forwarding": "ipip", "stateless": false})
        );
    }

    fn vip_health_of(args: &[&str]) -> Result<Change, CliError> {
        let Command::Vip(VipCommand::Health { vip, check }) = parse(args).command else {
            panic!()
        };
        vip_health(vip, &check)
    }

    fn backend_health_of(args: &[&str]) -> Result<Change, CliError> {
        let Command::Backend(b) = parse(args).command else {
            panic!()
        };
        backend_change(b)
    }

    #[test]
    fn health_changes_map_to_the_api() {
        let c = vip_health_of(&["vip", "health", "web", "--kind", "tcp", "--rise", "3"]).unwrap();
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({"op": "vip-health", "vip": "web", "health": {
                "kind": "tcp", "port": 0, "path": "", "interval": "1s",
                "timeout": "500ms", "rise": 3, "fall": 3}})
        );
        // No checks at all for the VIP...
        assert_eq!(
            vip_health_of(&["vip", "health", "web", "--kind", "none"]).unwrap(),
            Change::VipHealth {
                vip: "web".into(),
                health: None
            }
        );
        // ... but a backend's `none` is its own check (not checked), and
        // --clear drops its own check.
        let Change::BackendHealth { health, .. } =
            backend_health_of(&["backend", "health", "web", "10.0.0.2", "--kind", "none"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(health.unwrap().kind, HealthKind::None);
        assert_eq!(
            serde_json::to_value(
                backend_health_of(&["backend", "health", "web", "10.0.0.2", "--clear"]).unwrap()
            )
            .unwrap(),
            serde_json::json!({"op": "backend-health", "vip": "web", "addr": "10.0.0.2",
                "health": null})
        );

        // Rules broken together are usage errors (exit 2), with the
        // subcommand's usage.
        let e = vip_health_of(&[
            "vip",
            "health",
            "web",
            "--kind",
            "tcp",
            "--interval",
            "100ms",
        ])
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let shown = e.to_string();
        assert!(
            shown.contains("--interval: the timeout 500ms (the default)"),
            "{shown}"
        );
        assert!(shown.contains("lbctl vip health"), "{shown}");
        let e = backend_health_of(&[
            "backend", "health", "web", "10.0.0.2", "--kind", "udp", "--path", "/",
        ])
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("lbctl backend health"), "{e}");
    }
}
