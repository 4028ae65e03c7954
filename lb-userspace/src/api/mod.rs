//! The control API between lbd and lbctl: its wire types ([`types`], which
//! lbctl shares), the server on the Unix socket and, with `api_listen`,
//! over TLS ([`server`], [`tls`]), and the audit log of changes ([`audit`]).

pub mod audit;
pub mod server;
pub mod tls;
pub mod types;
