//! Why the balancer refused a change or could not load.

use lb_common::MAX_BACKENDS;

use crate::model::{SpecError, VipId};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("unknown VIP {0}")]
    UnknownVip(VipId),
    #[error("VIP {0} already exists")]
    DuplicateVip(VipId),
    #[error("no room for another VIP (limit {0})")]
    TooManyVips(u32),
    #[error(
        "no room for a {size}-slot Maglev table: needs {need} entries of the table pool, \
         {free} of {capacity} are free (use smaller table_size or a larger pool)"
    )]
    TablePoolFull {
        size: u32,
        need: u32,
        free: u64,
        capacity: u32,
    },
    #[error("no room for {0} more backends (limit {limit} across all VIPs)", limit = MAX_BACKENDS)]
    TooManyBackends(usize),
    #[error("load_options: {0}")]
    Options(String),
    #[error("{0}")]
    Layout(String),
    #[error("pinning {path}: {error}")]
    Pin { path: String, error: String },
    #[error("eBPF: {0}")]
    Ebpf(#[from] aya::EbpfError),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("the balancer's clock: {0}")]
    Clock(String),
    #[error("program: {0}")]
    Program(#[from] aya::programs::ProgramError),
}

pub(super) type Result<T> = std::result::Result<T, MapsError>;

pub(super) fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> MapsError {
    move |source| MapsError::Map { map, source }
}
