//! lbd's one-shot subcommands: `check-config`, `detach` and `decap`.

use std::{net::IpAddr, path::Path};

use anyhow::Context;

use crate::{
    config,
    daemon::{
        lock::{self, Lock},
        mode_name,
    },
    decap::{ClampMss, Decap},
    host::{
        iface,
        pin::{self, PinPlace},
    },
    model::AttachMode,
};

pub fn check_config(config_path: &Path) -> anyhow::Result<()> {
    let cfg = config::load(config_path)?;
    let state = cfg.desired_state()?;
    let backends: usize = state.vips.values().map(|v| v.backends.len()).sum();
    println!(
        "{}: ok ({} VIPs, {backends} backends)",
        config_path.display(),
        state.vips.len()
    );
    Ok(())
}

/// Removes this namespace's balancer and decap pins for `interface` (and
/// pins an earlier version left at the pre-namespace path, when they drive
/// this namespace's interface); never another namespace's.
pub fn detach(interface: &str) -> anyhow::Result<()> {
    let place = PinPlace::current(interface)?;
    let run_dir = Path::new(lock::RUN_DIR);
    // A running lbd holds the lock: refuse rather than pull its maps away.
    let _lock = Lock::interface(run_dir, place.netns, interface)
        .context("lbd is running for this interface: stop it first")?;
    pin::ensure_bpffs(&place.bpffs)?;
    if let Some(found) = iface::lookup_blocking(interface)? {
        // Moved into this namespace's place first, then removed with it.
        for (what, legacy, to) in [
            (
                "balancer",
                place.legacy_balancer_dir(),
                place.interface_dir(),
            ),
            ("decap", place.legacy_decap_dir(), place.decap_dir()),
        ] {
            pin::report_legacy(what, &pin::claim_legacy(&legacy, &to, &found));
        }
    }
    let routes = match iface::lookup_blocking(interface)? {
        Some(found) => withdraw_all(found.ifindex)?,
        None => Vec::new(),
    };
    for (table, addr) in &routes {
        println!("withdrew {addr} (routing table {table})");
    }
    let balancer = place.remove_balancer()?;
    let decap = place.remove_decap()?;
    match (balancer, decap) {
        (false, false) if !routes.is_empty() => {}
        (false, false) => println!("nothing pinned for {interface} in this network namespace"),
        _ => println!(
            "detached from {interface}:{}{}",
            if balancer {
                " balancer (program, link, maps)"
            } else {
                ""
            },
            if decap { " decap" } else { "" }
        ),
    }
    Ok(())
}

/// Removes every route lbd wrote for the interface `ifindex` (in any table:
/// detach has no config to name it).
fn withdraw_all(ifindex: u32) -> anyhow::Result<Vec<(u32, IpAddr)>> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(crate::announce::routes::remove_all_owned(ifindex))
        .context("removing lbd's routes")
}

/// Attaches decap to `interface` and pins its link in this namespace's
/// place. Everything that can fail without touching the interface is
/// checked first; if attaching fails, the directory made for the pin is
/// removed again.
pub fn decap(
    interface: &str,
    addresses: &[IpAddr],
    mode: AttachMode,
    clamp: Option<ClampMss>,
) -> anyhow::Result<()> {
    let place = PinPlace::current(interface)?;
    pin::ensure_bpffs(&place.bpffs)?;
    let found = iface::require_blocking(interface)?;
    pin::report_legacy(
        "decap",
        &pin::claim_legacy(&place.legacy_decap_dir(), &place.decap_dir(), &found),
    );
    let mut d = Decap::load().context("loading the decap program")?;
    for a in addresses {
        d.add_address(*a)?;
    }
    let dir = place.decap_dir();
    let first = !dir.exists();
    let m = match d.attach_pinned(interface, mode, &dir) {
        Ok(m) => m,
        Err(e) => {
            if first {
                let _ = place.remove_decap();
            }
            return Err(e.context(format!("attaching decap to {interface}")));
        }
    };
    let per_family = clamp.map(|c| c.per_family(found.mtu));
    if let Err(e) = d.set_mss_clamp(interface, per_family, &dir) {
        if first {
            let _ = place.remove_decap();
        }
        return Err(e.context(format!("clamping the MSS on {interface}")));
    }
    let list: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
    println!(
        "decap attached to {interface} ({}) for {}; pinned at {}{}",
        mode_name(m),
        list.join(", "),
        dir.display(),
        per_family.map_or(String::new(), |c| format!(
            "; SYN-ACKs from VIPs clamped to MSS {} (IPv4) / {} (IPv6)",
            c.v4, c.v6
        ))
    );
    Ok(())
}
