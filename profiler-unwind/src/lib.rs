//! Unwind tables compiled from `.eh_frame`, and the lookup and step logic that the eBPF
//! program and ordinary tests share.
//!
//! The core (`search`, `step`, `walk`) is `no_std`, allocation-free and panic-free, with every
//! loop bounded, so the eBPF program can call it. The table compiler (`compile`) needs `std`.
//!
//! Row format and stop reasons live in [`profiler_common::unwind`]; see there for the meaning
//! of each row kind.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod search;
pub mod step;
pub mod walk;

#[cfg(feature = "std")]
pub mod compile;
#[cfg(feature = "std")]
pub mod mapping;
#[cfg(feature = "std")]
pub mod store;

pub use profiler_common::unwind::{
    MappingKey, StopReason, UnwindMapping, UnwindRegs as Regs, UnwindRow, UnwindTableInfo, NO_TABLE,
};
pub use search::{find_row, lookup_row, search_rows, table_pc, MAX_SEARCH_STEPS};
pub use step::{fp_step, step};
pub use walk::{next_frame, next_frame_traced, unwind, Unwound};

#[cfg(feature = "std")]
pub use store::{Placement, StoreError, TableStore};
#[cfg(feature = "std")]
pub use mapping::{load_segments, lpm_blocks, mapping_bias, LoadSegment};
#[cfg(feature = "std")]
pub use compile::{compile_eh_frame, compile_elf, CompileOptions, CompileStats, CompiledTable, Error, SectionAddrs, UnsupportedStats};
