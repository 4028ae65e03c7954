//! What runs beside the core once lbd is up: counter sampling, the trace
//! reader, reload on SIGHUP, the next-hop resolver and the interface's MAC.

use std::{net::IpAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::Notify,
};

use futures::StreamExt;

use crate::{
    api::server::Hooks,
    daemon::Shared,
    host::{iface, nexthop},
    model::{mac_text, NextHop},
};

/// How often next hops are re-resolved even without a netlink event.
const NEXTHOP_REFRESH: Duration = Duration::from_secs(10);

/// Samples the counters once a second for the rates `lbctl status` shows.
pub(super) async fn sample_rates(daemon: Shared) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        daemon
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sample_rates();
    }
}

/// How often least-connections counts are made to match the connection
/// table again (also right at start, and so right after an adopted start),
/// at most: see [`reconcile_pause`].
pub const CONN_RECONCILE: Duration = Duration::from_secs(1);

/// The pause after a reconcile whose scan took `scan`: the period, or nine
/// times the scan, whichever is longer, so that reading a large table (a
/// few million entries take a second or more) never takes more than a
/// tenth of a CPU, and never starves the data path's CPUs of memory
/// bandwidth back to back.
pub fn reconcile_pause(scan: Duration) -> Duration {
    CONN_RECONCILE.max(scan * 9)
}

/// Least-connections: once a period, corrects each backend's active count
/// for the flows the kernel dropped without the program seeing (LRU
/// evictions, entries that expired untouched, replaced entries). The table
/// is scanned on a blocking thread without holding the daemon; failures are
/// logged and retried next period: the counts only drift meanwhile.
pub(super) async fn reconcile_conns(daemon: Shared) -> anyhow::Result<()> {
    let mut pause = Duration::ZERO;
    loop {
        tokio::time::sleep(pause).await;
        pause = CONN_RECONCILE;
        let job = {
            let d = daemon.lock().unwrap_or_else(|p| p.into_inner());
            d.balancer().conn_reconcile()
        };
        let job = match job {
            Ok(Some(job)) => job,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("reconciling least-connections counts: {e}");
                continue;
            }
        };
        let now = crate::daemon::monotonic_ns();
        let started = std::time::Instant::now();
        let scan = tokio::task::spawn_blocking(move || {
            let scanned = job.scan(now);
            (job, scanned)
        });
        let Ok((job, scanned)) = scan.await else {
            tracing::warn!("reconciling least-connections counts: the scan failed");
            continue;
        };
        let took = started.elapsed();
        pause = reconcile_pause(took);
        if pause > CONN_RECONCILE {
            tracing::debug!(
                scan = ?took,
                next_in = ?pause,
                "the connection table is large: least-connections counts reconciled less often"
            );
        }
        let scanned = match scanned {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    "reconciling least-connections counts: reading the connection table: {e}"
                );
                continue;
            }
        };
        let d = daemon.lock().unwrap_or_else(|p| p.into_inner());
        match d.balancer().apply_conns(&job, scanned) {
            Some(r) if !r.corrections.is_empty() => tracing::debug!(
                entries = r.entries,
                scan = ?took,
                corrections = ?r.corrections,
                "least-connections counts corrected from the connection table"
            ),
            Some(_) => {}
            None => tracing::debug!("a backend id was given out during the scan: next period"),
        }
    }
}

/// Reads the decision trace's records as the data path writes them (the
/// ring buffer's fd becomes readable), names them and ends a trace whose
/// time is up (checked every second).
pub(super) async fn read_trace(daemon: Shared) -> anyhow::Result<()> {
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

/// How often the interface's MAC is checked without a netlink event.
const MAC_RECHECK: Duration = Duration::from_secs(10);

/// Keeps the MAC the balancer checks frames against equal to the
/// interface's: an operator (or a bonding or VRRP setup) may change it under
/// a running lbd, and frames to the new address must not pass as another
/// host's.
pub(super) async fn follow_interface_mac(
    daemon: Shared,
    ifname: String,
    ifindex: u32,
) -> anyhow::Result<()> {
    let mut events = nexthop::watch_links()?;
    let mut tick = tokio::time::interval(MAC_RECHECK);
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(nexthop::Event::Link { ifindex: i }) if i == ifindex => {}
                Some(nexthop::Event::Lost) => {}
                Some(_) => continue,
                None => {
                    events = nexthop::watch_links()?;
                    continue;
                }
            },
            _ = tick.tick() => {}
        }
        let found = match iface::lookup(&ifname).await {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("reading {ifname}'s MAC: {e:#}");
                continue;
            }
        };
        let mut d = daemon.lock().unwrap_or_else(|p| p.into_inner());
        let old = d.balancer().interface_mac();
        if old != found.mac {
            match d.balancer_mut().set_interface_mac(found.mac) {
                Ok(()) => tracing::info!(
                    interface = %ifname,
                    "MAC changed {} -> {}: frames to the new one are forwarded",
                    mac_text(old),
                    mac_text(found.mac)
                ),
                Err(e) => tracing::error!("writing {ifname}'s new MAC: {e}"),
            }
        }
    }
}

pub(super) async fn reload_on_sighup(daemon: Shared, hooks: Arc<Hooks>) -> anyhow::Result<()> {
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
pub(super) async fn resolve_next_hops(daemon: Shared, changed: Arc<Notify>) -> anyhow::Result<()> {
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

fn show_next_hop(nh: Option<NextHop>) -> String {
    match nh {
        Some(nh) => format!(
            "ifindex {} {} -> {}",
            nh.ifindex,
            mac_text(nh.src_mac),
            mac_text(nh.dst_mac)
        ),
        None => "unresolved".into(),
    }
}
