//! What the kernel says about one interface of this network namespace: that
//! it exists, and which XDP program runs on it. lbd asks before it touches
//! anything, so a missing interface is an error at start rather than after
//! maps were written, and so pins left by an earlier lbd can be matched to
//! the interface they serve.

use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkXdp};

/// One interface as rtnetlink reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interface {
    pub ifindex: u32,
    /// The XDP program attached to it (any mode), if any.
    pub xdp_prog_id: Option<u32>,
    pub mtu: u32,
    /// Its hardware address (all zero for a link without one).
    pub mac: [u8; 6],
}

/// Looks `name` up in the calling thread's network namespace: `None` when
/// there is no such interface.
pub async fn lookup(name: &str) -> anyhow::Result<Option<Interface>> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let reply = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await;
    task.abort();
    let link = match reply {
        Ok(Some(link)) => link,
        Ok(None) => return Ok(None),
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::ENODEV => {
            return Ok(None)
        }
        Err(e) => anyhow::bail!("asking the kernel about interface {name}: {e}"),
    };
    let xdp_prog_id = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Xdp(xdp) => xdp.iter().find_map(|x| match x {
            LinkXdp::ProgId(id) if *id != 0 => Some(*id),
            _ => None,
        }),
        _ => None,
    });
    let mtu = link_mtu(&link.attributes);
    let mac = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(a) => <[u8; 6]>::try_from(a.as_slice()).ok(),
            _ => None,
        })
        .unwrap_or_default();
    Ok(Some(Interface {
        ifindex: link.header.index,
        xdp_prog_id,
        mtu,
        mac,
    }))
}

/// The MTU in a link message's attributes (0 when it has none).
pub fn link_mtu(attributes: &[LinkAttribute]) -> u32 {
    attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(0)
}

/// [`lookup`], refusing a missing interface with a message that says where
/// lbd looked.
pub async fn require(name: &str) -> anyhow::Result<Interface> {
    lookup(name).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "interface {name} does not exist in this network namespace (lbd runs in the \
             namespace of the interface it serves: start it with `nsenter --net=/run/netns/NAME`)"
        )
    })
}

/// [`lookup`] from synchronous code (the one-shot subcommands).
pub fn lookup_blocking(name: &str) -> anyhow::Result<Option<Interface>> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(lookup(name))
}

/// [`require`] from synchronous code (the one-shot subcommands).
pub fn require_blocking(name: &str) -> anyhow::Result<Interface> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(require(name))
}
