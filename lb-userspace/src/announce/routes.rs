//! The kernel routing table lbd announces through, over rtnetlink: one
//! unicast host route per announced address, out of the balancer's
//! interface, marked with [`ROUTE_PROTOCOL`]. A route is lbd's when it
//! carries that protocol and leaves through lbd's interface; lbd adds and
//! removes only such routes and reads every other one as a sign that the
//! table is not its own.
//!
//! The routes are never used for forwarding (no rule looks the table up):
//! they are only what the BGP speaker imports.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::StreamExt;
use netlink_packet_route::{
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType},
    AddressFamily, RouteNetlinkMessage,
};
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST},
    sys::AsyncSocket,
    Handle, RouteMessageBuilder,
};

use crate::model::announce::ROUTE_PROTOCOL;

/// One route of the table, as much of it as ownership needs, and the
/// message the kernel sent for it (what removing exactly it takes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRoute {
    pub table: u32,
    pub dst: Option<IpAddr>,
    pub prefix_len: u8,
    pub protocol: u8,
    pub oif: Option<u32>,
    message: RouteMessage,
}

impl fmt::Display for TableRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dst {
            Some(d) => write!(f, "{d}/{}", self.prefix_len)?,
            None => write!(f, "default")?,
        }
        write!(f, " proto {}", self.protocol)?;
        if let Some(i) = self.oif {
            write!(f, " oif {i}")?;
        }
        Ok(())
    }
}

impl TableRoute {
    fn is_host_route(&self) -> bool {
        match self.dst {
            Some(IpAddr::V4(_)) => self.prefix_len == 32,
            Some(IpAddr::V6(_)) => self.prefix_len == 128,
            None => false,
        }
    }

    /// Whether the lbd on `ifindex` wrote it.
    pub fn owned_by(&self, ifindex: u32) -> bool {
        self.protocol == ROUTE_PROTOCOL && self.oif == Some(ifindex) && self.is_host_route()
    }
}

/// Why lbd cannot use `routes` (what table `table` holds) as its own, if it
/// cannot: any route it did not write. Another lbd (same protocol, another
/// interface) counts too: two daemons reconciling one table would each
/// take the other's routes for strays.
pub fn foreign(routes: &[TableRoute], table: u32, ifindex: u32) -> Option<String> {
    let other: Vec<&TableRoute> = routes.iter().filter(|r| !r.owned_by(ifindex)).collect();
    let first = other.first()?;
    let whose = if first.protocol == ROUTE_PROTOCOL {
        "another lbd (on another interface) writes it"
    } else {
        "another program uses it"
    };
    Some(format!(
        "routing table {table} holds {} route(s) lbd did not write (first: {first}): {whose}. \
         Give lbd a table of its own in [announce] table, or empty this one \
         (`ip route flush table {table}`, `ip -6 route flush table {table}`)",
        other.len()
    ))
}

/// What a dump asks the kernel for (strict checking filters in the kernel;
/// the results are filtered again here, for kernels that do not).
#[derive(Clone, Copy)]
enum Filter {
    /// Every route of one table.
    Table(u32),
    /// lbd's routes out of one interface, in any table.
    Owned(u32),
}

impl Filter {
    fn message(self, family: AddressFamily) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family;
        match self {
            Filter::Table(t) => msg.attributes.push(RouteAttribute::Table(t)),
            Filter::Owned(ifindex) => {
                msg.header.protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
                msg.attributes.push(RouteAttribute::Oif(ifindex));
            }
        }
        msg
    }

    fn keeps(self, r: &TableRoute) -> bool {
        match self {
            Filter::Table(t) => r.table == t,
            Filter::Owned(ifindex) => r.owned_by(ifindex),
        }
    }
}

/// An rtnetlink socket for lbd's routes: strict checking on (the kernel
/// then sends only what is asked for), and the end of each dump delivered,
/// so that an error the kernel reports there is not taken for a complete
/// answer. Dumps on it go through [`dump`]: rtnetlink's own `get()` would
/// take the delivered end for an unexpected message.
fn connect() -> anyhow::Result<Handle> {
    let (mut conn, handle, _) = rtnetlink::new_connection()?;
    conn.socket_mut()
        .socket_mut()
        .set_netlink_get_strict_chk(true)?;
    conn.set_forward_done(true);
    tokio::spawn(conn);
    Ok(handle)
}

/// Every IPv4 and IPv6 route `filter` selects.
async fn dump(handle: &Handle, filter: Filter) -> anyhow::Result<Vec<TableRoute>> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        out.extend(dump_family(handle, filter, family).await?);
    }
    Ok(out)
}

/// One family's dump. Its end (NLMSG_DONE) must arrive: a stream that
/// stops without it (the connection failed) is an error, not a short table.
/// (Route dumps are not marked when the table changes while they are read;
/// lbd's own table fits in one batch, so its dumps are whole.)
async fn dump_family(
    handle: &Handle,
    filter: Filter,
    family: AddressFamily,
) -> anyhow::Result<Vec<TableRoute>> {
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetRoute(filter.message(family)));
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut replies = handle.clone().request(req)?;
    let mut routes = Vec::new();
    while let Some(m) = replies.next().await {
        match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => {
                let r = read(r);
                if filter.keeps(&r) {
                    routes.push(r);
                }
            }
            NetlinkPayload::Done(d) if d.code == 0 => return Ok(routes),
            // The table has never held a route of this family.
            NetlinkPayload::Done(d) if d.code.abs() == libc::ENOENT => return Ok(Vec::new()),
            NetlinkPayload::Done(d) => {
                anyhow::bail!(
                    "listing routes: {}",
                    std::io::Error::from_raw_os_error(d.code.abs())
                )
            }
            NetlinkPayload::Error(e) if e.raw_code().abs() == libc::ENOENT => return Ok(Vec::new()),
            NetlinkPayload::Error(e) => {
                anyhow::bail!("listing routes: {}", rtnetlink::Error::NetlinkError(e))
            }
            _ => {}
        }
    }
    anyhow::bail!("listing routes: the netlink connection ended before the dump did")
}

/// The table, for the lbd serving `ifindex`.
pub struct KernelTable {
    handle: Handle,
    pub table: u32,
    pub ifindex: u32,
}

/// What removing a route did.
#[derive(Debug, PartialEq, Eq)]
pub enum Removed {
    Yes,
    /// It was gone already (someone else removed it since it was listed).
    AlreadyGone,
}

impl KernelTable {
    /// Opens an rtnetlink socket in the calling thread's namespace (its
    /// connection runs on the current Tokio runtime).
    pub fn open(table: u32, ifindex: u32) -> anyhow::Result<Self> {
        Ok(KernelTable {
            handle: connect()?,
            table,
            ifindex,
        })
    }

    /// Every IPv4 and IPv6 route of the table.
    pub async fn list(&self) -> anyhow::Result<Vec<TableRoute>> {
        dump(&self.handle, Filter::Table(self.table)).await
    }

    /// lbd's routes in the table, by address.
    pub async fn owned(&self) -> anyhow::Result<BTreeMap<IpAddr, TableRoute>> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|r| r.owned_by(self.ifindex))
            .filter_map(|r| Some((r.dst?, r)))
            .collect())
    }

    /// lbd's routes in other tables than its own (left there by an lbd
    /// configured with another table, or with none).
    pub async fn strays(&self) -> anyhow::Result<Vec<TableRoute>> {
        Ok(dump(&self.handle, Filter::Owned(self.ifindex))
            .await?
            .into_iter()
            .filter(|r| r.table != self.table)
            .collect())
    }

    /// Adds lbd's route to `addr`. A route to `addr` that is not lbd's
    /// (same table, destination and metric) is not replaced: an error
    /// names it.
    pub async fn add(&self, addr: IpAddr) -> anyhow::Result<()> {
        match self.handle.route().add(self.message(addr)).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::EEXIST => {
                let found = self
                    .list()
                    .await
                    .ok()
                    .and_then(|rs| rs.into_iter().find(|r| r.dst == Some(addr)))
                    .map_or_else(|| "a route".to_string(), |r| format!("`{r}`"));
                anyhow::bail!(
                    "{addr}: table {} already holds {found}, which lbd did not write: not \
                     replaced",
                    self.table
                )
            }
            Err(e) => Err(anyhow::anyhow!(
                "adding {addr} to table {}: {e}",
                self.table
            )),
        }
    }

    /// Removes exactly `route` (as listed).
    pub async fn remove(&self, route: &TableRoute) -> anyhow::Result<Removed> {
        remove(&self.handle, route).await
    }

    fn message(&self, addr: IpAddr) -> RouteMessage {
        let proto = RouteProtocol::Other(ROUTE_PROTOCOL);
        match addr {
            IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(a, 32)
                .table_id(self.table)
                .protocol(proto)
                .scope(RouteScope::Link)
                .kind(RouteType::Unicast)
                .output_interface(self.ifindex)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(a, 128)
                .table_id(self.table)
                .protocol(proto)
                .kind(RouteType::Unicast)
                .output_interface(self.ifindex)
                .build(),
        }
    }
}

async fn remove(handle: &Handle, route: &TableRoute) -> anyhow::Result<Removed> {
    match handle.route().del(route.message.clone()).execute().await {
        Ok(()) => Ok(Removed::Yes),
        Err(rtnetlink::Error::NetlinkError(m))
            if [libc::ESRCH, libc::ENOENT].contains(&m.raw_code().abs()) =>
        {
            Ok(Removed::AlreadyGone)
        }
        Err(e) => Err(anyhow::anyhow!(
            "removing {route} from table {}: {e}",
            route.table
        )),
    }
}

/// Removes the routes the lbd on `ifindex` wrote, in whatever table (what
/// `lbd detach` does: it has no config to name the table); returns them.
pub async fn remove_all_owned(ifindex: u32) -> anyhow::Result<Vec<(u32, IpAddr)>> {
    let handle = connect()?;
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    for r in dump(&handle, Filter::Owned(ifindex)).await? {
        match remove(&handle, &r).await {
            Ok(Removed::Yes) => removed.extend(r.dst.map(|d| (r.table, d))),
            Ok(Removed::AlreadyGone) => {}
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        anyhow::bail!(
            "removed {} route(s), but not all: {}",
            removed.len(),
            errors.join("; ")
        );
    }
    Ok(removed)
}

/// The table a route is in (`RTA_TABLE` when present: the header holds
/// only 8 bits).
fn table_of(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

fn read(r: RouteMessage) -> TableRoute {
    let mut route = TableRoute {
        table: table_of(&r),
        dst: None,
        prefix_len: r.header.destination_prefix_length,
        protocol: u8::from(r.header.protocol),
        oif: None,
        message: RouteMessage::default(),
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => route.dst = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => route.dst = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            _ => {}
        }
    }
    route.message = r;
    route
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, len: u8, protocol: u8, oif: u32) -> TableRoute {
        TableRoute {
            table: 100,
            dst: Some(dst.parse().unwrap()),
            prefix_len: len,
            protocol,
            oif: Some(oif),
            message: RouteMessage::default(),
        }
    }

    #[test]
    fn only_its_own_host_routes_are_lbds() {
        let ours = route("10.0.0.1", 32, ROUTE_PROTOCOL, 7);
        assert!(ours.owned_by(7));
        assert!(!ours.owned_by(8));
        assert!(!route("10.0.0.0", 24, ROUTE_PROTOCOL, 7).owned_by(7));
        assert!(!route("10.0.0.1", 32, 4, 7).owned_by(7));
        assert!(route("fd00::1", 128, ROUTE_PROTOCOL, 7).owned_by(7));
    }

    #[test]
    fn a_table_with_other_routes_is_not_lbds() {
        let ours = route("10.0.0.1", 32, ROUTE_PROTOCOL, 7);
        assert_eq!(foreign(std::slice::from_ref(&ours), 100, 7), None);
        let static_route = route("192.0.2.0", 24, 4, 3);
        let msg = foreign(&[ours.clone(), static_route], 100, 7).unwrap();
        assert!(msg.contains("192.0.2.0/24 proto 4"), "{msg}");
        assert!(msg.contains("another program"), "{msg}");
        let other_lbd = route("10.0.0.2", 32, ROUTE_PROTOCOL, 9);
        let msg = foreign(&[ours, other_lbd], 100, 7).unwrap();
        assert!(msg.contains("another lbd"), "{msg}");
    }
}
