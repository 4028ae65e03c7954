//! `skew`: why least-connections exists. Three backends behind the real
//! lbd (the test lab's namespaces, IPIP, decap, direct return), one of them
//! ten times slower per request; each backend works one request at a time
//! (a single worker), so requests queue where they are sent. A client opens
//! connections at a fixed rate (open loop: the schedule does not wait for
//! answers), one request each, at 50%, 80% and 95% of what the three can
//! serve together, for Maglev, round-robin and least-connections in turn
//! (switched at run time with `lbctl vip set`).
//!
//! Reported: latency from each connection's scheduled start to its answer
//! (p50, p99; a request not answered within the timeout counts as the
//! timeout), each backend's share of the requests, and the connections
//! open on each backend (sampled every 10 ms in the servers: queued and in
//! service), max and mean. Maglev and round-robin send the slow backend a
//! third of the requests whatever its queue; least-connections sends it
//! fewer as its connections pile up.
//!
//! Checked, never timed: every request went through the balancer to one of
//! the three, and each scheduler run is answered by the backends it
//! claims.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use lb_lab::{
    lab::{Lab, VipSpec, VIP_WEB},
    netns,
};

use crate::{
    report::{Cell, Table},
    Opts,
};

const PORT: u16 = 9000;
/// Service time per request of the fast backends (b1, b2) and the slow one
/// (b3, ten times as long).
const FAST: Duration = Duration::from_millis(4);
const SLOW: Duration = Duration::from_millis(40);
/// A request not answered within this counts as this long.
const TIMEOUT: Duration = Duration::from_secs(3);
const LOADS: [f64; 3] = [0.50, 0.80, 0.95];
const SCHEDULERS: [&str; 3] = ["maglev", "round-robin", "least-connections"];
/// Small stacks: hundreds of requests may wait at once.
const STACK: usize = 64 * 1024;

/// Requests per second the three backends serve together.
fn capacity() -> f64 {
    2.0 / FAST.as_secs_f64() + 1.0 / SLOW.as_secs_f64()
}

pub fn run(opts: &Opts) -> Result<Vec<Table>> {
    let seconds = if opts.quick { 3 } else { 8 };
    let mut lab = Lab::new(3).context("building the lab")?;
    let backends: Vec<_> = ["b1", "b2", "b3"]
        .iter()
        .map(|n| lab.backend(n).v4.into())
        .collect();
    let vip = VipSpec::new("work", VIP_WEB, Some(PORT), &backends);
    lab.write_config(&lab.config_text(&[vip]));
    lab.start_lbd()?;
    lab.wait_next_hops(Duration::from_secs(10))?;
    // Some 40,000 connections in all: room for their ports.
    netns::sysctl(
        &lab.client_ns,
        "net.ipv4.ip_local_port_range",
        "10000 65000",
    )?;
    let servers: Vec<Server> = [("b1", FAST), ("b2", FAST), ("b3", SLOW)]
        .iter()
        .map(|(name, work)| Server::start(&lab.backend(name).ns, *work))
        .collect::<Result<_>>()?;
    let to = SocketAddr::from((VIP_WEB, PORT));

    let mut t = Table::new(
        "skew: one backend 10x slower, connections at a fixed rate (p50/p99 from the scheduled start)",
        &[
            "scheduler",
            "load",
            "offered req/s",
            "p50 ms",
            "p99 ms",
            "timed out",
            "share b1 / b2 / b3 (slow)",
            "open conns max b1 / b2 / b3",
            "open conns mean b1 / b2 / b3",
        ],
    );
    for scheduler in SCHEDULERS {
        lab.lbctl_ok(&["vip", "set", "work", "--scheduler", scheduler]);
        for load in LOADS {
            crate::interrupted()?;
            let rate = load * capacity();
            let r = point(&lab, &servers, to, rate, Duration::from_secs(seconds))
                .with_context(|| format!("{scheduler} at {:.0}%", load * 100.0))?;
            let three = |v: [f64; 3], d: usize| {
                Cell::text(
                    v.iter()
                        .map(|x| format!("{x:.d$}"))
                        .collect::<Vec<_>>()
                        .join(" / "),
                )
            };
            t.row(vec![
                Cell::text(scheduler),
                Cell::text(format!("{:.0}%", load * 100.0)),
                Cell::num(rate, 0),
                Cell::num(r.p50.as_secs_f64() * 1e3, 1),
                Cell::num(r.p99.as_secs_f64() * 1e3, 1),
                Cell::text(format!("{} of {}", r.timed_out, r.sent)),
                three(r.share.map(|s| s * 100.0), 0),
                three(r.open_max, 0),
                three(r.open_mean, 1),
            ]);
        }
    }
    t.note(format!(
        "Backends work one request at a time: b1 and b2 {} ms each, b3 {} ms; together {:.0} \
         requests/s. {seconds} s per row; a connection not answered within {} s counts as {} s \
         (p99 of {} ms means more than 1% timed out), and the backend drops it unworked. \
         Shares: % of the requests each backend received.",
        FAST.as_millis(),
        SLOW.as_millis(),
        capacity(),
        TIMEOUT.as_secs(),
        TIMEOUT.as_secs(),
        TIMEOUT.as_millis()
    ));
    drop(servers);
    lab.stop_lbd()?;
    Ok(vec![t])
}

struct Point {
    sent: usize,
    timed_out: usize,
    p50: Duration,
    p99: Duration,
    share: [f64; 3],
    open_max: [f64; 3],
    open_mean: [f64; 3],
}

/// One row: `rate` new connections a second for `length`, then until every
/// one is answered or timed out.
fn point(
    lab: &Lab,
    servers: &[Server],
    to: SocketAddr,
    rate: f64,
    length: Duration,
) -> Result<Point> {
    // The last row's queues first: every backend idle.
    let idle_by = Instant::now() + 2 * TIMEOUT;
    while servers.iter().any(|s| s.open() > 0) {
        ensure!(
            Instant::now() < idle_by,
            "backends still busy from the last row"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let before: Vec<u64> = servers.iter().map(|s| s.received()).collect();
    let sampling = Sampler::start(servers);
    let n = (rate * length.as_secs_f64()) as usize;
    let latencies = netns::spawn_in_netns(&lab.client_ns, move || open_loop(to, rate, n))
        .join()
        .map_err(|_| anyhow::anyhow!("the load generator panicked"))???;
    let (open_max, open_mean) = sampling.stop();
    let received: Vec<u64> = servers
        .iter()
        .zip(&before)
        .map(|(s, b)| s.received() - b)
        .collect();
    let total: u64 = received.iter().sum();
    let answered = latencies.iter().filter(|l| l.is_some()).count();
    ensure!(
        total as usize >= answered && total as usize <= n,
        "{n} requests sent, {answered} answered, the backends received {total}"
    );
    let mut sorted: Vec<Duration> = latencies.iter().map(|l| l.unwrap_or(TIMEOUT)).collect();
    sorted.sort();
    let pct = |p: f64| sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)];
    Ok(Point {
        sent: n,
        timed_out: n - answered,
        p50: pct(0.50),
        p99: pct(0.99),
        share: [0, 1, 2].map(|i| received[i] as f64 / total.max(1) as f64),
        open_max,
        open_mean,
    })
}

/// Starts connection `i` at `i / rate` s, whatever happened to the ones
/// before; each answer's latency from its scheduled start, `None` if it
/// failed or took longer than `TIMEOUT`.
fn open_loop(to: SocketAddr, rate: f64, n: usize) -> Result<Vec<Option<Duration>>> {
    let out = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let out = out.clone();
        handles.push(
            thread::Builder::new()
                .stack_size(STACK)
                .spawn(move || {
                    let r = request(to, due);
                    out.lock().unwrap().push(r);
                })
                .context("a client thread")?,
        );
    }
    for h in handles {
        let _ = h.join();
    }
    let v = std::mem::take(&mut *out.lock().unwrap());
    Ok(v)
}

fn request(to: SocketAddr, due: Instant) -> Option<Duration> {
    let deadline = due + TIMEOUT;
    let left = || deadline.checked_duration_since(Instant::now());
    let mut s = TcpStream::connect_timeout(&to, left()?).ok()?;
    s.set_read_timeout(Some(left()?)).ok()?;
    s.write_all(b"work\n").ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).ok()?;
    (answer == b"done\n")
        .then(|| due.elapsed())
        .filter(|l| *l <= TIMEOUT)
}

/// A backend that works one request at a time: each connection sends a
/// line, waits its turn for the one worker, gets `done` after `work` (or
/// nothing, if it waited longer than the client does).
struct Server {
    stop: Arc<AtomicBool>,
    open: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    accept: Option<JoinHandle<Result<()>>>,
}

impl Server {
    fn start(ns: &str, work: Duration) -> Result<Server> {
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let listener = netns::in_netns(ns, || TcpListener::bind(("0.0.0.0", PORT)))?
            .with_context(|| format!("listening on {PORT} in {ns}"))?;
        listener.set_nonblocking(true)?;
        let worker = Arc::new(Mutex::new(()));
        let (stop2, open2, received2) = (stop.clone(), open.clone(), received.clone());
        let accept = thread::spawn(move || -> Result<()> {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let (open, received, worker) =
                            (open2.clone(), received2.clone(), worker.clone());
                        open.fetch_add(1, Ordering::Relaxed);
                        thread::Builder::new().stack_size(STACK).spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(TIMEOUT * 2));
                            let mut b = [0u8; 16];
                            if matches!(s.read(&mut b), Ok(n) if n > 0) {
                                let arrived = Instant::now();
                                received.fetch_add(1, Ordering::Relaxed);
                                let turn = worker.lock().unwrap();
                                // A request whose client has given up is
                                // dropped, not worked: the queue then
                                // drains, as behind a server's deadline.
                                if arrived.elapsed() < TIMEOUT {
                                    thread::sleep(work);
                                    drop(turn);
                                    let _ = s.write_all(b"done\n");
                                }
                            }
                            open.fetch_sub(1, Ordering::Relaxed);
                        })?;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        });
        Ok(Server {
            stop,
            open,
            received,
            accept: Some(accept),
        })
    }

    /// Requests that reached this backend.
    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Samples each server's open connections every 10 ms.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<([f64; 3], [f64; 3])>,
}

impl Sampler {
    fn start(servers: &[Server]) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let open: Vec<Arc<AtomicU64>> = servers.iter().map(|s| s.open.clone()).collect();
        let stop2 = stop.clone();
        let handle = thread::spawn(move || {
            let (mut max, mut sum, mut n) = ([0f64; 3], [0f64; 3], 0f64);
            while !stop2.load(Ordering::Relaxed) {
                for (i, o) in open.iter().enumerate().take(3) {
                    let v = o.load(Ordering::Relaxed) as f64;
                    max[i] = max[i].max(v);
                    sum[i] += v;
                }
                n += 1.0;
                thread::sleep(Duration::from_millis(10));
            }
            (max, sum.map(|s| s / n.max(1.0)))
        });
        Sampler { stop, handle }
    }

    fn stop(self) -> ([f64; 3], [f64; 3]) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(([0.0; 3], [0.0; 3]))
    }
}
