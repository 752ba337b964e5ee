//! Unwind tables compiled from `.eh_frame`, and the lookup and step logic that the eBPF
//! program and ordinary tests share.
//!
//! The core ([`search`], [`mod@step`], [`walk`]) is `no_std`, allocation-free and panic-free, and
//! every loop in it has a fixed ceiling, so the eBPF program can call it (build with
//! `default-features = false`). The table compiler ([`compile`]), the LPM helpers
//! ([`mapping`]) and the row-array bookkeeping ([`store`]) need `std`.
//!
//! Row format, map value types and stop reasons live in [`profiler_common::unwind`].
//!
//! # Kernel data path
//! - `UNWIND_ROWS`: one `Array<UnwindRow>` shared by every binary (size = row budget);
//!   [`TableStore`] decides where each binary's rows go.
//! - `UNWIND_TABLES`: `Array<UnwindTableInfo>` indexed by table id.
//! - `UNWIND_MAPPINGS`: `LpmTrie<MappingKey, UnwindMapping>`; each executable mapping of each
//!   profiled process is stored as the blocks [`lpm_blocks`] returns, with the bias from
//!   [`mapping_bias`].
//!
//! Per frame: LPM lookup of (pid, pc) → no entry or `NO_TABLE` means `Ok(None)` (frame
//! pointers); else `UNWIND_TABLES[table_id]` and [`lookup_row_with`] over `UNWIND_ROWS` with
//! `pc - bias`; all of it inside the `lookup` closure of [`next_frame`], which a
//! `bpf_loop` callback calls once per frame. The row count comes from the map, and the
//! search bounds pass through map memory (the `launder` hook of [`lookup_row_with`]), so the
//! verifier sees them as unknown numbers rather than exploring every combination of the up to
//! [`MAX_SEARCH_STEPS`] halvings separately: that exploration exhausts the kernel's budget of
//! 1,000,000 processed instructions per program (`BPF_COMPLEXITY_LIMIT_INSNS`), whereas with
//! the hook the whole program verifies in about 74k (agent start-up, see `BENCHMARKS.md`).
//!
//! The agent also adds a prefix-32 (pid only) `NO_TABLE` entry per process: addresses outside
//! every mapping with a table (vdso, JIT code) still find the process, so its whole stack goes
//! through this walker, with frame pointers there.
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

pub mod search;
pub mod step;
pub mod walk;

#[cfg(feature = "std")]
pub mod compile;
#[cfg(feature = "std")]
pub mod fuzzing;
#[cfg(feature = "std")]
pub mod mapping;
#[cfg(feature = "std")]
pub mod store;

pub use profiler_common::unwind::{
    MappingKey, StopReason, UnwindMapping, UnwindRegs as Regs, UnwindRow, UnwindTableInfo, NO_TABLE,
};
pub use search::{
    find_row, lookup_row, lookup_row_with, search_rows, search_rows_with, table_pc,
    MAX_SEARCH_STEPS,
};
pub use step::{fp_step, step};
pub use walk::{next_frame, unwind, Caller, Unwound};

#[cfg(feature = "std")]
pub use compile::{
    compile_cfi, compile_eh_frame, compile_elf, CfiSection, CompileOptions, CompileStats,
    CompiledTable, Error, SectionAddrs, UnsupportedStats,
};
#[cfg(feature = "std")]
pub use mapping::{load_segments, lpm_blocks, mapping_bias, LoadSegment};
#[cfg(feature = "std")]
pub use store::{Placement, StoreError, TableStore};
