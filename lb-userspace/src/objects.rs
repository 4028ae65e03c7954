//! The eBPF objects, built by `cargo xtask build` and embedded by build.rs,
//! so a binary always carries the programs it was tested with.

pub static BALANCER: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-balancer.o"));
pub static DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap.o"));
/// The clock probe the loader calibrates the balancer's clock with.
pub static CLOCK: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-clock.o"));
