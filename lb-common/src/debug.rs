//! The per-packet decision trace (`lbctl debug on`): what the program and
//! user space agree on. Off by default; while off, the program's only cost
//! is one array lookup per packet. While on, each traced packet writes one
//! aya-log record, at most [`DEBUG_EVENTS_PER_SEC`] per CPU per second (a
//! token bucket, bursts up to [`DEBUG_BURST`]), so a trace cannot flood the
//! log; what the bucket refuses is counted.
//!
//! A record is the word `lbtrace` and then [`DEBUG_FIELDS`] decimal numbers
//! in the order of [`DebugEvent`]'s fields; user space parses it back and
//! names the VIP, backend and outcome.

/// Events per second and CPU a trace may write.
pub const DEBUG_EVENTS_PER_SEC: u64 = 200;
/// Events a CPU may write at once after a quiet spell.
pub const DEBUG_BURST: u64 = 50;
/// `DebugConfig::vip_id` meaning every VIP.
pub const DEBUG_ALL_VIPS: u32 = u32::MAX;
/// The longest a trace may run before it switches itself off.
pub const DEBUG_MAX_SECONDS: u64 = 3600;
/// A trace's length when none is given.
pub const DEBUG_DEFAULT_SECONDS: u64 = 60;

/// `DEBUG[0]`, written by user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DebugConfig {
    /// Non-zero: trace.
    pub enabled: u32,
    /// Only this VIP's packets (`VipInfo::vip_id`), or [`DEBUG_ALL_VIPS`].
    pub vip_id: u32,
    /// CLOCK_MONOTONIC (the data path's clock, `clock`) after which the
    /// program stops tracing even if nobody switched it off.
    pub until_ns: u64,
}
const _: () = assert!(size_of::<DebugConfig>() == 16);

/// `DEBUG_BUCKET[0]`, per CPU, written by the program only.
pub type DebugBucket = crate::bucket::TokenBucket;

/// Whether the trace's bucket lets one more record through at `now_ns`.
#[inline(always)]
pub fn debug_take(bucket: &mut DebugBucket, now_ns: u64) -> bool {
    crate::bucket::take(bucket, now_ns, DEBUG_EVENTS_PER_SEC, DEBUG_BURST)
}

/// Whether a packet of VIP `vip_id` is traced under `cfg` at `now_ns`.
#[inline(always)]
pub fn debug_wanted(cfg: &DebugConfig, vip_id: u32, now_ns: u64) -> bool {
    cfg.enabled != 0
        && now_ns <= cfg.until_ns
        && (cfg.vip_id == DEBUG_ALL_VIPS || cfg.vip_id == vip_id)
}

/// `DEBUG_SCRATCH[0]`, per CPU: the balancer writes a traced packet's
/// decision here and tail-calls the trace program, which writes the record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DebugDecision {
    pub flow: crate::maps::FlowKey,
    /// The XDP action the balancer returns (the trace program returns it too).
    pub action: u32,
    pub counter: u32,
    pub vip_id: u32,
    pub backend_id: u32,
    pub source: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<DebugDecision>() == 64);

/// How the backend was chosen.
pub const DEBUG_SOURCE_NONE: u32 = 0;
pub const DEBUG_SOURCE_TABLE: u32 = 1;
pub const DEBUG_SOURCE_CONNTRACK: u32 = 2;

/// Numbers in a record after `lbtrace`.
pub const DEBUG_FIELDS: usize = 17;

/// One traced decision, as the record carries it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DebugEvent {
    pub family: u32,
    /// Source and destination address words, in packet byte order.
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Host byte order.
    pub sport: u32,
    pub dport: u32,
    pub proto: u32,
    /// The XDP action.
    pub action: u32,
    /// The `Counter` that says why (for passes and drops; else the action's).
    pub counter: u32,
    pub vip_id: u32,
    /// `NO_BACKEND` when none was chosen.
    pub backend_id: u32,
    /// `DEBUG_SOURCE_*`.
    pub source: u32,
}

impl DebugEvent {
    /// Parses a record's text (`lbtrace n n ...`); `None` for anything else.
    pub fn parse(text: &str) -> Option<DebugEvent> {
        let mut words = text.split_ascii_whitespace();
        if words.next()? != "lbtrace" {
            return None;
        }
        let mut n = [0u32; DEBUG_FIELDS];
        for v in n.iter_mut() {
            *v = words.next()?.parse().ok()?;
        }
        if words.next().is_some() {
            return None;
        }
        Some(DebugEvent {
            family: n[0],
            src: [n[1], n[2], n[3], n[4]],
            dst: [n[5], n[6], n[7], n[8]],
            sport: n[9],
            dport: n[10],
            proto: n[11],
            action: n[12],
            counter: n[13],
            vip_id: n[14],
            backend_id: n[15],
            source: n[16],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_expiry() {
        let cfg = DebugConfig {
            enabled: 1,
            vip_id: 3,
            until_ns: 100,
        };
        assert!(debug_wanted(&cfg, 3, 100));
        assert!(!debug_wanted(&cfg, 4, 100));
        assert!(!debug_wanted(&cfg, 3, 101));
        let all = DebugConfig {
            vip_id: DEBUG_ALL_VIPS,
            ..cfg
        };
        assert!(debug_wanted(&all, 9, 50));
        assert!(!debug_wanted(&DebugConfig::default(), 0, 0));
    }

    #[test]
    fn records_parse_back() {
        let text = "lbtrace 4 1 0 0 0 2 0 0 0 5555 80 6 3 2 7 12 2";
        let e = DebugEvent::parse(text).unwrap();
        assert_eq!(
            (e.family, e.src[0], e.dport, e.backend_id, e.source),
            (4, 1, 80, 12, 2)
        );
        assert_eq!(DebugEvent::parse("lbtrace 1 2"), None);
        assert_eq!(DebugEvent::parse(&format!("{text} 9")), None);
        assert_eq!(DebugEvent::parse("other 4"), None);
    }
}
