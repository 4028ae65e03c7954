//! The domain model: the words every other part of lb uses (VIPs, backends,
//! health checks, changes, host settings) with their rules, defaults and
//! ranges. It depends on nothing else in lb (only on `lb_common`, the rules
//! the data path shares), so the config file, the desired state, the CLI
//! and the API all build on it without building on each other.

pub mod access;
pub mod announce;
pub mod backend;
pub mod change;
pub mod defaults;
pub mod discovery;
pub mod health;
pub mod host;
pub mod tier;
pub mod vip;

pub use access::Role;
pub use announce::{Announce, AnnounceWhen};
pub use backend::{is_prime, validate_backends, validate_vip, BackendSpec, SpecError};
pub use change::Change;
pub use discovery::BackendsFrom;
pub use health::{HealthDecision, HealthError, HealthKind, HealthSpec};
pub use host::{mac_text, AttachMode, EncapSources, Limits, NextHop};
pub use tier::{TierMode, TierPolicy, TierShare};
pub use vip::{parse_vip, Forwarding, Proto, Scheduler, VipId, VipSettings};
