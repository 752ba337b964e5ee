//! Entry points shared by the `cargo fuzz` targets (`profiler-unwind/fuzz`) and the seed-corpus
//! regression test (`tests/fuzz_seeds.rs`). Each must return without panicking on any input;
//! the assertions in them are the promises the table compiler and the walker make, so a
//! failed one is a bug as much as a crash is.

use crate::{
    compile_cfi, compile_elf, load_segments, lookup_row, lpm_blocks, mapping_bias, unwind,
    CfiSection, CompileOptions, CompiledTable, Regs,
};
use profiler_common::unwind::CFA_NOT_COVERED;

/// Where the raw `.eh_frame` of [`eh_frame`] is taken to be loaded (its pc-relative pointers
/// resolve against this).
pub const FAKE_EH_FRAME_ADDR: u64 = 0x40_2000;
/// `.text` and `.got` bases for the raw mode, when its mode byte asks for them.
const FAKE_TEXT_ADDR: u64 = 0x40_1000;
const FAKE_GOT_ADDR: u64 = 0x40_4000;
/// Where the walk's fake stack memory (the input bytes) lies.
const STACK_ADDR: u64 = 0x7ffd_0000_0000;
/// Rows looked up one by one per table; larger tables are sampled evenly.
const ROW_PROBES: usize = 512;

/// Raw CFI section bytes after one mode byte: bit 0 picks `.debug_frame` (else `.eh_frame`,
/// loaded at [`FAKE_EH_FRAME_ADDR`]), bit 1 sets `.text`/`.got` bases, bit 2 restricts FDEs to
/// a 64 KiB code range at `.text`, bit 3 caps the table at 16 rows.
pub fn eh_frame(data: &[u8]) {
    let Some((&mode, section)) = data.split_first() else {
        return;
    };
    let kind = if mode & 1 == 0 {
        CfiSection::EhFrame
    } else {
        CfiSection::DebugFrame
    };
    let addrs = crate::SectionAddrs {
        eh_frame: FAKE_EH_FRAME_ADDR,
        text: (mode & 2 != 0).then_some(FAKE_TEXT_ADDR),
        got: (mode & 2 != 0).then_some(FAKE_GOT_ADDR),
        code: (mode & 4 != 0).then_some(FAKE_TEXT_ADDR..FAKE_TEXT_ADDR + 0x1_0000),
    };
    let opts = CompileOptions {
        max_rows: if mode & 8 != 0 {
            16
        } else {
            CompileOptions::default().max_rows
        },
    };
    if let Ok(table) = compile_cfi(section, kind, &addrs, &opts) {
        check_table(&table, &opts);
        if let Some(code) = &addrs.code {
            // Every FDE reaching outside the code range was dropped.
            if let Some(last) = table.rows.last() {
                assert!(table.pc_base >= code.start);
                assert!(table.pc_base + u64::from(last.pc) <= code.end);
            }
        }
        walk(&table, section);
    }
}

/// A whole ELF file: its PT_LOAD segments (as the agent maps `/proc/PID/maps` entries onto
/// them), and the table compiled from its `.eh_frame` and `.debug_frame`.
pub fn eh_frame_elf(data: &[u8]) {
    if let Ok(segments) = load_segments(data) {
        for (i, seg) in segments
            .iter()
            .filter(|s| s.executable)
            .take(16)
            .enumerate()
        {
            // As the kernel maps it: from the page below p_offset, somewhere page-aligned.
            let offset = seg.offset & !0xfff;
            let start = 0x5555_5555_0000u64 + ((i as u64) << 32);
            let len = seg
                .file_size
                .saturating_add(seg.offset - offset)
                .min(1 << 31);
            let _ = mapping_bias(start, len, offset, &segments);
            check_lpm_cover(i as u32, start, start.saturating_add(len));
        }
    }
    let opts = CompileOptions::default();
    if let Ok(table) = compile_elf(data, &opts) {
        check_table(&table, &opts);
        assert!(table.stats.stack_switch_functions <= 1);
        walk(&table, data.get(..4096).unwrap_or(data));
    }
}

/// What [`CompiledTable`] promises, and that the kernel's search agrees with the host's.
fn check_table(table: &CompiledTable, opts: &CompileOptions) {
    let rows = &table.rows;
    assert!(rows.len() <= opts.max_rows, "{} rows", rows.len());
    assert!(
        rows.windows(2).all(|w| w[0].pc < w[1].pc),
        "rows not sorted by pc"
    );
    if let Some(last) = rows.last() {
        assert_eq!(last.cfa_kind(), CFA_NOT_COVERED, "no end sentinel");
    }
    let s = &table.stats;
    assert!(s.bad_fdes + s.fdes_outside_code <= s.fdes);
    assert!(s.unsupported.total() + s.plt_rows + s.signal_frame_rows <= s.cfi_rows);
    let info = table.info(0);
    let kernel_lookup = |vaddr: u64| lookup_row(&info, vaddr, |i| rows.get(i as usize).copied());
    let step = (rows.len() / ROW_PROBES).max(1);
    for row in rows.iter().step_by(step) {
        let vaddr = table.pc_base + u64::from(row.pc);
        assert_eq!(table.lookup(vaddr), *row, "row at {vaddr:#x} not found");
        for probe in [vaddr, vaddr.wrapping_sub(1), vaddr.wrapping_add(1)] {
            assert_eq!(kernel_lookup(probe), Ok(table.lookup(probe)), "{probe:#x}");
        }
    }
    for probe in [0, table.pc_base.wrapping_sub(1), u64::MAX] {
        assert_eq!(kernel_lookup(probe), Ok(table.lookup(probe)), "{probe:#x}");
    }
}

/// Walks from a few of the table's pcs over `stack` as stack memory: the walker runs in the
/// kernel over memory the profiled process controls.
fn walk(table: &CompiledTable, stack: &[u8]) {
    let read_u64 = |addr: u64| -> Option<u64> {
        let at = usize::try_from(addr.checked_sub(STACK_ADDR)?).ok()?;
        let bytes = stack.get(at..at.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    };
    let info = table.info(0);
    // As in the kernel for a mapping with a table: the row (a `CFA_NOT_COVERED` one outside
    // the table, which sends the walker to frame pointers).
    let lookup = |pc: u64| lookup_row(&info, pc, |i| table.rows.get(i as usize).copied()).map(Some);
    let step = (table.rows.len() / 8).max(1);
    let mut frames = [0u64; 32];
    for (i, row) in table.rows.iter().step_by(step).take(8).enumerate() {
        let regs = Regs {
            rip: table.pc_base + u64::from(row.pc),
            rsp: STACK_ADDR + 8 * i as u64,
            rbp: STACK_ADDR + 16 + 8 * i as u64,
        };
        let done = unwind(regs, lookup, read_u64, 32, &mut frames);
        assert!(done.depth <= 32 && done.fp_frames <= done.depth);
    }
}

/// [`lpm_blocks`] covers `[start, end)` exactly, with aligned blocks, in at most 2 × 64.
pub fn check_lpm_cover(pid: u32, start: u64, end: u64) {
    let mut at = start;
    let mut n = 0;
    for (key, prefix) in lpm_blocks(pid, start, end) {
        assert_eq!(key.pid, pid.to_be_bytes());
        assert!((32..=96).contains(&prefix), "prefix {prefix}");
        let addr = u64::from_be_bytes(key.addr);
        assert_eq!(addr, at, "blocks not contiguous");
        let bits = 96 - prefix;
        assert!(bits < 64, "a block of the whole address space");
        let size = 1u64 << bits;
        assert_eq!(addr & (size - 1), 0, "block at {addr:#x} not aligned");
        at = addr + size;
        n += 1;
        assert!(n <= 128, "{n} blocks");
    }
    assert_eq!(at, start.max(end), "blocks end at {at:#x}, not {end:#x}");
}
