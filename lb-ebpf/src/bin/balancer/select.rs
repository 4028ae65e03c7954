//! Stage 4: the backend for a new flow, from the VIP's live Maglev table.

use lb_common::{maglev_slot, Counter, VipInfo, NO_BACKEND};

use crate::{maps::MAGLEV, Out};

/// The backend id in the slot `hash` selects. The VIP entry names the live
/// table (where it starts in `MAGLEV`) and its size together, so a concurrent
/// table switch is seen either wholly or not at all.
#[inline(always)]
pub fn by_table(vip: &VipInfo, hash: u32) -> Result<u32, Out> {
    if vip.table_size == 0 {
        return Err(Out::Drop(Counter::DropNoBackend));
    }
    let slot = maglev_slot(hash, vip.table_size);
    let id = MAGLEV
        .get(vip.table_base.wrapping_add(slot))
        .copied()
        .unwrap_or(NO_BACKEND);
    if id == NO_BACKEND {
        return Err(Out::Drop(Counter::DropNoBackend));
    }
    Ok(id)
}
