//! lb's control plane. Dependencies point one way, from the bottom up:
//!
//! - [`model`]: the domain's words, rules, defaults and ranges (nothing of lb);
//! - [`state`]: the desired state, changes to it, plans, persistence;
//! - [`config`]: the config file, read into the model and a desired state;
//! - [`trace`]: the decision trace's reader and lines; [`objects`]: the
//!   embedded eBPF objects;
//! - [`balancer`]: the loaded XDP program and its maps (the only writer);
//! - [`host`]: namespaces, interfaces, bpffs pins, next hops;
//! - [`decap`]: the backend-side program;
//! - [`store`]: the cluster's desired state in etcd: keys, reports, requests;
//! - [`discovery`]: asking DNS for a VIP's backends, and what of a source's
//!   answers is applied (fail static);
//! - [`announce`]: which VIP addresses to announce, lbd's routing table,
//!   the node's drain flag;
//! - [`daemon`]: lbd's core over a [`daemon::DataPath`], and its views;
//! - [`api`], [`metrics`], [`health`]: what runs beside the core and calls in;
//! - [`lbd`]: the process: start-up in order, its tasks, one-shot subcommands;
//! - [`cli`]: lbctl, which speaks [`api::types`] to the daemon.

pub mod announce;
pub mod api;
pub mod balancer;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod decap;
pub mod discovery;
pub mod health;
pub mod host;
pub mod lbd;
pub mod metrics;
pub mod model;
pub mod objects;
pub mod state;
pub mod store;
pub mod trace;
