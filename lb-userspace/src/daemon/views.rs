//! What the daemon shows: status with per-second rates, counters, where a
//! flow goes and why (`explain`), and the decision trace's lines. These
//! read the balancer's mirror and maps, so they need the real one.

use std::{net::IpAddr, time::Instant};

use lb_common::{rules, user::addr_words, FlowKey};

use super::{checked, mode_name, monotonic_ns, ApplyError, Daemon};
use crate::balancer::NextChoice;
use crate::{
    api::types::{
        BackendStatus, DiscoveryStatus, Explain, Stats, Status, TraceLine, TraceView, TrafficRow,
        VipStatus,
    },
    balancer::{Balancer, Counters, EntryCheck, Route},
    model::{BackendsFrom, Forwarding, Proto, VipId},
    state::VipDesired,
};

/// Per-second rates from two counter samples a second apart.
#[derive(Default)]
pub(super) struct Rates {
    last: Option<(Instant, Counters)>,
    vips: std::collections::BTreeMap<VipId, (f64, f64)>,
    backends: std::collections::BTreeMap<(VipId, IpAddr), (f64, f64)>,
}

impl Daemon<Balancer> {
    pub fn balancer(&self) -> &Balancer {
        &self.data_path
    }

    pub fn balancer_mut(&mut self) -> &mut Balancer {
        &mut self.data_path
    }

    /// Names the trace records read since the last call (logging each
    /// line), and ends a trace whose window has passed.
    pub fn follow_trace(&mut self) {
        for e in self.data_path.trace_pending().take() {
            let line = self.trace_line(&e);
            tracing::info!(target: "lb::trace", "{line}");
            self.trace.push(line);
        }
        if self.trace.window.is_some() && self.trace.open(Instant::now()).is_none() {
            if let Err(e) = self.trace_off() {
                tracing::warn!("ending the trace: {e}");
            } else {
                tracing::info!("decision trace ended (its time is up)");
            }
        }
    }

    /// One record as the operator reads it.
    fn trace_line(&self, e: &lb_common::debug::DebugEvent) -> String {
        use lb_common::{debug::*, user::words_addr, Counter};
        let family = e.family as u8;
        let (src, dst) = (words_addr(&e.src, family), words_addr(&e.dst, family));
        let proto = match e.proto as u8 {
            lb_common::PROTO_TCP => "tcp".to_string(),
            lb_common::PROTO_UDP => "udp".to_string(),
            p => format!("proto {p}"),
        };
        let ep = |a: IpAddr, p: u32| match a {
            IpAddr::V4(a) => format!("{a}:{p}"),
            IpAddr::V6(a) => format!("[{a}]:{p}"),
        };
        let vip = self
            .data_path
            .vip_by_index(e.vip_id)
            .map(|id| {
                let name = self.desired.vips.get(&id).map(|v| v.name.as_str());
                match name {
                    Some(n) if n != id.to_string() => format!("VIP {id} ({n})"),
                    _ => format!("VIP {id}"),
                }
            })
            .unwrap_or_else(|| "no VIP".into());
        let reason = Counter::ALL
            .get(e.counter as usize)
            .map_or("?", |c| c.label());
        let verdict = match e.action {
            1 => format!("dropped ({reason})"),
            2 => format!("passed ({reason})"),
            3 | 4 => {
                let backend = self
                    .data_path
                    .backend_addr(e.backend_id)
                    .map_or_else(|| format!("id {}", e.backend_id), |(_, a)| a.to_string());
                let how = match e.source {
                    DEBUG_SOURCE_CONNTRACK => "connection table",
                    DEBUG_SOURCE_TABLE => "Maglev table",
                    _ => "?",
                };
                let out = if e.action == 3 { "tx" } else { "redirect" };
                format!("{out} to backend {backend} (id {}, by {how})", e.backend_id)
            }
            a => format!("action {a} ({reason})"),
        };
        format!(
            "{} -> {} {proto}: {vip}: {verdict}",
            ep(src, e.sport),
            ep(dst, e.dport)
        )
    }

    /// The trace's state and its lines from `after` on.
    pub fn trace_view(&self, after: u64) -> TraceView {
        let now = Instant::now();
        let window = self.trace.open(now);
        let (lines, next) = self.trace.since(after);
        TraceView {
            on: window.is_some(),
            vip: window.and_then(|w| w.vip).map(|v| v.to_string()),
            seconds_left: self.trace.left(now).as_secs(),
            rate_limit: lb_common::debug::DEBUG_EVENTS_PER_SEC,
            suppressed: self.data_path.trace_suppressed(),
            lines: lines
                .into_iter()
                .map(|(seq, line)| TraceLine { seq, line })
                .collect(),
            next,
        }
    }

    /// Takes a counter sample and updates the per-second rates shown by
    /// `status` (called once a second).
    pub fn sample_rates(&mut self) {
        let Ok(now) = self.data_path.counters() else {
            return;
        };
        let at = Instant::now();
        if let Some((then, prev)) = &self.rates.last {
            let secs = at.duration_since(*then).as_secs_f64().max(1e-3);
            let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
            self.rates.vips = now
                .vips
                .iter()
                .map(|(k, t)| {
                    let p = prev.vips.get(k).copied().unwrap_or(*t);
                    (*k, (rate(p.packets, t.packets), rate(p.bytes, t.bytes)))
                })
                .collect();
            self.rates.backends = now
                .backends
                .iter()
                .map(|(k, t)| {
                    let p = prev.backends.get(k).copied().unwrap_or(*t);
                    (*k, (rate(p.packets, t.packets), rate(p.bytes, t.bytes)))
                })
                .collect();
        }
        self.rates.last = Some((at, now));
    }

    fn discovery_status(&self, id: &VipId, from: &BackendsFrom) -> DiscoveryStatus {
        let view = self.source_view(id).cloned().unwrap_or_default();
        let st = view.status;
        let rfc = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
        DiscoveryStatus {
            source: from.source.to_string(),
            refresh: humantime::format_duration(from.refresh).to_string(),
            found: view.set.len(),
            draining: view
                .gone
                .keys()
                .filter(|a| !view.set.contains_key(a))
                .count(),
            last_answer: st.last_answer.map(rfc),
            stale_since: st.stale.as_ref().map(|(t, _)| rfc(*t)),
            error: st.stale.map(|(_, e)| e),
            held: st.held,
            left_out: st.left_out,
            refused: st.refused,
        }
    }

    pub fn status(&self) -> Status {
        let counters = self.data_path.counters().unwrap_or_default();
        let vips = self
            .desired
            .vips
            .iter()
            .map(|(id, v)| {
                let traffic = counters.vips.get(id).copied().unwrap_or_default();
                let active = self.data_path.active_conns(id);
                let tiered = v.backends.iter().any(|b| b.tier > 0);
                let backends = v
                    .backends
                    .iter()
                    .map(|b| {
                        let t = counters
                            .backends
                            .get(&(*id, b.addr))
                            .copied()
                            .unwrap_or_default();
                        let nh = self.data_path.next_hop(&b.addr);
                        let mtu = nh.map(|n| n.mtu).filter(|m| *m != 0);
                        BackendStatus {
                            discovered: !self
                                .declared
                                .vips
                                .get(id)
                                .is_some_and(|d| d.backends.iter().any(|x| x.addr == b.addr)),
                            addr: b.addr,
                            weight: b.weight,
                            tier: b.tier,
                            health: match (checked(v, b), self.data_path.is_down(id, &b.addr)) {
                                (false, _) => "unchecked".into(),
                                (true, true) => "down".into(),
                                (true, false) => "up".into(),
                            },
                            check: b.health.clone(),
                            drained: b.drained,
                            next_hop: nh.is_some(),
                            mtu,
                            inner_mtu: mtu.map(|m| {
                                let l2dsr = v.settings.forwarding == Forwarding::L2dsr;
                                let family = addr_words(b.addr).1;
                                m.saturating_sub(rules::encap_overhead(l2dsr, family) as u32)
                            }),
                            active_connections: active.as_ref().and_then(|a| {
                                a.iter().find(|(addr, _)| *addr == b.addr).map(|(_, n)| *n)
                            }),
                            packets: t.packets,
                            bytes: t.bytes,
                            pps: self.rates.backends.get(&(*id, b.addr)).map_or(0.0, |r| r.0),
                            bps: self.rates.backends.get(&(*id, b.addr)).map_or(0.0, |r| r.1),
                        }
                    })
                    .collect();
                VipStatus {
                    vip: *id,
                    name: v.name.clone(),
                    scheduler: v.settings.scheduler,
                    forwarding: v.settings.forwarding,
                    stateless: v.settings.stateless,
                    packets: traffic.packets,
                    bytes: traffic.bytes,
                    pps: self.rates.vips.get(id).map_or(0.0, |r| r.0),
                    bps: self.rates.vips.get(id).map_or(0.0, |r| r.1),
                    fail_open: self.data_path.fail_open(id),
                    table_checksum: self
                        .data_path
                        .table_checksum(id)
                        .map(|c| format!("{c:016x}")),
                    check: v.health.clone(),
                    tier_policy: tiered.then_some(v.settings.tiers),
                    tiers: if tiered {
                        self.data_path.tier_shares(id)
                    } else {
                        Vec::new()
                    },
                    discovery: v
                        .backends_from
                        .as_ref()
                        .map(|from| self.discovery_status(id, from)),
                    backends,
                }
            })
            .collect();
        Status {
            interface: self.config.interface.clone(),
            xdp_mode: mode_name(self.xdp_mode).into(),
            program_id: self.program_id,
            uptime_secs: self.started.elapsed().as_secs(),
            pin_dir: self.pin_dir.display().to_string(),
            store: self.store_status(),
            vips,
        }
    }

    pub fn stats(&self) -> Result<Stats, ApplyError> {
        let c = self
            .data_path
            .counters()
            .map_err(|e| ApplyError::Kernel(e.to_string()))?;
        Ok(Stats {
            counters: c
                .global
                .iter()
                .map(|(k, v)| (k.label().to_string(), *v))
                .collect(),
            vips: c
                .vips
                .iter()
                .map(|(v, t)| TrafficRow {
                    vip: *v,
                    backend: None,
                    packets: t.packets,
                    bytes: t.bytes,
                })
                .collect(),
            backends: c
                .backends
                .iter()
                .map(|((v, b), t)| TrafficRow {
                    vip: *v,
                    backend: Some(*b),
                    packets: t.packets,
                    bytes: t.bytes,
                })
                .collect(),
        })
    }

    /// Where a flow goes and why, from the maps: its connection-table entry
    /// if it has a live one, else its Maglev slot.
    pub fn explain(
        &self,
        src: IpAddr,
        sport: u16,
        vip: &str,
        dport: Option<u16>,
    ) -> Result<Explain, ApplyError> {
        let id = self.desired.resolve(vip)?;
        let dport = match (id.port, dport) {
            (0, Some(p)) | (_, Some(p)) => p,
            (0, None) => {
                return Err(ApplyError::Invalid(format!(
                    "VIP {id} takes every port: give the destination port"
                )))
            }
            (p, None) => p,
        };
        if src.is_ipv4() != id.addr.is_ipv4() {
            return Err(ApplyError::Invalid(format!(
                "{src} and VIP {id} are of different address families"
            )));
        }
        let flow = FlowKey::new(src, sport, id.addr, dport, id.proto.number());
        let flow_text = flow_text(src, sport, &id, dport);
        let timeout = if id.proto == Proto::Tcp {
            self.config.tcp_idle_timeout
        } else {
            self.config.udp_idle_timeout
        };
        let now = monotonic_ns();
        let route = self
            .data_path
            .route(&flow, now, timeout.as_nanos() as u64)
            .ok_or_else(|| ApplyError::NotFound(format!("VIP {id} is not in the maps")))?;
        let choice = self.data_path.next_choice(&id).unwrap_or(NextChoice::Hash);
        let mut e = explain_route(&route, &choice, flow_text, &self.desired.vips[&id], timeout);
        // Where an ICMP error about the flow goes: a router quotes the reply
        // (VIP -> client) and sends the error to the VIP; the data path's
        // own rule turns the quote back into the flow.
        let quoted = rules::Quoted {
            version: flow.family,
            proto: flow.proto,
            src: flow.dst,
            dst: flow.src,
            sport: flow.dport,
            dport: flow.sport,
        };
        if let Ok(f) = rules::icmp_quoted_flow(flow.family, &flow.dst, &quoted) {
            if let Some(r) = self.data_path.route(&f, now, timeout.as_nanos() as u64) {
                e.reasons.push(format!(
                    "an ICMP error about this flow (\"too big\", \"unreachable\") goes to {}",
                    r.backend
                        .map_or("no backend (dropped)".to_string(), |a| a.to_string())
                ));
            }
        }
        Ok(e)
    }
}

/// The operator's account of a [`Route`]: what decided, in the order the
/// data path decides (for a packet that is not a TCP SYN: a SYN always
/// takes the table's choice).
fn explain_route(
    route: &Route,
    choice: &NextChoice,
    flow: String,
    vip: &VipDesired,
    timeout: std::time::Duration,
) -> Explain {
    let mut reasons = Vec::new();
    let scheduler = vip.settings.scheduler.name();
    let (new_flow_backend, new_flow_reasons) = scheduler_reasons(route, choice, vip);
    match route.entry {
        Some((entry, idle, EntryCheck::Live)) => {
            reasons.push(format!(
                "connection-table entry: backend id {} ({}), idle {:.1}s of {}s timeout",
                entry.backend_id,
                route.backend.map(|a| a.to_string()).unwrap_or_default(),
                idle as f64 / 1e9,
                timeout.as_secs()
            ));
            if route.vip.proto == Proto::Tcp && new_flow_backend != route.backend {
                reasons.push(format!(
                    "a TCP SYN on this 5-tuple starts a new connection and takes the {scheduler} \
                     choice instead: {}",
                    new_flow_backend.map_or("no backend (dropped)".to_string(), |a| a.to_string())
                ));
            }
            return Explain {
                vip: route.vip,
                flow,
                source: "connection table".into(),
                backend: route.backend,
                reasons,
            };
        }
        Some((entry, _, check)) => reasons.push(format!(
            "connection-table entry for backend id {} is {} and will be replaced",
            entry.backend_id,
            if check == EntryCheck::Expired {
                "expired"
            } else {
                "stale (backend gone, down or now another VIP's)"
            }
        )),
        None if vip.settings.stateless => reasons.push("stateless VIP: no connection table".into()),
        None => reasons.push("no connection-table entry: a new flow".into()),
    }
    reasons.extend(new_flow_reasons);
    Explain {
        vip: route.vip,
        flow,
        source: match choice {
            NextChoice::Hash => "maglev table".into(),
            _ => format!("{scheduler} scheduler"),
        },
        backend: new_flow_backend,
        reasons,
    }
}

/// Where the VIP's scheduler sends a new flow, and why.
fn scheduler_reasons(
    route: &Route,
    choice: &NextChoice,
    vip: &VipDesired,
) -> (Option<IpAddr>, Vec<String>) {
    let none = "the VIP has no backend with weight > 0: packets are dropped".to_string();
    let p = route.table;
    match choice {
        NextChoice::Hash => {
            let mut r = vec![format!(
                "flow hash {:#010x} ({}) selects slot {} of {} in the Maglev table",
                p.hash,
                vip.settings.scheduler.name(),
                p.slot,
                vip.settings.table_size
            )];
            r.push(match p.backend {
                Some(b) => format!("slot {} holds backend id {} ({b})", p.slot, p.backend_id),
                None => none,
            });
            (p.backend, r)
        }
        NextChoice::RoundRobin { per_cpu, .. } if per_cpu.iter().all(Option::is_none) => {
            (None, vec![none])
        }
        NextChoice::RoundRobin { len, per_cpu } => {
            let next: Vec<String> = per_cpu
                .iter()
                .enumerate()
                .map(|(cpu, b)| {
                    format!(
                        "CPU {cpu}: {}",
                        b.map_or("-".to_string(), |a| a.to_string())
                    )
                })
                .collect();
            (
                per_cpu.iter().flatten().next().copied(),
                vec![
                    format!(
                        "round-robin: a new flow takes the next backend of the VIP's smooth \
                         weighted sequence ({len} slots) on the CPU that receives it"
                    ),
                    format!("next on each CPU now: {}", next.join(", ")),
                ],
            )
        }
        NextChoice::LeastConn { best: None, .. } => (None, vec![none]),
        NextChoice::LeastConn {
            exact,
            candidates,
            best: Some((addr, active, weight)),
            ties,
        } => {
            let how = if *exact {
                format!("the smallest (active + 1) / weight over all {candidates} candidates")
            } else {
                format!(
                    "the smaller (active + 1) / weight of {} backends sampled by weight from \
                     the VIP's Maglev table ({candidates} backends, more than {})",
                    lb_common::LC_CHOICES,
                    lb_common::LC_EXACT_MAX
                )
            };
            let mut r = vec![
                format!("least-connections: a new flow takes {how}"),
                format!("fewest now: {addr} with {active} active, weight {weight}"),
            ];
            if !*exact {
                r.push("sampled: that is the likeliest choice, not a certain one".into());
            }
            if *ties > 1 {
                r.push(format!(
                    "{ties} backends tie: the data path picks among them at random"
                ));
            }
            (Some(*addr), r)
        }
    }
}

fn flow_text(src: IpAddr, sport: u16, vip: &VipId, dport: u16) -> String {
    let dst = VipId {
        port: dport,
        ..*vip
    };
    match src {
        IpAddr::V4(a) => format!("{a}:{sport} -> {dst}"),
        IpAddr::V6(a) => format!("[{a}]:{sport} -> {dst}"),
    }
}
