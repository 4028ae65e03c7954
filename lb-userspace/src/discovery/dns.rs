//! Asking DNS (hickory-resolver): a VIP's `dns_srv` or `dns` source turned
//! into a set of backends of the VIP's family. What the answer cannot give
//! (a target of the other family only, an SRV port that is not the VIP's:
//! lb does not translate ports) is left out and said, never guessed.
//!
//! An answer with no records (NXDOMAIN or no data) is an empty set, which
//! the guard holds for `hold_empty`; a timeout or a server failure is an
//! error, which keeps the last set (stale).

use std::{collections::BTreeSet, net::SocketAddr};

use hickory_resolver::{
    config::{ConnectionConfig, NameServerConfig, ResolverConfig},
    net::{runtime::TokioRuntimeProvider, NetError},
    proto::rr::RData,
    TokioResolver,
};

use super::guard::{Found, Set};
use crate::model::{
    defaults::{DEFAULT_WEIGHT, DISCOVERY_TIMEOUT, MAX_TIER, MAX_WEIGHT},
    discovery::Source,
    VipId,
};

/// One resolver for every source of this node.
pub struct Dns {
    resolver: TokioResolver,
}

/// An answer: the set, and what of it was left out, and why.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub set: Set,
    pub left_out: Vec<String>,
}

impl Dns {
    /// `nameservers` empty: the system's (`/etc/resolv.conf`). No cache:
    /// each refresh asks again, so a change is seen at the next one.
    pub fn new(nameservers: &[SocketAddr]) -> anyhow::Result<Self> {
        let mut builder = if nameservers.is_empty() {
            TokioResolver::builder_tokio()?
        } else {
            let servers = nameservers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let opts = builder.options_mut();
        opts.timeout = DISCOVERY_TIMEOUT;
        opts.attempts = 1;
        opts.cache_size = 0;
        Ok(Dns {
            resolver: builder.build()?,
        })
    }

    /// Asks `source` for the backends of `vip`.
    pub async fn lookup(&self, source: &Source, vip: &VipId) -> Result<Answer, String> {
        match source {
            Source::Dns(name) => {
                let mut a = Answer::default();
                for addr in self.addresses(name, vip).await? {
                    a.set.insert(
                        addr,
                        Found {
                            weight: DEFAULT_WEIGHT,
                            tier: 0,
                        },
                    );
                }
                Ok(a)
            }
            Source::DnsSrv(name) => self.srv(name, vip).await,
            Source::Registered => Err("registrations come from the store, not DNS".into()),
        }
    }

    async fn srv(&self, name: &str, vip: &VipId) -> Result<Answer, String> {
        let lookup = match self.resolver.srv_lookup(fqdn(name)).await {
            Ok(l) => l,
            Err(e) if no_records(&e) => return Ok(Answer::default()),
            Err(e) => return Err(format!("SRV {name}: {e}")),
        };
        let records: Vec<_> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(srv.clone()),
                _ => None,
            })
            .collect();
        // The priorities' ranks are the tiers: 10 and 20 become 0 and 1.
        let priorities: BTreeSet<u16> = records.iter().map(|s| s.priority).collect();
        let mut a = Answer::default();
        for srv in records {
            let target = srv.target.to_utf8();
            if vip.port != 0 && srv.port != vip.port {
                a.left_out.push(format!(
                    "{target}: SRV port {} is not the VIP's port {} (lb does not translate ports)",
                    srv.port, vip.port
                ));
                continue;
            }
            let rank = priorities
                .iter()
                .position(|p| *p == srv.priority)
                .unwrap_or(0);
            let tier = u8::try_from(rank).unwrap_or(MAX_TIER).min(MAX_TIER);
            // SRV weight 0 is "rarely"; lb's weight 0 would be "never".
            let weight = u32::from(srv.weight).clamp(1, MAX_WEIGHT);
            let addrs = self.addresses(&target, vip).await?;
            if addrs.is_empty() {
                a.left_out
                    .push(format!("{target}: no address of the VIP's family"));
            }
            for addr in addrs {
                // Listed twice (two SRV records to one host): the first wins.
                a.set.entry(addr).or_insert(Found { weight, tier });
            }
        }
        Ok(a)
    }

    /// The name's addresses of the VIP's family (none is not an error).
    async fn addresses(&self, name: &str, vip: &VipId) -> Result<Vec<std::net::IpAddr>, String> {
        let lookup = if vip.addr.is_ipv4() {
            self.resolver.ipv4_lookup(fqdn(name)).await
        } else {
            self.resolver.ipv6_lookup(fqdn(name)).await
        };
        match lookup {
            Ok(l) => Ok(l
                .answers()
                .iter()
                .filter_map(|r| r.data.ip_addr())
                .filter(|a| a.is_ipv4() == vip.addr.is_ipv4())
                .collect()),
            Err(e) if no_records(&e) => Ok(Vec::new()),
            Err(e) => Err(format!("{name}: {e}")),
        }
    }
}

/// Names are asked as given, fully qualified (no search domains).
fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

fn no_records(e: &NetError) -> bool {
    e.is_no_records_found() || e.is_nx_domain()
}
