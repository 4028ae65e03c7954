//! The client side: raw-socket connections and streams of flows whose local
//! ports are known also when they fail, and a tiny HTTP/1.0 client.

use std::{
    collections::BTreeSet,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    os::fd::{FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb_common::FlowKey;

use crate::{lab::*, netns::spawn_in_netns};

/// How long one connection attempt, or one answer, may take. A SYN lost
/// once is retransmitted after 1 s, so this allows for one loss.
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest any background loop (server, stream, long-lived
/// connection) runs, whether or not it is told to stop.
pub const MAX_BACKGROUND: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------- clients

/// Connects to `to`, reads the greeting line; the backend's name and the
/// connection's local address. Must run in the client namespace.
pub fn greet(to: SocketAddr) -> Result<(String, SocketAddr), String> {
    let mut s =
        TcpStream::connect_timeout(&to, IO_TIMEOUT).map_err(|e| format!("connect {to}: {e}"))?;
    let local = s.local_addr().map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let line = read_line(&mut s).map_err(|e| format!("greeting from {to} (local {local}): {e}"))?;
    Ok((line, local))
}

/// Reads one `\n`-terminated line byte by byte (no buffering past it).
fn read_line(s: &mut TcpStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b)? {
            0 => {
                return Err(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "closed before a full line",
                ))
            }
            _ if b[0] == b'\n' => break,
            _ => line.push(b[0]),
        }
        if line.len() > 1024 {
            return Err(std::io::Error::other("line too long"));
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// What a [`LongLived`] connection did.
#[derive(Clone, Debug)]
pub struct LongLivedReport {
    pub backend: String,
    pub exchanges: u64,
    pub error: Option<String>,
    /// The longest time between two completed exchanges.
    pub max_gap: Duration,
}

/// One TCP connection from the client exchanging a line every interval in
/// a background thread.
pub struct LongLived {
    pub backend: String,
    pub local: SocketAddr,
    pub to: SocketAddr,
    stop: Arc<AtomicBool>,
    exchanges: Arc<AtomicU64>,
    handle: Option<JoinHandle<Result<LongLivedReport>>>,
}

impl LongLived {
    pub fn start(client_ns: &str, to: SocketAddr, every: Duration) -> Result<LongLived> {
        let stop = Arc::new(AtomicBool::new(false));
        let exchanges = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel();
        let (stop2, ex2) = (stop.clone(), exchanges.clone());
        let handle = spawn_in_netns(client_ns, move || -> LongLivedReport {
            let mut s = match TcpStream::connect_timeout(&to, IO_TIMEOUT) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(format!("connect {to}: {e}")));
                    return LongLivedReport {
                        backend: String::new(),
                        exchanges: 0,
                        error: Some(e.to_string()),
                        max_gap: Duration::ZERO,
                    };
                }
            };
            let _ = s.set_read_timeout(Some(IO_TIMEOUT));
            let _ = s.set_nodelay(true);
            let local = s.local_addr().expect("local address");
            let backend = match read_line(&mut s) {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(format!("greeting: {e}")));
                    return LongLivedReport {
                        backend: String::new(),
                        exchanges: 0,
                        error: Some(e.to_string()),
                        max_gap: Duration::ZERO,
                    };
                }
            };
            let _ = tx.send(Ok((backend.clone(), local)));
            let mut report = LongLivedReport {
                backend,
                exchanges: 0,
                error: None,
                max_gap: Duration::ZERO,
            };
            let mut last = Instant::now();
            let mut i = 0u64;
            let give_up = Instant::now() + MAX_BACKGROUND;
            while !stop2.load(Ordering::Relaxed) && Instant::now() < give_up {
                thread::sleep(every);
                i += 1;
                let msg = format!("ping {i}");
                let result = s
                    .write_all(format!("{msg}\n").as_bytes())
                    .and_then(|_| read_line(&mut s));
                match result {
                    Ok(echo) if echo == msg => {
                        report.exchanges += 1;
                        ex2.fetch_add(1, Ordering::Relaxed);
                        report.max_gap = report.max_gap.max(last.elapsed());
                        last = Instant::now();
                    }
                    Ok(other) => {
                        report.error = Some(format!("exchange {i}: sent {msg:?}, got {other:?}"));
                        break;
                    }
                    Err(e) => {
                        report.error = Some(format!(
                            "exchange {i} after {} good ones: {e}",
                            report.exchanges
                        ));
                        break;
                    }
                }
            }
            report
        });
        match rx.recv_timeout(IO_TIMEOUT * 2) {
            Ok(Ok((backend, local))) => Ok(LongLived {
                backend,
                local,
                to,
                stop,
                exchanges,
                handle: Some(handle),
            }),
            Ok(Err(e)) => {
                let _ = handle.join();
                bail!("long-lived connection to {to}: {e}")
            }
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                bail!("long-lived connection to {to}: no greeting")
            }
        }
    }

    /// Exchanges so far.
    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(Ordering::Relaxed)
    }

    /// Whether the thread ended (on an error: it only ends when stopped).
    pub fn broken(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished()) && !self.stop.load(Ordering::Relaxed)
    }

    pub fn stop(mut self) -> LongLivedReport {
        self.stop.store(true, Ordering::Relaxed);
        let h = self.handle.take().expect("joined once");
        match h.join() {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => LongLivedReport {
                backend: self.backend.clone(),
                exchanges: 0,
                error: Some(format!("{e:#}")),
                max_gap: Duration::ZERO,
            },
            Err(_) => LongLivedReport {
                backend: self.backend.clone(),
                exchanges: 0,
                error: Some("thread panicked".into()),
                max_gap: Duration::ZERO,
            },
        }
    }
}

impl Drop for LongLived {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// One connection of a [`ConnStream`].
#[derive(Clone, Debug)]
pub struct Attempt {
    /// Since the stream started.
    pub at: Duration,
    pub to: SocketAddr,
    /// The local address, when the connection was made.
    pub local: Option<SocketAddr>,
    /// The backend's name, or why it failed.
    pub result: Result<String, String>,
}

#[derive(Clone, Debug, Default)]
pub struct StreamReport {
    pub attempts: Vec<Attempt>,
}

impl StreamReport {
    pub fn ok(&self) -> usize {
        self.attempts.iter().filter(|a| a.result.is_ok()).count()
    }

    pub fn failures(&self) -> Vec<&Attempt> {
        self.attempts.iter().filter(|a| a.result.is_err()).collect()
    }

    /// Connection-table keys of the connections made.
    pub fn flows(&self) -> BTreeSet<FlowKeyOrd> {
        self.attempts
            .iter()
            .filter_map(|a| a.local.map(|l| FlowKeyOrd(flow_key(l, a.to))))
            .collect()
    }
}

/// A [`FlowKey`] with an order, for sets that print in a stable order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKeyOrd(pub FlowKey);

impl FlowKeyOrd {
    fn tuple(&self) -> (IpAddr, u16, IpAddr, u16) {
        let k = &self.0;
        (
            k.src_ip(),
            u16::from_be(k.sport),
            k.dst_ip(),
            u16::from_be(k.dport),
        )
    }
}

impl PartialOrd for FlowKeyOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FlowKeyOrd {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.tuple(), self.0.proto).cmp(&(other.tuple(), other.0.proto))
    }
}

impl std::fmt::Display for FlowKeyOrd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (s, sp, d, dp) = self.tuple();
        write!(f, "{s}:{sp}->{d}:{dp}/{}", self.0.proto)
    }
}

/// The client doing one thing after another, a few ms apart, in a
/// background thread until stopped: what [`ConnStream`] and [`FlowStream`]
/// share.
struct ClientLoop<T> {
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
    handle: Option<JoinHandle<Result<Vec<T>>>>,
    /// The panic message if the thread panicked.
    panicked: &'static str,
}

impl<T: Send + 'static> ClientLoop<T> {
    /// Runs `step(target, n, started)` in `client_ns` on each of `targets`
    /// in turn (`n` counts the steps from 1, `started` is when the thread
    /// started), for at most `MAX_BACKGROUND` or 100 000 steps.
    fn start(
        client_ns: &str,
        panicked: &'static str,
        targets: Vec<SocketAddr>,
        mut step: impl FnMut(SocketAddr, usize, Instant) -> T + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(AtomicU64::new(0));
        let (stop2, made2) = (stop.clone(), made.clone());
        let handle = spawn_in_netns(client_ns, move || {
            let started = Instant::now();
            let give_up = started + MAX_BACKGROUND;
            let mut done = Vec::new();
            let mut i = 0usize;
            while !stop2.load(Ordering::Relaxed) && Instant::now() < give_up && i < 100_000 {
                let to = targets[i % targets.len()];
                i += 1;
                done.push(step(to, i, started));
                made2.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(5));
            }
            done
        });
        ClientLoop {
            stop,
            made,
            handle: Some(handle),
            panicked,
        }
    }

    fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    fn stop(mut self) -> Vec<T> {
        self.stop.store(true, Ordering::Relaxed);
        let h = self.handle.take().expect("joined once");
        h.join()
            .expect(self.panicked)
            .expect("entering the client namespace")
    }
}

impl<T> Drop for ClientLoop<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// New connections from the client, back to back (a few ms apart), in a
/// background thread until stopped.
pub struct ConnStream(ClientLoop<Attempt>);

impl ConnStream {
    pub(crate) fn start(client_ns: &str, targets: Vec<SocketAddr>) -> ConnStream {
        let greet_one = |to, _, started: Instant| {
            let at = started.elapsed();
            match greet(to) {
                Ok((name, local)) => Attempt {
                    at,
                    to,
                    local: Some(local),
                    result: Ok(name),
                },
                Err(e) => Attempt {
                    at,
                    to,
                    local: None,
                    result: Err(e),
                },
            }
        };
        ConnStream(ClientLoop::start(
            client_ns,
            "stream thread panicked",
            targets,
            greet_one,
        ))
    }

    /// Connections attempted so far.
    pub fn made(&self) -> u64 {
        self.0.made()
    }

    pub fn stop(self) -> StreamReport {
        StreamReport {
            attempts: self.0.stop(),
        }
    }
}

// ---------------------------------------------------------------- flows

/// What a [`FlowStream`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowProto {
    Tcp,
    Udp,
}

/// How long a UDP flow waits for its answer.
pub const UDP_REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// One flow of a [`FlowStream`].
#[derive(Clone, Debug)]
pub struct Flow {
    pub started: Instant,
    pub ended: Instant,
    pub to: SocketAddr,
    /// The client's address and port (known also when the flow failed,
    /// unless the socket could not even be made).
    pub local: Option<SocketAddr>,
    /// The answering backend's name, or why there was none.
    pub result: Result<String, String>,
}

/// New flows from the client in a background thread, until stopped.
pub struct FlowStream(ClientLoop<Flow>);

impl FlowStream {
    pub(crate) fn start(client_ns: &str, proto: FlowProto, targets: Vec<SocketAddr>) -> FlowStream {
        assert!(!targets.is_empty(), "a flow stream needs a target");
        let one_flow = move |to, i, _| {
            let started = Instant::now();
            let (local, result) = match proto {
                FlowProto::Tcp => tcp_flow(to),
                FlowProto::Udp => udp_flow(to, i),
            };
            Flow {
                started,
                ended: Instant::now(),
                to,
                local,
                result,
            }
        };
        FlowStream(ClientLoop::start(
            client_ns,
            "flow thread panicked",
            targets,
            one_flow,
        ))
    }

    /// Flows attempted so far.
    pub fn made(&self) -> u64 {
        self.0.made()
    }

    pub fn stop(self) -> Vec<Flow> {
        self.0.stop()
    }
}

/// The client ports of flows: below the kernel's ephemeral range
/// (32768..), so they never clash with ports it picks, and handed out in
/// turn, so each flow of the process has a port of its own (until 22000
/// flows later): its connection-table entry is its own, not one a reused
/// port overwrote.
const FLOW_PORTS: std::ops::Range<u32> = 10_000..32_000;
static NEXT_FLOW_PORT: AtomicU32 = AtomicU32::new(0);

fn next_flow_port() -> u16 {
    let n = NEXT_FLOW_PORT.fetch_add(1, Ordering::Relaxed) % FLOW_PORTS.len() as u32;
    (FLOW_PORTS.start + n) as u16
}

fn unspecified(like: SocketAddr, port: u16) -> SocketAddr {
    match like {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, port).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, port).into(),
    }
}

/// A TCP connection to `to` that reads the greeting.
fn tcp_flow(to: SocketAddr) -> (Option<SocketAddr>, Result<String, String>) {
    let from = unspecified(to, next_flow_port());
    let (local, conn) = tcp_connect(Some(from), to, IO_TIMEOUT);
    let result = conn
        .map_err(|e| format!("connect {to}: {e}"))
        .and_then(|mut s| {
            s.set_read_timeout(Some(IO_TIMEOUT))
                .map_err(|e| e.to_string())?;
            read_line(&mut s).map_err(|e| format!("greeting from {to}: {e}"))
        });
    (local, result)
}

/// One datagram to `to` from a new socket, and its answer.
fn udp_flow(to: SocketAddr, i: usize) -> (Option<SocketAddr>, Result<String, String>) {
    let bind = unspecified(to, next_flow_port());
    let s = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return (None, Err(format!("bind: {e}"))),
    };
    // Connected, the socket has the source address its datagrams carry.
    if let Err(e) = s.connect(to) {
        return (None, Err(format!("connect: {e}")));
    }
    let local = s.local_addr().ok();
    let result = (|| {
        s.send(format!("flow {i}\n").as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        s.set_read_timeout(Some(UDP_REPLY_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 256];
        let n = s
            .recv(&mut buf)
            .map_err(|e| format!("answer from {to}: {e}"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_string())
    })();
    (local, result)
}

/// `sockaddr_in`/`sockaddr_in6` for `a`.
fn to_sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::from((
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::from((
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
            )))
        }
        _ => None,
    }
}

/// A TCP connection to `to` within `timeout`, from `from` if given (with
/// `SO_REUSEADDR`), and its local address, which (unlike with
/// `TcpStream::connect_timeout`) is known also when the connection fails.
pub fn tcp_connect(
    from: Option<SocketAddr>,
    to: SocketAddr,
    timeout: Duration,
) -> (Option<SocketAddr>, std::io::Result<TcpStream>) {
    let last = std::io::Error::last_os_error;
    let domain = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: a plain syscall; the descriptor is owned from here on.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return (None, Err(last()));
    }
    // SAFETY: the fd was just returned by socket() and is owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(from) = from {
        let one: libc::c_int = 1;
        let (sa, len) = to_sockaddr(from);
        // SAFETY: an int option of its size; a sockaddr of `len` bytes.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                &one as *const _ as *const libc::c_void,
                size_of::<libc::c_int>() as libc::socklen_t,
            );
            libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len)
        };
        if r != 0 {
            return (None, Err(last()));
        }
    }
    let (sa, len) = to_sockaddr(to);
    // SAFETY: a sockaddr of `len` bytes.
    let r = unsafe { libc::connect(fd, &sa as *const _ as *const libc::sockaddr, len) };
    let connect_err = (r != 0).then(last);
    let local = {
        // SAFETY: getsockname into a sockaddr_storage of the size given.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut l = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: valid fd, out-pointer and length for a sockaddr_storage.
        let r = unsafe { libc::getsockname(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut l) };
        if r == 0 {
            from_sockaddr(&ss).filter(|a| a.port() != 0)
        } else {
            None
        }
    };
    if let Some(e) = connect_err {
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return (local, Err(e));
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
        if n == 0 {
            return (
                local,
                Err(std::io::Error::new(
                    ErrorKind::TimedOut,
                    "connect timed out",
                )),
            );
        }
        if n < 0 {
            return (local, Err(last()));
        }
        let mut err: libc::c_int = 0;
        let mut l = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: SO_ERROR into an int of the size given.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut _ as *mut libc::c_void,
                &mut l,
            )
        };
        if r != 0 {
            return (local, Err(last()));
        }
        if err != 0 {
            return (local, Err(std::io::Error::from_raw_os_error(err)));
        }
    }
    let stream = TcpStream::from(sock);
    if let Err(e) = stream.set_nonblocking(false) {
        return (local, Err(e));
    }
    (local, Ok(stream))
}

// ---------------------------------------------------------------- HTTP

/// A parsed HTTP response.
#[derive(Clone, Debug)]
pub struct HttpReply {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path HTTP/1.0` to `to`; the whole response (the server closes
/// the connection after it). Must run in the right namespace.
pub fn http10_get(to: SocketAddr, path: &str) -> Result<HttpReply> {
    let mut s =
        TcpStream::connect_timeout(&to, IO_TIMEOUT).with_context(|| format!("connect {to}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {to}\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to GET {path}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            anyhow::anyhow!("no end of the header: {:?}", String::from_utf8_lossy(&raw))
        })?;
    let head = std::str::from_utf8(&raw[..split]).context("header not UTF-8")?;
    let body = String::from_utf8(raw[split + 4..].to_vec()).context("body not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for l in lines {
        let (n, v) = l
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("bad header line {l:?}"))?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let reply = HttpReply {
        status,
        headers,
        body,
    };
    if let Some(te) = reply.header("transfer-encoding") {
        bail!("unexpected transfer-encoding {te} in an HTTP/1.0 answer");
    }
    if let Some(cl) = reply.header("content-length") {
        let cl: usize = cl.parse().context("content-length")?;
        anyhow::ensure!(
            cl == reply.body.len(),
            "content-length {cl}, body {} bytes",
            reply.body.len()
        );
    }
    Ok(reply)
}
