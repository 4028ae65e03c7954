//! Following the store: read the desired state, apply it whole, watch for
//! the next revision; keep this node's report alive under its lease, which
//! doubles as the probe of the link. Any failure ends the session: the
//! daemon is told the store is unreachable (it keeps forwarding and
//! announcing what it has), and the next session lists the state again —
//! which also covers a watch that fell behind a compaction.

use std::{sync::Arc, time::Duration};

use anyhow::Context;

use crate::{
    api::server::Hooks,
    daemon::Shared,
    model::defaults::{STORE_NODE_TTL, STORE_PROBE_INTERVAL},
    store::{
        etcd::Etcd,
        layout::{ContentError, Snapshot},
        report::NodeReport,
    },
};

/// The pause between sessions after a failure.
const RETRY: Duration = Duration::from_secs(1);

/// Runs for as long as lbd does.
pub(super) async fn follow(daemon: Shared, hooks: Arc<Hooks>, etcd: Etcd) -> anyhow::Result<()> {
    let mut publisher = Publisher::default();
    loop {
        let Err(e) = session(&daemon, &hooks, &etcd, &mut publisher).await;
        lock(&daemon).store_lost(format!("{e:#}"));
        tokio::time::sleep(RETRY).await;
    }
}

fn lock(daemon: &Shared) -> std::sync::MutexGuard<'_, crate::daemon::Daemon> {
    daemon.lock().unwrap_or_else(|p| p.into_inner())
}

/// One connected stretch: list, apply, then watch and probe until a failure.
async fn session(
    daemon: &Shared,
    hooks: &Hooks,
    etcd: &Etcd,
    publisher: &mut Publisher,
) -> Result<std::convert::Infallible, anyhow::Error> {
    let from = read_desired(daemon, hooks, etcd).await?;
    let mut watch = etcd.watch(from).await?;
    publisher.tick(daemon, etcd).await?;
    read_reports(daemon, etcd).await?;
    read_registrations(daemon, hooks, etcd).await?;
    let votes_changed = lock(daemon).votes_changed();
    let layout = &etcd.layout;
    let mut probe = tokio::time::interval(STORE_PROBE_INTERVAL);
    loop {
        tokio::select! {
            m = watch.message() => {
                let resp = m.context("the watch failed")?.context("the watch ended")?;
                if resp.canceled() {
                    anyhow::bail!(
                        "the watch was cancelled ({}; compacted at revision {}): listing again",
                        resp.cancel_reason(),
                        resp.compact_revision()
                    );
                }
                let under = |prefix: String| {
                    resp.events()
                        .iter()
                        .any(|e| e.kv().is_some_and(|kv| kv.key().starts_with(prefix.as_bytes())))
                };
                // Events of one transaction come in one response; the read
                // after them is a whole, later revision.
                if under(layout.desired()) {
                    read_desired(daemon, hooks, etcd).await?;
                    publisher.tick(daemon, etcd).await?;
                }
                if under(layout.nodes()) {
                    read_reports(daemon, etcd).await?;
                }
                if under(layout.registrations()) {
                    read_registrations(daemon, hooks, etcd).await?;
                }
            }
            _ = votes_changed.notified() => publisher.tick(daemon, etcd).await?,
            _ = probe.tick() => publisher.tick(daemon, etcd).await?,
        }
    }
}

/// Reads the desired state and applies it; returns the revision a watch
/// goes on from (0: from now). Contents lb cannot read are refused without
/// ending the session: the store is reachable, what it holds is not
/// usable, and the node keeps what it has and says so.
async fn read_desired(daemon: &Shared, hooks: &Hooks, etcd: &Etcd) -> anyhow::Result<i64> {
    match etcd.snapshot().await {
        Ok(snap) => {
            apply(daemon, hooks, &snap);
            Ok(snap.store_revision + 1)
        }
        Err(e) if e.downcast_ref::<ContentError>().is_some() => {
            tracing::error!("refused what the store holds (the maps keep what they have): {e:#}");
            lock(daemon).refuse_store_contents(format!("{e:#}"));
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

/// The other nodes' reports: their health votes.
async fn read_reports(daemon: &Shared, etcd: &Etcd) -> anyhow::Result<()> {
    let reports = etcd.reports().await?;
    if let Err(e) = lock(daemon).set_peer_reports(&reports) {
        tracing::error!("applying the nodes' health decision: {e}");
    }
    Ok(())
}

/// The backends registered under leases, to the VIPs that take them.
async fn read_registrations(daemon: &Shared, hooks: &Hooks, etcd: &Etcd) -> anyhow::Result<()> {
    let (registered, bad) = etcd.registrations().await?;
    for b in bad {
        tracing::warn!("a registration lb cannot read, left out: {b}");
    }
    let result = lock(daemon).set_registered(&registered);
    match result {
        Ok(true) => hooks.notify_changed(),
        Ok(false) => {}
        Err(e) => tracing::error!("applying the registered backends: {e}"),
    }
    Ok(())
}

fn apply(daemon: &Shared, hooks: &Hooks, snap: &Snapshot) {
    let result = lock(daemon).apply_snapshot(snap);
    match result {
        Ok(None) => {}
        Ok(Some(lines)) => {
            tracing::info!(
                revision = snap.revision,
                changes = lines.len(),
                by = snap
                    .last_change
                    .as_ref()
                    .map(|n| n.node.as_str())
                    .unwrap_or(""),
                "applied the store's desired state"
            );
            for line in &lines {
                tracing::info!(revision = snap.revision, "{line}");
            }
            hooks.notify_changed();
        }
        Err(e) => tracing::error!(
            revision = snap.revision,
            "refused the store's desired state (the maps keep the revision they hold): {e}"
        ),
    }
}

/// The node's report under its lease: renewed every probe, rewritten when
/// it changed; a lease that expired (the node was cut off longer than its
/// TTL) is replaced.
#[derive(Default)]
struct Publisher {
    lease: Option<i64>,
    last: Option<NodeReport>,
}

impl Publisher {
    async fn tick(&mut self, daemon: &Shared, etcd: &Etcd) -> anyhow::Result<()> {
        let alive = match self.lease {
            Some(l) => etcd.keep_alive(l).await?,
            None => false,
        };
        let lease = match (alive, self.lease) {
            (true, Some(l)) => l,
            _ => {
                let node = lock(daemon)
                    .store_settings()
                    .map(|s| s.node.clone())
                    .unwrap_or_default();
                etcd.join(&node).await?;
                let l = etcd.grant(STORE_NODE_TTL).await?;
                self.lease = Some(l);
                self.last = None;
                l
            }
        };
        let report = {
            let mut d = lock(daemon);
            d.store_reached();
            d.store_report()
        };
        if self.last.as_ref() != Some(&report) {
            etcd.publish(lease, &report).await?;
            self.last = Some(report);
        }
        Ok(())
    }
}
