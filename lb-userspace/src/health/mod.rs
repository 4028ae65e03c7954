//! Active health checks. One tokio task per (VIP, backend) probes the
//! backend's own address from this host on a jittered schedule and reports
//! each result; the [`Checker`] turns results into up/down transitions with
//! rise/fall hysteresis and applies them to the maps through the daemon.
//!
//! A check never waits on another: each task has its own timer and timeout,
//! so one slow backend cannot delay the rest.
//!
//! Checks target the backend address, not the VIP: a backend must accept
//! the probe there. With `ipip`, the backend's stack sees ordinary traffic to
//! its address. With `l2dsr`, the VIP sits on the backend's loopback and the
//! service usually listens on the VIP only: make it listen on the wildcard
//! address (or on the backend address too) so the probe is answered.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    sync::{mpsc, Notify},
    task::JoinHandle,
};

use crate::{
    daemon::Shared as SharedDaemon,
    metrics::Metrics,
    model::{HealthKind, HealthSpec, VipId},
};

/// Consecutive-result hysteresis: `rise` successes bring a backend up,
/// `fall` failures take it down; anything less changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracker {
    pub up: bool,
    successes: u32,
    failures: u32,
}

impl Tracker {
    pub fn new(up: bool) -> Self {
        Tracker {
            up,
            successes: 0,
            failures: 0,
        }
    }

    /// Feeds one result; returns the new state on a transition.
    pub fn observe(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
            if !self.up && self.successes >= rise {
                self.up = true;
                return Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.up && self.failures >= fall {
                self.up = false;
                return Some(false);
            }
        }
        None
    }
}

/// One probe's result.
#[derive(Debug)]
pub struct Observation {
    pub vip: VipId,
    pub addr: IpAddr,
    pub result: Result<(), String>,
    pub duration: Duration,
    /// When the probe finished.
    pub at: Instant,
}

/// Probes `target` once, within the spec's timeout.
pub async fn probe(spec: &HealthSpec, target: SocketAddr) -> Result<(), String> {
    match tokio::time::timeout(spec.timeout, probe_inner(spec, target)).await {
        Ok(r) => r,
        // A UDP probe that got no ICMP error by the deadline counts as
        // answered: most UDP services do not reply to a stranger's datagram.
        Err(_) if spec.kind == HealthKind::Udp => Ok(()),
        Err(_) => Err(format!("timed out after {:?}", spec.timeout)),
    }
}

async fn probe_inner(spec: &HealthSpec, target: SocketAddr) -> Result<(), String> {
    match spec.kind {
        HealthKind::None => Ok(()),
        HealthKind::Tcp => TcpStream::connect(target)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        HealthKind::Http => http_get(spec, target).await,
        HealthKind::Udp => udp_probe(target).await,
    }
}

async fn http_get(spec: &HealthSpec, target: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect(target)
        .await
        .map_err(|e| e.to_string())?;
    let host = match target.ip() {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lbd-health\r\nConnection: close\r\n\r\n",
        spec.path
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    // The status line is all we need: "HTTP/1.x NNN ...".
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let r = s.read(&mut buf[n..]).await.map_err(|e| e.to_string())?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let code: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP response: {:?}",
                line.lines().next().unwrap_or("")
            )
        })?;
    let ok = match spec.expect_status {
        Some(want) => code == want,
        None => (200..300).contains(&code),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("HTTP status {code}"))
    }
}

/// Sends a datagram on a connected socket: a closed port answers with ICMP
/// port unreachable, which the socket reports as "connection refused".
async fn udp_probe(target: SocketAddr) -> Result<(), String> {
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("literal");
    let sock = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    sock.connect(target).await.map_err(|e| e.to_string())?;
    sock.send(b"lbd health probe\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    sock.recv(&mut buf)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A deterministic per-task jitter source (no need for a crypto RNG).
struct Jitter(u64);

impl Jitter {
    fn new(seed: &str) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ now;
        for b in seed.bytes().chain(std::process::id().to_le_bytes()) {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        Jitter(h | 1)
    }

    /// A fraction in [0, 1).
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Probes one backend forever: first after a random fraction of the
/// interval, then every interval ±10%, so checks do not fire in lockstep.
fn spawn_task(
    vip: VipId,
    addr: IpAddr,
    spec: HealthSpec,
    tx: mpsc::Sender<Observation>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let target = SocketAddr::new(addr, spec.port);
        let mut jitter = Jitter::new(&format!("{vip}{addr}"));
        tokio::time::sleep(spec.interval.mul_f64(jitter.next())).await;
        loop {
            let started = Instant::now();
            let result = probe(&spec, target).await;
            let at = Instant::now();
            let obs = Observation {
                vip,
                addr,
                result,
                duration: at - started,
                at,
            };
            if tx.send(obs).await.is_err() {
                return;
            }
            // Checks start an interval apart (±10%), however long each took:
            // a backend that stops answering is probed as often as a live one.
            let next = spec.interval.mul_f64(0.9 + 0.2 * jitter.next());
            tokio::time::sleep(next.saturating_sub(started.elapsed())).await;
        }
    })
}

struct Checked {
    spec: HealthSpec,
    task: JoinHandle<()>,
    tracker: Tracker,
}

/// Runs the checks the desired state asks for and applies their verdicts.
pub struct Checker {
    daemon: SharedDaemon,
    metrics: Arc<Metrics>,
    checked: HashMap<(VipId, IpAddr), Checked>,
    tx: mpsc::Sender<Observation>,
    rx: mpsc::Receiver<Observation>,
}

impl Checker {
    pub fn new(daemon: SharedDaemon, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        Checker {
            daemon,
            metrics,
            checked: HashMap::new(),
            tx,
            rx,
        }
    }

    /// Runs until dropped: reconciles the set of checks whenever `changed`
    /// is notified, and handles every probe result.
    pub async fn run(mut self, changed: Arc<Notify>) {
        self.reconcile();
        loop {
            tokio::select! {
                _ = changed.notified() => self.reconcile(),
                Some(obs) = self.rx.recv() => self.handle(obs),
            }
        }
    }

    /// Starts checks for backends that need one, stops those no longer
    /// wanted, restarts those whose settings changed.
    fn reconcile(&mut self) {
        let d = self.daemon.lock().unwrap_or_else(|p| p.into_inner());
        let mut wanted: HashMap<(VipId, IpAddr), HealthSpec> = HashMap::new();
        for (id, v) in &d.desired().vips {
            // Each backend by its own check if it has one, else the VIP's;
            // kind `none` is not probed.
            for b in &v.backends {
                if let Some(spec) = v.active_check(b) {
                    wanted.insert((*id, b.addr), spec.clone());
                }
            }
        }
        self.checked.retain(|key, c| {
            let keep = wanted.get(key) == Some(&c.spec);
            if !keep {
                c.task.abort();
            }
            keep
        });
        for (key, spec) in wanted {
            if self.checked.contains_key(&key) {
                continue;
            }
            // Start from what the maps say: a new backend was added down,
            // one adopted from a previous lbd keeps its state.
            let up = !d.balancer().is_down(&key.0, &key.1);
            self.metrics.start_checking(&key.0, &key.1);
            let task = spawn_task(key.0, key.1, spec.clone(), self.tx.clone());
            self.checked.insert(
                key,
                Checked {
                    spec,
                    task,
                    tracker: Tracker::new(up),
                },
            );
        }
        drop(d);
        self.metrics.set_checked(self.checked.len());
    }

    fn handle(&mut self, obs: Observation) {
        let key = (obs.vip, obs.addr);
        let Some(c) = self.checked.get_mut(&key) else {
            return; // a result from a task stopped meanwhile
        };
        let ok = obs.result.is_ok();
        self.metrics
            .observe_check(&obs.vip, &obs.addr, ok, obs.duration);
        let Some(up) = c.tracker.observe(ok, c.spec.rise, c.spec.fall) else {
            return;
        };
        let mut d = self.daemon.lock().unwrap_or_else(|p| p.into_inner());
        let applied = d.set_backend_health(&obs.vip, obs.addr, up);
        let fail_open = d.balancer().fail_open(&obs.vip);
        drop(d);
        let elapsed = obs.at.elapsed();
        match applied {
            Ok(()) if up => {
                tracing::info!(vip = %obs.vip, backend = %obs.addr, "backend is UP: back in the table")
            }
            Ok(()) => {
                self.metrics.observe_failover(elapsed);
                tracing::warn!(
                    vip = %obs.vip,
                    backend = %obs.addr,
                    reason = obs.result.as_ref().err().map(String::as_str).unwrap_or(""),
                    apply_ms = elapsed.as_secs_f64() * 1e3,
                    "backend is DOWN: out of the table, its flows move"
                );
            }
            Err(e) => {
                tracing::error!(vip = %obs.vip, backend = %obs.addr, "applying health state failed: {e}");
                // The maps did not change: neither did the state. The next
                // result retries the transition.
                if let Some(c) = self.checked.get_mut(&key) {
                    c.tracker = Tracker::new(!up);
                }
                return;
            }
        }
        self.metrics.transition(&obs.vip, &obs.addr, up);
        if fail_open {
            tracing::error!(vip = %obs.vip, "ALL BACKENDS DOWN: failing open, sending to all of them");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall_need_consecutive_results() {
        let mut t = Tracker::new(true);
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(
            t.observe(true, 2, 3),
            None,
            "a success resets the failure count"
        );
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), Some(false));
        assert_eq!(t.observe(false, 2, 3), None, "already down");
        assert_eq!(t.observe(true, 2, 3), None);
        assert_eq!(t.observe(true, 2, 3), Some(true));
    }

    #[test]
    fn alternating_results_never_flap() {
        let mut t = Tracker::new(true);
        for i in 0..100 {
            assert_eq!(t.observe(i % 2 == 0, 2, 3), None);
        }
        let mut t = Tracker::new(false);
        for i in 0..100 {
            assert_eq!(t.observe(i % 2 == 0, 2, 3), None);
        }
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut j = Jitter::new("x");
        for _ in 0..1000 {
            let f = j.next();
            assert!((0.0..1.0).contains(&f));
        }
    }
}
