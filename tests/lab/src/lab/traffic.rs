//! What a test does with a running lab: traffic from the client, the
//! backends' services, waits on `lbctl --json status`, metrics, flows and
//! the pinned maps.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::atomic::Ordering,
    thread::{self},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use lb_common::{ConnEntry, FlowKey};

use super::*;
use crate::{
    clients::*,
    netns::{self, in_netns},
    servers::*,
    status::*,
};

impl Lab {
    // ------------------------------------------------------------ traffic

    /// Runs `f` in the client namespace.
    pub fn in_client<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> T {
        in_netns(&self.client_ns, f).expect("entering the client namespace")
    }

    /// One connection from the client: the greeting's backend name.
    pub fn greet(&self, to: SocketAddr) -> Result<String, String> {
        self.in_client(|| greet(to).map(|(name, _)| name))
    }

    /// `n` connections from the client to `to`: how many reached each
    /// backend; the first failure ends it.
    pub fn spread(&self, to: SocketAddr, n: usize) -> Result<BTreeMap<String, usize>, String> {
        self.in_client(|| {
            let mut by = BTreeMap::new();
            for i in 0..n {
                let (name, _) =
                    greet(to).map_err(|e| format!("connection {i} of {n} to {to}: {e}"))?;
                *by.entry(name).or_insert(0) += 1;
            }
            Ok(by)
        })
    }

    /// A connection from the client that exchanges a line every `every`
    /// until stopped.
    pub fn long_lived(&self, to: SocketAddr, every: Duration) -> Result<LongLived> {
        LongLived::start(&self.client_ns, to, every)
    }

    /// Connections from the client, one after another, round robin over
    /// `targets`, until stopped.
    pub fn stream(&self, targets: &[SocketAddr]) -> ConnStream {
        ConnStream::start(&self.client_ns, targets.to_vec())
    }

    /// Server-side counts of connections accepted by the greeters, by
    /// backend (every backend is listed).
    pub fn accepted(&self) -> BTreeMap<String, u64> {
        let mut by: BTreeMap<String, u64> =
            self.backends.iter().map(|b| (b.name.clone(), 0)).collect();
        let running = self.servers.lock().expect("not poisoned");
        let stopped = self.stopped.lock().expect("not poisoned");
        for s in running.iter().chain(stopped.iter()) {
            if matches!(s.service, Service::Greeter(_)) {
                *by.entry(s.backend.clone()).or_insert(0) += s.served();
            }
        }
        by
    }

    // ------------------------------------------------------------ services

    /// Starts `service` on backend `backend` (it must not be running);
    /// returns the moment it began to accept.
    pub fn start_service(&self, backend: &str, service: Service) -> Result<Instant> {
        let host = self.backend(backend).clone();
        let mut servers = self.servers.lock().expect("not poisoned");
        anyhow::ensure!(
            !servers
                .iter()
                .any(|s| s.backend == backend && s.service == service),
            "{backend} {service:?} is already running"
        );
        servers.push(Server::start(&host, service)?);
        Ok(Instant::now())
    }

    /// Stops `service` on backend `backend` (it must be running); returns
    /// once its socket is closed, with the moment it was.
    pub fn stop_service(&self, backend: &str, service: Service) -> Instant {
        let server = {
            let mut servers = self.servers.lock().expect("not poisoned");
            let i = servers
                .iter()
                .position(|s| s.backend == backend && s.service == service)
                .unwrap_or_else(|| panic!("{backend} {service:?} is not running"));
            servers.remove(i)
        };
        let at = server.stop();
        self.stopped.lock().expect("not poisoned").push(server);
        at
    }

    /// Whether `service` runs on backend `backend`.
    pub fn service_running(&self, backend: &str, service: Service) -> bool {
        self.servers
            .lock()
            .expect("not poisoned")
            .iter()
            .any(|s| s.backend == backend && s.service == service)
    }

    /// Makes backend `backend`'s running HTTP service on `port` answer
    /// `/healthz` with 200 (`true`) or 503.
    pub fn set_http_healthy(&self, backend: &str, port: u16, healthy: bool) {
        let servers = self.servers.lock().expect("not poisoned");
        let s = servers
            .iter()
            .find(|s| s.backend == backend && s.service == Service::Http(port))
            .unwrap_or_else(|| panic!("{backend} serves no HTTP on {port}"));
        s.ctl.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Connections (TCP) or datagrams (UDP) served by `service` of
    /// `backend`, over all its starts.
    pub fn served(&self, backend: &str, service: Service) -> u64 {
        let running = self.servers.lock().expect("not poisoned");
        let stopped = self.stopped.lock().expect("not poisoned");
        running
            .iter()
            .chain(stopped.iter())
            .filter(|s| s.backend == backend && s.service == service)
            .map(|s| s.served())
            .sum()
    }

    /// Sets sysctl `key` to `value` in every backend's namespace.
    pub fn backend_sysctl(&self, key: &str, value: &str) -> Result<()> {
        for b in &self.backends {
            netns::sysctl(&b.ns, key, value)?;
        }
        Ok(())
    }

    /// Plugs (`true`) or pulls the cable of backend `backend`: its bridge
    /// port goes up or down, so it neither receives nor answers anything,
    /// while its own interface and addresses stay as they are.
    pub fn set_backend_cable(&self, backend: &str, plugged: bool) -> Result<()> {
        self.net().set_cable(backend, plugged)
    }

    // ------------------------------------------------------------ health

    /// Polls `lbctl --json status` (one poll every [`STATUS_POLL`]) until
    /// `cond` holds, at most `timeout`; the moment the answer that
    /// satisfied it arrived, and that answer.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Json) -> bool,
    ) -> Result<(Instant, Json)> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut polls = 0u32;
        loop {
            let asked = Instant::now();
            let s = self.status();
            let now = Instant::now();
            polls += 1;
            if cond(&s) {
                return Ok((now, s));
            }
            if now > deadline {
                bail!(
                    "{what}: not within {timeout:?} ({polls} polls); last status:\n{}\n{}",
                    health_view(&s),
                    self.log_tail(30)
                );
            }
            thread::sleep(STATUS_POLL.saturating_sub(asked.elapsed()));
        }
    }

    /// Waits until backend `addr` of `vip` reports health `want`; the moment
    /// `lbctl` said so.
    pub fn wait_health(
        &self,
        vip: &str,
        addr: &str,
        want: &str,
        timeout: Duration,
    ) -> Result<Instant> {
        let (at, _) = self.wait_status(&format!("{vip} {addr} {want}"), timeout, |s| {
            health_of(s, vip).get(addr).map(String::as_str) == Some(want)
        })?;
        Ok(at)
    }

    /// Waits until every backend of `vip` is "up".
    pub fn wait_all_up(&self, vip: &str, timeout: Duration) -> Result<Instant> {
        let (at, _) = self.wait_status(&format!("{vip}: all backends up"), timeout, |s| {
            let h = health_of(s, vip);
            !h.is_empty() && h.values().all(|v| v == "up")
        })?;
        Ok(at)
    }

    /// `lbctl --json explain SRC VIP`: the backend address it names (None
    /// when it names none) and its source ("connection table" or "maglev
    /// table").
    pub fn explain(&self, src: SocketAddr, vip: &str) -> (Option<String>, String) {
        let text = self.lbctl_ok(&["--json", "explain", &src.to_string(), vip]);
        let j = Json::parse(&text).unwrap_or_else(|e| panic!("lbctl explain: {e}:\n{text}"));
        let backend = match j.get("backend") {
            Json::Str(s) => Some(s.clone()),
            _ => None,
        };
        (backend, j.get("source").str().to_string())
    }

    // ------------------------------------------------------------ metrics

    /// `GET path` (HTTP/1.0) from lbd's metrics listener, from inside the
    /// lb namespace.
    pub fn metrics_get(&self, path: &str) -> Result<HttpReply> {
        let path = path.to_string();
        in_netns(&self.lb_ns, move || http10_get(METRICS_ADDR, &path))?
    }

    /// The text of `GET /metrics`, which must answer 200.
    pub fn scrape(&self) -> String {
        let r = self
            .metrics_get("/metrics")
            .unwrap_or_else(|e| panic!("scraping {METRICS_ADDR}/metrics: {e:#}"));
        assert_eq!(r.status, 200, "GET /metrics: {r:?}");
        r.body
    }

    // ------------------------------------------------------------ flows

    /// New flows from the client, one after another (a few ms apart),
    /// round robin over `targets`, until stopped: TCP connections that
    /// read the greeting, or UDP sockets that send one datagram and read
    /// the answer. Each flow's local port is known, also when it fails.
    pub fn flows(&self, proto: FlowProto, targets: &[SocketAddr]) -> FlowStream {
        FlowStream::start(&self.client_ns, proto, targets.to_vec())
    }

    // ------------------------------------------------------------ maps

    /// The balancer's connection table, read from its pinned map.
    pub fn conntrack(&self) -> Result<HashMap<FlowKey, ConnEntry>> {
        read_conntrack(&self.pin_dir().join("maps").join("CONNTRACK"))
    }

    /// Interface counters of every lab interface, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        let mut links = vec![
            (self.client_ns.clone(), self.client_if.clone()),
            (self.lb_ns.clone(), self.lb_if.clone()),
            (self.switch_ns.clone(), self.net().port_of("lb")),
        ];
        for b in &self.backends {
            links.push((b.ns.clone(), b.ifname.clone()));
        }
        for (ns, ifname) in links {
            match netns::ip(&ns, &["-s", "-d", "link", "show", "dev", &ifname]) {
                Ok(s) => out += &s,
                Err(e) => out += &format!("{ifname}: {e}\n"),
            }
        }
        if let Ok(n) = netns::ip(&self.lb_ns, &["neigh", "show"]) {
            out += &format!("lb neighbours:\n{n}");
        }
        out += &format!("accepted: {:?}\n", self.accepted());
        out
    }
}
