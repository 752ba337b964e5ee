//! Go's `asmcgocall`: C code called through cgo runs on the system stack and returns into
//! `asmcgocall`, which then switches back to the goroutine's stack. Go's CFI for it describes
//! no switch, so walking on from there reads garbage. Since Go 1.17 (`asmcgocall.abi0`) the
//! function starts with `push rbp; mov rbp, rsp` on the goroutine stack, so its rows are
//! replaced with a `CFA_STACK_SWITCH` rule that follows that frame pointer.

use super::CompiledTable;
use object::{Object, ObjectSection, ObjectSymbol};
use profiler_common::unwind::{UnwindRow, CFA_STACK_SWITCH, RBP_UNCHANGED};

/// `push %rbp; mov %rsp,%rbp`.
const FRAME_SETUP: [u8; 4] = [0x55, 0x48, 0x89, 0xe5];

/// Marks `asmcgocall` in a Go binary; other binaries are left alone.
pub(super) fn mark_stack_switches(file: &object::File<'_>, table: &mut CompiledTable) {
    let Some(sym) = file
        .symbols()
        .find(|s| s.name() == Ok("runtime.asmcgocall.abi0"))
    else {
        return;
    };
    let (start, size) = (sym.address(), sym.size());
    let Some(section) = sym
        .section_index()
        .and_then(|i| file.section_by_index(i).ok())
    else {
        return;
    };
    // Older or unexpected code without the frame setup keeps its CFI rows.
    if section
        .data_range(start, FRAME_SETUP.len() as u64)
        .ok()
        .flatten()
        != Some(&FRAME_SETUP[..])
    {
        return;
    }
    // From just after the setup to the end: the function's calls return within this range.
    // The section's address is input too, so the setup may end past u64::MAX.
    let (Some(body), Some(end)) = (
        start.checked_add(FRAME_SETUP.len() as u64),
        start.checked_add(size),
    ) else {
        return;
    };
    if replace_range(table, body, end) {
        table.stats.stack_switch_functions += 1;
    }
}

/// Gives `[start, end)` (ELF vaddrs) a `CFA_STACK_SWITCH` row, keeping the rule that held
/// at `end`. False when the range is outside what the table can address.
fn replace_range(table: &mut CompiledTable, start: u64, end: u64) -> bool {
    let rel = |addr: u64| u32::try_from(addr.checked_sub(table.pc_base)?).ok();
    let (Some(s), Some(e)) = (rel(start), rel(end)) else {
        return false;
    };
    if s >= e || table.rows.is_empty() {
        return false;
    }
    let after = UnwindRow {
        pc: e,
        ..table.lookup(end)
    };
    table.rows.retain(|r| r.pc < s || r.pc >= e);
    table
        .rows
        .push(UnwindRow::new(s, CFA_STACK_SWITCH, 0, RBP_UNCHANGED, 0));
    if !table.rows.iter().any(|r| r.pc == e) {
        table.rows.push(after);
    }
    table.rows.sort_by_key(|r| r.pc);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::unwind::{CFA_NOT_COVERED, CFA_RSP};

    #[test]
    fn range_gets_the_switch_rule_and_keeps_the_rest() {
        let rsp = |pc, off| UnwindRow::new(pc, CFA_RSP, off, RBP_UNCHANGED, 0);
        let mut table = CompiledTable {
            pc_base: 0x1000,
            rows: vec![
                rsp(0, 8),
                rsp(0x10, 16),
                rsp(0x20, 24),
                UnwindRow::new(0x40, CFA_NOT_COVERED, 0, 0, 0),
            ],
            ..Default::default()
        };
        assert!(replace_range(&mut table, 0x1014, 0x1028));
        let kinds: Vec<(u32, u8)> = table.rows.iter().map(|r| (r.pc, r.cfa_kind())).collect();
        assert_eq!(
            kinds,
            [
                (0, CFA_RSP),
                (0x10, CFA_RSP),
                (0x14, CFA_STACK_SWITCH),
                (0x28, CFA_RSP),
                (0x40, CFA_NOT_COVERED)
            ]
        );
        assert_eq!(table.lookup(0x1028).cfa_offset, 24);
        assert_eq!(table.lookup(0x1013).cfa_offset, 16);
        // Past the end of the table: the sentinel follows.
        assert!(replace_range(&mut table, 0x1030, 0x1050));
        assert_eq!(
            table.rows.last().map(|r| (r.pc, r.cfa_kind())),
            Some((0x50, CFA_NOT_COVERED))
        );
        assert!(!replace_range(&mut table, 0x10, 0x20));
    }
}
