//! The host around the balancer, read and checked over the kernel's own
//! interfaces: network namespaces, interfaces (rtnetlink), the bpffs and
//! lb's places in it, and the next hops toward backends.

pub mod iface;
pub mod netns;
pub mod nexthop;
pub mod pin;
