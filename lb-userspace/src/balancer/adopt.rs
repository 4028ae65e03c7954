//! Taking over maps pinned by an earlier lbd: the mirror is rebuilt from
//! what they hold, so a restart keeps every flow.

use std::collections::BTreeMap;

use lb_common::{
    Backend, VipById, BACKEND_F_ACTIVE, BACKEND_F_DOWN, BACKEND_F_NEXTHOP, MAX_BACKENDS,
    VIP_F_L2DSR, VIP_F_SRC_HASH, VIP_F_STATELESS,
};

use super::{
    error::{map_err, Result},
    Balancer, MapsError, Region, VipState,
};
use crate::model::{
    defaults::DEFAULT_TABLE_SIZE, BackendSpec, Forwarding, NextHop, Scheduler, VipId, VipSettings,
};

impl Balancer {
    /// Rebuilds the mirror from adopted maps: VIP and backend ids, which
    /// table slot is live and what it holds, weights, next hops. The caller
    /// reconciles with its desired state right after, which writes the idle
    /// slot and flips, so no VIP is ever without a table.
    pub(super) fn adopt(&mut self) -> Result<()> {
        let mut vips = Vec::new();
        for key in self.vip_map.keys() {
            let key = key.map_err(map_err("VIPS"))?;
            let info = self.vip_map.get(&key, 0).map_err(map_err("VIPS"))?;
            vips.push((key, info));
        }
        let mut backends_of: BTreeMap<u32, Vec<(u32, Backend)>> = BTreeMap::new();
        for id in 0..MAX_BACKENDS {
            let b = self.backend_map.get(&id, 0).map_err(map_err("BACKENDS"))?;
            if b.flags & BACKEND_F_ACTIVE != 0 {
                backends_of.entry(b.vip_id).or_default().push((id, b));
            }
        }
        let vips_by_id: BTreeMap<u32, VipById> = vips
            .iter()
            .map(|(key, info)| {
                let by_id = VipById {
                    key: *key,
                    flags: info.flags,
                };
                (info.vip_id, by_id)
            })
            .collect();
        for (key, info) in vips {
            let proto = match key.proto {
                lb_common::PROTO_TCP => crate::model::Proto::Tcp,
                lb_common::PROTO_UDP => crate::model::Proto::Udp,
                p => return Err(MapsError::Layout(format!("adopted VIP with protocol {p}"))),
            };
            let id = VipId {
                addr: key.ip(),
                port: u16::from_be(key.port),
                proto,
            };
            // Tier settings are not in the maps: the reconcile with the
            // desired state that follows sets them.
            let settings = VipSettings {
                tiers: Default::default(),
                scheduler: match lb_common::rules::pick(info.flags) {
                    lb_common::rules::Pick::RoundRobin => Scheduler::RoundRobin,
                    lb_common::rules::Pick::LeastConn => Scheduler::LeastConnections,
                    _ if info.flags & VIP_F_SRC_HASH != 0 => Scheduler::SourceHash,
                    _ => Scheduler::Maglev,
                },
                forwarding: if info.flags & VIP_F_L2DSR != 0 {
                    Forwarding::L2dsr
                } else {
                    Forwarding::Ipip
                },
                stateless: info.flags & VIP_F_STATELESS != 0,
                // The region is made for the VIP's table size (the live
                // array of round-robin and least-connections VIPs may be
                // shorter).
                table_size: if info.region_half == 0 {
                    DEFAULT_TABLE_SIZE
                } else {
                    info.region_half
                },
            };
            let region = Region {
                base: info.region_base,
                half: info.region_half,
            };
            if !self.pool.reserve(region.base, region.len()) {
                return Err(MapsError::Layout(format!(
                    "adopted VIP {id}: its Maglev region {region:?} overlaps another or lies \
                     outside the table pool"
                )));
            }
            let live_slot = u32::from(info.table_size > 0 && info.table_base != region.base);
            let mut table = Vec::with_capacity(info.table_size as usize);
            for slot in 0..info.table_size {
                let index = region.table(live_slot) + slot;
                table.push(self.tables.get(index).ok_or_else(|| {
                    MapsError::Layout(format!("adopted VIP {id}: table outside the pool"))
                })?);
            }
            let mut state = VipState {
                vip_id: info.vip_id,
                settings,
                backends: Vec::new(),
                down: Vec::new(),
                region,
                tables: [None, None],
                live_slot,
                live_size: info.table_size,
                fail_open: false,
                tiers: Vec::new(),
                checksum: None,
            };
            state.tables[state.live_slot as usize] = (info.table_size > 0).then_some(table);
            for (bid, b) in backends_of.remove(&info.vip_id).unwrap_or_default() {
                let addr = b.ip();
                // As the program has it; the caller's reconcile with its
                // desired state follows.
                state.backends.push((
                    BackendSpec {
                        addr,
                        weight: b.weight,
                        tier: 0,
                    },
                    bid,
                ));
                if b.flags & BACKEND_F_DOWN != 0 {
                    state.down.push(addr);
                }
                if b.flags & BACKEND_F_NEXTHOP != 0 {
                    self.next_hops.insert(
                        addr,
                        NextHop {
                            ifindex: b.ifindex,
                            dst_mac: b.dst_mac,
                            src_mac: b.src_mac,
                            mtu: b.mtu as u32,
                        },
                    );
                }
                self.free_backend_ids.retain(|i| *i != bid);
            }
            self.free_vip_ids.retain(|i| *i != info.vip_id);
            state.checksum = super::query::table_checksum(&state);
            self.vips.insert(id, state);
        }
        // Active entries of no adopted VIP are leftovers: clear them.
        for (_, orphans) in backends_of {
            for (bid, _) in orphans {
                self.clear_backend(bid)?;
            }
        }
        self.adopt_vip_by_id(&vips_by_id)
    }

    /// Makes `VIP_BY_ID` say what the adopted `VIPS` says: maps pinned by a
    /// build without it get it filled here, before the new program runs.
    fn adopt_vip_by_id(&mut self, vips: &BTreeMap<u32, VipById>) -> Result<()> {
        for id in 0..self.max_vips {
            let want = vips.get(&id).copied().unwrap_or_default();
            let have = self.vip_by_id.get(&id, 0).map_err(map_err("VIP_BY_ID"))?;
            if have != want {
                self.vip_by_id
                    .set(id, want, 0)
                    .map_err(map_err("VIP_BY_ID"))?;
            }
        }
        Ok(())
    }
}
