//! The previous release's per-packet figures, for the headline table: what
//! each change to the data path is held against. Net ns over the wrapper +
//! `XDP_PASS` floor (the headline table's method: the previous bench's "ns
//! over the floor" column), from the previous release's own bench
//! (`--only packet`) on the machine kind the figures in the README come
//! from; replace them with the current figures when a release is cut.

pub struct Row {
    /// The scenario's name and family in the main table.
    pub scenario: &'static str,
    pub family: &'static str,
    /// Its name in the headline table.
    pub label: &'static str,
    pub net_ns: f64,
}

pub const SOURCE: &str = "previous release: adcf344 (an established packet finds its VIP through its entry; the coarse-clock call on every packet), its own `cargo xtask bench --only packet` on the 2-CPU VM (AMD EPYC), 2026-12-04 (8M-entry table, load average 1.3 at the end): the machine is noisy, so a ratio here is a direction, and an interleaved A/B run of both builds is the figure to quote";

pub const ROWS: &[Row] = &[
    Row {
        scenario: "established flow (table hit), IPIP",
        family: "IPv4",
        label: "established flow → IPIP",
        net_ns: 104.0,
    },
    Row {
        scenario: "established flow (table hit), IP6IP6",
        family: "IPv6",
        label: "established flow → IP6IP6",
        net_ns: 111.0,
    },
    Row {
        scenario: "new flow, empty table (TCP ACK: miss, Maglev, insert)",
        family: "IPv4",
        label: "new flow each packet (TCP ACK: miss, Maglev, insert)",
        net_ns: 464.0,
    },
    Row {
        scenario: "not a VIP: pass-through",
        family: "IPv4",
        label: "not a VIP",
        net_ns: 6.0,
    },
    Row {
        scenario: "VIP packet dropped as malformed (L4 truncated)",
        family: "IPv4",
        label: "malformed VIP packet (L4 truncated)",
        net_ns: 42.0,
    },
];
