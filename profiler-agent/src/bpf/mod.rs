//! The kernel side as the agent sees it: loading and attaching the eBPF program, the maps it
//! shares with the agent, and reading its ring buffer and counters.
pub mod btf;
pub mod events;
pub mod loader;
pub mod mapped_rows;
pub mod ring;

pub use loader::{LoadedMaps, LoadedProgram, ProgramOptions};
