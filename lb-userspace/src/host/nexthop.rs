//! Next-hop resolution for backends: where the balancer's frames to a
//! backend leave ([`NextHop`]: egress interface, destination and source MAC),
//! as the kernel would send them, so the data path needs no `bpf_fib_lookup`.
//!
//! For an address, [`resolve`] asks the kernel over rtnetlink
//!
//! 1. for the route to it (`RTM_GETROUTE` for that destination, as
//!    `ip route get` does): the output interface and the gateway, if any;
//! 2. for the neighbour entry of the gateway, or of the address itself when
//!    it is directly connected, on that interface (`RTM_GETNEIGH`): its
//!    link-layer address when the entry is usable (`REACHABLE`, `STALE`,
//!    `DELAY`, `PROBE`, `PERMANENT`, `NOARP`);
//! 3. for the interface (`RTM_GETLINK`): its own MAC, the source MAC.
//!
//! A missing, `INCOMPLETE` or `FAILED` neighbour gives
//! [`Resolution::Incomplete`]; [`trigger`] then makes the kernel solicit it
//! (ARP request, IPv6 neighbour solicitation) the netlink way: an
//! `RTM_NEWNEIGH` with `NTF_USE`, which creates the entry if needed and runs
//! the kernel's own resolution on it, as if a packet were waiting for it
//! (what Cilium does). No traffic is made by hand. The XDP program never
//! passes through the neighbour subsystem, so entries it relies on would go
//! `STALE` and never be confirmed; [`Resolver::refresh`] therefore also
//! "uses" `STALE` entries it relies on, which makes the kernel re-confirm
//! them (`DELAY`, then a unicast probe).
//!
//! [`watch`] subscribes to the link, neighbour and IPv4/IPv6 route multicast
//! groups and yields a coarse [`Event`] for each change, so the daemon can
//! re-resolve at once; it should also refresh periodically (every ten
//! seconds, say) as a safety net. A backend without a usable next hop is
//! left to the data path's FIB lookup (`Balancer::set_next_hop(addr, None)`),
//! which is always correct, only slower.
//!
//! Everything happens in the network namespace of the thread that opens the
//! sockets ([`connect`], [`watch`]): a socket stays in the namespace it was
//! created in, whichever thread later drives it. Both functions must be
//! called inside a Tokio runtime (they spawn the socket's connection task).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    pin::Pin,
    time::{Duration, Instant},
};

use futures::{future, Stream, StreamExt};
use netlink_packet_route::{
    link::{LinkAttribute, LinkLayerType},
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType, RouteVia},
    AddressFamily, RouteNetlinkMessage,
};
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST},
    sys::AsyncSocket,
    MulticastGroup,
};

pub use crate::model::NextHop;
pub use rtnetlink::Handle;

/// Receive buffer of the watch socket: room for bursts of notifications
/// (the kernel caps it at `net.core.rmem_max`). An overflow is reported as
/// [`Event::Lost`].
const WATCH_RCVBUF: i32 = 4 << 20;

/// [`Resolver::refresh`] asks the kernel to (re)solicit one neighbour at
/// most this often.
pub const RETRIGGER_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Unexpected(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What [`resolve`] found for an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Frames leave through `ifindex` to a known link-layer address.
    Resolved(NextHop),
    /// There is a route, through `ifindex`, but the neighbour `via` (the
    /// gateway, or the address itself) is missing or not yet reachable:
    /// [`trigger`] makes the kernel solicit it.
    Incomplete { ifindex: u32, via: IpAddr },
    /// No unicast route leaves through an interface (no route, unreachable,
    /// prohibit, blackhole, or a local, broadcast or multicast address).
    NoRoute,
    /// The route leaves through `ifindex`, which is not an Ethernet
    /// interface (a tunnel, loopback, an L3 device): nothing to put in a
    /// frame header.
    NotEthernet { ifindex: u32 },
}

impl Resolution {
    /// The next hop, when resolved.
    pub fn next_hop(&self) -> Option<NextHop> {
        match self {
            Resolution::Resolved(nh) => Some(*nh),
            _ => None,
        }
    }
}

/// A change the kernel announced. Coarse on purpose: the reaction is to
/// re-resolve (see [`Resolver::is_relevant`] to skip unrelated neighbours).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// An IPv4 or IPv6 neighbour entry was added, changed or deleted.
    Neighbour { ifindex: u32, addr: Option<IpAddr> },
    /// An IPv4 or IPv6 route was added, changed or deleted.
    Route,
    /// An interface was added, changed (state, address) or deleted.
    Link { ifindex: u32 },
    /// Notifications were lost (the socket's buffer overflowed): anything
    /// may have changed.
    Lost,
}

/// Opens an rtnetlink socket for queries in the calling thread's network
/// namespace; its connection runs as a task on the current Tokio runtime
/// and ends when the last clone of the handle is dropped.
pub fn connect() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Subscribes to link, neighbour and IPv4/IPv6 route changes in the calling
/// thread's network namespace (a socket of its own, on the current Tokio
/// runtime). The stream ends only if the socket fails; watch again then.
///
/// Queries go through a separate socket ([`connect`]): on a socket that also
/// receives notifications, a reply could be lost in an overflow.
pub fn watch() -> Result<impl Stream<Item = Event> + Send + Unpin + 'static> {
    subscribe(&[
        MulticastGroup::Link,
        MulticastGroup::Neigh,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ])
}

/// Like [`watch`], for link changes only: what follows one interface need
/// not wake for every route a BGP speaker installs.
pub fn watch_links() -> Result<impl Stream<Item = Event> + Send + Unpin + 'static> {
    subscribe(&[MulticastGroup::Link])
}

fn subscribe(
    groups: &[MulticastGroup],
) -> Result<impl Stream<Item = Event> + Send + Unpin + 'static> {
    let (mut conn, _handle, messages) = rtnetlink::new_multicast_connection(groups)?;
    if let Err(e) = conn.socket_mut().socket_mut().set_rx_buf_sz(WATCH_RCVBUF) {
        tracing::debug!("nexthop watch: SO_RCVBUF: {e}");
    }
    // The connection lives while the receiver does (the handle is not
    // needed: nothing is sent on this socket).
    tokio::spawn(conn);
    Ok(messages.filter_map(|(msg, _)| future::ready(event(msg))))
}

fn event(msg: NetlinkMessage<RouteNetlinkMessage>) -> Option<Event> {
    match msg.payload {
        NetlinkPayload::Overrun(_) => Some(Event::Lost),
        NetlinkPayload::InnerMessage(m) => match m {
            RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
                // AF_BRIDGE entries (the bridge FDB) share the group.
                if !matches!(n.header.family, AddressFamily::Inet | AddressFamily::Inet6) {
                    return None;
                }
                let addr = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(d) => neighbour_ip(d),
                    _ => None,
                });
                Some(Event::Neighbour {
                    ifindex: n.header.ifindex,
                    addr,
                })
            }
            RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_) => {
                Some(Event::Route)
            }
            RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l) => {
                Some(Event::Link {
                    ifindex: l.header.index,
                })
            }
            _ => None,
        },
        _ => None,
    }
}

fn neighbour_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Resolves the next hop of `addr` (see the module comment).
pub async fn resolve(handle: &Handle, addr: IpAddr) -> Result<Resolution> {
    Ok(lookup(handle, addr, &mut HashMap::new()).await?.resolution)
}

/// Makes the kernel resolve neighbour `via` on `ifindex`: an `RTM_NEWNEIGH`
/// with `NTF_USE` (create or replace, state `NONE`) creates the entry if it
/// is missing and starts the kernel's resolution on it, as a packet waiting
/// for it would: a solicitation for a missing, `FAILED` or `NONE` entry, a
/// unicast re-confirmation for a `STALE` one; nothing for an entry being
/// resolved or confirmed already. The request carries no link-layer address
/// and the entry's state is left to the kernel. Do not use it on `PERMANENT`
/// or `NOARP` entries (the kernel would drop their permanence).
pub async fn trigger(handle: &Handle, ifindex: u32, via: IpAddr) -> Result<()> {
    handle
        .neighbours()
        .add(ifindex, via)
        .state(NeighbourState::None)
        .flags(NeighbourFlags::Use)
        .replace()
        .execute()
        .await?;
    Ok(())
}

/// A resolution and the neighbour entry behind it.
struct Lookup {
    resolution: Resolution,
    /// The neighbour (interface, address) the resolution depends on.
    via: Option<(u32, IpAddr)>,
    /// The entry's state; `None` when there is none (or no neighbour).
    state: Option<NeighbourState>,
}

/// Source MAC and MTU by ifindex (`None`: not Ethernet), for one pass.
type LinkCache = HashMap<u32, Option<([u8; 6], u32)>>;

async fn lookup(handle: &Handle, addr: IpAddr, links: &mut LinkCache) -> Result<Lookup> {
    let no_route = Lookup {
        resolution: Resolution::NoRoute,
        via: None,
        state: None,
    };
    let Some((ifindex, gateway)) = route(handle, addr).await? else {
        return Ok(no_route);
    };
    let src_mac = match links.get(&ifindex) {
        Some(mac) => *mac,
        None => {
            let Some(mac) = link_mac(handle, ifindex).await? else {
                // The interface is gone: the route was stale by now.
                return Ok(no_route);
            };
            links.insert(ifindex, mac);
            mac
        }
    };
    let Some((src_mac, mtu)) = src_mac else {
        return Ok(Lookup {
            resolution: Resolution::NotEthernet { ifindex },
            via: None,
            state: None,
        });
    };
    let via = gateway.unwrap_or(addr);
    let entry = neighbour(handle, ifindex, via).await?;
    let state = entry.map(|(state, _)| state);
    let resolution = match entry {
        Some((state, Some(dst_mac))) if usable(state) => Resolution::Resolved(NextHop {
            ifindex,
            dst_mac,
            src_mac,
            mtu,
        }),
        _ => Resolution::Incomplete { ifindex, via },
    };
    Ok(Lookup {
        resolution,
        via: Some((ifindex, via)),
        state,
    })
}

/// Whether an entry in `state` has a link-layer address the kernel itself
/// would send to.
fn usable(state: NeighbourState) -> bool {
    matches!(
        state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    )
}

/// Errors of `RTM_GETROUTE` that mean "no usable route": no route
/// (`ENETUNREACH`), `unreachable` (`EHOSTUNREACH`), `prohibit` (`EACCES`),
/// `blackhole` (`EINVAL`), `throw` (`EAGAIN`).
fn is_no_route(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENETUNREACH
            | libc::EHOSTUNREACH
            | libc::EACCES
            | libc::EPERM
            | libc::EINVAL
            | libc::EAGAIN
    )
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// The route to `addr` as the kernel would use it: output interface and
/// gateway (`None` when directly connected). `None` without a unicast route.
async fn route(handle: &Handle, addr: IpAddr) -> Result<Option<(u32, Option<IpAddr>)>> {
    let mut msg = RouteMessage::default();
    let (family, len) = match addr {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    msg.header.address_family = family;
    msg.header.destination_prefix_length = len;
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(addr)));
    // With a destination, rtnetlink sends a lookup (not a dump): one reply.
    let mut replies = handle.route().get(msg).execute();
    let reply = match replies.next().await {
        Some(Ok(r)) => r,
        Some(Err(e)) if errno(&e).is_some_and(is_no_route) => return Ok(None),
        Some(Err(e)) => return Err(e.into()),
        None => return Err(Error::Unexpected(format!("no reply to route get {addr}"))),
    };
    if reply.header.kind != RouteType::Unicast {
        return Ok(None);
    }
    let mut oif = None;
    let mut gateway = None;
    for attr in &reply.attributes {
        match attr {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            // An IPv4 route through an IPv6 gateway (RFC 5549) or the reverse.
            RouteAttribute::Via(RouteVia::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Via(RouteVia::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            _ => {}
        }
    }
    match oif {
        Some(oif) if oif != 0 => Ok(Some((oif, gateway))),
        _ => Err(Error::Unexpected(format!(
            "route to {addr} has no output interface: {reply:?}"
        ))),
    }
}

/// The interface's MAC and MTU: `Some(None)` when it is not Ethernet,
/// `None` when there is no such interface.
async fn link_mac(handle: &Handle, ifindex: u32) -> Result<Option<Option<([u8; 6], u32)>>> {
    let mut replies = handle.link().get().match_index(ifindex).execute();
    let link = match replies.next().await {
        Some(Ok(l)) => l,
        Some(Err(e)) if errno(&e) == Some(libc::ENODEV) => return Ok(None),
        Some(Err(e)) => return Err(e.into()),
        None => return Err(Error::Unexpected(format!("no reply to link get {ifindex}"))),
    };
    if link.header.link_layer_type != LinkLayerType::Ether {
        return Ok(Some(None));
    }
    let mtu = crate::host::iface::link_mtu(&link.attributes);
    Ok(Some(link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok().map(|m| (m, mtu)),
        _ => None,
    })))
}

/// The neighbour entry for `via` on `ifindex` (one `RTM_GETNEIGH` for that
/// entry, not a dump): its state and link-layer address, `None` if missing.
async fn neighbour(
    handle: &Handle,
    ifindex: u32,
    via: IpAddr,
) -> Result<Option<(NeighbourState, Option<[u8; 6]>)>> {
    let mut msg = NeighbourMessage::default();
    msg.header.family = match via {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.ifindex = ifindex;
    msg.attributes
        .push(NeighbourAttribute::Destination(match via {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbour(msg));
    req.header.flags = NLM_F_REQUEST;
    let mut replies = handle.clone().request(req)?;
    let Some(reply) = replies.next().await else {
        return Err(Error::Unexpected(format!(
            "no reply to neighbour get {via} dev {ifindex}"
        )));
    };
    match reply.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => {
            let lladdr = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(mac) => {
                    <[u8; 6]>::try_from(mac.as_slice()).ok()
                }
                _ => None,
            });
            Ok(Some((n.header.state, lladdr)))
        }
        NetlinkPayload::Error(e) if e.raw_code().abs() == libc::ENOENT => Ok(None),
        NetlinkPayload::Error(e) => Err(rtnetlink::Error::NetlinkError(e).into()),
        other => Err(Error::Unexpected(format!(
            "unexpected reply to neighbour get {via} dev {ifindex}: {other:?}"
        ))),
    }
}

#[derive(Debug, Default)]
struct Tracked {
    /// What the caller was last told (`None`: no next hop, FIB lookup).
    next_hop: Option<NextHop>,
    /// The neighbour the last resolution depended on.
    via: Option<(u32, IpAddr)>,
    /// The last error, to log each distinct failure once.
    error: Option<String>,
}

type EventStream = Pin<Box<dyn Stream<Item = Event> + Send>>;

/// The next hops of a set of addresses, kept for the daemon:
///
/// ```ignore
/// let mut resolver = Resolver::new()?;
/// loop {
///     resolver.track(&backend_addrs);
///     for (addr, next_hop) in resolver.refresh().await {
///         balancer.set_next_hop(addr, next_hop)?; // add_tx_port first if new
///     }
///     resolver.wait_for_change(Duration::from_secs(10)).await;
/// }
/// ```
pub struct Resolver {
    handle: Handle,
    /// Kernel notifications; `None` without a watcher (or after it failed,
    /// until it is reopened).
    events: Option<EventStream>,
    watching: bool,
    tracked: BTreeMap<IpAddr, Tracked>,
    /// Untracked addresses that had a next hop: reported as `None` once.
    forgotten: BTreeSet<IpAddr>,
    /// When each neighbour was last triggered.
    triggered: HashMap<(u32, IpAddr), Instant>,
}

fn relevant(tracked: &BTreeMap<IpAddr, Tracked>, event: &Event) -> bool {
    match event {
        Event::Neighbour {
            ifindex,
            addr: Some(addr),
        } => tracked.values().any(|t| t.via == Some((*ifindex, *addr))),
        _ => true,
    }
}

/// After a relevant event, [`Resolver::wait_for_change`] waits this long
/// for the rest of a burst (a route change brings several).
const SETTLE: Duration = Duration::from_millis(50);

impl Resolver {
    /// A resolver with its own query socket and watcher, in the calling
    /// thread's network namespace (inside a Tokio runtime).
    pub fn new() -> Result<Self> {
        let mut r = Resolver::with_handle(connect()?);
        r.events = Some(Box::pin(watch()?));
        r.watching = true;
        Ok(r)
    }

    /// A resolver querying through `handle`, without a watcher:
    /// [`Resolver::wait_for_change`] then only waits out its timeout.
    pub fn with_handle(handle: Handle) -> Self {
        Resolver {
            handle,
            events: None,
            watching: false,
            tracked: BTreeMap::new(),
            forgotten: BTreeSet::new(),
            triggered: HashMap::new(),
        }
    }

    /// Tracks exactly `addrs` from now on: new ones are resolved by the next
    /// refresh, dropped ones are forgotten (and reported as `None` by the
    /// next refresh if they had a next hop).
    pub fn track<'a>(&mut self, addrs: impl IntoIterator<Item = &'a IpAddr>) {
        let wanted: BTreeSet<IpAddr> = addrs.into_iter().copied().collect();
        let dropped: Vec<IpAddr> = self
            .tracked
            .keys()
            .filter(|a| !wanted.contains(a))
            .copied()
            .collect();
        for a in dropped {
            if let Some(t) = self.tracked.remove(&a) {
                if t.next_hop.is_some() {
                    self.forgotten.insert(a);
                }
            }
        }
        for a in wanted {
            self.forgotten.remove(&a);
            self.tracked.entry(a).or_default();
        }
    }

    /// The tracked addresses.
    pub fn tracked(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.tracked.keys().copied()
    }

    /// The next hop last reported for `addr`.
    pub fn next_hop(&self, addr: IpAddr) -> Option<NextHop> {
        self.tracked.get(&addr).and_then(|t| t.next_hop)
    }

    /// The egress interfaces of the current next hops (each needs
    /// `Balancer::add_tx_port` before a next hop through it is set).
    pub fn egress_interfaces(&self) -> BTreeSet<u32> {
        self.tracked
            .values()
            .filter_map(|t| t.next_hop.map(|nh| nh.ifindex))
            .collect()
    }

    /// Whether `event` may change a tracked address's next hop: every route,
    /// link or loss event, a neighbour event only for a neighbour some
    /// tracked address depends on.
    pub fn is_relevant(&self, event: &Event) -> bool {
        relevant(&self.tracked, event)
    }

    /// Waits until the kernel reports a change relevant to the tracked
    /// addresses (then a little longer, to take in the rest of a burst), or
    /// until `max` has passed. True when woken by a change (or by the
    /// watcher failing: it is reopened on the next call, and changes may
    /// have been missed), false on timeout.
    pub async fn wait_for_change(&mut self, max: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + max;
        if self.watching && self.events.is_none() {
            match watch() {
                Ok(s) => self.events = Some(Box::pin(s)),
                Err(e) => tracing::warn!("next hop watcher: reopening failed: {e}"),
            }
        }
        loop {
            let Some(events) = self.events.as_mut() else {
                tokio::time::sleep_until(deadline).await;
                return false;
            };
            match tokio::time::timeout_at(deadline, events.next()).await {
                Err(_) => return false,
                Ok(None) => {
                    tracing::warn!("next hop watcher: notification socket closed");
                    self.events = None;
                    return true;
                }
                Ok(Some(event)) if relevant(&self.tracked, &event) => {
                    let settle = tokio::time::Instant::now() + SETTLE;
                    while let Ok(Some(_)) = tokio::time::timeout_at(settle, events.next()).await {}
                    return true;
                }
                Ok(Some(_)) => {}
            }
        }
    }

    /// Re-resolves every tracked address and returns those whose next hop
    /// changed (in address order), with the new one (`None`: none, leave it
    /// to the FIB lookup), after the forgotten ones (`None`). A lookup error
    /// counts as no next hop (it is logged). Neighbours that are missing or
    /// failed are triggered (see [`trigger`]), and so are `STALE` ones a next
    /// hop relies on, at most once per [`RETRIGGER_INTERVAL`] each.
    pub async fn refresh(&mut self) -> Vec<(IpAddr, Option<NextHop>)> {
        let now = Instant::now();
        self.triggered
            .retain(|_, at| now.duration_since(*at) < RETRIGGER_INTERVAL);
        let mut links = LinkCache::new();
        let mut changes: Vec<(IpAddr, Option<NextHop>)> = std::mem::take(&mut self.forgotten)
            .into_iter()
            .map(|a| (a, None))
            .collect();
        let addrs: Vec<IpAddr> = self.tracked.keys().copied().collect();
        for addr in addrs {
            let found = lookup(&self.handle, addr, &mut links).await;
            let (next_hop, via, error) = match found {
                Ok(l) => {
                    let wanted = match l.resolution {
                        // Keep an entry the data path relies on confirmed.
                        Resolution::Resolved(_) => l.state == Some(NeighbourState::Stale),
                        // An INCOMPLETE entry is being resolved already.
                        Resolution::Incomplete { .. } => {
                            l.state != Some(NeighbourState::Incomplete)
                        }
                        Resolution::NoRoute | Resolution::NotEthernet { .. } => false,
                    };
                    if let (true, Some((ifindex, via))) = (wanted, l.via) {
                        self.trigger_once(ifindex, via, now).await;
                    }
                    (l.resolution.next_hop(), l.via, None)
                }
                Err(e) => (None, None, Some(e.to_string())),
            };
            let t = self.tracked.get_mut(&addr).expect("tracked");
            if error.is_some() && error != t.error {
                tracing::warn!(
                    %addr,
                    "next hop lookup failed (using the FIB lookup): {}",
                    error.as_deref().unwrap_or_default()
                );
            }
            t.error = error;
            t.via = via;
            if t.next_hop != next_hop {
                t.next_hop = next_hop;
                changes.push((addr, next_hop));
            }
        }
        changes
    }

    async fn trigger_once(&mut self, ifindex: u32, via: IpAddr, now: Instant) {
        if self.triggered.contains_key(&(ifindex, via)) {
            return;
        }
        self.triggered.insert((ifindex, via), now);
        if let Err(e) = trigger(&self.handle, ifindex, via).await {
            tracing::debug!(%via, ifindex, "neighbour trigger failed: {e}");
        }
    }
}
