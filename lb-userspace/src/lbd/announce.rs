//! Announcing: making lbd's routing table match the decision
//! ([`crate::announce::decide`]): on every change the daemon signals
//! (a change, a health verdict, a drain), on every change of its interface,
//! and once a second, which also puts back a route someone removed by hand.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::StreamExt;
use tokio::sync::{Mutex, Notify};

use crate::{
    announce::{
        routes::{KernelTable, Removed},
        Reason,
    },
    api::audit::{AuditLog, Peer},
    daemon::Shared,
    host::nexthop,
};

/// How often the table is checked without a signal.
const RECHECK: Duration = Duration::from_secs(1);

/// What one reconcile did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub added: Vec<IpAddr>,
    pub removed: Vec<IpAddr>,
    /// lbd's routes removed from tables other than its own.
    pub strays: Vec<(u32, IpAddr)>,
}

pub struct Announcer {
    table: Mutex<KernelTable>,
    shared: Shared,
    audit: Arc<AuditLog>,
    wake: Arc<Notify>,
    /// lbd's routes in other tables were looked for (once is enough: only
    /// an earlier lbd on this interface writes them, and the interface lock
    /// rules out one running beside this one).
    strays_done: AtomicBool,
}

impl Announcer {
    pub fn new(table: KernelTable, shared: Shared, audit: Arc<AuditLog>) -> Self {
        let wake = shared.lock().expect("daemon lock poisoned").announce_wake();
        Announcer {
            table: Mutex::new(table),
            shared,
            audit,
            wake,
            strays_done: AtomicBool::new(false),
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
        let strays = !self.strays_done.load(Ordering::Relaxed);
        let (outcome, present, errors) = apply(&table, &decisions, strays).await;
        if strays && errors.is_empty() {
            self.strays_done.store(true, Ordering::Relaxed);
        }
        let mut d = self.shared.lock().expect("daemon lock poisoned");
        let events = outcome
            .added
            .iter()
            .map(|a| (*a, "announced", None))
            .chain(outcome.removed.iter().map(|a| (*a, "withdrawn", None)))
            .chain(
                outcome
                    .strays
                    .iter()
                    .map(|(t, a)| (*a, "withdrawn", Some(*t))),
            );
        for (addr, action, other_table) in events {
            let reason = match other_table {
                Some(t) => format!("it was in table {t}, which is not lbd's table any more"),
                None => decisions
                    .get(&addr)
                    .map_or("no VIP uses it", |r| r.describe())
                    .to_string(),
            };
            let in_table = other_table.unwrap_or(table.table);
            tracing::info!(address = %addr, table = in_table, reason, "{action}");
            self.audit.record(
                &own_peer(),
                &serde_json::json!({
                    "announce": { "address": addr, "action": action, "table": in_table }
                }),
                &reason,
            );
        }
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        // Once per new failure, not every retry (a link that is down makes
        // every try fail until it is back).
        if let Some(e) = &error {
            if d.announce_view().error.as_ref() != Some(e) {
                tracing::error!("announcing (retried every second): {e}");
            }
        } else if d.announce_view().error.is_some() {
            tracing::info!("announcing works again");
        }
        let changes = outcome.added.len() + outcome.removed.len() + outcome.strays.len();
        d.record_announce(
            decisions,
            epoch,
            present.as_ref(),
            changes as u64,
            error.clone(),
        );
        match error {
            Some(e) => Err(anyhow::anyhow!(e)),
            None => Ok(outcome),
        }
    }

    /// Reconciles on every signal and every [`RECHECK`].
    /// Also on every change of lbd's interface: the kernel drops the routes
    /// of a link set down, and they are put back as soon as it is up. The
    /// task never ends: a failure is recorded and the next round retries
    /// (the link subscription too).
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        let ifindex = self.table.lock().await.ifindex;
        let mut tick = tokio::time::interval(RECHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut links = None;
        loop {
            if links.is_none() {
                links = match nexthop::watch_links() {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tracing::warn!("watching {ifindex}'s link (retried each second): {e:#}");
                        None
                    }
                };
            }
            let link_event = async {
                match links.as_mut() {
                    Some(l) => l.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tick.tick() => {}
                ev = link_event => match ev {
                    Some(nexthop::Event::Link { ifindex: i }) if i == ifindex => {}
                    Some(nexthop::Event::Lost) => {}
                    Some(_) => continue,
                    None => {
                        links = None;
                        continue;
                    }
                },
            }
            // Failures are recorded (status, log) and retried next round.
            let _ = self.reconcile().await;
        }
    }
}

/// Makes the table match `decisions`, address by address: a failure is
/// collected and the rest still done. Withdrawals come first, so a route
/// that cannot be added never keeps one that must go. Returns what was
/// done, lbd's routes in the table now (`None`: it could not be read), and
/// the failures. With `strays`, lbd's routes in other tables are removed.
async fn apply(
    table: &KernelTable,
    decisions: &BTreeMap<IpAddr, Reason>,
    strays: bool,
) -> (Outcome, Option<BTreeSet<IpAddr>>, Vec<String>) {
    let mut outcome = Outcome::default();
    let mut errors = Vec::new();
    let owned = match table.owned().await {
        Ok(o) => o,
        Err(e) => {
            errors.push(format!("reading routing table {}: {e:#}", table.table));
            return (outcome, None, errors);
        }
    };
    let mut present: BTreeSet<IpAddr> = owned.keys().copied().collect();
    let want: BTreeSet<IpAddr> = decisions
        .iter()
        .filter(|(_, r)| r.announces())
        .map(|(a, _)| *a)
        .collect();
    for (addr, route) in owned.iter().filter(|(a, _)| !want.contains(a)) {
        match table.remove(route).await {
            Ok(Removed::Yes) => {
                outcome.removed.push(*addr);
                present.remove(addr);
            }
            Ok(Removed::AlreadyGone) => {
                present.remove(addr);
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    for addr in want.iter().filter(|a| !owned.contains_key(a)) {
        match table.add(*addr).await {
            Ok(()) => {
                outcome.added.push(*addr);
                present.insert(*addr);
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if strays {
        // lbd's routes in another table (lbd used to be configured with it)
        // would stay announced by whatever imports that table.
        match table.strays().await {
            Ok(found) => {
                for r in found {
                    match table.remove(&r).await {
                        Ok(Removed::Yes) => outcome.strays.extend(r.dst.map(|d| (r.table, d))),
                        Ok(Removed::AlreadyGone) => {}
                        Err(e) => errors.push(format!("{e:#}")),
                    }
                }
            }
            Err(e) => errors.push(format!("looking for lbd's routes in other tables: {e:#}")),
        }
    }
    (outcome, Some(present), errors)
}

/// lbd itself, as the audit log names who made a change.
fn own_peer() -> Peer {
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    Peer::local(uid, gid, std::process::id() as i32)
}
