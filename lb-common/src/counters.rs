//! The balancer's global outcome counters: one enum, so the data path, the
//! metrics labels, the CLI and the tests share names.
//!
//! Each packet bumps exactly one `Action*` counter; drops also bump one `Drop*`
//! reason, VIP packets one `Conn*` result (when the VIP is stateful), and the
//! other counters mark cases an operator wants to see (ICMP, fragments,
//! too big, the trace).

/// What a counter counts, for grouping into metrics families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    /// The XDP action returned (`lb_xdp_actions_total{action}`).
    Action,
    /// Why a packet was dropped (`lb_drops_total{reason}`).
    Drop,
    /// Connection-table lookup result (`lb_conntrack_lookups_total{result}`).
    Conntrack,
    /// Everything else (`lb_events_total{event}`).
    Event,
}

macro_rules! counters {
    ($($(#[$doc:meta])* $variant:ident = $kind:ident $label:literal,)+) => {
        /// Index into the `STATS` per-CPU array.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter { $($(#[$doc])* $variant,)+ }

        impl Counter {
            /// Every counter, in index order.
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)+];

            /// The metrics label (`snake_case`).
            pub const fn label(self) -> &'static str {
                match self { $(Counter::$variant => $label,)+ }
            }

            pub const fn kind(self) -> CounterKind {
                match self { $(Counter::$variant => CounterKind::$kind,)+ }
            }
        }
    };
}

counters! {
    ActionPass = Action "pass",
    ActionDrop = Action "drop",
    ActionTx = Action "tx",
    ActionRedirect = Action "redirect",

    // Passed, not ours: counted so an operator can see what the balancer ignores.
    PassNotIp = Event "pass_not_ip",
    PassNotVip = Event "pass_not_vip",
    /// Too short or malformed to tell whether it is for a VIP.
    PassMalformed = Event "pass_malformed",
    /// ICMP to a VIP address that is not an error about a VIP flow (e.g. echo).
    PassIcmp = Event "pass_icmp",
    /// For a VIP address, but in a frame addressed to another MAC than the
    /// interface's: a flooded frame that another balancer serves.
    PassOtherHost = Event "pass_other_host",

    DropTruncated = Drop "truncated",
    DropBadHeader = Drop "bad_header",
    DropNoBackend = Drop "no_backend",
    DropBadBackend = Drop "bad_backend",
    DropNoHeadroom = Drop "no_headroom",
    DropFibFailed = Drop "fib_failed",
    DropRedirectFailed = Drop "redirect_failed",
    DropIcmpMalformed = Drop "icmp_malformed",
    /// Too big for the egress MTU after encapsulation, IPv4 without DF:
    /// XDP cannot fragment, and the kernel has no tunnel to do it with.
    DropTooBigNoDf = Drop "too_big_no_df",
    /// Too big, and answering with ICMP is switched off.
    DropTooBig = Drop "too_big",
    /// Too big, and the ICMP answer's rate limit was reached.
    DropTooBigRateLimited = Drop "too_big_rate_limited",
    /// Too big, and too short or garbled to be answered.
    DropTooBigMalformed = Drop "too_big_malformed",

    ConnHit = Conntrack "hit",
    ConnMiss = Conntrack "miss",
    /// An entry existed but was idle past its timeout (also a miss).
    ConnExpired = Conntrack "expired",
    /// An entry pointed at a backend that is gone or down (also a miss).
    ConnStale = Conntrack "stale",
    /// Table full or insert failed: the flow is forwarded without state.
    ConnInsertFailed = Conntrack "insert_failed",

    /// Backend without a resolved next hop: `bpf_fib_lookup` was used.
    NexthopFib = Event "nexthop_fib",
    /// The FIB has no neighbour yet: passed to the kernel to resolve it.
    NexthopUnresolved = Event "nexthop_unresolved",
    Ipv4Fragment = Event "ipv4_fragment",
    IcmpFragNeeded = Event "icmp_frag_needed",
    IcmpDestUnreach = Event "icmp_dest_unreach",
    IcmpPacketTooBig = Event "icmpv6_packet_too_big",
    Icmpv6DestUnreach = Event "icmpv6_dest_unreach",
    /// ICMP error about a VIP flow whose VIP no longer exists.
    IcmpUnknownFlow = Event "icmp_unknown_flow",
    /// "Fragmentation needed" / "packet too big" sent to a client by the
    /// balancer (the packet itself is not forwarded).
    IcmpTooBigSent = Event "icmp_too_big_sent",
    /// A least-connections flow stopped counting as active on its backend
    /// (its FIN or RST, or its entry found expired or stale).
    ConnUncounted = Event "conn_uncounted",
}

/// Counters defined.
pub const COUNTER_COUNT: u32 = Counter::ALL.len() as u32;
/// Size of the `STATS` array: room for counters to come without a new map
/// layout.
pub const COUNTER_SLOTS: u32 = 64;
const _: () = assert!(COUNTER_COUNT <= COUNTER_SLOTS);

/// The decap program's counters (`DECAP_STATS` per-CPU array).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapCounter {
    /// Tunnel packet to one of our addresses, inner packet handed to the stack.
    Decapsulated,
    /// Not a tunnel packet for us: passed unchanged.
    Passed,
    /// Tunnel packet for us that is malformed: dropped.
    Malformed,
}

pub const DECAP_COUNTER_COUNT: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_labels_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            for d in &Counter::ALL[i + 1..] {
                assert!(c.label() != d.label() || c.kind() != d.kind());
            }
        }
    }
}
