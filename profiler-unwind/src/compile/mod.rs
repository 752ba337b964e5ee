//! Compiles `.eh_frame` into a sorted [`UnwindRow`] table (needs `std`).
//!
//! Input may be hostile: every size is checked, the row count is capped, and a malformed
//! entry is an error or a skipped FDE, never a panic.

mod cfi;
mod elf;
mod go;
mod layout;

pub use cfi::CfiSection;
pub use elf::compile_elf;

use crate::search::{find_row, table_pc};
use profiler_common::unwind::{UnwindRow, UnwindTableInfo};
use std::ops::Range;

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("cannot parse ELF file: {0}")]
    Object(#[from] object::Error),
    #[error("not an x86-64 little-endian ELF file")]
    UnsupportedArch,
    #[error("no .eh_frame or .debug_frame section")]
    NoEhFrame,
    #[error(".debug_frame would decompress to {0} bytes")]
    SectionTooLarge(u64),
    #[error("malformed .eh_frame: {0}")]
    Cfi(#[from] gimli::Error),
    #[error("table would exceed {limit} rows")]
    TooManyRows { limit: usize },
    #[error("covered code spans {span:#x} bytes, beyond what a 32-bit row pc can address")]
    CodeTooLarge { span: u64 },
}

/// Where the sections that `.eh_frame` pointers can be relative to were loaded (ELF vaddrs).
#[derive(Clone, Debug, Default)]
pub struct SectionAddrs {
    pub eh_frame: u64,
    pub text: Option<u64>,
    pub got: Option<u64>,
    /// Executable address range. FDEs reaching outside it are dropped, so one corrupt or
    /// hostile FDE cannot stretch the table over the whole address space.
    pub code: Option<Range<u64>>,
}

#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Largest table accepted; bigger ones fail with [`Error::TooManyRows`].
    pub max_rows: usize,
}

impl Default for CompileOptions {
    fn default() -> Self {
        // 4M rows = 32 MiB: above the largest binaries seen (browsers), far below a host budget.
        CompileOptions { max_rows: 4 << 20 }
    }
}

/// What went into a table; the agent exports these as metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompileStats {
    pub fdes: usize,
    /// FDEs whose CIE or instructions failed to parse: their code is left uncovered.
    pub bad_fdes: usize,
    /// FDEs reaching outside the executable range: left uncovered.
    pub fdes_outside_code: usize,
    /// CFI rows before merging.
    pub cfi_rows: usize,
    pub unsupported: UnsupportedStats,
    pub plt_rows: usize,
    pub signal_frame_rows: usize,
    /// Functions whose rows were replaced by a `CFA_STACK_SWITCH` rule (Go's asmcgocall).
    pub stack_switch_functions: usize,
}

/// CFI rows that became `CFA_UNSUPPORTED`, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnsupportedStats {
    /// DWARF expressions other than the PLT pattern: signal trampolines, hand-written asm.
    pub cfa_expression: usize,
    /// CFA based on a register other than rsp or rbp (e.g. stack realignment through r10).
    pub cfa_register: usize,
    /// Negative CFA offsets, and frames of 512 KiB or more (or of 64 KiB or more and not a
    /// multiple of 8 bytes).
    pub cfa_offset: usize,
    pub return_address: usize,
    pub rbp: usize,
}

impl UnsupportedStats {
    pub fn total(&self) -> usize {
        self.cfa_expression + self.cfa_register + self.cfa_offset + self.return_address + self.rbp
    }
}

/// A compiled table: rows sorted by pc, pcs relative to `pc_base`, ending with a
/// `CFA_NOT_COVERED` sentinel (unless empty).
#[derive(Clone, Debug, Default)]
pub struct CompiledTable {
    pub pc_base: u64,
    pub rows: Vec<UnwindRow>,
    pub stats: CompileStats,
}

impl CompiledTable {
    /// The row covering an ELF vaddr; a `CFA_NOT_COVERED` row outside the table.
    pub fn lookup(&self, vaddr: u64) -> UnwindRow {
        table_pc(self.pc_base, vaddr)
            .and_then(|pc| find_row(&self.rows, pc))
            .copied()
            .unwrap_or_default()
    }

    /// Metadata for the kernel when the rows are stored from index `first_row` on.
    pub fn info(&self, first_row: u32) -> UnwindTableInfo {
        UnwindTableInfo {
            pc_base: self.pc_base,
            first_row,
            row_count: u32::try_from(self.rows.len()).unwrap_or(u32::MAX),
        }
    }

    pub fn size_bytes(&self) -> usize {
        std::mem::size_of_val(self.rows.as_slice())
    }
}

/// Compiles raw `.eh_frame` bytes loaded at `addrs.eh_frame`.
pub fn compile_eh_frame(
    eh_frame: &[u8],
    addrs: &SectionAddrs,
    opts: &CompileOptions,
) -> Result<CompiledTable, Error> {
    compile_cfi(eh_frame, CfiSection::EhFrame, addrs, opts)
}

/// Compiles raw CFI of either section kind (`addrs.eh_frame` is unused for `.debug_frame`).
pub fn compile_cfi(
    data: &[u8],
    kind: CfiSection,
    addrs: &SectionAddrs,
    opts: &CompileOptions,
) -> Result<CompiledTable, Error> {
    compile_sections(&[(data, kind)], addrs, opts)
}

/// One table from several CFI sections; where they overlap, the earlier section wins.
fn compile_sections(
    sections: &[(&[u8], CfiSection)],
    addrs: &SectionAddrs,
    opts: &CompileOptions,
) -> Result<CompiledTable, Error> {
    let mut stats = CompileStats::default();
    let mut spans = Vec::new();
    for &(data, kind) in sections {
        let more = cfi::collect_spans(data, kind, addrs, opts, &mut stats)?;
        if spans.len() + more.len() > opts.max_rows.saturating_mul(4) {
            return Err(Error::TooManyRows {
                limit: opts.max_rows,
            });
        }
        spans.extend(more);
    }
    let (pc_base, rows) = layout::lay_out(spans, opts.max_rows)?;
    Ok(CompiledTable {
        pc_base,
        rows,
        stats,
    })
}
