//! lb's control-plane library: the Maglev table builder, the operator-facing
//! service model, and the loaders that own the XDP programs and their maps.

pub mod control;
pub mod decap;
pub mod maglev;
pub mod maps;
pub mod objects;
pub mod pin;
pub mod service;
pub mod state;
