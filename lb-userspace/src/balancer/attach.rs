//! Attaching the program to an interface, taking over a pinned link
//! atomically, and pinning program and link so they outlive lbd.

use std::path::Path;

use aya::programs::{xdp::XdpLinkId, Xdp, XdpMode};

use super::{error::Result, program, Balancer, MapsError};
use crate::model::AttachMode;

impl Balancer {
    /// The loaded program (for attaching, pinning or `TestRun`).
    pub fn program(&mut self) -> &mut Xdp {
        program(&mut self.ebpf).expect("loaded at construction")
    }

    /// Attaches to `interface`; returns the mode that took. With a pin
    /// directory, an XDP link pinned there by an earlier daemon is taken over
    /// and its program replaced atomically (`bpf_link_update`): the interface
    /// never runs without a balancer. A new link is pinned so the program
    /// stays attached after this process exits.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<XdpMode> {
        let Some(dir) = self.pin_dir.clone() else {
            return self.attach_unpinned(interface, mode).map(|(m, _)| m);
        };
        let pin_err = |path: &Path, e: &dyn std::fmt::Display| MapsError::Pin {
            path: path.display().to_string(),
            error: e.to_string(),
        };
        for (name, m) in [
            ("link-native", XdpMode::Driver),
            ("link-generic", XdpMode::Skb),
        ] {
            let path = dir.join(name);
            if !path.exists() {
                continue;
            }
            let pinned = aya::programs::links::PinnedLink::from_pin(&path)
                .map_err(|e| pin_err(&path, &e))?;
            let link =
                aya::programs::xdp::XdpLink::try_from(aya::programs::links::FdLink::from(pinned))
                    .map_err(|e| pin_err(&path, &e))?;
            match self.program().attach_to_link(link) {
                Ok(_) => {
                    self.pin_program(&dir)?;
                    return Ok(m);
                }
                // The interface the link was made for is gone (deleted and
                // perhaps re-created): the link is severed. Drop only its
                // pin; the maps stay adopted.
                Err(e) => {
                    tracing::warn!(link = %path.display(), "pinned XDP link is stale ({e}); attaching anew");
                    std::fs::remove_file(&path).map_err(|e| pin_err(&path, &e))?;
                }
            }
        }
        let (m, id) = self.attach_unpinned(interface, mode)?;
        let link = self.program().take_link(id)?;
        let fd_link =
            aya::programs::links::FdLink::try_from(link).map_err(|e| pin_err(&dir, &e))?;
        let path = dir.join(if m == XdpMode::Skb {
            "link-generic"
        } else {
            "link-native"
        });
        fd_link.pin(&path).map_err(|e| pin_err(&path, &e))?;
        self.pin_program(&dir)?;
        Ok(m)
    }

    pub(super) fn pin_program(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("prog");
        if path.exists() {
            std::fs::remove_file(&path).map_err(|e| MapsError::Pin {
                path: path.display().to_string(),
                error: e.to_string(),
            })?;
        }
        self.program().pin(&path).map_err(|e| MapsError::Pin {
            path: path.display().to_string(),
            error: e.to_string(),
        })
    }

    /// Attaches without pinning; returns the mode and the link.
    pub(super) fn attach_unpinned(
        &mut self,
        interface: &str,
        mode: AttachMode,
    ) -> Result<(XdpMode, XdpLinkId)> {
        let prog = self.program();
        let try_mode = |prog: &mut Xdp, m: XdpMode| prog.attach(interface, m).map(|id| (m, id));
        Ok(match mode {
            AttachMode::Native => try_mode(prog, XdpMode::Driver)?,
            AttachMode::Generic => try_mode(prog, XdpMode::Skb)?,
            AttachMode::Auto => match try_mode(prog, XdpMode::Driver) {
                Ok(r) => r,
                Err(_) => try_mode(prog, XdpMode::Skb)?,
            },
        })
    }

    /// The id of the loaded balancer program.
    pub fn program_id(&mut self) -> Option<u32> {
        self.program().info().ok().map(|i| i.id())
    }
}
