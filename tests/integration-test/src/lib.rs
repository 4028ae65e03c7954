//! Test helpers: frame builder and network-namespace topology.
