//! Least-connections bookkeeping on the user side: the `BACKEND_CONNS`
//! counters mapped into our memory (so corrections are atomic adds on the
//! same words the program adds to), and the reconcile that makes them match
//! the connection table again. The kernel never says when the LRU evicts an
//! entry or when an entry expires untouched, and a flow's entry can be
//! replaced (a SYN on a reused port) or counted twice (two CPUs racing its
//! first packet); a scan of the table is the only truth there is.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use super::mapping::Mapping;
use lb_common::{
    rules::{self, ConnScan},
    ConnCount, ConnEntry, FlowKey, VipKey, PROTO_TCP,
};

/// The counters, mapped.
pub struct ConnMem {
    mem: Mapping,
    entries: u32,
}

impl ConnMem {
    /// Maps an array of `entries` `ConnCount` made with `BPF_F_MMAPABLE`.
    pub fn map(fd: BorrowedFd<'_>, entries: u32) -> io::Result<ConnMem> {
        Ok(ConnMem {
            mem: Mapping::new(fd, entries as usize * size_of::<ConnCount>())?,
            entries,
        })
    }

    fn words(&self, id: u32) -> Option<(&AtomicU64, &AtomicU64)> {
        // SAFETY: in bounds of the mapping, which lives as long as `self`;
        // values are 16 bytes, so each word is 8-byte aligned.
        (id < self.entries).then(|| unsafe {
            let p = self.mem.base::<AtomicU64>().add(id as usize * 2);
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
    /// Corrections applied: (backend id, added to opened, added to closed).
    pub corrections: Vec<(u32, u64, u64)>,
}

/// Counts the entries of the connection table that the program counts as
/// active: counted, not closed, live by its idle timeout, and on a backend
/// the program would still take for the flow (`takes(flow, backend id)`);
/// reads `ids`' counts before and after.
pub fn scan_live(
    mem: &ConnMem,
    table: BorrowedFd<'_>,
    ids: &[u32],
    now_ns: u64,
    timeouts: Timeouts,
    takes: impl Fn(&FlowKey, u32) -> bool,
) -> io::Result<Scanned> {
    let before: Vec<ConnCount> = ids.iter().map(|id| mem.get(*id)).collect();
    let mut entries = 0;
    let mut live: BTreeMap<u32, u64> = BTreeMap::new();
    scan(table, |key, entry| {
        entries += 1;
        let timeout = if key.proto == PROTO_TCP {
            timeouts.tcp_ns
        } else {
            timeouts.udp_ns
        };
        let idle = now_ns.saturating_sub(entry.last_seen_ns);
        if rules::conn_open(entry.flags)
            && rules::conn_entry_live(idle, timeout)
            && takes(key, entry.backend_id)
        {
            *live.entry(entry.backend_id).or_default() += 1;
        }
    })?;
    let scans = ids
        .iter()
        .zip(before)
        .map(|(id, before)| {
            (
                *id,
                ConnScan {
                    before,
                    after: mem.get(*id),
                    live: live.get(id).copied().unwrap_or(0),
                },
            )
        })
        .collect();
    Ok(Scanned { entries, scans })
}

/// What a scan found, to be applied ([`Scanned::apply`]).
#[derive(Debug)]
pub struct Scanned {
    entries: u64,
    scans: Vec<(u32, ConnScan)>,
}

impl Scanned {
    /// Corrects each backend's counts by [`rules::conn_correction`].
    pub fn apply(self, mem: &ConnMem) -> Reconciled {
        let mut corrections = Vec::new();
        for (id, scan) in &self.scans {
            let (opened, closed) = rules::conn_correction(scan);
            if opened != 0 || closed != 0 {
                mem.add(*id, opened, closed);
                corrections.push((*id, opened, closed));
            }
        }
        Reconciled {
            entries: self.entries,
            corrections,
        }
    }
}

/// A reconcile taken out of the balancer, to run without holding whatever
/// guards it: a table scan takes a while (a million entries are 24 MiB
/// read in a few hundred system calls), and changes, health verdicts and
/// status must not wait for it.
pub struct ConnReconcile {
    mem: Arc<ConnMem>,
    table: OwnedFd,
    ids: Vec<u32>,
    /// The VIPs' ids by key, and each backend id's VIP id and whether the
    /// program takes entries naming it (in the set, not down): the data
    /// path's own test ([`rules::conn_backend_valid`]).
    vips: HashMap<VipKey, u32>,
    owners: HashMap<u32, (u32, bool)>,
    timeouts: Timeouts,
    /// The balancer's reset count when this was taken.
    resets: u64,
}

impl ConnReconcile {
    /// Reads the table; needs nothing of the balancer.
    pub fn scan(&self, now_ns: u64) -> io::Result<Scanned> {
        let takes = |flow: &FlowKey, id: u32| {
            let vip = rules::find_vip(flow, |k| self.vips.get(k).copied());
            self.owners
                .get(&id)
                .is_some_and(|(owner, valid)| *valid && Some(*owner) == vip)
        };
        scan_live(
            &self.mem,
            self.table.as_fd(),
            &self.ids,
            now_ns,
            self.timeouts,
            takes,
        )
    }

    /// The balancer's reset count when this was taken.
    pub fn resets(&self) -> u64 {
        self.resets
    }
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

    /// Backend ids given out again so far (their counts reset): a
    /// reconcile taken before the last one must not apply its corrections.
    pub fn conn_resets(&self) -> u64 {
        self.conn_resets
    }

    /// What a reconcile needs to scan on its own ([`ConnReconcile::scan`],
    /// without holding the balancer); `None` when no VIP counts
    /// connections. Its result is applied with [`Self::apply_conns`].
    pub fn conn_reconcile(&self) -> super::Result<Option<ConnReconcile>> {
        use crate::model::Scheduler;
        let mut ids = Vec::new();
        let mut vips = HashMap::new();
        let mut owners = HashMap::new();
        for (vip, s) in &self.vips {
            vips.insert(super::vip_key(vip), s.vip_id);
            for (b, id) in &s.backends {
                if s.settings.scheduler == Scheduler::LeastConnections {
                    ids.push(*id);
                }
                owners.insert(*id, (s.vip_id, s.fail_open || !s.down.contains(&b.addr)));
            }
        }
        if ids.is_empty() {
            return Ok(None);
        }
        let table = self
            .conntrack_fd
            .try_clone()
            .map_err(|e| super::MapsError::Options(format!("CONNTRACK descriptor: {e}")))?;
        Ok(Some(ConnReconcile {
            mem: self.conns.clone(),
            table,
            ids,
            vips,
            owners,
            timeouts: self.timeouts,
            resets: self.conn_resets,
        }))
    }

    /// Applies a scan taken from [`Self::conn_reconcile`] `job`, unless a
    /// backend id was given out again since (its counts restarted from
    /// zero, so the scan's view of it is stale): `None` then, and the next
    /// reconcile does it.
    pub fn apply_conns(&self, job: &ConnReconcile, scanned: Scanned) -> Option<Reconciled> {
        (job.resets() == self.conn_resets).then(|| scanned.apply(&self.conns))
    }

    /// A whole reconcile, here and now (tests, and whoever holds the
    /// balancer anyway).
    pub fn reconcile_conns(&self, now_ns: u64) -> super::Result<Reconciled> {
        let Some(job) = self.conn_reconcile()? else {
            return Ok(Reconciled::default());
        };
        let scanned = job
            .scan(now_ns)
            .map_err(|e| super::MapsError::Options(format!("reading the connection table: {e}")))?;
        Ok(self
            .apply_conns(&job, scanned)
            .expect("nothing was reset meanwhile: we hold the balancer"))
    }
}
