//! What the tests, the demo and the bench share: a frame builder, a balancer
//! loaded for packet tests (`harness`), network namespaces (`netns`), the
//! switched lab they all run in (`switched`), and the test lab running the
//! real `lbd` and `lbctl` in it with its clients, servers and status views;
//! the cluster lab (`cluster`): a router, balancer nodes with BIRD or
//! keepalived, backends.

pub mod certs;
pub mod clients;
pub mod cluster;
pub mod cpu;
pub mod frame;
pub mod harness;
pub mod interrupt;
pub mod knot;
pub mod lab;
pub mod netns;
pub mod process;
pub mod rng;
pub mod servers;
pub mod status;
pub mod switched;
