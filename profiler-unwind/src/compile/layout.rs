//! Orders CFI spans into the final table: sorted, gaps marked, identical neighbours merged.

use super::Error;
use profiler_common::unwind::{UnwindRow, CFA_NOT_COVERED, RBP_UNCHANGED};

/// One CFI row: `rule` applies to PCs in `[start, end)`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Span {
    pub start: u64,
    pub end: u64,
    pub rule: UnwindRow,
}

/// Gaps shorter than this between FDEs are alignment padding and are not given a row of their
/// own: the previous rule extends over them. Padding is never executed, so this only saves rows
/// (about 10% of libc's); and for a tiny leaf stub without CFI, the previous function's final
/// rule (CFA = rsp + 8) is a better guess than frame pointers.
const MAX_PADDING: u64 = 16;

const NOT_COVERED: UnwindRow = UnwindRow::new(0, CFA_NOT_COVERED, 0, RBP_UNCHANGED, 0);

/// Returns `(pc_base, rows)`. Where FDEs overlap, the one starting first wins.
pub(super) fn lay_out(
    mut spans: Vec<Span>,
    max_rows: usize,
) -> Result<(u64, Vec<UnwindRow>), Error> {
    spans.retain(|s| s.start < s.end);
    // Stable: rows of one FDE keep their order.
    spans.sort_by_key(|s| s.start);
    let Some(first) = spans.first() else {
        return Ok((0, Vec::new()));
    };
    let pc_base = first.start;
    let mut rows: Vec<UnwindRow> = Vec::new();
    let mut covered_end = pc_base;
    // Gaps get explicit rows, so the previous row always ends where the next begins and
    // equal neighbours can merge.
    let push = |rows: &mut Vec<UnwindRow>, at: u64, rule: UnwindRow| -> Result<(), Error> {
        if rows.last().is_some_and(|last| last.same_rule(&rule)) {
            return Ok(());
        }
        if rows.len() >= max_rows {
            return Err(Error::TooManyRows { limit: max_rows });
        }
        let span = at - pc_base;
        let pc = u32::try_from(span).map_err(|_| Error::CodeTooLarge { span })?;
        rows.push(UnwindRow { pc, ..rule });
        Ok(())
    };
    for span in &spans {
        let start = span.start.max(covered_end);
        if start >= span.end {
            continue;
        }
        if start - covered_end >= MAX_PADDING {
            push(&mut rows, covered_end, NOT_COVERED)?;
        }
        push(&mut rows, start, span.rule)?;
        covered_end = span.end;
    }
    // The end sentinel is pushed unmerged: the last row is always a covered span's.
    if rows.len() >= max_rows {
        return Err(Error::TooManyRows { limit: max_rows });
    }
    let span = covered_end - pc_base;
    let pc = u32::try_from(span).map_err(|_| Error::CodeTooLarge { span })?;
    rows.push(UnwindRow { pc, ..NOT_COVERED });
    Ok((pc_base, rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::unwind::{CFA_RSP, RBP_AT_CFA};

    fn rsp(off: u16) -> UnwindRow {
        UnwindRow::new(0, CFA_RSP, off, RBP_UNCHANGED, 0)
    }

    fn span(start: u64, end: u64, rule: UnwindRow) -> Span {
        Span { start, end, rule }
    }

    #[test]
    fn sorts_merges_and_marks_gaps() {
        let spans = vec![
            span(0x2000, 0x2010, rsp(8)),
            span(0x1000, 0x1001, rsp(8)),
            span(0x1001, 0x1004, rsp(16)),
            span(
                0x1004,
                0x1010,
                UnwindRow::new(0, CFA_RSP, 16, RBP_AT_CFA, -2),
            ),
            // Next function starts right away with the same rule as the last: merged.
            span(
                0x1010,
                0x1020,
                UnwindRow::new(0, CFA_RSP, 16, RBP_AT_CFA, -2),
            ),
            span(0x1020, 0x1020, rsp(99)), // empty: dropped
            // After 15 bytes of padding: no gap row, the previous rule stretches over it.
            span(0x201f, 0x2040, rsp(24)),
        ];
        let (base, rows) = lay_out(spans, 100).unwrap();
        assert_eq!(base, 0x1000);
        let got: Vec<(u32, u8, u16)> = rows
            .iter()
            .map(|r| (r.pc, r.cfa_kind(), r.cfa_offset))
            .collect();
        assert_eq!(
            got,
            [
                (0, CFA_RSP, 8),
                (1, CFA_RSP, 16),
                (4, CFA_RSP, 16),
                (0x20, 0, 0),
                (0x1000, CFA_RSP, 8),
                (0x101f, CFA_RSP, 24),
                (0x1040, 0, 0)
            ]
        );
    }

    #[test]
    fn overlaps_and_limits() {
        let spans = vec![
            span(0x100, 0x200, rsp(8)),
            span(0x180, 0x280, rsp(16)),
            span(0x190, 0x1a0, rsp(24)),
        ];
        let (_, rows) = lay_out(spans.clone(), 100).unwrap();
        let got: Vec<(u32, u16)> = rows.iter().map(|r| (r.pc, r.cfa_offset)).collect();
        assert_eq!(got, [(0, 8), (0x100, 16), (0x180, 0)]);
        assert!(matches!(
            lay_out(spans, 2),
            Err(Error::TooManyRows { limit: 2 })
        ));
        let far = vec![span(0, 1, rsp(8)), span(1 << 33, (1 << 33) + 1, rsp(8))];
        assert!(matches!(lay_out(far, 100), Err(Error::CodeTooLarge { .. })));
        assert_eq!(lay_out(Vec::new(), 100).unwrap().1, []);
    }
}
