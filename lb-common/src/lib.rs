//! Types and logic that the XDP programs and user space must agree on.
//!
//! Everything here is `no_std` and free of allocation so the same code compiles
//! for `bpfel-unknown-none` and for the host. Map keys and values are
//! `#[repr(C)]` with explicit padding and a compile-time size assert, so the
//! layout the kernel sees is the layout user space writes.
#![cfg_attr(not(test), no_std)]

pub mod bucket;
pub mod clock;
pub mod counters;
pub mod debug;
pub mod hash;
pub mod maps;
pub mod rules;
#[cfg(feature = "user")]
pub mod user;

pub use counters::Counter;
pub use hash::{flow_hash, maglev_slot, HashMode};
pub use maps::*;
