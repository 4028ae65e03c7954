//! Clients of the cluster: a fleet of long-lived TCP connections, each from
//! one of the client's addresses, exchanging a line every period (what a
//! node death or a drain must not break), and a UDP probe that counts the
//! answers to each datagram (a datagram two balancers forward is answered
//! twice).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{clients::tcp_connect, netns::in_netns};

/// How long one exchange may take before the connection counts as broken:
/// well past TCP's retransmissions over a few hundred milliseconds of
/// rerouting.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections per worker thread.
const PER_WORKER: usize = 25;

/// One connection's story.
#[derive(Clone, Debug)]
pub struct ConnReport {
    pub local: SocketAddr,
    /// The backend that greeted it.
    pub backend: String,
    pub exchanges: u64,
    /// Why it broke, if it did.
    pub error: Option<String>,
    /// The longest time between two answered exchanges.
    pub max_gap: Duration,
}

#[derive(Clone, Debug)]
pub struct FleetReport {
    pub conns: Vec<ConnReport>,
}

impl FleetReport {
    pub fn broken(&self) -> Vec<&ConnReport> {
        self.conns.iter().filter(|c| c.error.is_some()).collect()
    }
    pub fn max_gap(&self) -> Duration {
        self.conns
            .iter()
            .map(|c| c.max_gap)
            .max()
            .unwrap_or_default()
    }
    /// Connections per backend.
    pub fn by_backend(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for c in &self.conns {
            *m.entry(c.backend.clone()).or_default() += 1;
        }
        m
    }
}

struct Conn {
    local: SocketAddr,
    backend: String,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    exchanges: u64,
    error: Option<String>,
    last_ok: Instant,
    max_gap: Duration,
}

pub struct Fleet {
    stop: Arc<AtomicBool>,
    exchanges: Arc<AtomicU64>,
    broken: Arc<AtomicU64>,
    workers: Vec<JoinHandle<Vec<Conn>>>,
}

impl Drop for Fleet {
    /// A test that panics stops its workers too (their connections close).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Fleet {
    /// Opens one connection to `to` per entry of `sources` (from the client
    /// namespace), reads each greeting, then exchanges a line on each every
    /// `every` until stopped.
    pub fn start(
        client_ns: &str,
        to: SocketAddr,
        sources: &[IpAddr],
        every: Duration,
    ) -> Result<Fleet> {
        let conns = in_netns(client_ns, || -> Result<Vec<Conn>> {
            sources
                .iter()
                .map(|src| {
                    let (local, s) =
                        tcp_connect(Some(SocketAddr::new(*src, 0)), to, EXCHANGE_TIMEOUT);
                    let s = s.with_context(|| format!("connecting from {src} to {to}"))?;
                    s.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
                    s.set_nodelay(true)?;
                    let mut reader = BufReader::new(s.try_clone()?);
                    let mut greeting = String::new();
                    reader
                        .read_line(&mut greeting)
                        .with_context(|| format!("greeting from {to} to {src}"))?;
                    Ok(Conn {
                        local: local.unwrap_or_else(|| SocketAddr::new(*src, 0)),
                        backend: greeting.trim().to_string(),
                        reader,
                        writer: s,
                        exchanges: 0,
                        error: None,
                        last_ok: Instant::now(),
                        max_gap: Duration::ZERO,
                    })
                })
                .collect()
        })??;
        let stop = Arc::new(AtomicBool::new(false));
        let exchanges = Arc::new(AtomicU64::new(0));
        let broken = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::new();
        let mut conns = conns.into_iter().peekable();
        while conns.peek().is_some() {
            let mut mine: Vec<Conn> = conns.by_ref().take(PER_WORKER).collect();
            let (stop, exchanges, broken) = (stop.clone(), exchanges.clone(), broken.clone());
            workers.push(thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let tick = Instant::now();
                    for c in mine.iter_mut().filter(|c| c.error.is_none()) {
                        match exchange(c) {
                            Ok(()) => {
                                let now = Instant::now();
                                c.max_gap = c.max_gap.max(now - c.last_ok);
                                c.last_ok = now;
                                c.exchanges += 1;
                                exchanges.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                c.error = Some(e);
                                broken.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    if let Some(rest) = every.checked_sub(tick.elapsed()) {
                        thread::sleep(rest);
                    }
                }
                mine
            }));
        }
        Ok(Fleet {
            stop,
            exchanges,
            broken,
            workers,
        })
    }

    /// Exchanges answered so far (all connections).
    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(Ordering::Relaxed)
    }

    /// Connections broken so far.
    pub fn broken(&self) -> u64 {
        self.broken.load(Ordering::Relaxed)
    }

    /// Waits until every connection made `n` more exchanges (bounded).
    pub fn wait_exchanges(&self, n: u64, conns: usize, timeout: Duration) -> bool {
        let want = self.exchanges() + n * conns as u64;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.exchanges() >= want {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn stop(mut self) -> FleetReport {
        self.stop.store(true, Ordering::Relaxed);
        let conns = std::mem::take(&mut self.workers)
            .into_iter()
            .flat_map(|w| w.join().expect("fleet worker"))
            .map(|c| ConnReport {
                local: c.local,
                backend: c.backend,
                exchanges: c.exchanges,
                error: c.error,
                max_gap: c.max_gap,
            })
            .collect();
        FleetReport { conns }
    }
}

/// One line out, the same line back.
fn exchange(c: &mut Conn) -> Result<(), String> {
    let line = format!("ping {}\n", c.exchanges);
    c.writer
        .write_all(line.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut back = String::new();
    match c.reader.read_line(&mut back) {
        Ok(0) => Err("closed by the peer".into()),
        Ok(_) if back == line => Ok(()),
        Ok(_) => Err(format!("sent {line:?}, got {back:?}")),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Sends one datagram to `to` from each of `sources` (from the client
/// namespace) and counts the answers to each within `wait`: how many
/// datagrams got 0, 1, 2, ... answers, and the backends that answered.
pub fn udp_probe(
    client_ns: &str,
    to: SocketAddr,
    sources: &[IpAddr],
    wait: Duration,
) -> Result<(BTreeMap<usize, usize>, BTreeMap<String, usize>)> {
    in_netns(client_ns, || -> Result<_> {
        let socks: Vec<UdpSocket> = sources
            .iter()
            .map(|s| UdpSocket::bind(SocketAddr::new(*s, 0)))
            .collect::<std::io::Result<_>>()?;
        for s in &socks {
            s.set_nonblocking(true)?;
            s.send_to(b"who\n", to)?;
        }
        let deadline = Instant::now() + wait;
        let mut answers = vec![0usize; socks.len()];
        let mut backends = BTreeMap::new();
        let mut buf = [0u8; 256];
        while Instant::now() < deadline {
            for (i, s) in socks.iter().enumerate() {
                while let Ok(n) = s.recv(&mut buf) {
                    answers[i] += 1;
                    let name = String::from_utf8_lossy(&buf[..n]).trim().to_string();
                    *backends.entry(name).or_default() += 1;
                }
            }
            thread::sleep(Duration::from_millis(10));
        }
        let mut hist = BTreeMap::new();
        for a in answers {
            *hist.entry(a).or_default() += 1;
        }
        Ok((hist, backends))
    })?
}
