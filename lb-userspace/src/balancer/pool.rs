//! Space in the `MAGLEV` array. Every VIP owns one region of it, two tables of
//! its table size side by side (the live one and the one the next change is
//! written into), so VIPs with small tables cost little and the array's size
//! is one load-time number instead of VIPs × the largest table.
//!
//! First fit over a sorted free list, with neighbours merged on free: regions
//! come and go only when VIPs are added, removed or resized.

use std::collections::BTreeMap;

#[derive(Debug)]
pub struct TablePool {
    /// Free ranges: start → length. Never two touching ranges.
    free: BTreeMap<u32, u32>,
    capacity: u32,
}

impl TablePool {
    pub fn new(capacity: u32) -> TablePool {
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        TablePool { free, capacity }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Entries not in any region.
    pub fn free_entries(&self) -> u64 {
        self.free.values().map(|l| u64::from(*l)).sum()
    }

    /// The start of a new region of `len` entries, or `None` when no free
    /// range is that long.
    pub fn alloc(&mut self, len: u32) -> Option<u32> {
        if len == 0 {
            return None;
        }
        let (&start, &have) = self.free.iter().find(|(_, l)| **l >= len)?;
        self.free.remove(&start);
        if have > len {
            self.free.insert(start + len, have - len);
        }
        Some(start)
    }

    /// Marks `[start, start+len)` as used: a region found in adopted maps.
    /// `false` when any of it is not free (overlap or out of range).
    pub fn reserve(&mut self, start: u32, len: u32) -> bool {
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        let Some((&fstart, &flen)) = self.free.range(..=start).next_back() else {
            return false;
        };
        if len == 0 || fstart + flen < end {
            return false;
        }
        self.free.remove(&fstart);
        if fstart < start {
            self.free.insert(fstart, start - fstart);
        }
        if end < fstart + flen {
            self.free.insert(end, fstart + flen - end);
        }
        true
    }

    /// Returns a region to the pool, merging it with free neighbours.
    pub fn release(&mut self, start: u32, len: u32) {
        if len == 0 {
            return;
        }
        let (mut start, mut len) = (start, len);
        if let Some((&pstart, &plen)) = self.free.range(..start).next_back() {
            if pstart + plen == start {
                self.free.remove(&pstart);
                start = pstart;
                len += plen;
            }
        }
        if let Some(&nlen) = self.free.get(&(start + len)) {
            self.free.remove(&(start + len));
            len += nlen;
        }
        self.free.insert(start, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_and_merge() {
        let mut p = TablePool::new(100);
        let a = p.alloc(30).unwrap();
        let b = p.alloc(30).unwrap();
        let c = p.alloc(30).unwrap();
        assert_eq!((a, b, c), (0, 30, 60));
        assert_eq!(p.alloc(11), None, "only 10 left");
        p.release(b, 30);
        assert_eq!(p.free_entries(), 40);
        // The hole in the middle is the first fit.
        assert_eq!(p.alloc(20), Some(30));
        p.release(30, 20);
        p.release(a, 30);
        p.release(c, 30);
        // Everything merged back into one range.
        assert_eq!(p.free.len(), 1);
        assert_eq!(p.alloc(100), Some(0));
    }

    #[test]
    fn reserve_adopted_regions() {
        let mut p = TablePool::new(100);
        assert!(p.reserve(40, 20));
        assert!(!p.reserve(50, 20), "overlaps");
        assert!(!p.reserve(90, 20), "past the end");
        assert!(p.reserve(0, 40));
        assert_eq!(p.alloc(41), None);
        assert_eq!(p.alloc(40), Some(60));
        assert_eq!(p.free_entries(), 0);
    }

    #[test]
    fn no_empty_regions() {
        let mut p = TablePool::new(10);
        assert_eq!(p.alloc(0), None);
        assert!(!p.reserve(3, 0));
        let mut empty = TablePool::new(0);
        assert_eq!(empty.alloc(1), None);
    }
}
