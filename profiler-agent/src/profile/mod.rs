//! From samples to a profile: aggregation per interval, labels from trace contexts,
//! symbolization, pprof building, and the one-line summary of each written profile.
pub mod aggregate;
pub mod build;
pub mod labels;
pub mod pprof;
pub mod summary;
pub mod symbols;
pub mod writer;
