//! The lbd process around the core: start-up in order ([`run`]), the tasks
//! beside the core, and the one-shot subcommands (`check-config`, `detach`,
//! `decap`). `bin/lbd.rs` only parses arguments and sets up logging.

mod announce;
mod discovery;
mod oneshot;
mod start;
mod store;
mod tasks;

pub use oneshot::{check_config, decap, detach};
pub use start::{run, start_daemon};
