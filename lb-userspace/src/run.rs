//! The lbd subcommands: `run` wires the daemon to its tasks (control socket,
//! reload signal, next-hop resolver); `check-config`, `detach` and `decap`
//! are one-shot.

use std::{
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::Notify,
};

use crate::{
    api,
    audit::AuditLog,
    config,
    daemon::{self, Daemon, InterfaceLock},
    decap::Decap,
    health::Checker,
    maps::AttachMode,
    metrics::Metrics,
    nexthop, pin,
};

/// How often next hops are re-resolved even without a netlink event.
const NEXTHOP_REFRESH: Duration = Duration::from_secs(10);

pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let cfg = config::load(config_path)?;
    let _lock = InterfaceLock::take(Path::new(daemon::RUN_DIR), &cfg.interface)?;
    let read_gid = cfg.read_group.as_deref().map(api::group_id).transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let daemon = Daemon::start(config_path)?;
        let socket_path = daemon.config().control_socket.clone();
        let audit = Arc::new(AuditLog::new(&daemon.config().state_dir));
        let shared = Arc::new(Mutex::new(daemon));
        let listener = api::bind(&socket_path, read_gid)?;
        tracing::info!(socket = %socket_path.display(), "control socket ready");

        let metrics = Arc::new(Metrics::new(shared.clone()));
        let metrics_addr = shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .config()
            .metrics_listen;
        let metrics_listener = crate::metrics::bind(metrics_addr).await?;
        tracing::info!(listen = %metrics_listener.local_addr()?, "metrics ready at /metrics");
        let changed = Arc::new(Notify::new());
        let nexthops_changed = Arc::new(Notify::new());
        let hooks = Arc::new(api::Hooks {
            changed: changed.clone(),
            nexthops: nexthops_changed.clone(),
            metrics: metrics.clone(),
        });

        let tasks = [
            tokio::spawn(resolve_next_hops(shared.clone(), nexthops_changed)),
            tokio::spawn(sample_rates(shared.clone())),
            tokio::spawn(reload_on_sighup(shared.clone(), hooks.clone())),
            tokio::spawn(async move { crate::metrics::serve(metrics_listener, metrics).await }),
            tokio::spawn({
                let checker = Checker::new(shared.clone(), hooks.metrics.clone());
                async move {
                    checker.run(changed).await;
                    Ok(())
                }
            }),
        ];
        let server = api::serve(listener, shared.clone(), audit, read_gid, hooks);

        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let outcome = tokio::select! {
            r = server => r.context("control socket"),
            _ = term.recv() => Ok(()),
            _ = int.recv() => Ok(()),
        };
        for t in tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&socket_path);
        // The link, program and maps stay pinned: forwarding goes on with
        // the last state until the next lbd adopts it.
        tracing::info!("lbd stopped; the balancer keeps forwarding with the last state");
        outcome
    })
}

/// Samples the counters once a second for the rates `lbctl status` shows.
async fn sample_rates(daemon: api::SharedDaemon) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        daemon
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sample_rates();
    }
}

async fn reload_on_sighup(daemon: api::SharedDaemon, hooks: Arc<api::Hooks>) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    while hup.recv().await.is_some() {
        let result = daemon
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reload(false);
        hooks.metrics.reload(result.is_ok());
        hooks.notify_changed();
        match result {
            Ok(r) if r.diff.is_empty() => tracing::info!("SIGHUP: config reloaded, no change"),
            Ok(r) => tracing::info!(changes = %r.diff.join("; "), "SIGHUP: config reloaded"),
            Err(e) => tracing::error!("SIGHUP: reload refused, nothing changed: {e}"),
        }
    }
    Ok(())
}

/// Keeps every backend's next hop (egress interface, MACs) current: at once
/// when the backend set changes, on netlink route/neighbour/link events, and
/// every `NEXTHOP_REFRESH`.
async fn resolve_next_hops(daemon: api::SharedDaemon, changed: Arc<Notify>) -> anyhow::Result<()> {
    let mut resolver = nexthop::Resolver::new().context("netlink")?;
    loop {
        let addrs: Vec<IpAddr> = daemon
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .backend_addrs();
        resolver.track(&addrs);
        for (addr, nh) in resolver.refresh().await {
            let mut d = daemon.lock().unwrap_or_else(|p| p.into_inner());
            match d.set_next_hop(addr, nh) {
                Ok(()) => {
                    tracing::info!(backend = %addr, next_hop = %show_next_hop(nh), "next hop updated")
                }
                Err(e) => tracing::warn!(backend = %addr, "next hop update failed: {e:#}"),
            }
        }
        tokio::select! {
            _ = resolver.wait_for_change(NEXTHOP_REFRESH) => {}
            _ = changed.notified() => {}
        }
    }
}

fn show_next_hop(nh: Option<crate::maps::NextHop>) -> String {
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    match nh {
        Some(nh) => format!(
            "ifindex {} {} -> {}",
            nh.ifindex,
            mac(nh.src_mac),
            mac(nh.dst_mac)
        ),
        None => "unresolved".into(),
    }
}

pub fn check_config(config_path: &Path) -> anyhow::Result<()> {
    let cfg = config::load(config_path)?;
    let state = cfg.desired_state()?;
    let backends: usize = state.vips.values().map(|v| v.backends.len()).sum();
    println!(
        "{}: ok ({} VIPs, {backends} backends)",
        config_path.display(),
        state.vips.len()
    );
    Ok(())
}

/// Where the decap program's link is pinned for an interface.
fn decap_dir(interface: &str) -> std::path::PathBuf {
    Path::new(pin::BPFFS).join("lb-decap").join(interface)
}

pub fn detach(interface: &str) -> anyhow::Result<()> {
    // Only a running lbd holds the lock; without a lock file none ever ran.
    let lock_file = Path::new(daemon::RUN_DIR).join(format!("lbd-{interface}.lock"));
    let _lock = if lock_file.exists() {
        Some(
            InterfaceLock::take(Path::new(daemon::RUN_DIR), interface)
                .context("lbd is running for this interface: stop it first")?,
        )
    } else {
        None
    };
    pin::ensure_bpffs(Path::new(pin::BPFFS))?;
    let balancer = pin::remove_all(Path::new(pin::BPFFS), interface)?;
    let decap_dir = decap_dir(interface);
    let decap = decap_dir.exists();
    if decap {
        std::fs::remove_dir_all(&decap_dir)
            .with_context(|| format!("removing {}", decap_dir.display()))?;
    }
    match (balancer, decap) {
        (false, false) => println!("nothing pinned for {interface}"),
        _ => println!(
            "detached from {interface}:{}{}",
            if balancer {
                " balancer (program, link, maps)"
            } else {
                ""
            },
            if decap { " decap" } else { "" }
        ),
    }
    Ok(())
}

pub fn decap(interface: &str, addresses: &[IpAddr], mode: AttachMode) -> anyhow::Result<()> {
    pin::ensure_bpffs(Path::new(pin::BPFFS))?;
    let mut d = Decap::load().context("loading the decap program")?;
    for a in addresses {
        d.add_address(*a)?;
    }
    let m = d
        .attach_pinned(interface, mode, &decap_dir(interface))
        .with_context(|| format!("attaching decap to {interface}"))?;
    let list: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
    println!(
        "decap attached to {interface} ({}) for {}",
        daemon::mode_name(m),
        list.join(", ")
    );
    Ok(())
}
