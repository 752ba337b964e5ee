//! Binary search over sorted rows, written so the eBPF verifier can follow it: the step count
//! has a fixed ceiling, the row count comes from data, and rows are fetched through a closure
//! (a map lookup in the kernel, a slice in userspace).

use profiler_common::unwind::{StopReason, UnwindRow, UnwindTableInfo};

/// Enough halvings for any `u32` row count: a range of n rows needs ceil(log2(n + 1)) steps.
pub const MAX_SEARCH_STEPS: u32 = 32;

/// Index of the last of `count` rows (sorted by pc) whose pc is `<= pc`, or `None` when `pc`
/// precedes the first row. `pc_at(i)` returns row `i`'s pc, or `None` if the row cannot be
/// read, which ends the search with [`StopReason::BadFrame`].
#[inline(always)]
pub fn search_rows(
    count: u32,
    pc: u32,
    pc_at: impl FnMut(u32) -> Option<u32>,
) -> Result<Option<u32>, StopReason> {
    search_rows_with(count, pc, pc_at, |lo, hi| (lo, hi))
}

/// [`search_rows`] with a hook that sees (and may replace) the bounds before every step.
///
/// The eBPF program passes the bounds through map memory here: the verifier then sees them
/// as unknown numbers, so the paths through one step look alike and it stops exploring each
/// combination of halvings separately (it otherwise runs out of its instruction budget).
/// The hook must return its input unchanged.
#[inline(always)]
pub fn search_rows_with(
    count: u32,
    pc: u32,
    mut pc_at: impl FnMut(u32) -> Option<u32>,
    mut launder: impl FnMut(u32, u32) -> (u32, u32),
) -> Result<Option<u32>, StopReason> {
    // Invariant: rows below `lo` have pc <= target; rows at or above `hi` have pc > target.
    let mut lo = 0u32;
    let mut hi = count;
    for _ in 0..MAX_SEARCH_STEPS {
        (lo, hi) = launder(lo, hi);
        if lo >= hi {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        let mid_pc = pc_at(mid).ok_or(StopReason::BadFrame)?;
        if mid_pc <= pc {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo < hi {
        // Unreachable for a u32 count; kept so a miscount can never yield a wrong row.
        return Err(StopReason::BadFrame);
    }
    Ok(lo.checked_sub(1))
}

/// The row covering `pc` (relative to the table's `pc_base`), or `None` when `pc` precedes
/// the table. Callers must still check the row's kind: the end sentinel and gaps are
/// `CFA_NOT_COVERED` rows.
pub fn find_row(rows: &[UnwindRow], pc: u32) -> Option<&UnwindRow> {
    let count = u32::try_from(rows.len()).unwrap_or(u32::MAX);
    let idx = search_rows(count, pc, |i| rows.get(i as usize).map(|r| r.pc)).ok()??;
    rows.get(idx as usize)
}

/// The row covering ELF address `vaddr` in the table `info` describes, for tables whose rows
/// sit in one shared array: `row_at(i)` reads the row at absolute index `i` (an array-map
/// lookup in the kernel). Addresses outside the table give a default, `CFA_NOT_COVERED`, row;
/// an unreadable row or an inconsistent `info` gives [`StopReason::BadFrame`].
#[inline(always)]
pub fn lookup_row(
    info: &UnwindTableInfo,
    vaddr: u64,
    row_at: impl FnMut(u32) -> Option<UnwindRow>,
) -> Result<UnwindRow, StopReason> {
    lookup_row_with(info, vaddr, row_at, |lo, hi| (lo, hi))
}

/// [`lookup_row`] with the bounds hook of [`search_rows_with`].
#[inline(always)]
pub fn lookup_row_with(
    info: &UnwindTableInfo,
    vaddr: u64,
    mut row_at: impl FnMut(u32) -> Option<UnwindRow>,
    launder: impl FnMut(u32, u32) -> (u32, u32),
) -> Result<UnwindRow, StopReason> {
    let Some(pc) = table_pc(info.pc_base, vaddr) else {
        return Ok(UnwindRow::default());
    };
    let first = info.first_row;
    let found = search_rows_with(
        info.row_count,
        pc,
        |i| Some(row_at(first.checked_add(i)?)?.pc),
        launder,
    )?;
    match found {
        Some(i) => {
            row_at(first.checked_add(i).ok_or(StopReason::BadFrame)?).ok_or(StopReason::BadFrame)
        }
        None => Ok(UnwindRow::default()),
    }
}

/// `vaddr` relative to a table's `pc_base`, if it fits a row's 32-bit pc.
#[inline(always)]
pub fn table_pc(pc_base: u64, vaddr: u64) -> Option<u32> {
    u32::try_from(vaddr.checked_sub(pc_base)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::unwind::CFA_RSP;

    fn rows(pcs: &[u32]) -> Vec<UnwindRow> {
        pcs.iter()
            .map(|&pc| UnwindRow::new(pc, CFA_RSP, pc as u16, 0, 0))
            .collect()
    }

    #[test]
    fn finds_last_row_at_or_below() {
        let r = rows(&[10, 20, 30, 40]);
        assert_eq!(find_row(&r, 9), None);
        assert_eq!(find_row(&r, 10).unwrap().pc, 10);
        assert_eq!(find_row(&r, 19).unwrap().pc, 10);
        assert_eq!(find_row(&r, 20).unwrap().pc, 20);
        assert_eq!(find_row(&r, 39).unwrap().pc, 30);
        assert_eq!(find_row(&r, u32::MAX).unwrap().pc, 40);
        assert_eq!(find_row(&[], 5), None);
    }

    #[test]
    fn agrees_with_linear_scan() {
        let pcs: Vec<u32> = (0..1000u32).map(|i| i * 7 + (i % 3)).collect();
        let r = rows(&pcs);
        for pc in 0..7100 {
            let want = pcs.iter().rposition(|&p| p <= pc).map(|i| pcs[i]);
            assert_eq!(find_row(&r, pc).map(|r| r.pc), want, "pc {pc}");
        }
    }

    #[test]
    fn huge_count_stays_bounded() {
        // A count near u32::MAX converges within MAX_SEARCH_STEPS.
        let got = search_rows(u32::MAX, 12345, Some);
        assert_eq!(got, Ok(Some(12345)));
        let got = search_rows(u32::MAX, u32::MAX, Some);
        assert_eq!(got, Ok(Some(u32::MAX - 1)));
        assert_eq!(search_rows(10, 3, |_| None), Err(StopReason::BadFrame));
    }

    #[test]
    fn lookup_in_shared_array() {
        // Two tables in one array; the second starts at index 3.
        let all = rows(&[0, 5, 9, 0, 0x10, 0x20]);
        let info = UnwindTableInfo {
            pc_base: 0x40_0000,
            first_row: 3,
            row_count: 3,
        };
        let at = |i: u32| all.get(i as usize).copied();
        assert_eq!(lookup_row(&info, 0x40_0018, at).unwrap().pc, 0x10);
        assert_eq!(lookup_row(&info, 0x40_0000, at).unwrap().pc, 0);
        assert_eq!(lookup_row(&info, 0x3f_ffff, at), Ok(UnwindRow::default()));
        assert_eq!(
            lookup_row(&info, 0x40_0000 + (1 << 33), at),
            Ok(UnwindRow::default())
        );
        // A count running past the array's end.
        let bad = UnwindTableInfo {
            row_count: 100,
            ..info
        };
        assert_eq!(lookup_row(&bad, 0x40_0018, at), Err(StopReason::BadFrame));
        let bad = UnwindTableInfo {
            first_row: u32::MAX,
            ..info
        };
        assert_eq!(lookup_row(&bad, 0x40_0018, at), Err(StopReason::BadFrame));
    }

    #[test]
    fn table_pc_range() {
        assert_eq!(table_pc(0x1000, 0xfff), None);
        assert_eq!(table_pc(0x1000, 0x1010), Some(0x10));
        assert_eq!(table_pc(0, 1 << 32), None);
    }
}
