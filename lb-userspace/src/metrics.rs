//! Prometheus metrics on `metrics_listen` (`GET /metrics`, nothing else).
//!
//! Packet counters are read from the per-CPU maps at scrape time and summed
//! (a collector), so they are exactly what the data path counted; health and
//! reload metrics are kept in the daemon as they happen.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{http::header, http::StatusCode, response::IntoResponse, routing::get, Router};
use lb_common::counters::CounterKind;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use crate::{daemon::Shared as SharedDaemon, model::VipId};

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

pub struct Metrics {
    registry: Registry,
    checks: Family<Labels, Counter>,
    check_duration: Histogram,
    failover: Histogram,
    reloads: Family<Labels, Counter>,
    transitions: Family<Labels, Counter>,
    checked: Arc<AtomicUsize>,
}

impl Metrics {
    pub fn new(daemon: SharedDaemon) -> Self {
        let mut registry = Registry::default();
        let checks = Family::<Labels, Counter>::default();
        registry.register(
            "lb_health_checks",
            "Health checks run, by result (ok or fail)",
            checks.clone(),
        );
        // 1 ms .. ~4 s: checks time out at their configured timeout.
        let check_duration = Histogram::new(exponential_buckets(0.001, 2.0, 13));
        registry.register(
            "lb_health_check_duration_seconds",
            "How long health checks took",
            check_duration.clone(),
        );
        // 0.1 ms .. ~3 s: from the failed check that took a backend down to
        // the maps no longer sending it new flows.
        let failover = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "lb_failover_apply_seconds",
            "Time from the last failed health check to the maps being updated",
            failover.clone(),
        );
        let reloads = Family::<Labels, Counter>::default();
        // Present at zero from the start, so "no reload failed" reads as 0.
        for result in ["ok", "error"] {
            let _ = reloads.get_or_create(&labels(&[("result", result.into())]));
        }
        registry.register(
            "lb_config_reloads",
            "Config reloads, by result (ok or error)",
            reloads.clone(),
        );
        let transitions = Family::<Labels, Counter>::default();
        registry.register(
            "lb_backend_transitions",
            "Backend health transitions, by new state (up or down)",
            transitions.clone(),
        );
        let checked = Arc::new(AtomicUsize::new(0));
        registry.register_collector(Box::new(MapCollector {
            daemon,
            checked: checked.clone(),
        }));
        Metrics {
            registry,
            checks,
            check_duration,
            failover,
            reloads,
            transitions,
            checked,
        }
    }

    pub fn observe_check(&self, vip: &VipId, backend: &IpAddr, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "fail" };
        self.checks
            .get_or_create(&labels(&[
                ("vip", vip.to_string()),
                ("backend", backend.to_string()),
                ("result", result.into()),
            ]))
            .inc();
        self.check_duration.observe(took.as_secs_f64());
    }

    /// Makes a newly checked backend's series exist at zero.
    pub fn start_checking(&self, vip: &VipId, backend: &IpAddr) {
        for result in ["ok", "fail"] {
            let _ = self.checks.get_or_create(&labels(&[
                ("vip", vip.to_string()),
                ("backend", backend.to_string()),
                ("result", result.into()),
            ]));
        }
        for state in ["up", "down"] {
            let _ = self.transitions.get_or_create(&labels(&[
                ("vip", vip.to_string()),
                ("backend", backend.to_string()),
                ("state", state.into()),
            ]));
        }
    }

    pub fn observe_failover(&self, took: Duration) {
        self.failover.observe(took.as_secs_f64());
    }

    pub fn transition(&self, vip: &VipId, backend: &IpAddr, up: bool) {
        let state = if up { "up" } else { "down" };
        self.transitions
            .get_or_create(&labels(&[
                ("vip", vip.to_string()),
                ("backend", backend.to_string()),
                ("state", state.into()),
            ]))
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads
            .get_or_create(&labels(&[("result", result.into())]))
            .inc();
    }

    pub fn set_checked(&self, n: usize) {
        self.checked.store(n, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Reads the data path's counters (and the backends' health and weight) at
/// scrape time.
struct MapCollector {
    daemon: SharedDaemon,
    checked: Arc<AtomicUsize>,
}

impl std::fmt::Debug for MapCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MapCollector")
    }
}

fn counter_family(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> std::fmt::Result {
    let c = ConstCounter::new(0u64);
    let mut m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    for (l, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(l)?)?;
    }
    Ok(())
}

fn gauge_family(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: &[(Labels, i64)],
) -> std::fmt::Result {
    let g = ConstGauge::new(0i64);
    let mut m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    for (l, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(l)?)?;
    }
    Ok(())
}

impl Collector for MapCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let d = self.daemon.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(c) = d.balancer().counters() else {
            return Ok(());
        };
        let status = d.status_health();
        let checksums: Vec<(Labels, i64)> = status
            .iter()
            .map(|(vip, _, _)| {
                // The low 48 bits: exact in a float sample, and enough to
                // tell two nodes' tables apart at a glance.
                let sum = d.balancer().table_checksum(vip).unwrap_or(0);
                (
                    labels(&[("vip", vip.to_string())]),
                    (sum & 0xffff_ffff_ffff) as i64,
                )
            })
            .collect();
        let active: Vec<(Labels, i64)> = status
            .iter()
            .filter_map(|(vip, _, _)| d.balancer().active_conns(vip).map(|a| (vip, a)))
            .flat_map(|(vip, a)| {
                a.into_iter().map(move |(b, n)| {
                    (
                        labels(&[("vip", vip.to_string()), ("backend", b.to_string())]),
                        n as i64,
                    )
                })
            })
            .collect();
        let node = d.node_status();
        let store = d.store_status();
        // Per tier, for every VIP (a VIP without tiers has one, tier 0).
        let mut share = Vec::new();
        let mut healthy = Vec::new();
        for (vip, _, _) in &status {
            for t in d.balancer().tier_shares(vip) {
                let l = labels(&[("vip", vip.to_string()), ("tier", t.tier.to_string())]);
                share.push((l.clone(), i64::from(t.share)));
                healthy.push((l, i64::from(t.healthy)));
            }
        }
        drop(d);
        gauge_family(
            &mut enc,
            "lb_backend_active_connections",
            "Least-connections VIPs: the backend's active connections as the data path \
             counts them (reconciled with the connection table every second)",
            &active,
        )?;
        let announced: Vec<(Labels, i64)> = node
            .addresses
            .iter()
            .map(|a| {
                (
                    labels(&[("address", a.address.to_string())]),
                    a.announced as i64,
                )
            })
            .collect();
        gauge_family(
            &mut enc,
            "lb_announced",
            "1 if lbd's route to the VIP address is in its routing table (announced)",
            &announced,
        )?;
        counter_family(
            &mut enc,
            "lb_announce_changes",
            "Routes lbd added to or removed from its routing table",
            &[(labels(&[]), node.changes)],
        )?;
        if let Some(s) = store {
            gauge_family(
                &mut enc,
                "lb_store_reachable",
                "1 if the store answered lbd's last request ([store]); 0: cut off, forwarding \
                 the applied revision as it is",
                &[(labels(&[]), s.reachable as i64)],
            )?;
            gauge_family(
                &mut enc,
                "lb_store_applied_revision",
                "The store's desired-state revision the maps hold",
                &[(labels(&[]), s.applied_revision)],
            )?;
            let since = humantime::parse_rfc3339(&s.since)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64);
            gauge_family(
                &mut enc,
                "lb_store_state_since_seconds",
                "When lb_store_reachable last changed (Unix time)",
                &[(labels(&[]), since)],
            )?;
        }
        gauge_family(
            &mut enc,
            "lb_drained",
            "1 if the node is drained (lbctl node drain)",
            &[(labels(&[]), node.drained as i64)],
        )?;
        gauge_family(
            &mut enc,
            "lb_vip_table_checksum",
            "Low 48 bits of the VIP's Maglev table checksum (as in lbctl status --json): \
             equal on nodes that make the same choices; 0 without a backend",
            &checksums,
        )?;

        let mut vip_packets = Vec::new();
        let mut vip_bytes = Vec::new();
        for (vip, t) in &c.vips {
            let l = labels(&[("vip", vip.to_string())]);
            vip_packets.push((l.clone(), t.packets));
            vip_bytes.push((l, t.bytes));
        }
        counter_family(
            &mut enc,
            "lb_vip_packets",
            "Packets forwarded for a VIP",
            &vip_packets,
        )?;
        counter_family(
            &mut enc,
            "lb_vip_bytes",
            "Bytes forwarded for a VIP (frames as received)",
            &vip_bytes,
        )?;

        let mut be_packets = Vec::new();
        let mut be_bytes = Vec::new();
        for ((vip, b), t) in &c.backends {
            let l = labels(&[("vip", vip.to_string()), ("backend", b.to_string())]);
            be_packets.push((l.clone(), t.packets));
            be_bytes.push((l, t.bytes));
        }
        counter_family(
            &mut enc,
            "lb_backend_packets",
            "Packets forwarded to a backend",
            &be_packets,
        )?;
        counter_family(
            &mut enc,
            "lb_backend_bytes",
            "Bytes forwarded to a backend",
            &be_bytes,
        )?;

        let mut up = Vec::new();
        let mut weight = Vec::new();
        let mut fail_open = Vec::new();
        for (vip, backends, open) in &status {
            fail_open.push((labels(&[("vip", vip.to_string())]), *open as i64));
            for (b, is_up, w) in backends {
                let l = labels(&[("vip", vip.to_string()), ("backend", b.to_string())]);
                up.push((l.clone(), *is_up as i64));
                weight.push((l, *w as i64));
            }
        }
        gauge_family(
            &mut enc,
            "lb_backend_up",
            "1 if the backend passes health checks (or is unchecked)",
            &up,
        )?;
        gauge_family(
            &mut enc,
            "lb_backend_weight",
            "The backend's weight (0 when drained)",
            &weight,
        )?;
        gauge_family(
            &mut enc,
            "lb_vip_fail_open",
            "1 if every backend of the VIP is down and it sends to all",
            &fail_open,
        )?;

        gauge_family(
            &mut enc,
            "lb_tier_share_percent",
            "Percent of the VIP's new flows the tier takes",
            &share,
        )?;
        gauge_family(
            &mut enc,
            "lb_tier_backends_healthy",
            "Backends of the tier that are weighted and healthy",
            &healthy,
        )?;

        let by_kind = |kind: CounterKind, key: &str| -> Vec<(Labels, u64)> {
            c.global
                .iter()
                .filter(|(k, _)| k.kind() == kind)
                .map(|(k, v)| (labels(&[(key, k.label().to_string())]), *v))
                .collect()
        };
        counter_family(
            &mut enc,
            "lb_xdp_actions",
            "XDP actions returned",
            &by_kind(CounterKind::Action, "action"),
        )?;
        counter_family(
            &mut enc,
            "lb_drops",
            "Packets dropped, by reason",
            &by_kind(CounterKind::Drop, "reason"),
        )?;
        counter_family(
            &mut enc,
            "lb_conntrack_lookups",
            "Connection-table lookups, by result",
            &by_kind(CounterKind::Conntrack, "result"),
        )?;
        counter_family(
            &mut enc,
            "lb_events",
            "Other data-path events",
            &by_kind(CounterKind::Event, "event"),
        )?;
        gauge_family(
            &mut enc,
            "lb_health_checks_running",
            "Backends under active health checks",
            &[(Vec::new(), self.checked.load(Ordering::Relaxed) as i64)],
        )?;
        Ok(())
    }
}

/// Serves `GET /metrics` on `addr` until dropped; anything else is 404.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    match metrics.encode() {
                        Ok(text) => (
                            StatusCode::OK,
                            [(
                                header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )],
                            text,
                        )
                            .into_response(),
                        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics here\n") });
    axum::serve(listener, app).await?;
    Ok(())
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics_listen {addr}: {e}"))
}
