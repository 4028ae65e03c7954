//! The demo's web servers (one per backend) and its HTTP client.
//!
//! A server listens on 0.0.0.0:80 in its backend's namespace, so it answers
//! both the VIP (on the backend's `lo`) and the backend's own address (where
//! lbd's health checks go). Every `GET` is answered `200 OK` with
//! `hello from <name>\n`; `GET /slow` sends that line at once and then
//! [`SLOW_PARTS`] more lines, one every [`SLOW_GAP`], so a connection can be
//! seen staying established for a while. Connections are served by a
//! thread each; the server stops accepting within [`POLL`] of being told.
//!
//! The client makes one new connection per request (`Connection: close`),
//! from the client namespace, with short timeouts: a request either gets its
//! greeting or fails with a reason ("connection refused", "timed out", ...).

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use lb_lab::netns::in_netns;

/// Connect, read and write timeout of one request.
pub const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// `/slow`: lines after the greeting, and the pause before each.
pub const SLOW_PARTS: usize = 10;
pub const SLOW_GAP: Duration = Duration::from_millis(250);
/// How often a server's accept loop looks at its stop flag.
const POLL: Duration = Duration::from_millis(20);
/// A server stops by itself after this long, whatever happens to the demo.
const MAX_LIFETIME: Duration = Duration::from_secs(180);
/// Largest request head a server reads, and largest answer the client reads.
const MAX_HEAD: usize = 8 << 10;
const MAX_ANSWER: u64 = 64 << 10;

// ---------------------------------------------------------------- server

pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on 0.0.0.0:80 in `ns` and serves as `name` until stopped.
    pub fn start(ns: &str, name: &str) -> Result<Server> {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 80));
        let listener = in_netns(ns, || TcpListener::bind(addr))?
            .with_context(|| format!("listening on {addr} in {ns}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::Builder::new().name(format!("http-{name}")).spawn({
            let (stop, name) = (stop.clone(), name.to_string());
            move || accept_loop(listener, &name, &stop)
        })?;
        Ok(Server {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops accepting and closes the listening socket: new connections
    /// are refused from when this returns. Connections being served finish.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.halt();
    }
}

fn accept_loop(listener: TcpListener, name: &str, stop: &AtomicBool) {
    let give_up = Instant::now() + MAX_LIFETIME;
    while !stop.load(Ordering::SeqCst) && Instant::now() < give_up {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own, for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, POLL.as_millis() as libc::c_int) };
        match listener.accept() {
            Ok((stream, _)) => {
                let name = name.to_string();
                // Bounded by the socket timeouts and the /slow schedule.
                let _ = thread::Builder::new().spawn(move || answer(stream, &name));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => thread::sleep(POLL),
        }
    }
    // The listener closes here.
}

fn answer(mut s: TcpStream, name: &str) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.lines().next().unwrap_or("").split(' ');
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let hello = format!("hello from {name}\n");
    if method != "GET" {
        let body = "only GET here\n";
        s.write_all(response("405 Method Not Allowed", body.len(), body).as_bytes())?;
    } else if path == "/slow" {
        let parts: Vec<String> = (1..=SLOW_PARTS)
            .map(|i| format!("part {i}/{SLOW_PARTS}\n"))
            .collect();
        let len = hello.len() + parts.iter().map(String::len).sum::<usize>();
        s.write_all(response("200 OK", len, &hello).as_bytes())?;
        for p in parts {
            thread::sleep(SLOW_GAP);
            s.write_all(p.as_bytes())?;
        }
    } else {
        s.write_all(response("200 OK", hello.len(), &hello).as_bytes())?;
    }
    s.shutdown(Shutdown::Write)
}

/// A response head and the start of its body.
fn response(status: &str, content_length: usize, body_start: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {content_length}\r\n\
         Connection: close\r\n\r\n{body_start}"
    )
}

// ---------------------------------------------------------------- client

/// Why a request failed, in a few words.
fn reason(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timed out".into(),
        ErrorKind::ConnectionReset => "connection reset".into(),
        ErrorKind::UnexpectedEof => "closed early".into(),
        _ => e.to_string(),
    }
}

fn request_head(path: &str, host: Ipv4Addr) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-demo\r\nConnection: close\r\n\r\n"
    )
}

/// Splits an answer into (status code, headers, body).
fn split_answer(raw: &[u8]) -> Option<(u16, String, &[u8])> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let code = head
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|c| c.parse().ok())?;
    Some((code, head, &raw[end + 4..]))
}

/// The backend a greeting names: `hello from b2` → `b2`.
fn greeter(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().next()?;
    Some(line.strip_prefix("hello from ")?.trim().to_string())
}

/// Connects to `to` (with I/O timeouts) and sends `GET path`.
fn send_request(to: SocketAddr, path: &str) -> Result<TcpStream, String> {
    let io = |e: std::io::Error| reason(&e);
    let mut s = TcpStream::connect_timeout(&to, IO_TIMEOUT).map_err(io)?;
    s.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    let host = match to {
        SocketAddr::V4(a) => *a.ip(),
        SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    };
    s.write_all(request_head(path, host).as_bytes())
        .map_err(io)?;
    Ok(s)
}

/// One `GET path` to `to`, from the calling thread's namespace; the name
/// of the backend that answered, or why there was no answer.
fn get_here(to: SocketAddr, path: &str) -> Result<String, String> {
    let io = |e: std::io::Error| reason(&e);
    let mut s = send_request(to, path)?;
    let mut raw = Vec::new();
    (&mut s)
        .take(MAX_ANSWER)
        .read_to_end(&mut raw)
        .map_err(io)?;
    let (code, _, body) = split_answer(&raw).ok_or("not an HTTP answer")?;
    if code != 200 {
        return Err(format!("HTTP {code}"));
    }
    greeter(body).ok_or_else(|| "no greeting in the answer".into())
}

/// `GET path` on `to` from namespace `ns`: `Ok(Ok(backend))`,
/// `Ok(Err(reason))` when the request failed; `Err` only when the
/// namespace cannot be entered.
pub fn get(ns: &str, to: SocketAddr, path: &str) -> Result<Result<String, String>> {
    in_netns(ns, || get_here(to, path))
}

/// What a batch of requests came to.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Answers per backend name.
    pub by_backend: BTreeMap<String, u32>,
    /// Failures per reason.
    pub failures: BTreeMap<String, u32>,
    pub took: Duration,
}

impl Tally {
    pub fn record(&mut self, r: Result<String, String>) {
        match r {
            Ok(b) => *self.by_backend.entry(b).or_default() += 1,
            Err(e) => *self.failures.entry(e).or_default() += 1,
        }
    }

    pub fn failed(&self) -> u32 {
        self.failures.values().sum()
    }

    pub fn answered(&self) -> u32 {
        self.by_backend.values().sum()
    }

    pub fn total(&self) -> u32 {
        self.failed() + self.answered()
    }

    pub fn to(&self, backend: &str) -> u32 {
        self.by_backend.get(backend).copied().unwrap_or(0)
    }

    /// `b1: 98, b2: 104, b3: 98 (0 failed)`, listing every backend in
    /// `names` (and any other that answered).
    pub fn summary(&self, names: &[String]) -> String {
        let mut parts: Vec<String> = names
            .iter()
            .map(|n| format!("{n}: {}", self.to(n)))
            .collect();
        for (n, c) in &self.by_backend {
            if !names.contains(n) {
                parts.push(format!("{n}: {c}"));
            }
        }
        format!("{} ({} failed)", parts.join(", "), self.failed())
    }

    /// `connection refused: 12, timed out: 1`.
    pub fn failure_reasons(&self) -> String {
        self.failures
            .iter()
            .map(|(r, c)| format!("{r}: {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One bar per backend, scaled to the largest count.
    pub fn bars(&self, names: &[String], indent: &str) -> String {
        let max = names.iter().map(|n| self.to(n)).max().unwrap_or(0).max(1);
        let mut out = String::new();
        for n in names {
            let c = self.to(n);
            let width = (c as usize * 40).div_ceil(max as usize);
            out += &format!("{indent}{n}  {:<40} {c:>4}\n", "█".repeat(width));
        }
        out
    }
}

// ---------------------------------------------------------------- slow

/// A `GET /slow` whose greeting has arrived; the rest is still coming.
pub struct Slow {
    stream: TcpStream,
    pub backend: String,
    pub started: Instant,
    content_length: usize,
    body: Vec<u8>,
}

/// How a slow download ended.
#[derive(Debug)]
pub struct SlowDone {
    pub finished: Instant,
    pub parts: usize,
    pub bytes: usize,
}

impl Slow {
    /// Connects from `ns`, asks for `/slow` and waits for the greeting.
    pub fn start(ns: &str, to: SocketAddr) -> Result<Result<Slow, String>> {
        in_netns(ns, || Slow::start_here(to))
    }

    fn start_here(to: SocketAddr) -> Result<Slow, String> {
        let io = |e: std::io::Error| reason(&e);
        let started = Instant::now();
        let mut s = send_request(to, "/slow")?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 1024];
        // Until the head and the greeting line are in.
        loop {
            if let Some((code, head, body)) = split_answer(&raw) {
                if code != 200 {
                    return Err(format!("HTTP {code}"));
                }
                if body.contains(&b'\n') {
                    let backend = greeter(body).ok_or("no greeting in the answer")?;
                    let content_length = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .ok_or("no Content-Length")?;
                    let body = body.to_vec();
                    return Ok(Slow {
                        stream: s,
                        backend,
                        started,
                        content_length,
                        body,
                    });
                }
            }
            if raw.len() > MAX_HEAD {
                return Err("answer head too long".into());
            }
            let n = s.read(&mut buf).map_err(io)?;
            if n == 0 {
                return Err("closed early".into());
            }
            raw.extend_from_slice(&buf[..n]);
        }
    }

    /// Reads the rest on a thread of its own (within `limit`): the whole
    /// body, or why not.
    pub fn finish(self, limit: Duration) -> JoinHandle<Result<SlowDone, String>> {
        thread::spawn(move || {
            let Slow {
                mut stream,
                content_length,
                mut body,
                ..
            } = self;
            let deadline = Instant::now() + limit;
            let mut buf = [0u8; 1024];
            loop {
                if Instant::now() > deadline {
                    return Err(format!("not finished within {limit:?}"));
                }
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => body.extend_from_slice(&buf[..n]),
                    Err(e) => return Err(reason(&e)),
                }
            }
            let finished = Instant::now();
            if body.len() != content_length {
                return Err(format!("got {} of {content_length} bytes", body.len()));
            }
            let parts = String::from_utf8_lossy(&body)
                .lines()
                .filter(|l| l.starts_with("part "))
                .count();
            Ok(SlowDone {
                finished,
                parts,
                bytes: body.len(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\nhello from b2\n";
        let (code, head, body) = split_answer(raw).unwrap();
        assert_eq!(code, 200);
        assert!(head.contains("Content-Length"));
        assert_eq!(greeter(body).as_deref(), Some("b2"));
        assert!(split_answer(b"HTTP/1.1 200 OK\r\n").is_none());
    }

    #[test]
    fn tallies_add_up() {
        let mut t = Tally::default();
        t.record(Ok("b1".into()));
        t.record(Ok("b1".into()));
        t.record(Err("connection refused".into()));
        let names = vec!["b1".to_string(), "b2".to_string()];
        assert_eq!(t.summary(&names), "b1: 2, b2: 0 (1 failed)");
        assert_eq!(t.total(), 3);
        assert_eq!(t.failure_reasons(), "connection refused: 1");
    }
}
