//! The profiling agent, stage by stage in data-path order:
//!
//! ```text
//! kernel ──► bpf ──► process ──► profile ──► sink
//!  eBPF      load,     /proc maps,  aggregate,   files
//!  program   ring,     binaries,    symbolize,   (push
//!            counters  file ids     pprof        later)
//!              ▲           │
//!              └─ enrich ◄─┘  unwind tables, trace-context sources, per process
//! ```
//!
//! - [`agent`]: the event loop that wires the stages; [`config`]: flags.
//! - [`bpf`]: loads and attaches the eBPF program, reads its ring buffer and counters.
//! - [`process`]: tracks processes, their mappings and the binaries behind them.
//! - [`enrich`]: what the kernel needs per process: unwind tables, trace-context configs.
//! - [`profile`]: aggregation per interval, symbolization, pprof, the writer thread.
//! - [`sink`]: where finished profiles go.
//! - [`stats`]: the one registry of counters, kernel and agent side.
//! - [`error_chain`]: errors with their causes in log fields.
#![warn(missing_docs)]

pub mod agent;
pub mod bpf;
pub mod config;
pub mod enrich;
pub mod error_chain;
pub mod process;
pub mod profile;
pub mod sink;
pub mod stats;
