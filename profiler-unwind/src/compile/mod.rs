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

/// Why no table could be compiled.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// The ELF headers, a section or its compression could not be read.
    #[error("cannot parse ELF file")]
    Object(#[from] object::Error),
    /// Only x86-64 little-endian code is unwound.
    #[error("not an x86-64 little-endian ELF file")]
    UnsupportedArch,
    /// The file has no CFI at all (the walker uses frame pointers for it).
    #[error("no .eh_frame or .debug_frame section")]
    NoEhFrame,
    /// A compressed `.debug_frame` whose header claims more than the accepted maximum.
    #[error(".debug_frame would decompress to {0} bytes")]
    SectionTooLarge(u64),
    /// A CIE, or the section structure itself, could not be parsed.
    #[error("malformed call frame information")]
    Cfi(#[from] gimli::Error),
    /// More rows than [`CompileOptions::max_rows`].
    #[error("table would exceed {limit} rows")]
    TooManyRows {
        /// The `max_rows` in force.
        limit: usize,
    },
    /// The covered code is too far apart for rows' 32-bit pcs relative to one base.
    #[error("covered code spans {span:#x} bytes, beyond what a 32-bit row pc can address")]
    CodeTooLarge {
        /// Distance from the first covered pc to the end of the last covered range.
        span: u64,
    },
}

/// Where the sections that `.eh_frame` pointers can be relative to were loaded (ELF vaddrs).
#[derive(Clone, Debug, Default)]
pub struct SectionAddrs {
    /// Address of `.eh_frame` itself, against which its `DW_EH_PE_pcrel` pointers resolve.
    pub eh_frame: u64,
    /// Address of `.text` (base of `DW_EH_PE_textrel` pointers), if known.
    pub text: Option<u64>,
    /// Address of `.got` (base of `DW_EH_PE_datarel` pointers on x86-64), if known.
    pub got: Option<u64>,
    /// Executable address range. FDEs reaching outside it are dropped, so one corrupt or
    /// hostile FDE cannot stretch the table over the whole address space.
    pub code: Option<Range<u64>>,
}

/// Limits for compiling one table.
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
    /// FDEs read (one per function, roughly).
    pub fdes: usize,
    /// FDEs whose CIE or instructions failed to parse: their code is left uncovered.
    pub bad_fdes: usize,
    /// FDEs reaching outside the executable range: left uncovered.
    pub fdes_outside_code: usize,
    /// CFI rows before merging.
    pub cfi_rows: usize,
    /// CFI rows no table rule can express, by cause.
    pub unsupported: UnsupportedStats,
    /// CFI rows recognized as the PLT's CFA expression (`CFA_PLT`).
    pub plt_rows: usize,
    /// CFI rows of signal trampolines (`CFA_SIGNAL_FRAME`).
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
    /// The return address is not saved at CFA - 8 (and not undefined, which ends the stack).
    pub return_address: usize,
    /// rbp saved at a CFA offset that is not a multiple of 8 or outside -1024..=1016 bytes
    /// (a row stores it as an `i8` count of words), or by a rule other than "saved at offset".
    pub rbp: usize,
}

impl UnsupportedStats {
    /// Unsupported rows of every cause.
    pub fn total(&self) -> usize {
        self.cfa_expression + self.cfa_register + self.cfa_offset + self.return_address + self.rbp
    }
}

/// A compiled table: rows sorted by pc, pcs relative to `pc_base`, ending with a
/// `CFA_NOT_COVERED` sentinel (unless empty).
#[derive(Clone, Debug, Default)]
pub struct CompiledTable {
    /// ELF vaddr that row pcs are relative to: the first covered pc.
    pub pc_base: u64,
    /// The rows, sorted by pc, equal neighbours merged.
    pub rows: Vec<UnwindRow>,
    /// What went into them.
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

    /// Memory the rows take in the kernel's row array.
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
