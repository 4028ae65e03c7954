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
    daemon::{self, Daemon},
    decap::Decap,
    health::Checker,
    iface,
    lock::{self, Lock},
    maps::AttachMode,
    metrics::Metrics,
    nexthop,
    pin::{self, PinPlace},
};

/// Removes a file when dropped: the control socket, on every way out.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How often next hops are re-resolved even without a netlink event.
const NEXTHOP_REFRESH: Duration = Duration::from_secs(10);

/// Runs the daemon. Start-up goes from what touches nothing to what touches
/// the data path: the config is validated, the locks taken, the control
/// socket and metrics listener bound, the interface, bpffs and pinned layout
/// checked; only then are maps written and the program attached. A failure
/// before that last step leaves the host as it was (the socket file and
/// locks are removed again); see `Daemon::start` for the last step.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let cfg = config::load(config_path)?;
    cfg.desired_state()?;
    let read_gid = cfg.read_group.as_deref().map(api::group_id).transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let place = PinPlace::current(&cfg.interface)?;
        let _lock = Lock::interface(Path::new(lock::RUN_DIR), place.netns, &cfg.interface)?;
        let _state_lock = Lock::state_dir(&cfg.state_dir)?;
        let socket_path = cfg.control_socket.clone();
        let listener = api::bind(&socket_path, read_gid)?;
        let _socket = RemoveOnDrop(socket_path.clone());
        let metrics_listener = crate::metrics::bind(cfg.metrics_listen).await?;
        let interface = iface::require(&cfg.interface).await?;
        pin::ensure_bpffs(&place.bpffs)?;
        pin::report_legacy(
            "balancer",
            &pin::claim_legacy(
                &place.legacy_balancer_dir(),
                &place.interface_dir(),
                &interface,
            ),
        );
        place.check_layout()?;

        let daemon = Daemon::start(config_path, cfg, &place)?;
        let audit = Arc::new(AuditLog::new(&daemon.config().state_dir));
        let shared = Arc::new(Mutex::new(daemon));
        tracing::info!(socket = %socket_path.display(), "control socket ready");
        tracing::info!(listen = %metrics_listener.local_addr()?, "metrics ready at /metrics");
        let metrics = Arc::new(Metrics::new(shared.clone()));
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
            tokio::spawn(read_trace(shared.clone())),
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

/// Reads the decision trace's records as the data path writes them (the
/// ring buffer's fd becomes readable), names them and ends a trace whose
/// time is up (checked every second).
async fn read_trace(daemon: api::SharedDaemon) -> anyhow::Result<()> {
    let reader = daemon
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .balancer_mut()
        .take_trace_reader()
        .context("the trace reader was taken already")?;
    // SAFETY: the reader owns the ring buffer's fd, which stays open and the
    // same for as long as the reader lives, and the AsyncFd owns the reader.
    let mut fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(reader, tokio::io::Interest::READABLE)
    }
    .map_err(|e| anyhow::anyhow!("watching the trace buffer: {e}"))?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            ready = fd.readable_mut() => {
                let mut guard = ready.context("waiting for trace records")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = tick.tick() => {}
        }
        daemon
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .follow_trace();
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

/// Removes this namespace's balancer and decap pins for `interface` (and
/// pins an earlier version left at the pre-namespace path, when they drive
/// this namespace's interface); never another namespace's.
pub fn detach(interface: &str) -> anyhow::Result<()> {
    let place = PinPlace::current(interface)?;
    let run_dir = Path::new(lock::RUN_DIR);
    // A running lbd holds the lock: refuse rather than pull its maps away.
    let _lock = Lock::interface(run_dir, place.netns, interface)
        .context("lbd is running for this interface: stop it first")?;
    pin::ensure_bpffs(&place.bpffs)?;
    if let Some(found) = iface::lookup_blocking(interface)? {
        // Moved into this namespace's place first, then removed with it.
        for (what, legacy, to) in [
            (
                "balancer",
                place.legacy_balancer_dir(),
                place.interface_dir(),
            ),
            ("decap", place.legacy_decap_dir(), place.decap_dir()),
        ] {
            pin::report_legacy(what, &pin::claim_legacy(&legacy, &to, &found));
        }
    }
    let balancer = place.remove_balancer()?;
    let decap = place.remove_decap()?;
    match (balancer, decap) {
        (false, false) => println!("nothing pinned for {interface} in this network namespace"),
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

/// Attaches decap to `interface` and pins its link in this namespace's
/// place. Everything that can fail without touching the interface is
/// checked first; if attaching fails, the directory made for the pin is
/// removed again.
pub fn decap(
    interface: &str,
    addresses: &[IpAddr],
    mode: AttachMode,
    clamp: Option<crate::decap::ClampMss>,
) -> anyhow::Result<()> {
    let place = PinPlace::current(interface)?;
    pin::ensure_bpffs(&place.bpffs)?;
    let found = iface::require_blocking(interface)?;
    pin::report_legacy(
        "decap",
        &pin::claim_legacy(&place.legacy_decap_dir(), &place.decap_dir(), &found),
    );
    let mut d = Decap::load().context("loading the decap program")?;
    for a in addresses {
        d.add_address(*a)?;
    }
    let dir = place.decap_dir();
    let first = !dir.exists();
    let m = match d.attach_pinned(interface, mode, &dir) {
        Ok(m) => m,
        Err(e) => {
            if first {
                let _ = place.remove_decap();
            }
            return Err(e.context(format!("attaching decap to {interface}")));
        }
    };
    let per_family = clamp.map(|c| c.per_family(found.mtu));
    if let Err(e) = d.set_mss_clamp(interface, per_family, &dir) {
        if first {
            let _ = place.remove_decap();
        }
        return Err(e.context(format!("clamping the MSS on {interface}")));
    }
    let list: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
    println!(
        "decap attached to {interface} ({}) for {}; pinned at {}{}",
        daemon::mode_name(m),
        list.join(", "),
        dir.display(),
        per_family.map_or(String::new(), |c| format!(
            "; SYN-ACKs from VIPs clamped to MSS {} (IPv4) / {} (IPv6)",
            c.v4, c.v6
        ))
    );
    Ok(())
}
