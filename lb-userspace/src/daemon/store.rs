//! The daemon's side of the store: which revision its maps hold, whether
//! it reaches the store, and the two ways a desired state arrives — a
//! revision read from the store (applied whole, like a reload), and a
//! change planned here for the store to commit. The network work is lbd's
//! task (`lbd::store`) and the API's; they report back here.

use std::{collections::BTreeSet, time::SystemTime};

use tokio::sync::watch;

use super::{check_sources, vote_key, ApplyError, Daemon, DataPath};
use crate::{
    api::types::StoreStatus,
    model::Change,
    state::{plan, DesiredState},
    store::{layout::Snapshot, report::NodeReport, StoreSettings},
};

/// What the daemon knows of its store.
pub(super) struct StoreLink {
    pub(super) settings: StoreSettings,
    /// The desired state's revision the maps hold (0: none yet; on a cold
    /// start, the persisted one).
    pub(super) applied: i64,
    /// The store has been read since lbd started.
    pub(super) read: bool,
    pub(super) reachable: bool,
    /// When `reachable` last changed (start counts as a change).
    pub(super) since: SystemTime,
    /// The last failure to reach the store.
    pub(super) error: Option<String>,
    /// A later revision this node refused, and why.
    pub(super) refused: Option<String>,
    pub(super) applied_tx: watch::Sender<i64>,
    /// Started on maps a running lbd left (see [`Daemon::use_store`]).
    pub(super) warm: bool,
}

impl StoreLink {
    pub(super) fn new(settings: StoreSettings, applied: i64) -> Self {
        StoreLink {
            settings,
            applied,
            read: false,
            reachable: false,
            since: SystemTime::now(),
            error: None,
            refused: None,
            applied_tx: watch::channel(applied).0,
            warm: false,
        }
    }
}

/// A change planned on this node's revision, for the store to commit.
pub struct PlannedChange {
    /// The revision it was planned against: the commit succeeds only if
    /// the store is still there.
    pub planned: i64,
    pub from: DesiredState,
    pub to: DesiredState,
    pub lines: Vec<String>,
    /// Reports each revision this node applies.
    pub applied: watch::Receiver<i64>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl<D: DataPath> Daemon<D> {
    /// Called at start when `[store]` is configured: the maps hold the
    /// persisted state of `revision` (0: none). `warm`: lbd took over maps
    /// a running lbd left pinned (a restart, an upgrade), so the node was
    /// forwarding and announcing this state a moment ago and goes on; only
    /// a cold start (nothing pinned: a reboot, a first start) holds its
    /// announcements until the store is read.
    pub fn use_store(&mut self, settings: StoreSettings, revision: i64, warm: bool) {
        let mut link = StoreLink::new(settings, revision);
        link.warm = warm;
        self.store = Some(link);
    }

    pub fn store_settings(&self) -> Option<&StoreSettings> {
        self.store.as_ref().map(|s| &s.settings)
    }

    /// The store's revision `snap` read: applied whole, or refused whole
    /// (the maps keep the revision they hold, and status says why). Returns
    /// what changed, `None` when the maps already hold it.
    ///
    /// A store where nothing was ever written (revision 0: a new cluster, a
    /// wrong `prefix`) does not wipe the VIPs this node has: it keeps them
    /// and says how to write them there.
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<Option<Vec<String>>, ApplyError> {
        self.store_reached();
        let holds_vips = !self.declared.vips.is_empty();
        let Some(link) = self.store.as_mut() else {
            return Err(ApplyError::Invalid("no [store] is configured".into()));
        };
        let first_read = !link.read;
        if snap.revision == 0 && holds_vips {
            let why = format!(
                "the store holds no desired state (nothing was ever written under {}): this node \
                 keeps its {} VIPs; write them there with `lbctl store import FILE`",
                link.settings.prefix,
                self.declared.vips.len()
            );
            link.refused = Some(why.clone());
            // Read, and found nothing newer than what this node has.
            self.mark_read();
            return Err(ApplyError::Invalid(why));
        }
        if snap.revision == link.applied && !first_read {
            return Ok(None);
        }
        let old = std::mem::replace(&mut link.applied, snap.revision);
        match self.apply(snap.state.clone()) {
            Ok(plan) => {
                let link = self.store.as_mut().expect("checked above");
                link.refused = None;
                link.applied_tx.send_replace(snap.revision);
                self.mark_read();
                Ok(Some(plan.lines))
            }
            Err(e) => {
                // Not read: a node holding back its announcements goes on
                // holding them (what it has may be stale).
                let link = self.store.as_mut().expect("checked above");
                link.applied = old;
                link.refused = Some(format!("revision {}: {e}", snap.revision));
                Err(e)
            }
        }
    }

    /// What the store holds could not be read (a key or value lb does not
    /// write): the node keeps what it has and says why.
    pub fn refuse_store_contents(&mut self, why: String) {
        self.store_reached();
        if let Some(link) = self.store.as_mut() {
            link.refused = Some(why);
        }
    }

    fn mark_read(&mut self) {
        if let Some(link) = self.store.as_mut() {
            if !link.read {
                link.read = true;
                // Announcing may start now.
                self.announce_changed();
            }
        }
    }

    /// The store answered.
    pub fn store_reached(&mut self) {
        if let Some(link) = self.store.as_mut() {
            if !link.reachable {
                link.reachable = true;
                link.since = SystemTime::now();
                link.error = None;
                tracing::info!(revision = link.applied, "the store is reachable");
            }
        }
    }

    /// The store did not answer: the node keeps forwarding (and, if it
    /// was announcing, announcing) what it has.
    pub fn store_lost(&mut self, error: String) {
        if let Some(link) = self.store.as_mut() {
            if link.reachable || link.error.is_none() {
                tracing::warn!(
                    revision = link.applied,
                    "the store is unreachable: {error}; forwarding revision {} as it is",
                    link.applied
                );
                if link.reachable {
                    link.since = SystemTime::now();
                }
            }
            link.reachable = false;
            link.error = Some(error);
        }
        // Under quorum: the others' last votes stand while their leases
        // would (a short hiccup flips nothing); then this node's own checks
        // decide until it is back.
        if let Err(e) = self.decide_health() {
            tracing::error!("applying this node's own health view: {e}");
        }
    }

    /// A change through lbctl, planned against the revision the maps hold.
    pub fn plan_store_change(&self, change: &Change) -> Result<PlannedChange, ApplyError> {
        let link = self
            .store
            .as_ref()
            .ok_or_else(|| ApplyError::Invalid("no [store] is configured".into()))?;
        if !link.read {
            return Err(ApplyError::Unavailable(format!(
                "this node has not read the store since it started ({}): changes are made \
                 through the store, so nothing was changed",
                link.error.as_deref().unwrap_or("connecting")
            )));
        }
        if !link.reachable {
            return Err(ApplyError::Unavailable(format!(
                "the store has been unreachable since {} ({}): changes are made through the \
                 store, so nothing was changed; make it through a node that reaches the store",
                rfc3339(link.since),
                link.error.as_deref().unwrap_or("no answer")
            )));
        }
        let to = self.declared.with_change(change)?;
        self.check_state(&to)?;
        Ok(PlannedChange {
            planned: link.applied,
            from: self.declared.clone(),
            lines: plan::diff(&self.declared, &to).lines,
            to,
            applied: link.applied_tx.subscribe(),
        })
    }

    /// How health is decided now, for people.
    pub fn deciding_text(&self) -> String {
        match self.deciding() {
            super::Deciding::Local => "local".into(),
            super::Deciding::Quorum(n) => format!("quorum of {n} live nodes"),
            super::Deciding::LocalFallback => {
                "local (fallback: the store is unreachable, quorum resumes when it is back)".into()
            }
        }
    }

    /// The checks a state must pass on this node before it is applied.
    pub fn check_state(&self, state: &DesiredState) -> Result<(), ApplyError> {
        state.validate()?;
        state.check_capacity(&self.config.limits)?;
        check_sources(&self.config, state).map_err(ApplyError::Invalid)
    }

    /// Whether the node holds back its announcements: it has not read the
    /// store since it started (and is not configured to announce anyway).
    pub(super) fn store_unread(&self) -> bool {
        self.store
            .as_ref()
            .is_some_and(|s| !s.read && !s.warm && !s.settings.announce_before_read)
    }

    pub(crate) fn store_revision(&self) -> Option<i64> {
        self.store.as_ref().map(|s| s.applied)
    }

    /// For `lbctl status` and the metrics.
    pub fn store_status(&self) -> Option<StoreStatus> {
        let link = self.store.as_ref()?;
        Some(StoreStatus {
            endpoints: link.settings.endpoints.clone(),
            prefix: link.settings.prefix.clone(),
            node: link.settings.node.clone(),
            applied_revision: link.applied,
            read: link.read,
            reachable: link.reachable,
            since: rfc3339(link.since),
            error: link.error.clone(),
            refused: link.refused.clone(),
            announcing_held: self.store_unread(),
            health_decision: self.deciding_text(),
        })
    }
}

impl Daemon {
    /// What this node publishes about itself: read straight from the
    /// desired state and the maps (not through `status`, which also reads
    /// every counter, once a second for nothing).
    pub fn store_report(&self) -> NodeReport {
        let node = self.node_status();
        let link = self.store.as_ref();
        let mut down = BTreeSet::new();
        for (id, v) in &self.desired.vips {
            for b in &v.backends {
                if super::checked(v, b) && self.data_path.is_down(id, &b.addr) {
                    down.insert(vote_key(id, &b.addr));
                }
            }
        }
        NodeReport {
            node: link.map(|l| l.settings.node.clone()).unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            applied_revision: link.map_or(0, |l| l.applied),
            refused: link.and_then(|l| l.refused.clone()),
            tables: self
                .desired
                .vips
                .keys()
                .map(|id| {
                    let sum = self.data_path.table_checksum(id);
                    (id.to_string(), sum.map(|c| format!("{c:016x}")))
                })
                .collect(),
            down,
            observed_down: self.observed_down(),
            health: self.deciding_text(),
            announced: node
                .addresses
                .iter()
                .filter(|a| a.announced)
                .map(|a| a.address.to_string())
                .collect(),
            drained: node.drained,
        }
    }
}
