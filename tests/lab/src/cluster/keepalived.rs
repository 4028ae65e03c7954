//! keepalived (VRRPv3) on a pair of nodes, moving [`VIP_VRRP`] between
//! them: the active/standby recipe of the README. Each instance has pid
//! files of its own (two run on one host), stays in the foreground, and
//! uses the interface's own MAC (no `use_vmac`: lbd forwards only frames
//! to its interface's MAC).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{Cluster, VIP_VRRP};
use crate::process::{die_with_parent, nsenter};

pub(super) struct Keepalived {
    child: Child,
    vrrp_pid: PathBuf,
}

impl Keepalived {
    /// A crash: the VRRP process first (else the parent tells it to leave
    /// gracefully, sending priority 0), then the parent.
    pub(super) fn kill(mut self) {
        if let Some(pid) = fs::read_to_string(&self.vrrp_pid)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            // SAFETY: a signal to a process of ours, named by its pid file.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One node's config: VRRPv3 every 200 ms, so the backup takes over about
/// 700 ms after the master falls silent (100 ms works too, but a stall of
/// the shared test machine could then make both nodes master).
pub fn config(router_id: &str, priority: u8) -> String {
    format!(
        r#"global_defs {{
    router_id {router_id}
    vrrp_version 3
    vrrp_garp_master_delay 1
    vrrp_garp_master_repeat 3
    vrrp_garp_master_refresh 10
}}

vrrp_instance lb {{
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority {priority}
    advert_int 0.2
    virtual_ipaddress {{
        {VIP_VRRP}/32 dev eth0
    }}
}}
"#
    )
}

fn spawn(ns: &str, dir: &Path, conf: &Path, log: &Path) -> Result<Child> {
    let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut cmd = nsenter(ns, Path::new("keepalived"));
    cmd.args([
        "--vrrp",
        "--dont-fork",
        "--log-console",
        "--no-syslog",
        "-f",
    ])
    .arg(conf)
    .arg("-p")
    .arg(dir.join("keepalived.pid"))
    .arg("-r")
    .arg(dir.join("vrrp.pid"))
    .arg("-c")
    .arg(dir.join("checkers.pid"))
    .arg("-b")
    .arg(dir.join("bfd.pid"))
    .stdin(Stdio::null())
    .stdout(out.try_clone()?)
    .stderr(out);
    die_with_parent(&mut cmd);
    cmd.spawn()
        .context("spawning keepalived (is it installed? `cargo xtask setup`)")
}

impl Cluster {
    /// Starts keepalived on a node with `priority` (the higher one is the
    /// master); waits until its VRRP process runs.
    pub fn start_keepalived(&mut self, node: &str, priority: u8) -> Result<()> {
        let n = self.node_mut(node);
        let conf = n.dir.join("keepalived.conf");
        fs::write(&conf, config(&n.name, priority))?;
        let vrrp_pid = n.dir.join("vrrp.pid");
        let _ = fs::remove_file(&vrrp_pid);
        let child = spawn(&n.ns, &n.dir, &conf, &n.log("keepalived"))?;
        let ns = n.ns.clone();
        n.keepalived = Some(Keepalived {
            child,
            vrrp_pid: vrrp_pid.clone(),
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !vrrp_pid.exists() {
            if Instant::now() > deadline {
                bail!(
                    "keepalived in {ns}: no VRRP process\n{}",
                    self.logs(node, 20)
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    pub fn kill_keepalived(&mut self, node: &str) {
        if let Some(k) = self.node_mut(node).keepalived.take() {
            k.kill();
        }
    }

    /// Whether the node holds the VRRP address now.
    pub fn holds_vip(&self, node: &str) -> bool {
        crate::netns::ip(&self.node(node).ns, &["-4", "addr", "show", "dev", "eth0"])
            .is_ok_and(|out| out.contains(&format!("{VIP_VRRP}/32")))
    }

    /// The MAC the router would send [`VIP_VRRP`]'s frames to now.
    pub fn router_mac_for_vip(&self) -> Option<String> {
        let out =
            crate::netns::ip(&self.router_ns, &["neigh", "show", &VIP_VRRP.to_string()]).ok()?;
        let words: Vec<&str> = out.split_whitespace().collect();
        words
            .windows(2)
            .find(|w| w[0] == "lladdr")
            .map(|w| w[1].to_string())
    }

    /// The node's interface MAC, as `ip` prints it.
    pub fn node_mac(&self, node: &str) -> String {
        lb::model::mac_text(crate::netns::mac(&self.node(node).ns, "eth0").expect("node MAC"))
    }
}
