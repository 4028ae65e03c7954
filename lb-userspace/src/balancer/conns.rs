//! Least-connections bookkeeping on the user side: the `BACKEND_CONNS`
//! counters mapped into our memory (so corrections are atomic adds on the
//! same words the program adds to), and the reconcile that makes them match
//! the connection table again. The kernel never says when the LRU evicts an
//! entry or when an entry expires untouched, and a flow's entry can be
//! replaced (a SYN on a reused port) or counted twice (two CPUs racing its
//! first packet); a scan of the table is the only truth there is.

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use lb_common::{
    rules::{self, ConnScan},
    ConnCount, ConnEntry, FlowKey, PROTO_TCP,
};

/// The counters, mapped.
pub struct ConnMem {
    base: NonNull<AtomicU64>,
    entries: u32,
    bytes: usize,
}

// SAFETY: shared memory owned by this value, reached only through atomics.
unsafe impl Send for ConnMem {}
// SAFETY: as for Send.
unsafe impl Sync for ConnMem {}

impl ConnMem {
    /// Maps an array of `entries` `ConnCount` made with `BPF_F_MMAPABLE`.
    pub fn map(fd: BorrowedFd<'_>, entries: u32) -> io::Result<ConnMem> {
        let bytes = entries as usize * size_of::<ConnCount>();
        // SAFETY: a fresh shared mapping of the map's memory; the kernel
        // checks the length against the map and the flag.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<AtomicU64>()).ok_or(io::ErrorKind::InvalidData)?;
        Ok(ConnMem {
            base,
            entries,
            bytes,
        })
    }

    fn words(&self, id: u32) -> Option<(&AtomicU64, &AtomicU64)> {
        // SAFETY: in bounds of the mapping, which lives as long as `self`;
        // values are 16 bytes, so each word is 8-byte aligned.
        (id < self.entries).then(|| unsafe {
            let p = self.base.as_ptr().add(id as usize * 2);
            (&*p, &*p.add(1))
        })
    }

    pub fn get(&self, id: u32) -> ConnCount {
        self.words(id)
            .map_or(ConnCount::default(), |(o, c)| ConnCount {
                opened: o.load(Ordering::Relaxed),
                closed: c.load(Ordering::Relaxed),
            })
    }

    /// Adds to the counts, atomically with the program's adds.
    pub fn add(&self, id: u32, opened: u64, closed: u64) {
        if let Some((o, c)) = self.words(id) {
            o.fetch_add(opened, Ordering::Relaxed);
            c.fetch_add(closed, Ordering::Relaxed);
        }
    }

    /// Makes the counts of a backend id that is given out again start from
    /// zero (the next reconcile adds the old entries that still name it,
    /// which the data path would now send to its new backend).
    pub fn reset(&self, id: u32) {
        let c = self.get(id);
        self.add(id, c.opened.wrapping_neg(), c.closed.wrapping_neg());
    }
}

impl Drop for ConnMem {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}

/// Idle timeouts by protocol, as the program was loaded with.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub tcp_ns: u64,
    pub udp_ns: u64,
}

/// What a reconcile found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Entries in the connection table.
    pub entries: u64,
    /// Counted, open and live entries per backend id.
    pub live: BTreeMap<u32, u64>,
    /// Corrections applied: (backend id, added to opened, added to closed).
    pub corrections: Vec<(u32, u64, u64)>,
}

/// Counts the entries of the connection table that the program counts as
/// active: counted, not closed, live by its idle timeout, on a backend id
/// in `ids` (`is_valid` says whether the program would still take the
/// entry's backend). Then corrects each id's counts by
/// [`rules::conn_correction`] against counts read before and after.
pub fn reconcile(
    mem: &ConnMem,
    table: BorrowedFd<'_>,
    ids: &[u32],
    now_ns: u64,
    timeouts: Timeouts,
    is_valid: impl Fn(u32) -> bool,
) -> io::Result<Reconciled> {
    let before: Vec<ConnCount> = ids.iter().map(|id| mem.get(*id)).collect();
    let mut out = Reconciled::default();
    scan(table, |key, entry| {
        out.entries += 1;
        let timeout = if key.proto == PROTO_TCP {
            timeouts.tcp_ns
        } else {
            timeouts.udp_ns
        };
        let idle = now_ns.saturating_sub(entry.last_seen_ns);
        if rules::conn_open(entry.flags)
            && rules::conn_entry_live(idle, timeout)
            && is_valid(entry.backend_id)
        {
            *out.live.entry(entry.backend_id).or_default() += 1;
        }
    })?;
    for (id, before) in ids.iter().zip(before) {
        let scan = ConnScan {
            before,
            after: mem.get(*id),
            live: out.live.get(id).copied().unwrap_or(0),
        };
        let (opened, closed) = rules::conn_correction(&scan);
        if opened != 0 || closed != 0 {
            mem.add(*id, opened, closed);
            out.corrections.push((*id, opened, closed));
        }
    }
    Ok(out)
}

/// Entries per `BPF_MAP_LOOKUP_BATCH` call: a bucket holds far fewer.
const BATCH: usize = 4096;

/// Calls `f` with every entry of the connection table, read in batches of
/// whole hash buckets (`BPF_MAP_LOOKUP_BATCH`: one system call per few
/// thousand entries, and no entry seen twice or skipped because another
/// was deleted meanwhile, as a key-by-key walk can).
pub fn scan(table: BorrowedFd<'_>, mut f: impl FnMut(&FlowKey, &ConnEntry)) -> io::Result<()> {
    let mut keys = vec![FlowKey::default(); BATCH];
    let mut values = vec![ConnEntry::default(); BATCH];
    let mut token = 0u32;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw const token as u64 },
            out_batch: &raw mut token as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: table.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        first = false;
        // SAFETY: the attribute names buffers of `count` keys and values of
        // the map's sizes, which live across the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        for i in 0..attr.count as usize {
            f(&keys[i], &values[i]);
        }
        match err {
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) => return Err(e),
        }
    }
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

impl super::Balancer {
    /// Whether any VIP counts connections (least-connections): only then is
    /// there anything to reconcile.
    pub fn counts_conns(&self) -> bool {
        self.vips
            .values()
            .any(|s| s.settings.scheduler == crate::model::Scheduler::LeastConnections)
    }

    /// Active connections of each backend of a least-connections VIP, as
    /// the data path counts them (`None`: no such VIP, or another
    /// scheduler).
    pub fn active_conns(&self, vip: &crate::model::VipId) -> Option<Vec<(std::net::IpAddr, u64)>> {
        let s = self.vips.get(vip)?;
        (s.settings.scheduler == crate::model::Scheduler::LeastConnections).then(|| {
            s.backends
                .iter()
                .map(|(b, id)| (b.addr, rules::active_conns(&self.conns.get(*id))))
                .collect()
        })
    }

    /// A backend id's counts (tests, `lbctl explain`).
    pub fn conn_counts(&self, id: u32) -> ConnCount {
        self.conns.get(id)
    }

    /// Makes the counts of every least-connections backend match the
    /// connection table (see [`reconcile`]); `now_ns` is CLOCK_MONOTONIC.
    pub fn reconcile_conns(&self, now_ns: u64) -> super::Result<Reconciled> {
        use std::os::fd::AsFd;
        // Ids the data path still takes entries for: a backend in its VIP's
        // set and not down (unless the VIP fails open).
        let mut valid = std::collections::BTreeSet::new();
        let mut ids = Vec::new();
        for s in self.vips.values() {
            let counted = s.settings.scheduler == crate::model::Scheduler::LeastConnections;
            for (b, id) in &s.backends {
                if counted {
                    ids.push(*id);
                }
                if s.fail_open || !s.down.contains(&b.addr) {
                    valid.insert(*id);
                }
            }
        }
        if ids.is_empty() {
            return Ok(Reconciled::default());
        }
        reconcile(
            &self.conns,
            self.conntrack_fd.as_fd(),
            &ids,
            now_ns,
            self.timeouts,
            |id| valid.contains(&id),
        )
        .map_err(|e| super::MapsError::Options(format!("reading the connection table: {e}")))
    }
}
