//! The one-entry maps user space switches: encapsulation sources, ICMP
//! "too big" answers, egress ports, the decision trace.

use std::net::IpAddr;

use lb_common::{debug::DebugConfig, user::addr_words, LbConfig};

use super::{
    error::{map_err, Result},
    Balancer, MapsError,
};
use crate::{
    model::{defaults::TOO_BIG_MAX_BURST, EncapSources},
    trace::Pending,
};

impl Balancer {
    /// Sets the outer source addresses for `ipip`.
    pub fn set_encap_sources(&mut self, src: &EncapSources) -> Result<()> {
        let mut cfg = LbConfig {
            src_v4: 0,
            src_v4_hostmask: 0,
            src_v6: [0; 4],
            src_v6_hostmask: 0,
            ..self.lb_config
        };
        if let Some((a, len)) = src.v4 {
            cfg.src_v4 = u32::from_ne_bytes(a.octets());
            cfg.src_v4_hostmask = host_mask(len.min(32), 32);
        }
        if let Some((a, len)) = src.v6 {
            cfg.src_v6 = addr_words(IpAddr::V6(a)).0;
            // Only the last 32 bits vary; a shorter prefix still uses them.
            cfg.src_v6_hostmask = host_mask(len.clamp(96, 128) - 96, 32);
        }
        self.config.set(0, cfg, 0).map_err(map_err("LB_CONFIG"))?;
        self.lb_config = cfg;
        Ok(())
    }

    /// Whether (and how often per second and CPU) a packet too big for the
    /// egress MTU is answered with ICMP; `None`: dropped, counted.
    pub fn set_too_big(&mut self, per_sec: Option<u32>) -> Result<()> {
        let cfg = LbConfig {
            too_big_icmp: u32::from(per_sec.is_some()),
            too_big_per_sec: per_sec.unwrap_or(0),
            too_big_burst: per_sec.unwrap_or(0).clamp(1, TOO_BIG_MAX_BURST),
            ..self.lb_config
        };
        self.config.set(0, cfg, 0).map_err(map_err("LB_CONFIG"))?;
        self.lb_config = cfg;
        Ok(())
    }

    /// The interface's MAC: frames to any other destination MAC pass
    /// (counted `pass_other_host`). All zero switches the check off.
    pub fn set_interface_mac(&mut self, mac: [u8; 6]) -> Result<()> {
        let cfg = LbConfig {
            if_mac: mac,
            ..self.lb_config
        };
        self.config.set(0, cfg, 0).map_err(map_err("LB_CONFIG"))?;
        self.lb_config = cfg;
        Ok(())
    }

    /// The MAC the check compares with (all zero: none).
    pub fn interface_mac(&self) -> [u8; 6] {
        self.lb_config.if_mac
    }

    /// Lets the program redirect to `ifindex` (an egress other than the
    /// interface a packet came in on). The kernel resolves `ifindex` in the
    /// calling thread's network namespace: call this from the namespace of
    /// the interfaces (lbd runs there).
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<()> {
        self.tx_ports
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| MapsError::Options(format!("TX_PORTS: {e}")))
    }

    /// Switches the decision trace (see `lb_common::debug`).
    pub fn set_trace(&mut self, cfg: DebugConfig) -> Result<()> {
        self.debug.set(0, cfg, 0).map_err(map_err("DEBUG"))
    }

    /// Trace records the rate limit refused, summed over CPUs.
    pub fn trace_suppressed(&self) -> u64 {
        self.debug_bucket
            .get(&0, 0)
            .map(|v| v.iter().map(|b| b.refused).sum())
            .unwrap_or(0)
    }

    /// The reader of the trace's records, for the task that polls it
    /// (`None` once taken).
    pub fn take_trace_reader(&mut self) -> Option<aya_log::EbpfLogger<Pending>> {
        self.trace_reader.take()
    }

    /// What the trace reader parsed and nobody has named yet.
    pub fn trace_pending(&self) -> Pending {
        self.trace_pending.clone()
    }
}

/// The host bits of a `prefix_len` prefix of a `bits`-bit word, in packet
/// byte order.
fn host_mask(prefix_len: u8, bits: u8) -> u32 {
    let host = bits - prefix_len.min(bits);
    let mask = if host >= 32 {
        u32::MAX
    } else {
        (1u32 << host) - 1
    };
    mask.to_be()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn host_masks() {
        assert_eq!(host_mask(32, 32), 0);
        assert_eq!(host_mask(24, 32), u32::from_ne_bytes([0, 0, 0, 255]));
        assert_eq!(host_mask(0, 32), u32::MAX);
        assert_eq!(u32::from_ne_bytes([0, 0, 0xff, 0xff]), host_mask(16, 32));
    }
}
