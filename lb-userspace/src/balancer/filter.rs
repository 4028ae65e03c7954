//! The VIP filter and the entry filter: bitmaps in arrays of `u64` words,
//! rebuilt whole from the VIPs (`Balancer::write_filter`), each with a copy
//! of what its map holds so that only the words that change are written.

use aya::maps::{Array, MapData};

use super::error::{map_err, Result};

pub(super) struct Filter {
    map: Array<MapData, u64>,
    /// What `map` holds.
    words: Vec<u64>,
    name: &'static str,
}

impl Filter {
    /// Takes `map` (made fresh or adopted) with what it holds.
    pub(super) fn read(map: Array<MapData, u64>, name: &'static str) -> Result<Filter> {
        let words = (0..lb_common::VIP_FILTER_WORDS)
            .map(|i| map.get(&i, 0))
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err(name))?;
        Ok(Filter { map, words, name })
    }

    /// A cleared bitmap of the filters' size, to set bits in.
    pub(super) fn empty() -> Vec<u64> {
        vec![0; lb_common::VIP_FILTER_WORDS as usize]
    }

    /// Writes the words of `want` that differ from what the map holds.
    pub(super) fn write(&mut self, want: &[u64]) -> Result<()> {
        for (i, (w, have)) in want.iter().zip(self.words.iter_mut()).enumerate() {
            if w != have {
                self.map.set(i as u32, *w, 0).map_err(map_err(self.name))?;
                *have = *w;
            }
        }
        Ok(())
    }

    /// Whether the map itself (not the copy) has `bit` set.
    pub(super) fn has(&self, bit: u32) -> Result<bool> {
        let word = self.map.get(&(bit / 64), 0).map_err(map_err(self.name))?;
        Ok(word & (1 << (bit % 64)) != 0)
    }
}

pub(super) fn set_bit(words: &mut [u64], bit: u32) {
    words[(bit / 64) as usize] |= 1 << (bit % 64);
}
