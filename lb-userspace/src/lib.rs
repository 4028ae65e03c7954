//! lb's control-plane library: the Maglev table builder and the loader that
//! owns the XDP programs and their maps.

pub mod maglev;
