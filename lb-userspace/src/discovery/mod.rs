//! Service discovery: backends that come from a source (DNS SRV or A/AAAA
//! records, leases in the store) rather than from a list. A source only
//! answers "which backends are there now"; [`guard`] decides what of each
//! answer reaches the desired state, because real discovery misbehaves
//! (resolvers time out, answers go empty during incidents), and the desired
//! state then flows to the maps like every other change.

pub mod dns;
pub mod guard;

pub use guard::{Found, Guard, GuardPolicy, Held, Set, Verdict};
