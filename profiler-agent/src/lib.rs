//! The profiling agent as a library: the stages `main` wires together, exposed so that tests
//! can drive each one alone and decode what the agent writes.
pub mod aggregate;
pub mod config;
pub mod context_sources;
pub mod ebpf_loader;
pub mod go_runtime;
pub mod kernel_btf;
pub mod mapped_rows;
pub mod output;
pub mod pprof;
pub mod proc_maps;
pub mod processes;
pub mod profile_build;
pub mod profile_writer;
pub mod ring_reader;
pub mod summary;
pub mod trace_context;
pub mod unwind_tables;
