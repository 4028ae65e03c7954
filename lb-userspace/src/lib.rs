//! lb's control-plane library: the Maglev table builder, the operator-facing
//! service model, and the loaders that own the XDP programs and their maps.

pub mod api;
pub mod audit;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod decap;
pub mod health;
pub mod iface;
pub mod lock;
pub mod maglev;
pub mod maps;
pub mod metrics;
pub mod netns;
pub mod nexthop;
pub mod objects;
pub mod pin;
pub mod plan;
pub mod pool;
pub mod run;
pub mod service;
pub mod state;
pub mod table_mem;
pub mod trace;
