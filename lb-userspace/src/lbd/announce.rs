//! Announcing: making lbd's routing table match the decision
//! ([`crate::announce::decide`]): on every change the daemon signals
//! (a change, a health verdict, a drain) and once a second, which also puts
//! back a route someone removed by hand.

use std::{collections::BTreeSet, net::IpAddr, sync::Arc, time::Duration};

use tokio::sync::{Mutex, Notify};

use crate::{
    announce::{routes::KernelTable, Decision},
    api::audit::{AuditLog, Peer},
    daemon::Shared,
};

/// How often the table is checked without a signal.
const RECHECK: Duration = Duration::from_secs(1);

/// What one reconcile did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub added: Vec<IpAddr>,
    pub removed: Vec<IpAddr>,
}

pub struct Announcer {
    table: Mutex<KernelTable>,
    shared: Shared,
    audit: Arc<AuditLog>,
    wake: Arc<Notify>,
}

impl Announcer {
    pub fn new(table: KernelTable, shared: Shared, audit: Arc<AuditLog>) -> Self {
        let wake = shared
            .lock()
            .expect("daemon lock poisoned")
            .announce_wake();
        Announcer {
            table: Mutex::new(table),
            shared,
            audit,
            wake,
        }
    }

    /// Adds the routes the decision wants and the table lacks, removes the
    /// ones of lbd's it does not want, and records what the table holds.
    pub async fn reconcile(&self) -> anyhow::Result<Outcome> {
        // One reconcile at a time: the lock is held across the netlink calls.
        let table = self.table.lock().await;
        let (decisions, epoch) = self
            .shared
            .lock()
            .expect("daemon lock poisoned")
            .announce_decisions();
        let result = apply(&table, &decisions).await;
        let present = table.owned().await;
        let mut d = self.shared.lock().expect("daemon lock poisoned");
        let (outcome, error) = match result {
            Ok(o) => (o, None),
            Err((o, e)) => (o, Some(format!("{e:#}"))),
        };
        for (addr, added) in outcome
            .added
            .iter()
            .map(|a| (a, true))
            .chain(outcome.removed.iter().map(|a| (a, false)))
        {
            let reason = decisions.get(addr).map_or("no VIP uses it", |d| d.reason.describe());
            let action = if added { "announced" } else { "withdrawn" };
            tracing::info!(address = %addr, table = table.table, reason, "{action}");
            self.audit.record(
                &own_peer(),
                &serde_json::json!({ "announce": { "address": addr, "action": action } }),
                reason,
            );
        }
        let present = present.unwrap_or_else(|e| {
            tracing::warn!("reading routing table {}: {e:#}", table.table);
            BTreeSet::new()
        });
        // Once per new failure, not every retry (a link that is down makes
        // every try fail until it is back).
        if let Some(e) = &error {
            if d.announce_view().error.as_ref() != Some(e) {
                tracing::error!("announcing (retried every second): {e}");
            }
        } else if d.announce_view().error.is_some() {
            tracing::info!("announcing works again");
        }
        d.record_announce(
            decisions,
            epoch,
            &present,
            (outcome.added.len() + outcome.removed.len()) as u64,
            error.clone(),
        );
        match error {
            Some(e) => Err(anyhow::anyhow!(e)),
            None => Ok(outcome),
        }
    }

    /// Reconciles on every signal and every [`RECHECK`].
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(RECHECK) => {}
            }
            // Failures are recorded (status, log) and retried next round.
            let _ = self.reconcile().await;
        }
    }
}

async fn apply(
    table: &KernelTable,
    decisions: &std::collections::BTreeMap<IpAddr, Decision>,
) -> Result<Outcome, (Outcome, anyhow::Error)> {
    let mut outcome = Outcome::default();
    let owned = match table.owned().await {
        Ok(o) => o,
        Err(e) => return Err((outcome, e)),
    };
    let want: BTreeSet<IpAddr> = decisions
        .iter()
        .filter(|(_, d)| d.announce)
        .map(|(a, _)| *a)
        .collect();
    for addr in want.difference(&owned) {
        if let Err(e) = table.add(*addr).await {
            return Err((outcome, e));
        }
        outcome.added.push(*addr);
    }
    for addr in owned.difference(&want) {
        if let Err(e) = table.remove(*addr).await {
            return Err((outcome, e));
        }
        outcome.removed.push(*addr);
    }
    Ok(outcome)
}

/// lbd itself, as the audit log names who made a change.
fn own_peer() -> Peer {
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    Peer {
        uid,
        gid,
        pid: std::process::id() as i32,
    }
}
