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
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::TryStreamExt;
use netlink_packet_route::{
    route::{
        RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
    },
    AddressFamily,
};
use rtnetlink::{sys::AsyncSocket, Handle, RouteMessageBuilder};

use crate::model::announce::ROUTE_PROTOCOL;

/// One route of the table, as much of it as ownership needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRoute {
    pub dst: Option<IpAddr>,
    pub prefix_len: u8,
    pub protocol: u8,
    pub oif: Option<u32>,
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
/// interface) counts too: two daemons reconciling one table would remove
/// each other's routes.
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

/// The table, for the lbd serving `ifindex`.
pub struct KernelTable {
    handle: Handle,
    pub table: u32,
    pub ifindex: u32,
}

impl KernelTable {
    /// Opens an rtnetlink socket in the calling thread's namespace (its
    /// connection runs on the current Tokio runtime). With strict checking
    /// on, the kernel dumps only the table asked for: a node that also holds
    /// a full routing table in `main` is not read whole every second.
    pub fn open(table: u32, ifindex: u32) -> anyhow::Result<Self> {
        let (mut conn, handle, _) = rtnetlink::new_connection()?;
        conn.socket_mut()
            .socket_mut()
            .set_netlink_get_strict_chk(true)?;
        tokio::spawn(conn);
        Ok(KernelTable {
            handle,
            table,
            ifindex,
        })
    }

    /// Every IPv4 and IPv6 route of the table.
    pub async fn list(&self) -> anyhow::Result<Vec<TableRoute>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            msg.attributes.push(RouteAttribute::Table(self.table));
            let mut dump = self.handle.route().get(msg).execute();
            loop {
                match dump.try_next().await {
                    Ok(Some(r)) => {
                        // Filtered again: a kernel without strict dumps sends all.
                        if table_of(&r) == self.table {
                            out.push(read(&r));
                        }
                    }
                    Ok(None) => break,
                    // A table that never held a route of this family.
                    Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::ENOENT => {
                        break
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(out)
    }

    /// The addresses lbd announces now.
    pub async fn owned(&self) -> anyhow::Result<BTreeSet<IpAddr>> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|r| r.owned_by(self.ifindex))
            .filter_map(|r| r.dst)
            .collect())
    }

    pub async fn add(&self, addr: IpAddr) -> anyhow::Result<()> {
        self.handle
            .route()
            .add(self.message(addr))
            .replace()
            .execute()
            .await
            .map_err(|e| anyhow::anyhow!("adding {addr} to table {}: {e}", self.table))
    }

    /// Removes lbd's route to `addr`; one already gone is no error.
    pub async fn remove(&self, addr: IpAddr) -> anyhow::Result<()> {
        match self.handle.route().del(self.message(addr)).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(m))
                if [libc::ESRCH, libc::ENOENT].contains(&m.raw_code().abs()) =>
            {
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!(
                "removing {addr} from table {}: {e}",
                self.table
            )),
        }
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

/// Every IPv4 and IPv6 route of every table, with its table (a socket
/// without strict checking dumps them all).
async fn list_all(handle: &Handle) -> anyhow::Result<Vec<(u32, TableRoute)>> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family;
        let mut dump = handle.route().get(msg).execute();
        while let Some(r) = dump.try_next().await? {
            out.push((table_of(&r), read(&r)));
        }
    }
    Ok(out)
}

/// Removes the routes the lbd on `ifindex` wrote, in whatever table (what
/// `lbd detach` does: it has no config to name the table); returns them.
pub async fn remove_all_owned(ifindex: u32) -> anyhow::Result<Vec<(u32, IpAddr)>> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    let mut removed = Vec::new();
    for (table, r) in list_all(&handle).await? {
        let Some(dst) = r.dst.filter(|_| r.owned_by(ifindex)) else {
            continue;
        };
        KernelTable {
            handle: handle.clone(),
            table,
            ifindex,
        }
        .remove(dst)
        .await?;
        removed.push((table, dst));
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

fn read(r: &RouteMessage) -> TableRoute {
    let mut route = TableRoute {
        dst: None,
        prefix_len: r.header.destination_prefix_length,
        protocol: u8::from(r.header.protocol),
        oif: None,
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => route.dst = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
                route.dst = Some(IpAddr::V6(*a))
            }
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            _ => {}
        }
    }
    route
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, len: u8, protocol: u8, oif: u32) -> TableRoute {
        TableRoute {
            dst: Some(dst.parse().unwrap()),
            prefix_len: len,
            protocol,
            oif: Some(oif),
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
