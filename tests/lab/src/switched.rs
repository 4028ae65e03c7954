//! The switched lab the tests, the demo and the bench all run in: a client,
//! a one-armed balancer host and N backends, each in a network namespace of
//! its own, plugged into one bridge in a switch namespace.
//!
//! ```text
//!                          switch ns: bridge <bridge> (MTU <mtu>)
//!      ┌──────────────────┬──────────────────┬─────────────────┬──────── ...
//!  <port>client        <port>lb           <port>b1          <port>b2     (bridge ports)
//!      │                  │                  │                 │
//!   client ns           lb ns              b1 ns             b2 ns
//!   <client_if> .2      <lb_if> .1         <b1 if> .11       <b2 if> .12
//!   (MTU 1500)          (MTU <mtu>)        VIPs on lo, rp_filter off
//! ```
//!
//! Host numbers are the same in every lab (balancer .1, client .2, backend
//! `bN` .(10+N), in the segment's /24 and, when it has one, its /64); what
//! differs between callers is in [`SwitchedSpec`]: names, the segment, the
//! MTU, the addresses the backends hold on `lo`, what the client routes via
//! the balancer. What runs on the hosts (lbd, servers, other balancers) is
//! the caller's.
//!
//! Everything is torn down when the [`SwitchedLab`] is dropped (its
//! [`Topology`] deletes the namespaces, and with them every veth).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{ensure, Context, Result};
use lb::{decap::Decap, model::AttachMode};

use crate::netns::{self, in_netns, Topology};

/// What differs between the labs built on [`SwitchedLab`].
#[derive(Clone, Debug)]
pub struct SwitchedSpec {
    /// Put in front of each namespace's role (`switch`, `client`, `lb`,
    /// `b1`, ...), after the [`Topology`]'s own prefix.
    pub ns_prefix: String,
    pub bridge: String,
    /// A host's bridge port is this followed by its role.
    pub port_prefix: String,
    pub client_if: String,
    pub lb_if: String,
    /// One interface name per backend, `b1` first: their number is the
    /// number of backends.
    pub backend_ifs: Vec<String>,
    /// The segment's /24 (its host part is ignored).
    pub v4: Ipv4Addr,
    /// The segment's /64, if the lab has IPv6.
    pub v6: Option<Ipv6Addr>,
    /// MTU of the balancer's and the backends' links and of the bridge and
    /// its ports; the client's own interface stays at 1500, as a client's
    /// would.
    pub mtu: u32,
    /// Addresses every backend has on `lo`: the VIPs, for direct server
    /// return.
    pub backend_lo: Vec<IpAddr>,
    /// Prefixes the client routes via the balancer's address of their
    /// family.
    pub client_routes: Vec<String>,
    /// `arp_ignore = 1`, `arp_announce = 2` on the backends: the VIPs on
    /// their `lo` are never announced, as on real direct-server-return
    /// backends.
    pub quiet_arp: bool,
}

/// A host of the lab.
#[derive(Clone, Debug)]
pub struct Host {
    /// `client`, `lb`, `b1`, ...
    pub role: String,
    pub ns: String,
    pub ifname: String,
    pub v4: Ipv4Addr,
    pub v6: Option<Ipv6Addr>,
}

pub struct SwitchedLab {
    pub topo: Topology,
    pub switch_ns: String,
    pub bridge: String,
    port_prefix: String,
    pub client: Host,
    pub lb: Host,
    pub backends: Vec<Host>,
}

/// Host `n` of the segment `base` (a /24 or a /64).
fn host_v4(base: Ipv4Addr, n: u8) -> Ipv4Addr {
    let [a, b, c, _] = base.octets();
    Ipv4Addr::new(a, b, c, n)
}

fn host_v6(base: Ipv6Addr, n: u8) -> Ipv6Addr {
    let mut s = base.segments();
    s[4..].fill(0);
    // fd10::11, not fd10::b: the same digits as the IPv4 host number.
    s[7] = u16::from_str_radix(&n.to_string(), 16).expect("a decimal is hex digits");
    Ipv6Addr::from(s)
}

impl SwitchedLab {
    /// The namespaces, the bridge, a veth from each host to a bridge port,
    /// addresses, the client's routes and the backends' `lo` addresses and
    /// sysctls. Nothing runs on the hosts yet.
    pub fn build(spec: &SwitchedSpec) -> Result<SwitchedLab> {
        let mut topo = Topology::new()?;
        let p = &spec.ns_prefix;
        let switch_ns = topo.add_ns(&format!("{p}switch"))?;
        let host = |topo: &mut Topology, role: &str, ifname: &str, n: u8| -> Result<Host> {
            Ok(Host {
                role: role.to_string(),
                ns: topo.add_ns(&format!("{p}{role}"))?,
                ifname: ifname.to_string(),
                v4: host_v4(spec.v4, n),
                v6: spec.v6.map(|b| host_v6(b, n)),
            })
        };
        let client = host(&mut topo, "client", &spec.client_if, 2)?;
        let lb = host(&mut topo, "lb", &spec.lb_if, 1)?;
        let mut backends = Vec::new();
        for (i, ifname) in spec.backend_ifs.iter().enumerate() {
            let n = 11 + u8::try_from(i).context("at most 200 backends")?;
            backends.push(host(&mut topo, &format!("b{}", i + 1), ifname, n)?);
        }
        let mut lab = SwitchedLab {
            topo,
            switch_ns,
            bridge: spec.bridge.clone(),
            port_prefix: spec.port_prefix.clone(),
            client,
            lb,
            backends,
        };
        let sw = lab.switch_ns.clone();
        lab.topo.add_bridge(&sw, &spec.bridge)?;
        // Multicast is flooded: IPv6 neighbour discovery needs no querier.
        netns::ip(
            &sw,
            &[
                "link",
                "set",
                &spec.bridge,
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        )?;

        // The client: checksums finished in software, as from a wire (see
        // `netns::set_tx_checksum`): frames the balancer forwards in XDP
        // would otherwise leave with them unfinished.
        let client = lab.client.clone();
        lab.plug(&client, spec.mtu, false)?;
        netns::set_tx_checksum(&client.ns, &client.ifname, false)?;
        for prefix in &spec.client_routes {
            let via = if prefix.contains(':') {
                lab.lb
                    .v6
                    .context("an IPv6 route in a lab without IPv6")?
                    .to_string()
            } else {
                lab.lb.v4.to_string()
            };
            lab.topo.add_route(&client.ns, &[prefix, "via", &via])?;
        }

        let lb = lab.lb.clone();
        lab.plug(&lb, spec.mtu, true)?;

        for b in lab.backends.clone() {
            lab.plug(&b, spec.mtu, true)?;
            for addr in &spec.backend_lo {
                let len = if addr.is_ipv4() { 32 } else { 128 };
                lab.topo.add_addr(&b.ns, "lo", &format!("{addr}/{len}"))?;
            }
            // Decapsulated packets arrive with the client's source on the
            // backend's interface, which has no route back to it there.
            let mut sysctls = vec![
                ("net.ipv4.conf.all.rp_filter".to_string(), "0"),
                ("net.ipv4.conf.default.rp_filter".to_string(), "0"),
                ("net.ipv4.conf.lo.rp_filter".to_string(), "0"),
                (format!("net.ipv4.conf.{}.rp_filter", b.ifname), "0"),
            ];
            if spec.quiet_arp {
                sysctls.push(("net.ipv4.conf.all.arp_ignore".to_string(), "1"));
                sysctls.push(("net.ipv4.conf.all.arp_announce".to_string(), "2"));
            }
            for (key, value) in sysctls {
                lab.topo.sysctl(&b.ns, &key, value)?;
            }
        }
        // Last: ports added after it would otherwise lower it again.
        netns::ip(
            &sw,
            &[
                "link",
                "set",
                "dev",
                &spec.bridge,
                "mtu",
                &spec.mtu.to_string(),
            ],
        )?;
        Ok(lab)
    }

    /// A veth from `host` to a new port of the bridge, with the host's
    /// addresses; the host's end at `mtu` too if `host_mtu`.
    fn plug(&mut self, host: &Host, mtu: u32, host_mtu: bool) -> Result<()> {
        let port = self.port_of(&host.role);
        let sw = self.switch_ns.clone();
        let mtu = mtu.to_string();
        self.topo.plug(
            (&host.ns, &host.ifname),
            &sw,
            &port,
            &self.bridge,
            &mtu,
            host_mtu,
        )?;
        self.topo
            .add_addr(&host.ns, &host.ifname, &format!("{}/24", host.v4))?;
        if let Some(v6) = host.v6 {
            self.topo
                .add_addr(&host.ns, &host.ifname, &format!("{v6}/64"))?;
        }
        Ok(())
    }

    /// The bridge port (in the switch namespace) of the host with `role`.
    pub fn port_of(&self, role: &str) -> String {
        format!("{}{role}", self.port_prefix)
    }

    /// A pass-through program (the decap program for no address: it passes
    /// everything) attached natively to the balancer's bridge port: a frame
    /// the balancer sends with `XDP_TX` out of a veth reaches the peer only
    /// when the peer runs a native XDP program. Detached when dropped.
    pub fn passthrough(&self) -> Result<Decap> {
        passthrough_on(&self.switch_ns, &self.port_of("lb"))
    }

    /// Plugs (`true`) or pulls the cable of the host with `role`: its bridge
    /// port goes up or down, its own interface and addresses stay.
    pub fn set_cable(&self, role: &str, plugged: bool) -> Result<()> {
        let port = self.port_of(role);
        let state = if plugged { "up" } else { "down" };
        netns::ip(&self.switch_ns, &["link", "set", "dev", &port, state])?;
        Ok(())
    }
}

/// The pass-through program attached natively to bridge port `port` of
/// `switch_ns` (see [`SwitchedLab::passthrough`]); detached when dropped.
pub fn passthrough_on(switch_ns: &str, port: &str) -> Result<Decap> {
    let mut pass = Decap::load().context("loading the pass-through program")?;
    let mode = in_netns(switch_ns, || pass.attach(port, AttachMode::Native))?
        .with_context(|| format!("attaching the pass-through program to {port}"))?;
    ensure!(
        mode == aya::programs::XdpMode::Driver,
        "pass-through on {port} not native ({mode:?})"
    );
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_numbers_read_the_same_in_both_families() {
        let v6: Ipv6Addr = "fd10::".parse().unwrap();
        assert_eq!(host_v6(v6, 11), "fd10::11".parse::<Ipv6Addr>().unwrap());
        assert_eq!(host_v6(v6, 1), "fd10::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            host_v4(Ipv4Addr::new(198, 18, 0, 0), 12),
            Ipv4Addr::new(198, 18, 0, 12)
        );
    }
}
