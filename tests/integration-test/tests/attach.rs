//! The real attach: in network namespaces, with the balancer attached in native
//! mode to a veth, real packets sent from a client namespace arrive at a
//! backend namespace encapsulated as specified, and the decap program there
//! hands the inner packets to the stack (TCP and UDP, IPv4 and IPv6).
//!
//! ```text
//!  client ns          lb ns                          backend ns
//!  c0 ───────────── lb0 [lb_balancer, native]
//!                     lb1 ──────────────────────── b0 [lb_decap, native]
//!                                                   lo: the VIPs
//! ```
//!
//! The balancer redirects from `lb0` to `lb1` (a resolved next hop); a frame
//! redirected into a veth arrives only when the peer has a native XDP
//! program, which the decap program on `b0` is. Replies go back directly
//! (DSR): from the VIP, routed by the lb namespace's kernel to the client.
//!
//! Needs root. Run: `cargo test -p integration-test --test attach`.

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use lb::{
    balancer::{Balancer, LoadOptions},
    decap::Decap,
    model::{AttachMode, BackendSpec, EncapSources, Limits, NextHop, Proto, VipId, VipSettings},
};
use lb_common::{Counter, FlowKey, PROTO_TCP};
use lb_lab::netns::{self, in_netns, Capture, Frame, Topology};

const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
const BACKEND4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const BACKEND6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 2);
const VIP4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);
/// Outer sources: addresses no interface has, so they can only come from
/// the balancer's configuration.
const ENCAP4: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 1);
const ENCAP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, 1);
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 9053;
/// Small prime Maglev tables: writing them is quick.
const TABLE_SIZE: u32 = 251;
/// One segment whose encapsulation still fits the veths' 1500-byte MTU.
const REQUEST_LEN: usize = 1200;
const IO_TIMEOUT: Duration = Duration::from_secs(3);

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_HLEN: usize = 14;

struct Net {
    // Fields drop in declaration order: the programs detach (their links
    // close) before the topology deletes the namespaces.
    balancer: Balancer,
    decap: Decap,
    topo: Topology,
    client: String,
    lb: String,
    backend: String,
}

/// Builds the namespaces, loads and configures both programs and attaches
/// them natively. The decap program starts with no tunnel address: it passes
/// everything, so the encapsulated frames can be captured as they arrive.
fn setup() -> anyhow::Result<Net> {
    let mut topo = Topology::new()?;
    let client = topo.add_ns("cl")?;
    let lb = topo.add_ns("lb")?;
    let backend = topo.add_ns("be")?;
    topo.veth((&client, "c0"), (&lb, "lb0"))?;
    topo.veth((&lb, "lb1"), (&backend, "b0"))?;

    // The client's frames must carry finished checksums, as from a wire
    // (see `netns::set_tx_checksum`).
    netns::set_tx_checksum(&client, "c0", false)?;
    topo.add_addr(&client, "c0", "10.0.1.2/24")?;
    topo.add_addr(&client, "c0", "fd00:1::2/64")?;
    topo.add_route(&client, &["default", "via", "10.0.1.1"])?;
    topo.add_route(&client, &["default", "via", "fd00:1::1"])?;

    topo.add_addr(&lb, "lb0", "10.0.1.1/24")?;
    topo.add_addr(&lb, "lb0", "fd00:1::1/64")?;
    topo.add_addr(&lb, "lb1", "10.0.2.1/24")?;
    topo.add_addr(&lb, "lb1", "fd00:2::1/64")?;
    // The lb namespace's kernel routes the backends' replies (from the VIP,
    // which it has no route for) back to the client.
    for key in [
        "net.ipv4.ip_forward",
        "net.ipv6.conf.all.forwarding",
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.default.rp_filter",
        "net.ipv4.conf.lb0.rp_filter",
        "net.ipv4.conf.lb1.rp_filter",
    ] {
        let on = key.contains("forward");
        topo.sysctl(&lb, key, if on { "1" } else { "0" })?;
    }

    topo.add_addr(&backend, "b0", "10.0.2.2/24")?;
    topo.add_addr(&backend, "b0", "fd00:2::2/64")?;
    topo.add_addr(&backend, "lo", "10.100.0.1/32")?;
    topo.add_addr(&backend, "lo", "fd00:100::1/128")?;
    topo.add_route(&backend, &["default", "via", "10.0.2.1"])?;
    topo.add_route(&backend, &["default", "via", "fd00:2::1"])?;
    for key in [
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.default.rp_filter",
        "net.ipv4.conf.b0.rp_filter",
        "net.ipv4.conf.lo.rp_filter",
    ] {
        topo.sysctl(&backend, key, "0")?;
    }

    let mut balancer = Balancer::load(&LoadOptions {
        limits: Limits {
            max_vips: 4,
            table_pool: 4 * 2 * lb_common::MAGLEV_MAX_SIZE,
            conntrack_size: 4096,
        },
        ..Default::default()
    })?;
    balancer.set_encap_sources(&EncapSources {
        v4: Some((ENCAP4, 32)),
        v6: Some((ENCAP6, 128)),
    })?;
    let lb1 = netns::ifindex(&lb, "lb1")?;
    let next_hop = NextHop {
        ifindex: lb1,
        dst_mac: netns::mac(&backend, "b0")?,
        src_mac: netns::mac(&lb, "lb1")?,
        mtu: 0,
    };
    // The kernel resolves a devmap entry's ifindex in the namespace of the
    // thread that writes it: from anywhere else this would name another
    // device (in the root namespace, a real one).
    in_netns(&lb, || balancer.add_tx_port(lb1))??;
    let settings = VipSettings {
        table_size: TABLE_SIZE,
        ..Default::default()
    };
    for (vip, backend_addr) in vips() {
        balancer.upsert_vip(vip, settings)?;
        balancer.set_backends(
            vip,
            &[BackendSpec {
                addr: backend_addr,
                weight: 1,
                tier: 0,
            }],
        )?;
        balancer.set_next_hop(backend_addr, Some(next_hop))?;
    }

    let mut decap = Decap::load()?;

    // (a) Both programs attach in native (driver) mode, inside the namespaces.
    let mode = in_netns(&lb, || balancer.attach("lb0", AttachMode::Native))??;
    assert_eq!(mode, XdpMode::Driver, "balancer attach mode");
    let mode = in_netns(&backend, || decap.attach("b0", AttachMode::Native))??;
    assert_eq!(mode, XdpMode::Driver, "decap attach mode");
    // What the kernel says: `xdp` (native), not `xdpgeneric`.
    for (ns, ifname) in [(&lb, "lb0"), (&backend, "b0")] {
        let link = netns::ip(ns, &["-d", "link", "show", "dev", ifname])?;
        assert!(
            link.contains("prog/xdp id") && !link.contains("xdpgeneric"),
            "{ifname} has no native XDP program:\n{link}"
        );
    }

    Ok(Net {
        balancer,
        decap,
        topo,
        client,
        lb,
        backend,
    })
}

fn vips() -> [(VipId, IpAddr); 4] {
    let vip = |addr: IpAddr, port, proto| VipId { addr, port, proto };
    [
        (vip(VIP4.into(), TCP_PORT, Proto::Tcp), BACKEND4.into()),
        (vip(VIP6.into(), TCP_PORT, Proto::Tcp), BACKEND6.into()),
        (vip(VIP4.into(), UDP_PORT, Proto::Udp), BACKEND4.into()),
        (vip(VIP6.into(), UDP_PORT, Proto::Udp), BACKEND6.into()),
    ]
}

#[test]
fn balancer_attached_natively_carries_real_traffic_to_a_decapsulating_backend() {
    let started = Instant::now();
    let mut net = setup().expect("setting up the namespaces and programs");
    println!(
        "topology {} ready in {:?}",
        net.topo.prefix(),
        started.elapsed()
    );

    // (d) The frames as they reach the backend: the decap program has no
    // tunnel address yet and passes them unchanged to a packet socket.
    let capture = Capture::open(&net.backend, "b0").expect("packet socket on b0");
    let frame4 = capture_syn(&net, &capture, SocketAddr::from((VIP4, TCP_PORT)));
    check_encap_v4(&net, &frame4);
    let frame6 = capture_syn(&net, &capture, SocketAddr::from((VIP6, TCP_PORT)));
    check_encap_v6(&net, &frame6);
    drop(capture);
    let decap = net.decap.counters().unwrap();
    assert_eq!(decap.decapsulated, 0, "decap had no address yet: {decap:?}");
    assert!(
        decap.passed >= 2,
        "the tunnel frames were passed: {decap:?}"
    );
    let tunnel_frames_passed = net
        .balancer
        .counters()
        .unwrap()
        .get(Counter::ActionRedirect);

    // (b) Real connections: the decap program now owns the backend's
    // tunnel addresses, and servers on the backend listen on the VIPs.
    net.decap.add_address(BACKEND4.into()).unwrap();
    net.decap.add_address(BACKEND6.into()).unwrap();
    let vip_addrs: [IpAddr; 2] = [VIP4.into(), VIP6.into()];
    let servers: Vec<(SocketAddr, JoinHandle<Result<SocketAddr, String>>)> = vip_addrs
        .into_iter()
        .flat_map(|vip| {
            let tcp = SocketAddr::new(vip, TCP_PORT);
            let udp = SocketAddr::new(vip, UDP_PORT);
            [
                (tcp, tcp_server(&net.backend, tcp)),
                (udp, udp_server(&net.backend, udp)),
            ]
        })
        .collect();
    let client_addr = |vip: &SocketAddr| -> IpAddr {
        match vip {
            SocketAddr::V4(_) => CLIENT4.into(),
            SocketAddr::V6(_) => CLIENT6.into(),
        }
    };
    for (vip, _) in &servers {
        let reply = if vip.port() == TCP_PORT {
            tcp_exchange(&net.client, *vip)
        } else {
            udp_exchange(&net.client, *vip)
        };
        let reply = reply.unwrap_or_else(|e| panic!("{vip}: {e}\n{}", diagnostics(&net)));
        println!("{vip}: {} bytes back", reply.len());
    }
    for (vip, server) in servers {
        let peer = server
            .join()
            .expect("server thread")
            .unwrap_or_else(|e| panic!("server on {vip}: {e}"));
        // The backend saw the client's own address: the tunnel carried the
        // client's packet untouched.
        assert_eq!(peer.ip(), client_addr(&vip), "peer seen by server {vip}");
    }

    // (c) Counters prove the path.
    let c = net.balancer.counters().unwrap();
    let decap = net.decap.counters().unwrap();
    let nonzero: Vec<_> = c.global.iter().filter(|(_, v)| *v > 0).collect();
    println!("balancer counters: {nonzero:?}");
    println!("vips: {:?}", c.vips);
    println!("backends: {:?}", c.backends);
    println!("decap counters: {decap:?}");
    let redirected = c.get(Counter::ActionRedirect);
    assert!(redirected > tunnel_frames_passed, "redirects: {redirected}");
    for bad in [
        Counter::ActionDrop,
        Counter::ActionTx,
        Counter::DropRedirectFailed,
        Counter::DropNoHeadroom,
        Counter::NexthopFib,
        Counter::NexthopUnresolved,
    ] {
        assert_eq!(c.get(bad), 0, "{bad:?}");
    }
    assert!(c.get(Counter::ConnMiss) >= 6, "a new flow per exchange");
    assert!(c.get(Counter::ConnHit) > 0, "TCP segments after the SYN");
    for (vip, backend) in vips() {
        let v = c.vips[&vip];
        assert!(v.packets > 0 && v.bytes > 0, "{vip}: {v:?}");
        let b = c.backends[&(vip, backend)];
        assert_eq!(b, v, "{vip}: its one backend {backend} got all of it");
    }
    // Every packet to a VIP was redirected, and every redirected packet
    // after the capture reached the backend and was decapsulated there.
    let vip_packets: u64 = c.vips.values().map(|v| v.packets).sum();
    assert_eq!(vip_packets, redirected);
    assert_eq!(decap.malformed, 0);
    assert_eq!(
        decap.decapsulated,
        redirected - tunnel_frames_passed,
        "redirected after the capture vs decapsulated"
    );
    println!("passed in {:?}", started.elapsed());
}

/// Sends one SYN from the client to `vip` (the connect gives up at once:
/// nothing answers while the backend cannot decapsulate) and returns the
/// tunnel frame the backend receives for it.
fn capture_syn(net: &Net, capture: &Capture, vip: SocketAddr) -> Frame {
    let (ether_type, outer_proto) = match vip {
        SocketAddr::V4(_) => (ETH_P_IP, 4),
        SocketAddr::V6(_) => (ETH_P_IPV6, 41),
    };
    let attempt = in_netns(&net.client, || {
        TcpStream::connect_timeout(&vip, Duration::from_millis(100))
    })
    .unwrap();
    assert!(
        attempt.is_err(),
        "{vip} answered while the backend could not decapsulate"
    );
    let frame = capture
        .find(Duration::from_secs(2), 200, |f| {
            let d = &f.data;
            !f.outgoing()
                && d.len() > ETH_HLEN + 40
                && u16::from_be_bytes([d[12], d[13]]) == ether_type
                && match ether_type {
                    ETH_P_IP => d[ETH_HLEN + 9] == outer_proto,
                    _ => d[ETH_HLEN + 6] == outer_proto,
                }
        })
        .unwrap();
    frame.unwrap_or_else(|| {
        panic!(
            "no tunnel frame for the SYN to {vip} arrived on b0\n{}",
            diagnostics(net)
        )
    })
}

/// IPv4-in-IPv4 as specified: Ethernet from the balancer's egress to the
/// backend's MAC, a fresh outer header (TTL 64, protocol 4, the configured
/// source, the backend as destination, the inner TOS, DF and id, a valid
/// checksum) and the client's SYN to the VIP untouched behind it.
fn check_encap_v4(net: &Net, frame: &Frame) {
    let d = &frame.data;
    println!("IPv4 tunnel frame ({} bytes): {}", d.len(), hex(d));
    check_ethernet(net, d, ETH_P_IP);
    let outer = &d[ETH_HLEN..];
    assert_eq!(outer[0], 0x45, "outer version/IHL");
    assert_eq!(
        be16(outer, 2) as usize,
        outer.len(),
        "outer total length covers exactly the frame"
    );
    assert_eq!(outer[8], 64, "outer TTL");
    assert_eq!(outer[9], 4, "outer protocol IPIP");
    assert_eq!(checksum(&outer[..20]), 0, "outer header checksum");
    assert_eq!(Ipv4Addr::from(be32(outer, 12)), ENCAP4, "outer source");
    assert_eq!(
        Ipv4Addr::from(be32(outer, 16)),
        BACKEND4,
        "outer destination"
    );

    let inner = &outer[20..];
    assert_eq!(inner[0], 0x45, "inner version/IHL");
    assert_eq!(be16(inner, 2) as usize, inner.len(), "inner total length");
    assert_eq!(
        checksum(&inner[..20]),
        0,
        "inner header checksum (untouched)"
    );
    assert_eq!(inner[9], PROTO_TCP, "inner protocol");
    assert_eq!(Ipv4Addr::from(be32(inner, 12)), CLIENT4, "inner source");
    assert_eq!(Ipv4Addr::from(be32(inner, 16)), VIP4, "inner destination");
    assert_eq!(outer[1], inner[1], "TOS copied");
    assert_eq!(be16(outer, 4), be16(inner, 4), "identification copied");
    assert_eq!(outer[6] & 0x40, inner[6] & 0x40, "DF copied");
    assert_eq!(be16(outer, 6) & 0x3fff, 0, "outer not fragmented");
    let mut pseudo = inner[12..20].to_vec();
    pseudo.extend_from_slice(&[0, PROTO_TCP]);
    pseudo.extend_from_slice(&((inner.len() - 20) as u16).to_be_bytes());
    pseudo.extend_from_slice(&inner[20..]);
    assert_eq!(checksum(&pseudo), 0, "inner TCP checksum");
    let sport = check_syn(&inner[20..]);
    check_flow_state(net, CLIENT4.into(), sport, VIP4.into(), BACKEND4.into());
}

/// IPv6-in-IPv6 as specified: a fresh outer header (hop limit 64, next
/// header 41, the configured source, the backend as destination, the inner
/// traffic class, the flow hash as flow label) in front of the client's SYN.
fn check_encap_v6(net: &Net, frame: &Frame) {
    let d = &frame.data;
    println!("IPv6 tunnel frame ({} bytes): {}", d.len(), hex(d));
    check_ethernet(net, d, ETH_P_IPV6);
    let outer = &d[ETH_HLEN..];
    assert_eq!(outer[0] >> 4, 6, "outer version");
    assert_eq!(
        be16(outer, 4) as usize + 40,
        outer.len(),
        "outer payload length covers exactly the frame"
    );
    assert_eq!(outer[6], 41, "outer next header IPv6");
    assert_eq!(outer[7], 64, "outer hop limit");
    assert_eq!(ipv6_at(outer, 8), ENCAP6, "outer source");
    assert_eq!(ipv6_at(outer, 24), BACKEND6, "outer destination");

    let inner = &outer[40..];
    assert_eq!(inner[0] >> 4, 6, "inner version");
    assert_eq!(be16(inner, 4) as usize + 40, inner.len(), "inner length");
    assert_eq!(inner[6], PROTO_TCP, "inner next header");
    assert_eq!(ipv6_at(inner, 8), CLIENT6, "inner source");
    assert_eq!(ipv6_at(inner, 24), VIP6, "inner destination");
    let class = |h: &[u8]| (be32(h, 0) >> 20) as u8;
    assert_eq!(class(outer), class(inner), "traffic class copied");
    let mut pseudo = inner[8..40].to_vec();
    pseudo.extend_from_slice(&((inner.len() - 40) as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, PROTO_TCP]);
    pseudo.extend_from_slice(&inner[40..]);
    assert_eq!(checksum(&pseudo), 0, "inner TCP checksum");
    let sport = check_syn(&inner[40..]);
    let hash = check_flow_state(net, CLIENT6.into(), sport, VIP6.into(), BACKEND6.into());
    assert_eq!(
        be32(outer, 0) & 0x000f_ffff,
        hash & 0x000f_ffff,
        "outer flow label = the flow hash"
    );
}

fn check_ethernet(net: &Net, d: &[u8], ether_type: u16) {
    let b0 = netns::mac(&net.backend, "b0").unwrap();
    let lb1 = netns::mac(&net.lb, "lb1").unwrap();
    assert_eq!(d[0..6], b0, "destination MAC = the backend's");
    assert_eq!(d[6..12], lb1, "source MAC = the balancer's egress");
    assert_eq!(be16(d, 12), ether_type, "EtherType");
}

/// A client SYN to the TCP VIP port; returns the client's port.
fn check_syn(tcp: &[u8]) -> u16 {
    assert_eq!(be16(tcp, 2), TCP_PORT, "inner destination port");
    assert_eq!(tcp[13], 0x02, "inner TCP flags: a bare SYN");
    be16(tcp, 0)
}

/// The balancer recorded the flow on the backend it predicts; returns the
/// flow hash.
fn check_flow_state(net: &Net, client: IpAddr, sport: u16, vip: IpAddr, backend: IpAddr) -> u32 {
    let flow = FlowKey::new(client, sport, vip, TCP_PORT, PROTO_TCP);
    let p = net.balancer.predict(&flow).expect("flow is for a VIP");
    assert_eq!(p.backend, Some(backend));
    let entry = net
        .balancer
        .conntrack_entry(&flow)
        .expect("connection entry for the SYN");
    assert_eq!(entry.backend_id, p.backend_id, "connection entry's backend");
    p.hash
}

/// A TCP server on `addr` in `ns`: serves one connection (reads the request
/// to its end, answers with what it saw) and returns the peer's address.
fn tcp_server(ns: &str, addr: SocketAddr) -> JoinHandle<Result<SocketAddr, String>> {
    let listener = in_netns(ns, || TcpListener::bind(addr))
        .unwrap()
        .unwrap_or_else(|e| panic!("listening on {addr}: {e}"));
    thread::spawn(move || {
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + IO_TIMEOUT * 2;
        let (mut stream, peer) = loop {
            match listener.accept() {
                Ok(conn) => break conn,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(5))
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        let io = |e: std::io::Error| e.to_string();
        stream.set_nonblocking(false).map_err(io)?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        let mut request = Vec::new();
        stream.read_to_end(&mut request).map_err(io)?;
        let reply = format!(
            "{addr} saw {peer} send {} bytes, sum {}",
            request.len(),
            request.iter().map(|b| *b as u64).sum::<u64>()
        );
        stream.write_all(reply.as_bytes()).map_err(io)?;
        Ok(peer)
    })
}

/// A UDP echo on `addr` in `ns`: answers the first datagram and returns its
/// sender.
fn udp_server(ns: &str, addr: SocketAddr) -> JoinHandle<Result<SocketAddr, String>> {
    let socket = in_netns(ns, || UdpSocket::bind(addr))
        .unwrap()
        .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
    thread::spawn(move || {
        let io = |e: std::io::Error| e.to_string();
        socket.set_read_timeout(Some(IO_TIMEOUT * 2)).map_err(io)?;
        let mut buf = [0u8; 2048];
        let (n, peer) = socket.recv_from(&mut buf).map_err(io)?;
        let mut reply = b"echo:".to_vec();
        reply.extend_from_slice(&buf[..n]);
        socket.send_to(&reply, peer).map_err(io)?;
        Ok(peer)
    })
}

fn request(vip: SocketAddr) -> Vec<u8> {
    (0..REQUEST_LEN)
        .map(|i| (i as u8) ^ (vip.port() as u8))
        .collect()
}

/// Connects from `ns` to `vip`, sends a request, reads the whole answer.
fn tcp_exchange(ns: &str, vip: SocketAddr) -> Result<Vec<u8>, String> {
    in_netns(ns, || {
        let io = |e: std::io::Error| format!("{vip}: {e}");
        let mut s = TcpStream::connect_timeout(&vip, IO_TIMEOUT).map_err(io)?;
        s.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        assert_eq!(s.peer_addr().map_err(io)?, vip, "connected to the VIP");
        let req = request(vip);
        s.write_all(&req).map_err(io)?;
        s.shutdown(Shutdown::Write).map_err(io)?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).map_err(io)?;
        let me = s.local_addr().map_err(io)?;
        let expected = format!(
            "{vip} saw {me} send {} bytes, sum {}",
            req.len(),
            req.iter().map(|b| *b as u64).sum::<u64>()
        );
        assert_eq!(String::from_utf8_lossy(&reply), expected, "TCP reply");
        Ok(reply)
    })
    .map_err(|e| e.to_string())?
}

/// Sends one datagram from `ns` to `vip` and waits for its echo (a few tries:
/// UDP may lose the first datagram while neighbours resolve).
fn udp_exchange(ns: &str, vip: SocketAddr) -> Result<Vec<u8>, String> {
    in_netns(ns, || {
        let io = |e: std::io::Error| format!("{vip}: {e}");
        let any: SocketAddr = match vip {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let s = UdpSocket::bind(any).map_err(io)?;
        s.connect(vip).map_err(io)?;
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(io)?;
        let req = request(vip);
        let mut buf = [0u8; 2048];
        for _ in 0..3 {
            s.send(&req).map_err(io)?;
            match s.recv(&mut buf) {
                Ok(n) => {
                    assert_eq!(&buf[..5], b"echo:", "UDP reply");
                    assert_eq!(&buf[5..n], &req[..], "UDP echo");
                    return Ok(buf[..n].to_vec());
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(io(e)),
            }
        }
        Err(format!("{vip}: no echo"))
    })
    .map_err(|e| e.to_string())?
}

/// The helper removes its namespaces and processes when a test panics.
#[test]
fn topology_is_torn_down_when_a_test_panics() {
    let mut names = Vec::new();
    let mut pid = 0;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut topo = Topology::new().unwrap();
        let a = topo.add_ns("a").unwrap();
        let b = topo.add_ns("b").unwrap();
        topo.veth((&a, "x0"), (&b, "y0")).unwrap();
        pid = topo.spawn(&a, &["sleep", "30"]).unwrap();
        names = topo.namespaces().to_vec();
        assert!(netns::ifindex(&b, "y0").is_ok());
        assert!(topo.is_running(pid));
        panic!("deliberate panic: the topology must still be torn down");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 2);
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for n in &names {
        assert!(
            !list.lines().any(|l| l.split_whitespace().next() == Some(n)),
            "{n} left behind"
        );
    }
    // Reaped, not a zombie: the pid is gone.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

/// What the programs and interfaces counted, for failure messages.
fn diagnostics(net: &Net) -> String {
    let mut out = String::new();
    match net.balancer.counters() {
        Ok(c) => {
            let nonzero: Vec<_> = c.global.iter().filter(|(_, v)| *v > 0).collect();
            out += &format!("balancer: {nonzero:?}\nvips: {:?}\n", c.vips);
        }
        Err(e) => out += &format!("balancer counters: {e}\n"),
    }
    out += &format!("decap: {:?}\n", net.decap.counters());
    for (ns, ifname) in [
        (&net.client, "c0"),
        (&net.lb, "lb0"),
        (&net.lb, "lb1"),
        (&net.backend, "b0"),
    ] {
        match netns::ip(ns, &["-s", "link", "show", "dev", ifname]) {
            Ok(s) => out += &s,
            Err(e) => out += &format!("{ifname}: {e}\n"),
        }
    }
    out
}

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn ipv6_at(b: &[u8], off: usize) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[off..off + 16]);
    a.into()
}

/// The Internet checksum of `b`: 0 over a header with a valid checksum.
fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .take(ETH_HLEN + 40 + 40)
        .map(|x| format!("{x:02x}"))
        .collect()
}
