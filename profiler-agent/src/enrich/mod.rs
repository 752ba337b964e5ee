//! What the kernel needs per process before its samples are useful: unwind tables for its
//! binaries, and where its trace context lives (Go runtime labels, OTel thread context).
pub mod context_sources;
pub mod go_runtime;
pub mod unwind_tables;
pub mod worker;
