//! Test helpers: a frame builder, a balancer loaded for packet tests, and a
//! network-namespace topology for tests with the real binaries.

pub mod frame;
pub mod harness;
pub mod netns;
