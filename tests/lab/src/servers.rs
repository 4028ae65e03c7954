//! The backends' toy servers: a greeter, an HTTP health endpoint and a UDP
//! echo of the backend's name, each started and stopped on its own.

use std::{
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{clients::*, lab::*, netns::in_netns};

// ---------------------------------------------------------------- servers

/// What a backend serves. Each service of each backend can be stopped and
/// started on its own ([`Lab::stop_service`], [`Lab::start_service`]); a
/// lab starts every backend with `Greeter(80)` and `Greeter(8080)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// TCP on `[::]:port` (dual stack): greets every connection with the
    /// backend's name and a newline, then echoes lines until the peer
    /// closes.
    Greeter(u16),
    /// HTTP/1.x on `[::]:port`, one request per connection: `GET /healthz`
    /// answers 200 (503 while [`Lab::set_http_healthy`] says unhealthy),
    /// anything else 404.
    Http(u16),
    /// UDP on `port` of each of the backend's addresses (its own and the
    /// VIPs on `lo`, so that a reply leaves from the address the datagram
    /// went to): answers every datagram with the backend's name and a
    /// newline.
    Udp(u16),
}

impl Service {
    pub fn port(self) -> u16 {
        match self {
            Service::Greeter(p) | Service::Http(p) | Service::Udp(p) => p,
        }
    }
}

/// An eventfd that wakes a server's `poll` at once when it is told to stop.
struct Waker(OwnedFd);

impl Waker {
    fn new() -> std::io::Result<Waker> {
        // SAFETY: a plain syscall; the descriptor is owned from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the fd was just returned by eventfd() and is owned by nothing else.
        Ok(Waker(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn wake(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a local to an eventfd we own.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// Waits (at most `timeout_ms`) until one of `fds` is readable or the
/// waker fires; which of `fds` are readable.
fn poll_readable(fds: &[RawFd], waker: &Waker, timeout_ms: i32) -> Vec<bool> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .copied()
        .chain([waker.0.as_raw_fd()])
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: pollfds we own, their count.
    unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    pfds[..fds.len()]
        .iter()
        .map(|p| p.revents & libc::POLLIN != 0)
        .collect()
}

/// What a server's thread and its controller share.
pub(crate) struct ServerCtl {
    stop: AtomicBool,
    waker: Waker,
    /// Connections accepted (TCP) or datagrams answered (UDP).
    served: AtomicU64,
    /// HTTP: `/healthz` answers 200 (else 503).
    pub(crate) healthy: AtomicBool,
    /// When the thread closed its socket(s).
    closed_at: Mutex<Option<Instant>>,
}

impl ServerCtl {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn mark_closed(&self) {
        *self.closed_at.lock().expect("not poisoned") = Some(Instant::now());
    }
}

/// A running [`Service`] of one backend: a thread owns its socket(s).
pub(crate) struct Server {
    pub(crate) backend: String,
    pub(crate) service: Service,
    pub(crate) ctl: Arc<ServerCtl>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds the service's socket(s) in the backend's namespace and starts
    /// serving; it accepts connections once this returns.
    pub(crate) fn start(host: &BackendHost, service: Service) -> Result<Server> {
        let ctl = Arc::new(ServerCtl {
            stop: AtomicBool::new(false),
            waker: Waker::new().context("eventfd")?,
            served: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            closed_at: Mutex::new(None),
        });
        let greeting = format!("{}\n", host.name);
        let ns = host.ns.as_str();
        let ctl2 = ctl.clone();
        let thread = match service {
            Service::Greeter(port) | Service::Http(port) => {
                let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
                let listener = in_netns(ns, || TcpListener::bind(addr))?
                    .with_context(|| format!("listening on {addr} in {ns}"))?;
                listener.set_nonblocking(true)?;
                if matches!(service, Service::Greeter(_)) {
                    thread::spawn(move || accept_loop(listener, ctl2, greeting))
                } else {
                    thread::spawn(move || http_loop(listener, ctl2))
                }
            }
            Service::Udp(port) => {
                let addrs: Vec<IpAddr> = [host.v4.into(), host.v6.into()]
                    .into_iter()
                    .chain(host.lo_addrs.iter().copied())
                    .collect();
                let socks = in_netns(ns, || {
                    addrs
                        .iter()
                        .map(|a| UdpSocket::bind((*a, port)))
                        .collect::<std::io::Result<Vec<_>>>()
                })?
                .with_context(|| format!("binding UDP port {port} in {ns}"))?;
                for s in &socks {
                    s.set_nonblocking(true)?;
                }
                thread::spawn(move || udp_loop(socks, ctl2, greeting))
            }
        };
        Ok(Server {
            backend: host.name.clone(),
            service,
            ctl,
            thread: Some(thread),
        })
    }

    pub(crate) fn stop_flag(&self) {
        self.ctl.stop.store(true, Ordering::Relaxed);
        self.ctl.waker.wake();
    }

    /// Stops serving; returns once the socket(s) are closed (new
    /// connections are refused, datagrams answered "port unreachable"),
    /// with the moment they were.
    pub(crate) fn stop(&self) -> Instant {
        self.stop_flag();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(at) = *self.ctl.closed_at.lock().expect("not poisoned") {
                return at;
            }
            assert!(
                Instant::now() < deadline,
                "{} {:?} did not stop within 5 s",
                self.backend,
                self.service
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    pub(crate) fn served(&self) -> u64 {
        self.ctl.served.load(Ordering::Relaxed)
    }

    pub(crate) fn join(mut self) {
        self.stop_flag();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Accepts connections on `listener` until the server is stopped, counting
/// each and handing it to `handle`; then closes the listener and marks the
/// server closed.
fn accept_until_stopped(listener: TcpListener, ctl: &ServerCtl, mut handle: impl FnMut(TcpStream)) {
    let give_up = Instant::now() + MAX_BACKGROUND;
    while !ctl.stopped() && Instant::now() < give_up {
        poll_readable(&[listener.as_raw_fd()], &ctl.waker, 100);
        if ctl.stopped() {
            break;
        }
        match listener.accept() {
            Ok((s, _)) => {
                ctl.served.fetch_add(1, Ordering::Relaxed);
                handle(s);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
    drop(listener);
    ctl.mark_closed();
}

fn accept_loop(listener: TcpListener, ctl: Arc<ServerCtl>, greeting: String) {
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    accept_until_stopped(listener, &ctl, |s| {
        let (ctl, greeting) = (ctl.clone(), greeting.clone());
        handlers.retain(|h| !h.is_finished());
        handlers.push(thread::spawn(move || serve(s, ctl, greeting)));
    });
    for h in handlers {
        let _ = h.join();
    }
}

fn serve(mut s: TcpStream, ctl: Arc<ServerCtl>, greeting: String) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_nodelay(true);
    if s.write_all(greeting.as_bytes()).is_err() {
        return;
    }
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let Ok(read_half) = s.try_clone() else { return };
    let mut reader = BufReader::new(read_half);
    let mut line = String::new();
    let give_up = Instant::now() + MAX_BACKGROUND;
    while !ctl.stopped() && Instant::now() < give_up {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with('\n') => {
                if s.write_all(line.as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// Serves one HTTP request per connection, in the accepting thread (health
/// checks are few and send their request at once).
fn http_loop(listener: TcpListener, ctl: Arc<ServerCtl>) {
    accept_until_stopped(listener, &ctl, |s| http_answer(s, &ctl));
}

fn http_answer(mut s: TcpStream, ctl: &ServerCtl) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.lines().next().unwrap_or("").split(' ');
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (code, reason) = match (method, path) {
        ("GET", "/healthz") if ctl.healthy.load(Ordering::Relaxed) => (200, "OK"),
        ("GET", "/healthz") => (503, "Service Unavailable"),
        _ => (404, "Not Found"),
    };
    let body = format!("{code}\n");
    let reply = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(reply.as_bytes());
}

fn udp_loop(socks: Vec<UdpSocket>, ctl: Arc<ServerCtl>, reply: String) {
    let fds: Vec<RawFd> = socks.iter().map(|s| s.as_raw_fd()).collect();
    let give_up = Instant::now() + MAX_BACKGROUND;
    let mut buf = [0u8; 2048];
    while !ctl.stopped() && Instant::now() < give_up {
        let ready = poll_readable(&fds, &ctl.waker, 100);
        if ctl.stopped() {
            break;
        }
        for (s, _) in socks.iter().zip(ready).filter(|(_, r)| *r) {
            // Bounded: a burst is at most what the socket buffer holds.
            for _ in 0..10_000 {
                match s.recv_from(&mut buf) {
                    Ok((_, from)) => {
                        if s.send_to(reply.as_bytes(), from).is_ok() {
                            ctl.served.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => break,
                }
            }
        }
    }
    drop(socks);
    ctl.mark_closed();
}
