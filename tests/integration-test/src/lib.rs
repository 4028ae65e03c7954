//! Test helpers: a frame builder, a balancer loaded for packet tests, a
//! network-namespace topology for tests with the real binaries, and a lab
//! running the real `lbd` and `lbctl` in one.

pub mod clients;
pub mod frame;
pub mod harness;
pub mod interrupt;
pub mod lab;
pub mod netns;
pub mod process;
pub mod rng;
pub mod servers;
pub mod status;
pub mod switched;
