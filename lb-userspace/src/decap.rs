//! The backend-side decap program: load, configure tunnel addresses, attach.

use std::net::IpAddr;

use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
    Ebpf,
};
use lb_common::{counters::DecapCounter, AddrKey};

use crate::{model::AttachMode, objects};

pub const PROGRAM_NAME: &str = "lb_decap";
/// The TC egress program that clamps the MSS of SYN-ACKs sent from a VIP.
pub const CLAMP_PROGRAM_NAME: &str = "lb_mss_clamp";
/// Where the clamp's TC link is pinned, in decap's directory.
pub const CLAMP_PIN: &str = "tc-egress";

/// `--clamp-mss`: a value, or `auto` (from the interface's MTU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClampMss {
    Auto,
    Value(u16),
}

impl std::str::FromStr for ClampMss {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(ClampMss::Auto);
        }
        match s.parse::<u16>() {
            Ok(n) if (536..=9000).contains(&n) => Ok(ClampMss::Value(n)),
            _ => Err(format!("{s:?}: auto, or an MSS of 536..=9000")),
        }
    }
}

impl ClampMss {
    /// The largest MSS per family: `auto` leaves room, within the
    /// interface's MTU, for the balancer's outer header and the inner IP
    /// and TCP headers (IPv4: 20 + 20 + 20, IPv6: 40 + 40 + 20).
    pub fn per_family(self, mtu: u32) -> lb_common::MssClamp {
        match self {
            ClampMss::Value(n) => lb_common::MssClamp { v4: n, v6: n },
            ClampMss::Auto => lb_common::MssClamp {
                v4: mtu.saturating_sub(60).min(u16::MAX as u32) as u16,
                v6: mtu.saturating_sub(100).min(u16::MAX as u32) as u16,
            },
        }
    }
}

/// Decap counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapCounters {
    pub decapsulated: u64,
    pub passed: u64,
    pub malformed: u64,
}

pub struct Decap {
    ebpf: Ebpf,
    addrs: HashMap<MapData, AddrKey, u32>,
    stats: PerCpuArray<MapData, u64>,
    /// The MSS clamp's setting, once its program is loaded.
    clamp: Option<aya::maps::Array<MapData, lb_common::MssClamp>>,
}

impl Decap {
    pub fn load() -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(objects::DECAP)?;
        let addrs = ebpf
            .take_map("DECAP_ADDRS")
            .ok_or_else(|| anyhow::anyhow!("no DECAP_ADDRS map"))?
            .try_into()?;
        let stats = ebpf
            .take_map("DECAP_STATS")
            .ok_or_else(|| anyhow::anyhow!("no DECAP_STATS map"))?
            .try_into()?;
        let mut d = Decap {
            ebpf,
            addrs,
            stats,
            clamp: None,
        };
        d.program().load()?;
        Ok(d)
    }

    pub fn program(&mut self) -> &mut Xdp {
        let p = self
            .ebpf
            .program_mut(PROGRAM_NAME)
            .expect("object has the decap program");
        p.try_into().expect("decap program is XDP")
    }

    /// Accepts tunnel packets whose outer destination is `addr`.
    pub fn add_address(&mut self, addr: IpAddr) -> anyhow::Result<()> {
        self.addrs.insert(AddrKey::new(addr, 0), 1, 0)?;
        Ok(())
    }

    /// Attaches to `interface`; returns the mode that took.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> anyhow::Result<XdpMode> {
        let prog = self.program();
        let m = match mode {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
            AttachMode::Auto => match prog.attach(interface, XdpMode::Driver) {
                Ok(_) => return Ok(XdpMode::Driver),
                Err(_) => XdpMode::Skb,
            },
        };
        prog.attach(interface, m)?;
        Ok(m)
    }

    /// Attaches and pins the link under `dir`, so the program stays after
    /// this process exits; a link pinned there before has its program
    /// replaced atomically instead.
    pub fn attach_pinned(
        &mut self,
        interface: &str,
        mode: AttachMode,
        dir: &std::path::Path,
    ) -> anyhow::Result<XdpMode> {
        use aya::programs::{links::FdLink, links::PinnedLink, xdp::XdpLink};
        std::fs::create_dir_all(dir)?;
        for (name, m) in [
            ("link-native", XdpMode::Driver),
            ("link-generic", XdpMode::Skb),
        ] {
            let path = dir.join(name);
            if path.exists() {
                let link = XdpLink::try_from(FdLink::from(PinnedLink::from_pin(&path)?))?;
                match self.program().attach_to_link(link) {
                    Ok(_) => return Ok(m),
                    // Severed: its interface is gone. Attach anew below.
                    Err(e) => {
                        tracing::warn!(link = %path.display(), "pinned XDP link is stale ({e}); attaching anew");
                        std::fs::remove_file(&path)?;
                    }
                }
            }
        }
        let prog = self.program();
        let (m, id) = match mode {
            AttachMode::Native => (XdpMode::Driver, prog.attach(interface, XdpMode::Driver)?),
            AttachMode::Generic => (XdpMode::Skb, prog.attach(interface, XdpMode::Skb)?),
            AttachMode::Auto => match prog.attach(interface, XdpMode::Driver) {
                Ok(id) => (XdpMode::Driver, id),
                Err(_) => (XdpMode::Skb, prog.attach(interface, XdpMode::Skb)?),
            },
        };
        let link = FdLink::try_from(self.program().take_link(id)?)?;
        link.pin(dir.join(if m == XdpMode::Skb {
            "link-generic"
        } else {
            "link-native"
        }))?;
        Ok(m)
    }

    /// Clamps the MSS of SYN-ACKs leaving `interface` from a VIP to `clamp`
    /// (a TC egress program, its link pinned in `dir` so it stays), or with
    /// `None` removes a clamp pinned there before.
    pub fn set_mss_clamp(
        &mut self,
        interface: &str,
        clamp: Option<lb_common::MssClamp>,
        dir: &std::path::Path,
    ) -> anyhow::Result<()> {
        use aya::programs::{links::FdLink, tc::TcAttachType};
        let path = dir.join(CLAMP_PIN);
        let Some(clamp) = clamp else {
            if path.exists() {
                std::fs::remove_file(&path)?;
            }
            return Ok(());
        };
        let prog = self.mss_clamp_program(clamp)?;
        let id = prog.attach(interface, TcAttachType::Egress)?;
        let link = FdLink::try_from(prog.take_link(id)?)?;
        std::fs::create_dir_all(dir)?;
        // The clamp pinned before (if any) is detached once this one is in.
        if path.exists() {
            std::fs::remove_file(&path)?;
        }
        link.pin(&path)?;
        Ok(())
    }

    /// The MSS clamp program, loaded, clamping to `clamp` (for attaching,
    /// or `TestRun`).
    pub fn mss_clamp_program(
        &mut self,
        clamp: lb_common::MssClamp,
    ) -> anyhow::Result<&mut aya::programs::SchedClassifier> {
        if self.clamp.is_none() {
            let map = self
                .ebpf
                .take_map("MSS_CLAMP")
                .ok_or_else(|| anyhow::anyhow!("no MSS_CLAMP map"))?
                .try_into()?;
            self.clamp = Some(map);
            let prog: &mut aya::programs::SchedClassifier = self
                .ebpf
                .program_mut(CLAMP_PROGRAM_NAME)
                .ok_or_else(|| anyhow::anyhow!("no {CLAMP_PROGRAM_NAME} program"))?
                .try_into()?;
            prog.load()?;
        }
        self.clamp.as_mut().expect("taken above").set(0, clamp, 0)?;
        Ok(self
            .ebpf
            .program_mut(CLAMP_PROGRAM_NAME)
            .expect("present")
            .try_into()?)
    }

    pub fn counters(&self) -> anyhow::Result<DecapCounters> {
        let get = |c: DecapCounter| -> anyhow::Result<u64> {
            Ok(self.stats.get(&(c as u32), 0)?.iter().sum())
        };
        Ok(DecapCounters {
            decapsulated: get(DecapCounter::Decapsulated)?,
            passed: get(DecapCounter::Passed)?,
            malformed: get(DecapCounter::Malformed)?,
        })
    }
}
