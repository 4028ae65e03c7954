//! Embeds the eBPF objects into the library: the loader includes
//! `$OUT_DIR/lb-balancer.o`, `$OUT_DIR/lb-decap.o` and `$OUT_DIR/lb-clock.o`.
//!
//! `cargo xtask build` compiles them with the nightly toolchain into
//! target/bpf (always release); this script only copies them, because a
//! build script cannot cleanly drive a second toolchain from inside this build.

use std::path::PathBuf;
use std::{env, fs};

const OBJECTS: [&str; 3] = ["lb-balancer", "lb-decap", "lb-clock"];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let release_dir = manifest_dir.join("../target/bpf/bpfel-unknown-none/release");
    let objects = OBJECTS.map(|name| release_dir.join(name));

    for object in &objects {
        println!("cargo::rerun-if-changed={}", object.display());
    }
    if !objects.iter().all(|object| object.is_file()) {
        // `cargo::error` prints just this line, not the script's whole stdout.
        println!(
            "cargo::error=lb: the eBPF objects are not built; run `cargo xtask build` \
             (it installs the toolchain and builds everything)"
        );
        return;
    }
    for (name, object) in OBJECTS.iter().zip(&objects) {
        let dest = out_dir.join(format!("{name}.o"));
        if let Err(e) = fs::copy(object, &dest) {
            panic!("copying {} to {}: {e}", object.display(), dest.display());
        }
    }
}
