//! The control API between lbd and lbctl: its wire types ([`types`], which
//! lbctl shares), the server on the Unix socket ([`server`]) and the audit
//! log of changes ([`audit`]).

pub mod audit;
pub mod server;
pub mod types;
