//! The schedule of one backend's probes: its own task, jittered so checks do
//! not fire in lockstep, reporting every result as an [`Observation`].

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::JoinHandle};

use super::probe::probe;
use crate::model::{HealthSpec, VipId};

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
pub(super) fn spawn_task(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range() {
        let mut j = Jitter::new("x");
        for _ in 0..1000 {
            let f = j.next();
            assert!((0.0..1.0).contains(&f));
        }
    }
}
