//! VIP entries and their Maglev tables: a backend set is switched by
//! writing the idle half of the VIP's region, then flipping the VIP entry.

use lb_common::{user::addr_words, AddrKey, VipById, VipInfo};

use super::{
    error::{map_err, Result},
    filter::{set_bit, Filter},
    maglev::MaglevBackend,
    pool::TablePool,
    query::{vip_info, vip_key},
    schedule,
    table_mem::TableMem,
    Balancer, MapsError, Region, VipState,
};
use crate::model::{
    tier::{self, TierMember},
    BackendSpec, Scheduler, VipId, VipSettings,
};

impl Balancer {
    /// Creates a VIP (with no backends) or changes its settings.
    pub fn upsert_vip(&mut self, vip: VipId, settings: VipSettings) -> Result<()> {
        crate::model::validate_vip(&vip, &settings)?;
        if let Some(state) = self.vips.get(&vip) {
            if state.settings == settings {
                return Ok(());
            }
            let specs: Vec<BackendSpec> = state.backends.iter().map(|(b, _)| *b).collect();
            crate::model::validate_backends(&vip, &settings, &specs)?;
            let old = std::mem::replace(
                &mut self.vips.get_mut(&vip).expect("present").settings,
                settings,
            );
            // A new table size or scheduler needs a new table; flags alone do
            // not. If it cannot be made, the VIP keeps its old settings (the
            // live table still matches them).
            let result = self.set_backends(vip, &specs);
            if result.is_err() {
                self.vips.get_mut(&vip).expect("present").settings = old;
                return result;
            }
            // A VIP that became stateless or stateful: its entry-filter bit
            // (only ever a hint, see `write_filter`).
            return self.write_filter(None);
        }
        if self.free_vip_ids.is_empty() {
            return Err(MapsError::TooManyVips(self.max_vips));
        }
        let region = self.alloc_region(settings.table_size)?;
        let vip_id = self.free_vip_ids.pop_front().expect("checked");
        let state = VipState {
            vip_id,
            settings,
            backends: Vec::new(),
            down: Vec::new(),
            region,
            tables: [None, None],
            live_slot: 0,
            live_size: 0,
            fail_open: false,
            tiers: Vec::new(),
            checksum: None,
        };
        let info = vip_info(&state);
        // The filter first: the data path must not pass the VIP's first
        // packets as "not a VIP" once its entry exists.
        if let Err(e) = self.write_filter(Some((&vip, info.flags))) {
            self.free_vip_ids.push_front(vip_id);
            self.pool.release(region.base, region.len());
            return Err(e);
        }
        if let Err(e) = self.write_vip(&vip, info) {
            self.free_vip_ids.push_front(vip_id);
            self.pool.release(region.base, region.len());
            return Err(e);
        }
        self.vips.insert(vip, state);
        self.sync_vip_addrs(&vip)
    }

    /// Removes a VIP: its packets pass to the kernel from now on.
    pub fn remove_vip(&mut self, vip: &VipId) -> Result<()> {
        let state = self.vips.get(vip).ok_or(MapsError::UnknownVip(*vip))?;
        let ids: Vec<u32> = state.backends.iter().map(|(_, id)| *id).collect();
        let (vip_id, region) = (state.vip_id, state.region);
        // Unvouched first, so no packet finds the VIP through an entry
        // once it is gone.
        let by_id = self
            .vip_by_id
            .get(&vip_id, 0)
            .map_err(map_err("VIP_BY_ID"))?;
        self.vip_by_id
            .set(vip_id, VipById::default(), 0)
            .map_err(map_err("VIP_BY_ID"))?;
        if let Err(e) = self.vip_map.remove(&vip_key(vip)) {
            let _ = self.vip_by_id.set(vip_id, by_id, 0);
            return Err(map_err("VIPS")(e));
        }
        self.vips.remove(vip);
        self.pool.release(region.base, region.len());
        for id in ids {
            self.clear_backend(id)?;
        }
        self.free_vip_ids.push_back(vip_id);
        self.sync_vip_addrs(vip)?;
        self.write_filter(None)
    }

    /// Replaces a VIP's backend set: validated whole, then switched in one
    /// step (see the module comment). Weight 0 keeps a backend's established
    /// flows but gives it no new ones.
    pub fn set_backends(&mut self, vip: VipId, backends: &[BackendSpec]) -> Result<()> {
        let state = self.vips.get(&vip).ok_or(MapsError::UnknownVip(vip))?;
        crate::model::validate_backends(&vip, &state.settings, backends)?;
        let vip_id = state.vip_id;

        // Ids: a backend that stays keeps its id (its flows' entries stay valid).
        let mut assigned = Vec::with_capacity(backends.len());
        let mut fresh = Vec::new();
        for b in backends {
            match state.backends.iter().find(|(old, _)| old.addr == b.addr) {
                Some((_, id)) => assigned.push((*b, *id)),
                None => {
                    let id = self
                        .free_backend_ids
                        .get(fresh.len())
                        .copied()
                        .ok_or(MapsError::TooManyBackends(backends.len() - assigned.len()))?;
                    fresh.push(id);
                    assigned.push((*b, id));
                }
            }
        }
        self.free_backend_ids.drain(..fresh.len());
        let removed: Vec<u32> = state
            .backends
            .iter()
            .filter(|(old, _)| !backends.iter().any(|b| b.addr == old.addr))
            .map(|(_, id)| *id)
            .collect();

        let result = self.switch_table(vip, vip_id, &assigned, &fresh);
        if let Err(e) = result {
            // Nothing refers to the fresh ids: give them back.
            for id in fresh.iter().rev() {
                let _ = self.clear_backend(*id);
                self.free_backend_ids.push_front(*id);
            }
            return Err(e);
        }
        for id in removed {
            self.clear_backend(id)?;
        }
        Ok(())
    }

    pub(super) fn switch_table(
        &mut self,
        vip: VipId,
        vip_id: u32,
        assigned: &[(BackendSpec, u32)],
        fresh: &[u32],
    ) -> Result<()> {
        let state = self.vips.get(&vip).expect("checked by caller");
        // Each backend's weight in the table: its own, or its tier's share
        // of new flows spread over the tier (`model::tier`). Fail open:
        // when every backend that could take traffic is down, the nearest
        // tier's all take it rather than drop everything (Envoy's panic
        // mode). Health checks may be wrong; a black hole is always wrong.
        let members: Vec<TierMember> = assigned
            .iter()
            .map(|(b, _)| TierMember::new(b, !state.down.contains(&b.addr)))
            .collect();
        let plan = tier::plan(&state.settings.tiers, &members);
        let fail_open = plan.fail_open;
        let open_tier = plan.shares.first().map(|s| s.tier).filter(|_| fail_open);
        let candidates: Vec<MaglevBackend> = assigned
            .iter()
            .zip(&plan.weights)
            .filter(|(_, w)| **w > 0)
            .map(|((b, id), w)| MaglevBackend {
                id: *id,
                key: addr_words(b.addr).0,
                weight: *w,
            })
            .collect();
        // Down: health's mark, except where the VIP fails open.
        let entries: Vec<(u32, BackendSpec, bool)> = assigned
            .iter()
            .map(|(b, id)| {
                let down = state.down.contains(&b.addr) && open_tier != Some(b.tier);
                (*id, *b, down)
            })
            .collect();
        let size = state.settings.table_size;
        let old_region = state.region;
        // New entries first: the table about to go live refers to them (on
        // error the caller clears them). A reused id's connection counts
        // start again from zero.
        for (id, b, down) in entries.iter().filter(|(id, _, _)| fresh.contains(id)) {
            self.conns.reset(*id);
            self.conn_resets += 1;
            self.write_backend(*id, vip_id, b, *down)?;
        }
        // A new table size needs a region of that size; the old one stays
        // live until the switch below.
        let resized = old_region.half != size;
        let region = if resized {
            self.alloc_region(size)?
        } else {
            old_region
        };
        let release = |pool: &mut TablePool, r: Region| pool.release(r.base, r.len());
        let state = self.vips.get(&vip).expect("checked by caller");
        let slot = if resized { 0 } else { state.live_slot ^ 1 };
        let known = if resized {
            None
        } else {
            state.tables[slot as usize].as_deref()
        };
        let scheduler = state.settings.scheduler;
        let table = schedule::live_array(scheduler, &candidates, size);
        let has_backend = !table.is_empty();
        let live_len = table.len() as u32;
        let written = if has_backend {
            write_table(&self.tables, region.table(slot), &table, known)
        } else {
            Ok(0)
        };
        self.last_table_writes = *written.as_ref().unwrap_or(&0);
        // Round-robin cursors before the switch (a cursor past the end of
        // the sequence still live wraps), so nothing can fail after it.
        let ready = written.and_then(|_| match scheduler {
            Scheduler::RoundRobin => self.start_cursors(vip_id, live_len),
            _ => Ok(()),
        });
        if let Err(e) = ready {
            if resized {
                release(&mut self.pool, region);
            } else {
                // The half may hold a mix: forget what it held so the next
                // write rewrites all of it.
                self.vips.get_mut(&vip).expect("present").tables[slot as usize] = None;
            }
            return Err(e);
        }
        let state = self.vips.get_mut(&vip).expect("checked by caller");
        let before = (
            state.region,
            state.tables.clone(),
            state.live_slot,
            state.live_size,
        );
        if resized {
            state.region = region;
            state.tables = [None, None];
        }
        let previous = state.tables[slot as usize].take();
        state.tables[slot as usize] = if has_backend { Some(table) } else { previous };
        state.live_slot = slot;
        state.live_size = live_len;
        let info = vip_info(state);
        if let Err(e) = self.write_vip(&vip, info) {
            let state = self.vips.get_mut(&vip).expect("present");
            (state.region, state.tables, state.live_slot, state.live_size) = before;
            if resized {
                release(&mut self.pool, region);
            }
            return Err(e);
        }
        if resized {
            release(&mut self.pool, old_region);
        }
        let state = self.vips.get_mut(&vip).expect("present");
        state.backends = assigned.to_vec();
        state.fail_open = fail_open;
        state.tiers = plan.shares;
        state.checksum = super::query::table_checksum(state);
        // Then the down flags (and weights) of entries that stay (after the
        // switch, so a backend leaving is out of the table before its flows
        // move).
        for (id, b, down) in entries.iter().filter(|(id, _, _)| !fresh.contains(id)) {
            self.write_backend(*id, vip_id, b, *down)?;
        }
        Ok(())
    }

    /// Sets every CPU's round-robin cursor of a VIP that just switched to
    /// a sequence of `len` slots to its start, evenly apart.
    fn start_cursors(&mut self, vip_id: u32, len: u32) -> Result<()> {
        let starts: Vec<u32> = (0..self.ncpu)
            .map(|cpu| lb_common::rules::rr_start(cpu, self.ncpu, len))
            .collect();
        let values = aya::maps::PerCpuValues::try_from(starts)
            .map_err(|e| MapsError::Options(format!("RR_CURSOR values: {e}")))?;
        self.rr_cursor
            .set(vip_id, values, 0)
            .map_err(map_err("RR_CURSOR"))
    }

    /// A region for two tables of `size` slots, or why there is none.
    pub(super) fn alloc_region(&mut self, size: u32) -> Result<Region> {
        let base = self
            .pool
            .alloc(2 * size)
            .ok_or_else(|| MapsError::TablePoolFull {
                size,
                need: 2 * size,
                free: self.pool.free_entries(),
                capacity: self.pool.capacity(),
            })?;
        Ok(Region { base, half: size })
    }

    /// Writes a VIP's entry: its `VIP_BY_ID` entry (key and flags) first,
    /// then `VIPS`; if `VIPS` refuses, the `VIP_BY_ID` entry is put back, so
    /// the two never disagree after a failed write.
    fn write_vip(&mut self, vip: &VipId, info: VipInfo) -> Result<()> {
        let id = info.vip_id;
        let before = self.vip_by_id.get(&id, 0).map_err(map_err("VIP_BY_ID"))?;
        let now = VipById {
            key: vip_key(vip),
            flags: info.flags,
        };
        if before != now {
            self.vip_by_id
                .set(id, now, 0)
                .map_err(map_err("VIP_BY_ID"))?;
        }
        if let Err(e) = self.vip_map.insert(vip_key(vip), info, 0) {
            if before != now {
                let _ = self.vip_by_id.set(id, before, 0);
            }
            return Err(map_err("VIPS")(e));
        }
        Ok(())
    }

    /// Points `VIP_ADDRS` for the VIP's (address, protocol) at the VIP that
    /// takes its IPv4 fragments: the port-less one if any, else the lowest
    /// port. Fragments after the first carry no port, so one VIP must serve
    /// them all for a datagram to stay on one backend.
    pub(super) fn sync_vip_addrs(&mut self, vip: &VipId) -> Result<()> {
        let key = AddrKey::new(vip.addr, vip.proto.number());
        let designated = lb_common::rules::fragment_vip_port(
            self.vips
                .keys()
                .filter(|v| v.addr == vip.addr && v.proto == vip.proto)
                .map(|v| v.port),
        )
        .map(|port| VipId { port, ..*vip });
        let designated = designated.as_ref();
        match designated {
            Some(v) => self
                .vip_addrs
                .insert(key, vip_key(v), 0)
                .map_err(map_err("VIP_ADDRS")),
            None => match self.vip_addrs.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                Err(e) => Err(map_err("VIP_ADDRS")(e)),
            },
        }
    }

    /// Sets the filter bits of every VIP (and of `extra`, one about to be
    /// added, with its flags), clears the rest; writes only the words that
    /// change. The VIP filter comes first: a bit it lacks passes a VIP's
    /// packets. The entry filter only spares stateless VIPs a lookup (a
    /// clear bit sends packets the `VIPS` way, which decides the same), so
    /// its bits may lag.
    pub(super) fn write_filter(&mut self, extra: Option<(&VipId, u32)>) -> Result<()> {
        let (mut vips, mut entries) = (Filter::empty(), Filter::empty());
        let all = self.vips.iter().map(|(v, s)| (v, vip_info(s).flags));
        for (vip, flags) in all.chain(extra) {
            let addr = addr_words(vip.addr).0;
            set_bit(&mut vips, lb_common::vip_filter_bit(&addr));
            if lb_common::rules::in_entry_filter(flags) {
                set_bit(
                    &mut entries,
                    lb_common::entry_filter_bit(&addr, vip.proto.number()),
                );
            }
        }
        self.vip_filter.write(&vips)?;
        self.entry_filter.write(&entries)
    }

    /// Maglev slots the last backend-set switch wrote into the maps (the rest
    /// of the table already held the right values).
    pub fn last_table_writes(&self) -> usize {
        self.last_table_writes
    }
}

/// Writes `table` from `base`, skipping entries that already hold the right
/// value (a small change to a large table is a few writes); returns how many
/// it wrote.
pub(super) fn write_table(
    mem: &TableMem,
    base: u32,
    table: &[u32],
    old: Option<&[u32]>,
) -> Result<usize> {
    let mut writes = 0;
    for (i, id) in table.iter().enumerate() {
        if old.is_some_and(|o| o.get(i) == Some(id)) {
            continue;
        }
        if !mem.set(base + i as u32, *id) {
            return Err(MapsError::Layout(format!(
                "Maglev slot {} is outside the table pool",
                base + i as u32
            )));
        }
        writes += 1;
    }
    mem.publish();
    Ok(writes)
}
