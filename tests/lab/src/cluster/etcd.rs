//! The store beside the cluster: a three-member etcd cluster (Debian's
//! `etcd-server`) on a management network of its own, so a node's link to
//! the store can go down while its link to the fabric (its traffic, its BGP
//! session) stays up.
//!
//! ```text
//!   switch ns: bridge br1 (management)
//!   ┌──────┬──────┬──────┬──────┬──────┐
//!   m-e1   m-e2   m-e3   m-n1   m-n2 ...
//!   e1 ns  e2 ns  e3 ns  n1 ns (mgmt0 10.30.0.21), ...
//!   10.30.0.31 .32 .33: etcd (client :2379, peer :2380)
//! ```

use std::{
    fs,
    net::Ipv4Addr,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::Cluster;
use crate::{
    netns,
    process::{die_with_parent, nsenter, run_bounded},
};

const MGMT_BRIDGE: &str = "br1";
/// A node's interface on the management network.
pub const MGMT_IF: &str = "mgmt0";

fn mgmt(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 30, 0, n)
}

/// etcd's TLS: the CA both sides trust, the members' certificate (its
/// SANs: every member's address) and a client certificate for etcdctl.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca: std::path::PathBuf,
    pub server: crate::certs::Pair,
    pub client: crate::certs::Pair,
}

/// The members' addresses, for a server certificate's SANs.
pub fn member_sans(members: usize) -> Vec<String> {
    (0..members)
        .map(|i| format!("IP:{}", mgmt(31 + i as u8)))
        .collect()
}

/// One etcd member: its namespace and process.
pub struct Member {
    pub name: String,
    pub ns: String,
    pub addr: Ipv4Addr,
    child: Option<Child>,
}

impl Cluster {
    /// Builds the management network, plugs every node into it and starts
    /// an etcd cluster of `members`; returns once it answers.
    pub fn start_etcd(&mut self, members: usize) -> Result<()> {
        self.start_etcd_with(members, None)
    }

    /// [`Cluster::start_etcd`], its clients on TLS with client
    /// certificates required when `tls` is given (peers stay plain).
    pub fn start_etcd_with(&mut self, members: usize, tls: Option<EtcdTls>) -> Result<()> {
        self.topo.add_bridge(&self.switch_ns, MGMT_BRIDGE)?;
        let nodes: Vec<(String, String)> = self
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.ns.clone()))
            .collect();
        for (i, (name, ns)) in nodes.iter().enumerate() {
            self.plug_mgmt(ns, MGMT_IF, name, mgmt(21 + i as u8))?;
        }
        let mut list = Vec::new();
        for i in 0..members {
            let name = format!("e{}", i + 1);
            let ns = self.topo.add_ns(&name)?;
            let addr = mgmt(31 + i as u8);
            self.plug_mgmt(&ns, "eth0", &name, addr)?;
            list.push(Member {
                name,
                ns,
                addr,
                child: None,
            });
        }
        let initial: Vec<String> = list
            .iter()
            .map(|m| format!("{}=http://{}:2380", m.name, m.addr))
            .collect();
        let token = self.topo.prefix().trim_end_matches('-').to_string();
        for m in &mut list {
            let dir = self.dir.join(&m.name);
            fs::create_dir_all(&dir)?;
            let log = fs::File::create(dir.join("etcd.log"))?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            let client = format!("{scheme}://{}:2379", m.addr);
            let peer = format!("http://{}:2380", m.addr);
            let mut cmd = nsenter(&m.ns, Path::new("etcd"));
            cmd.args(["--name", &m.name])
                .arg("--data-dir")
                .arg(dir.join("data"))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-token", &token])
                .args(["--initial-cluster-state", "new"]);
            if let Some(t) = &tls {
                cmd.arg("--cert-file")
                    .arg(&t.server.cert)
                    .arg("--key-file")
                    .arg(&t.server.key)
                    .arg("--trusted-ca-file")
                    .arg(&t.ca)
                    .arg("--client-cert-auth");
            }
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            die_with_parent(&mut cmd);
            m.child = Some(
                cmd.spawn()
                    .context("spawning etcd (is etcd-server installed? `cargo xtask setup`)")?,
            );
        }
        self.etcd = list;
        self.etcd_tls = tls;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.etcdctl(&["endpoint", "health", "--cluster"]);
            if out
                .as_ref()
                .is_ok_and(|o| o.matches("is healthy").count() == members)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd did not become healthy: {out:?}\n{}",
                    self.etcd_logs(20)
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Plugs `ifname` of `ns` into the management bridge (port `m-NAME`)
    /// with `addr`.
    fn plug_mgmt(&mut self, ns: &str, ifname: &str, name: &str, addr: Ipv4Addr) -> Result<()> {
        let port = format!("m-{name}");
        self.topo.plug(
            (ns, ifname),
            &self.switch_ns,
            &port,
            MGMT_BRIDGE,
            "1500",
            false,
        )?;
        self.topo.add_addr(ns, ifname, &format!("{addr}/24"))?;
        Ok(())
    }

    /// The client URLs of every member.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        let scheme = if self.etcd_tls.is_some() {
            "https"
        } else {
            "http"
        };
        self.etcd
            .iter()
            .map(|m| format!("{scheme}://{}:2379", m.addr))
            .collect()
    }

    /// The `[store]` table of a node's config.
    pub fn store_toml(&self, node: &str) -> String {
        let eps: Vec<String> = self
            .etcd_endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        format!(
            "\n[store]\nkind = \"etcd\"\nendpoints = [{}]\nnode_name = \"{node}\"\n",
            eps.join(", ")
        )
    }

    /// `etcdctl` (API v3) from the first member's namespace: what it wrote
    /// (some answers, such as `endpoint health`, go to stderr).
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let m = self.etcd.first().context("no etcd member")?;
        let mut cmd = nsenter(&m.ns, Path::new("etcdctl"));
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.etcd_endpoints().join(",")));
        if let Some(t) = &self.etcd_tls {
            cmd.arg("--cacert")
                .arg(&t.ca)
                .arg("--cert")
                .arg(&t.client.cert)
                .arg("--key")
                .arg(&t.client.key);
        }
        cmd.args(args);
        let out = run_bounded(&mut cmd, Duration::from_secs(10))?;
        anyhow::ensure!(out.ok(), "etcdctl {args:?}: {out}");
        Ok(out.stdout + &out.stderr)
    }

    /// Takes the node's management link down (on its side): the store is
    /// gone for it; its fabric link, traffic and BGP session stay.
    pub fn cut_store(&self, node: &str) -> Result<()> {
        netns::ip(&self.node(node).ns, &["link", "set", MGMT_IF, "down"])?;
        Ok(())
    }

    pub fn restore_store(&self, node: &str) -> Result<()> {
        netns::ip(&self.node(node).ns, &["link", "set", MGMT_IF, "up"])?;
        Ok(())
    }

    /// The last `n` lines of every member's log.
    pub fn etcd_logs(&self, n: usize) -> String {
        let mut out = String::new();
        for m in &self.etcd {
            let t = fs::read_to_string(self.dir.join(&m.name).join("etcd.log")).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            out += &format!(
                "--- etcd {}\n{}\n",
                m.name,
                lines[lines.len().saturating_sub(n)..].join("\n")
            );
        }
        out
    }

    pub(super) fn stop_etcd(&mut self) {
        for m in &mut self.etcd {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Whether `etcdctl` and `etcd` are installed (for a clear message).
pub fn installed() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
