//! Asking each VIP's source (`backends_from`) every `refresh`, through its
//! fail-static guard, and handing the daemon what passes. The task never
//! writes maps: the daemon applies the sets like any other change.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use crate::{
    api::server::Hooks,
    daemon::{Round, Shared, SourceStatus},
    discovery::{dns::Dns, Guard, GuardPolicy, Held},
    model::{BackendsFrom, VipId},
};

/// How often the task looks for sources that are due.
const TICK: Duration = Duration::from_millis(100);

struct Source {
    spec: BackendsFrom,
    guard: Guard,
    due: Instant,
}

fn lock(daemon: &Shared) -> std::sync::MutexGuard<'_, crate::daemon::Daemon> {
    daemon.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs for as long as lbd does.
pub(super) async fn follow(
    daemon: Shared,
    hooks: Arc<Hooks>,
    nameservers: Vec<SocketAddr>,
) -> anyhow::Result<()> {
    let mut dns: Option<Dns> = None;
    let mut sources: HashMap<VipId, Source> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let wanted = lock(&daemon).discovery_sources();
        sources.retain(|id, s| wanted.iter().any(|(w, spec)| w == id && *spec == s.spec));
        for (id, spec) in wanted {
            sources.entry(id).or_insert_with(|| {
                let policy = policy_of(&spec);
                // What an earlier lbd found: the first answer is guarded too.
                let guard = match lock(&daemon).discovered_set(&id) {
                    Some(set) => Guard::seeded(policy, set),
                    None => Guard::new(policy),
                };
                Source {
                    spec,
                    guard,
                    due: Instant::now(),
                }
            });
        }
        let now = Instant::now();
        let due: Vec<VipId> = sources
            .iter()
            .filter(|(_, s)| s.due <= now)
            .map(|(id, _)| *id)
            .collect();
        if !due.is_empty() && dns.is_none() {
            match Dns::new(&nameservers) {
                Ok(d) => dns = Some(d),
                Err(e) => tracing::error!("setting up the DNS resolver: {e:#}"),
            }
        }
        let mut changed = false;
        if !due.is_empty() {
            let answers = futures::future::join_all(due.iter().map(|id| {
                let s = &sources[id];
                let dns = dns.as_ref();
                async move {
                    match dns {
                        Some(d) => d.lookup(&s.spec.source, id).await,
                        None => Err("no DNS resolver (see lbd's log)".to_string()),
                    }
                }
            }))
            .await;
            for (id, answer) in due.iter().zip(answers) {
                let s = sources.get_mut(id).expect("due ones are there");
                s.due = Instant::now() + s.spec.refresh;
                changed |= round(&daemon, id, s, answer);
            }
        }
        match lock(&daemon).expire_discovered(SystemTime::now()) {
            Ok(expired) => changed |= expired,
            Err(e) => tracing::error!("removing drained discovered backends: {e}"),
        }
        if changed {
            hooks.notify_changed();
        }
    }
}

fn policy_of(spec: &BackendsFrom) -> GuardPolicy {
    GuardPolicy {
        hold_empty: spec.hold_empty,
        max_remove_percent: spec.max_remove_percent,
        hold_removal: spec.hold_removal,
    }
}

/// One answer through the guard to the daemon; true when the maps changed.
fn round(
    daemon: &Shared,
    id: &VipId,
    s: &mut Source,
    answer: Result<crate::discovery::dns::Answer, String>,
) -> bool {
    let left_out = answer
        .as_ref()
        .map(|a| a.left_out.clone())
        .unwrap_or_default();
    let verdict = s.guard.observe(Instant::now(), answer.map(|a| a.set));
    let wall = |at: Instant| SystemTime::now() - at.elapsed();
    let mut status = SourceStatus {
        left_out,
        ..SourceStatus::default()
    };
    match &verdict.held {
        Some(Held::Stale { since, error }) => {
            tracing::warn!(vip = %id, source = %s.spec.source, "discovery failed, keeping the last set: {error}");
            status.stale = Some((wall(*since), error.clone()));
        }
        Some(Held::Empty { since }) => {
            status.last_answer = Some(SystemTime::now());
            status.held = Some(format!(
                "an empty answer since {}s; applied once it has lasted {}",
                since.elapsed().as_secs(),
                humantime::format_duration(s.spec.hold_empty)
            ));
        }
        Some(Held::LargeRemoval { since, removed, of }) => {
            status.last_answer = Some(SystemTime::now());
            status.held = Some(format!(
                "removing {removed} of {of} backends since {}s; applied once it has lasted {}",
                since.elapsed().as_secs(),
                humantime::format_duration(s.spec.hold_removal)
            ));
        }
        None => status.last_answer = Some(SystemTime::now()),
    }
    let result = lock(daemon).set_discovered(
        id,
        Round {
            apply: verdict.apply,
            status,
        },
    );
    match result {
        Ok(true) => {
            tracing::info!(vip = %id, source = %s.spec.source, "discovered backends applied");
            true
        }
        Ok(false) => false,
        Err(e) => {
            tracing::error!(vip = %id, source = %s.spec.source, "the discovered backends could not be applied: {e}");
            // The guard starts again from what the maps hold, so the next
            // answer is tried again.
            let held = lock(daemon).discovered_set(id).unwrap_or_default();
            s.guard = Guard::seeded(policy_of(&s.spec), held);
            false
        }
    }
}
