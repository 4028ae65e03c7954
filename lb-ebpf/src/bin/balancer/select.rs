//! Stage 4: the backend for a new flow, from the VIP's live Maglev table.

use lb_common::{rules, Counter, VipInfo, NO_BACKEND};

use crate::{maps::MAGLEV, Out};

/// The backend id in the slot `hash` selects. The VIP entry names the live
/// table (where it starts in `MAGLEV`) and its size together, so a concurrent
/// table switch is seen either wholly or not at all.
#[inline(always)]
pub fn by_table(vip: &VipInfo, hash: u32) -> Result<u32, Out> {
    let index = rules::table_index(vip, hash).ok_or(Out::Drop(Counter::DropNoBackend))?;
    let id = MAGLEV.get(index).copied().unwrap_or(NO_BACKEND);
    if id == NO_BACKEND {
        return Err(Out::Drop(Counter::DropNoBackend));
    }
    Ok(id)
}
