//! lbd's start-up, in one place: from what touches nothing to what touches
//! the data path ([`run`]), then the balancer's load, reconcile and attach
//! ([`start_daemon`]). A failure before the attach leaves the host as it was.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::Context;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::Notify,
};

use super::{announce::Announcer, discovery, store, tasks};
use crate::{
    announce::{
        node,
        routes::{self, KernelTable},
    },
    api::{audit::AuditLog, server},
    balancer::{Balancer, LoadOptions},
    config::{self, Config},
    daemon::{
        check_sources,
        lock::{self, Lock},
        mode_name, Daemon,
    },
    health::Checker,
    host::{
        iface,
        pin::{self, PinPlace},
    },
    metrics::{self, Metrics},
    state::persist,
    store::etcd::Etcd,
};

/// Removes a file when dropped: the control socket, on every way out.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the daemon. Start-up goes from what touches nothing to what touches
/// the data path: the config is validated, the locks taken, the control
/// socket and metrics listener bound, the interface, bpffs and pinned layout
/// checked; only then are maps written and the program attached. A failure
/// before that last step leaves the host as it was (the socket file and
/// locks are removed again); see [`start_daemon`] for the last step.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let cfg = config::load(config_path)?;
    cfg.desired_state()?;
    let read_gid = cfg
        .read_group
        .as_deref()
        .map(server::group_id)
        .transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let place = PinPlace::current(&cfg.interface)?;
        let _lock = Lock::interface(Path::new(lock::RUN_DIR), place.netns, &cfg.interface)?;
        let _state_lock = Lock::state_dir(&cfg.state_dir)?;
        let _table_lock = cfg
            .announce
            .and_then(|a| a.table)
            .map(|t| Lock::table(Path::new(lock::RUN_DIR), place.netns, t))
            .transpose()?;
        let socket_path = cfg.control_socket.clone();
        let listener = server::bind(&socket_path, read_gid)?;
        let _socket = RemoveOnDrop(socket_path.clone());
        let metrics_listener = metrics::bind(cfg.metrics_listen).await?;
        // Before anything touches the data path: a bad certificate or a
        // port in use fails the start with the host as it was.
        let audit_early = Arc::new(AuditLog::new(&cfg.state_dir));
        let tls_listener = match &cfg.api_tls {
            Some(t) => {
                let l = crate::api::tls::TlsListener::bind(t, audit_early.clone()).await?;
                tracing::info!(listen = %t.listen, "API over TLS ready (client certificates required)");
                Some(l)
            }
            None => None,
        };
        // Lazy: this reads the TLS files and checks the URLs, and reaches
        // nothing (a node starts, and forwards, without its store).
        let etcd = match &cfg.store {
            Some(s) => Some(Etcd::connect(s).await?),
            None => None,
        };
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
        let node = node::load(&cfg.state_dir)?;
        let table = match cfg.announce.and_then(|a| a.table) {
            Some(t) => Some(own_table(t, interface.ifindex).await?),
            None => None,
        };

        let cfg_interface = cfg.interface.clone();
        let cfg_nameservers = cfg.nameservers.clone();
        let mut daemon = start_daemon(config_path, cfg, &place, interface.mac)?;
        daemon.set_node_state(node);
        if node.drained {
            tracing::warn!("the node is drained: nothing is announced until `lbctl node undrain`");
        }
        let audit = audit_early;
        let shared = Arc::new(Mutex::new(daemon));
        let announcer = table.map(|t| Arc::new(Announcer::new(t, shared.clone(), audit.clone())));
        match &announcer {
            // Failures are in status and the log; the announcer retries.
            Some(a) => {
                let _ = a.reconcile().await;
            }
            // No table of lbd's: routes an lbd configured with one left
            // behind would stay announced by whatever imports that table.
            None => match routes::remove_all_owned(interface.ifindex).await {
                Ok(removed) => {
                    for (table, addr) in removed {
                        tracing::info!(
                            address = %addr,
                            table,
                            "withdrawn: lbd has no [announce] table any more"
                        );
                    }
                }
                Err(e) => tracing::warn!("looking for routes an earlier lbd left: {e:#}"),
            },
        }
        tracing::info!(socket = %socket_path.display(), "control socket ready");
        tracing::info!(listen = %metrics_listener.local_addr()?, "metrics ready at /metrics");
        let metrics = Arc::new(Metrics::new(shared.clone()));
        let changed = Arc::new(Notify::new());
        let nexthops_changed = Arc::new(Notify::new());
        let hooks = Arc::new(server::Hooks {
            changed: changed.clone(),
            nexthops: nexthops_changed.clone(),
            metrics: metrics.clone(),
            store: etcd.clone(),
        });

        let mut tasks = vec![
            tokio::spawn(tasks::resolve_next_hops(shared.clone(), nexthops_changed)),
            tokio::spawn(tasks::sample_rates(shared.clone())),
            tokio::spawn(tasks::reconcile_conns(shared.clone())),
            tokio::spawn(tasks::read_trace(shared.clone())),
            tokio::spawn(tasks::follow_interface_mac(
                shared.clone(),
                cfg_interface.clone(),
                interface.ifindex,
            )),
            tokio::spawn(tasks::reload_on_sighup(shared.clone(), hooks.clone())),
            tokio::spawn(async move { metrics::serve(metrics_listener, metrics).await }),
            tokio::spawn({
                let checker = Checker::new(shared.clone(), hooks.metrics.clone());
                async move {
                    checker.run(changed).await;
                    Ok(())
                }
            }),
        ];
        let mut names = vec![
            "next-hop resolver",
            "rate sampler",
            "connection-count reconcile",
            "trace reader",
            "interface MAC follower",
            "SIGHUP reload",
            "metrics server",
            "health checker",
        ];
        if let Some(a) = announcer {
            tasks.push(tokio::spawn(a.run()));
            names.push("announcer");
        }
        tasks.push(tokio::spawn(discovery::follow(
            shared.clone(),
            hooks.clone(),
            cfg_nameservers,
        )));
        names.push("discovery");
        if let Some(etcd) = etcd {
            tasks.push(tokio::spawn(store::follow(
                shared.clone(),
                hooks.clone(),
                etcd,
            )));
            names.push("store follower");
        }
        let server = server::serve(listener, tls_listener, shared.clone(), audit, read_gid, hooks);

        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        // None of the tasks ends while lbd runs: one that does has failed
        // (its work, such as withdrawing routes, would silently stop), so
        // lbd stops and says why; its supervisor starts it again.
        let mut tasks = tasks;
        let task_ended = futures::future::select_all(tasks.iter_mut());
        let outcome = tokio::select! {
            r = server => r.context("control socket"),
            _ = term.recv() => Ok(()),
            _ = int.recv() => Ok(()),
            (r, i, _) = task_ended => {
                let why = match r {
                    Ok(Ok(())) => "ended".to_string(),
                    Ok(Err(e)) => format!("failed: {e:#}"),
                    Err(e) => format!("panicked: {e}"),
                };
                let name = names.get(i).copied().unwrap_or("a background task");
                tracing::error!("{name} {why}; stopping");
                Err(anyhow::anyhow!("{name} {why}"))
            }
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

/// Opens `[announce] table` for the lbd on `ifindex`, refusing a table
/// that holds any route lbd did not write: another program owns it.
async fn own_table(table: u32, ifindex: u32) -> anyhow::Result<KernelTable> {
    let t = KernelTable::open(table, ifindex)?;
    let routes = t
        .list()
        .await
        .with_context(|| format!("reading routing table {table}"))?;
    if let Some(problem) = routes::foreign(&routes, table, ifindex) {
        anyhow::bail!("[announce] table = {table}: {problem}");
    }
    let owned = routes.iter().filter(|r| r.owned_by(ifindex)).count();
    if owned > 0 {
        tracing::info!(
            table,
            routes = owned,
            "adopted the routes of the previous lbd"
        );
    }
    Ok(t)
}

/// Adopts or creates the pinned maps at `place`, reconciles them with the
/// desired state (the persisted runtime state if any, else the config),
/// then attaches (taking over a pinned link atomically) and persists.
///
/// The caller has checked everything that can be checked without touching
/// the data path (config, locks, listeners, interface, bpffs, layout). If a
/// step here fails on a first start, the pins it made are removed again, so
/// nothing stays attached or pinned.
pub fn start_daemon(
    config_path: &Path,
    config: Config,
    place: &PinPlace,
    mac: [u8; 6],
) -> anyhow::Result<Daemon> {
    let first_start = !place.interface_dir().exists();
    let result = load_and_attach(config_path, config, place, mac);
    if result.is_err() && first_start {
        if let Err(e) = place.remove_balancer() {
            tracing::error!("removing the pins of the failed start: {e:#}");
        }
    }
    result
}

fn load_and_attach(
    config_path: &Path,
    config: Config,
    place: &PinPlace,
    mac: [u8; 6],
) -> anyhow::Result<Daemon> {
    let from_config = config.desired_state()?;
    let pin_dir = place.balancer_dir();
    let opts = LoadOptions {
        tcp_idle_timeout: config.tcp_idle_timeout,
        udp_idle_timeout: config.udp_idle_timeout,
        limits: config.limits,
        pin_dir: Some(pin_dir.clone()),
    };
    let (desired, revision, discovered) = match persist::load_saved(
        &config.state_dir,
        &config.interface,
    )? {
        Some(persist::Saved {
            state: saved,
            store_revision: revision,
            discovered,
        }) => {
            match (&config.store, revision) {
                (Some(_), Some(r)) => tracing::info!(
                    revision = r,
                    "forwarding the store's revision {r} as persisted in {} until the store is read",
                    persist::state_file(&config.state_dir).display()
                ),
                (Some(_), None) => tracing::info!(
                    "forwarding the state persisted in {} (from before [store]) until the store \
                     is read",
                    persist::state_file(&config.state_dir).display()
                ),
                (None, _) => tracing::info!(
                    "using runtime state from {} (config file changes apply on reload)",
                    persist::state_file(&config.state_dir).display()
                ),
            }
            (saved, revision, discovered)
        }
        None => (from_config, None, Default::default()),
    };
    let store_settings = config.store.clone();
    check_sources(&config, &desired).map_err(anyhow::Error::msg)?;
    let balancer = Balancer::load(&opts).context("loading the balancer")?;
    let warm = balancer.adopted();
    if balancer.adopted() {
        tracing::info!(pin_dir = %pin_dir.display(), "adopted pinned maps (connection table kept)");
    }
    let mut daemon =
        Daemon::new_with_discovered(config_path, config, balancer, desired, discovered)
            .context("writing the settings and the desired state to the maps")?;
    if let Some(s) = store_settings {
        daemon.use_store(s, revision.unwrap_or(0), warm);
    }
    let iface = daemon.config().interface.clone();
    daemon
        .balancer_mut()
        .set_interface_mac(mac)
        .with_context(|| format!("writing the MAC address of {iface}"))?;
    let want = daemon.config().xdp_mode;
    let mode = daemon
        .balancer_mut()
        .attach(&iface, want)
        .with_context(|| format!("attaching to {iface}"))?;
    let program_id = daemon.balancer_mut().program_id().unwrap_or(0);
    daemon.attached(mode, program_id, pin_dir);
    daemon.persist()?;
    tracing::info!(
        interface = %iface,
        mode = mode_name(mode),
        program_id,
        "balancer attached"
    );
    Ok(daemon)
}
