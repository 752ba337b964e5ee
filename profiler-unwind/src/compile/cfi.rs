//! Evaluates `.eh_frame` (or `.debug_frame`) CFI with gimli and turns each CFI row into a
//! compact rule.

use super::layout::Span;
use super::{CompileOptions, CompileStats, Error, SectionAddrs};
use gimli::{
    BaseAddresses, CfaRule, CieOrFde, CommonInformationEntry, DebugFrame, EhFrame, EndianSlice,
    LittleEndian, RegisterRule, UnwindContext, UnwindOffset, UnwindSection, UnwindTableRow, X86_64,
};
use profiler_common::unwind::{
    UnwindRow, CFA_END_OF_STACK, CFA_PLT, CFA_RBP, CFA_RSP, CFA_SIGNAL_FRAME, CFA_UNSUPPORTED,
    RBP_AT_CFA, RBP_UNCHANGED,
};
use std::collections::HashMap;

type Reader<'a> = EndianSlice<'a, LittleEndian>;

/// Longest CIE accepted. Every FDE re-runs its CIE's initial instructions, so one huge CIE
/// shared by many FDEs would make compiling quadratic in the input size. Real CIEs are a few
/// dozen bytes.
const MAX_CIE_LEN: usize = 1024;
/// CIEs kept parsed. Real binaries have a handful; a hostile section made of nothing but CIEs
/// must not turn into a map many times its size.
const MAX_CACHED_CIES: usize = 1024;

/// Which CFI section the bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CfiSection {
    /// `.eh_frame`: pointer encodings relative to the section's address and friends.
    EhFrame,
    /// `.debug_frame`: absolute addresses, CIE pointers as section offsets. Found in binaries
    /// built without unwind tables but with `-g`, and in Go binaries.
    DebugFrame,
}

/// Every CFI row of every FDE as an address span with its rule, in section order.
pub(super) fn collect_spans(
    data: &[u8],
    kind: CfiSection,
    addrs: &SectionAddrs,
    opts: &CompileOptions,
    stats: &mut CompileStats,
) -> Result<Vec<Span>, Error> {
    let mut bases = BaseAddresses::default().set_eh_frame(addrs.eh_frame);
    if let Some(text) = addrs.text {
        bases = bases.set_text(text);
    }
    if let Some(got) = addrs.got {
        bases = bases.set_got(got);
    }
    match kind {
        CfiSection::EhFrame => {
            let mut section = EhFrame::new(data, LittleEndian);
            section.set_address_size(8);
            collect_from(&section, &bases, addrs, opts, stats)
        }
        CfiSection::DebugFrame => {
            let mut section = DebugFrame::new(data, LittleEndian);
            section.set_address_size(8);
            collect_from(&section, &bases, addrs, opts, stats)
        }
    }
}

fn collect_from<'a, S: UnwindSection<Reader<'a>>>(
    section: &S,
    bases: &BaseAddresses,
    addrs: &SectionAddrs,
    opts: &CompileOptions,
    stats: &mut CompileStats,
) -> Result<Vec<Span>, Error> {
    // Before merging there can be more CFI rows than table rows; bound them too.
    let span_limit = opts.max_rows.saturating_mul(4);
    let mut spans = Vec::new();
    let mut fde_spans = Vec::new();
    let mut unsupported = Vec::new();
    let mut cies: HashMap<usize, CommonInformationEntry<Reader<'a>>> = HashMap::new();
    // UnwindContext is a few KiB; reused for every FDE.
    let mut ctx = Box::new(UnwindContext::new());
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next()? {
        let partial = match entry {
            CieOrFde::Cie(cie) => {
                if cies.len() < MAX_CACHED_CIES {
                    cies.insert(cie.offset(), cie);
                }
                continue;
            }
            CieOrFde::Fde(partial) => partial,
        };
        stats.fdes += 1;
        let fde =
            partial.parse(
                |section, bases, offset| match cies.get(&UnwindOffset::into(offset)) {
                    Some(cie) => Ok(cie.clone()),
                    None => section.cie_from_offset(bases, offset),
                },
            );
        let Some(fde) = fde.ok().filter(|fde| fde.cie().entry_len() <= MAX_CIE_LEN) else {
            stats.bad_fdes += 1;
            continue;
        };
        fde_spans.clear();
        unsupported.clear();
        let signal_frame = fde.is_signal_trampoline();
        let evaluated = (|| -> gimli::Result<()> {
            let mut rows = fde.rows(section, bases, &mut ctx)?;
            while let Some(row) = rows.next_row()? {
                if fde_spans.len() >= span_limit {
                    return Err(gimli::Error::StackFull);
                }
                // A signal trampoline's CFI describes the kernel's frame layout with
                // expressions; the kernel's layout is fixed, so one kind covers it.
                let rule = if signal_frame {
                    Ok(UnwindRow::new(0, CFA_SIGNAL_FRAME, 0, RBP_UNCHANGED, 0))
                } else {
                    rule_of(row, section)
                };
                let rule = rule.unwrap_or_else(|why| {
                    unsupported.push(why);
                    UnwindRow::new(0, CFA_UNSUPPORTED, 0, RBP_UNCHANGED, 0)
                });
                fde_spans.push(Span {
                    start: row.start_address(),
                    end: row.end_address(),
                    rule,
                });
            }
            Ok(())
        })();
        if evaluated.is_err() {
            stats.bad_fdes += 1;
            continue;
        }
        let inside = |s: &Span| match &addrs.code {
            Some(code) => code.start <= s.start && s.end <= code.end,
            None => true,
        };
        if !fde_spans.iter().all(inside) {
            stats.fdes_outside_code += 1;
            continue;
        }
        if spans.len() + fde_spans.len() > span_limit {
            return Err(Error::TooManyRows {
                limit: opts.max_rows,
            });
        }
        stats.cfi_rows += fde_spans.len();
        stats.plt_rows += fde_spans
            .iter()
            .filter(|s| s.rule.cfa_kind() == CFA_PLT)
            .count();
        stats.signal_frame_rows += fde_spans
            .iter()
            .filter(|s| s.rule.cfa_kind() == CFA_SIGNAL_FRAME)
            .count();
        for why in &unsupported {
            let counter = match why {
                Unsupported::CfaExpression => &mut stats.unsupported.cfa_expression,
                Unsupported::CfaRegister => &mut stats.unsupported.cfa_register,
                Unsupported::CfaOffset => &mut stats.unsupported.cfa_offset,
                Unsupported::ReturnAddress => &mut stats.unsupported.return_address,
                Unsupported::Rbp => &mut stats.unsupported.rbp,
            };
            *counter += 1;
        }
        spans.extend_from_slice(&fde_spans);
    }
    Ok(spans)
}

/// Why a CFI row became a `CFA_UNSUPPORTED` row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unsupported {
    /// CFA from a DWARF expression other than the PLT one (signal trampolines, hand-written asm).
    CfaExpression,
    /// CFA based on a register other than rsp/rbp.
    CfaRegister,
    /// CFA offset negative or above 65535 (huge stack frames).
    CfaOffset,
    /// Return address not at CFA - 8.
    ReturnAddress,
    /// rbp saved somewhere other than CFA + 8n, n in i8.
    Rbp,
}

/// The compact rule for one CFI row (pc left at 0).
fn rule_of<'a, S: UnwindSection<Reader<'a>>>(
    row: &UnwindTableRow<usize>,
    section: &S,
) -> Result<UnwindRow, Unsupported> {
    // The return address column: undefined marks the outermost frame; anything but
    // "saved at CFA - 8" breaks the assumption every row relies on.
    match row.register(X86_64::RA) {
        Some(RegisterRule::Undefined) => {
            return Ok(UnwindRow::new(0, CFA_END_OF_STACK, 0, RBP_UNCHANGED, 0))
        }
        Some(RegisterRule::Offset(-8)) => {}
        _ => return Err(Unsupported::ReturnAddress),
    }
    let (cfa_kind, cfa_offset) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let kind = match *register {
                X86_64::RSP => CFA_RSP,
                X86_64::RBP => CFA_RBP,
                _ => return Err(Unsupported::CfaRegister),
            };
            (
                kind,
                u64::try_from(*offset).map_err(|_| Unsupported::CfaOffset)?,
            )
        }
        CfaRule::Expression(expr) => {
            let threshold = expr
                .get(section)
                .ok()
                .and_then(|e| plt_threshold(e.0.slice()));
            (
                CFA_PLT,
                u64::from(threshold.ok_or(Unsupported::CfaExpression)?),
            )
        }
    };
    // Callee-saved rbp: no rule (or same value) means it still holds the caller's value.
    let (rbp_kind, rbp_offset) = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue) | Some(RegisterRule::Undefined) => (RBP_UNCHANGED, 0),
        Some(RegisterRule::Offset(off)) if off % 8 == 0 => (
            RBP_AT_CFA,
            i8::try_from(off / 8).map_err(|_| Unsupported::Rbp)?,
        ),
        Some(_) => return Err(Unsupported::Rbp),
    };
    UnwindRow::with_cfa_offset(0, cfa_kind, cfa_offset, rbp_kind, rbp_offset)
        .ok_or(Unsupported::CfaOffset)
}

/// Recognizes the CFA expression that linkers emit for PLT entries:
/// `rsp + 8 + ((rip & 15) >= N) << 3`, returning N.
fn plt_threshold(expr: &[u8]) -> Option<u16> {
    use gimli::constants::*;
    const BREG_RSP: u8 = DW_OP_breg7.0;
    const BREG_RIP: u8 = DW_OP_breg16.0;
    match *expr {
        [BREG_RSP, 8, BREG_RIP, 0, lit15, and, litn, ge, lit3, shl, plus]
            if lit15 == DW_OP_lit15.0
                && and == DW_OP_and.0
                && (DW_OP_lit0.0..=DW_OP_lit15.0).contains(&litn)
                && ge == DW_OP_ge.0
                && lit3 == DW_OP_lit3.0
                && shl == DW_OP_shl.0
                && plus == DW_OP_plus.0 =>
        {
            Some(u16::from(litn - DW_OP_lit0.0))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::plt_threshold;

    #[test]
    fn plt_expression() {
        // What binutils emits for .plt (threshold 11) and IBT .plt (10).
        let plt = [0x77, 8, 0x80, 0, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22];
        assert_eq!(plt_threshold(&plt), Some(11));
        let mut ibt = plt;
        ibt[6] = 0x3a;
        assert_eq!(plt_threshold(&ibt), Some(10));
        let mut other = plt;
        other[1] = 16;
        assert_eq!(plt_threshold(&other), None);
        assert_eq!(plt_threshold(&plt[..10]), None);
    }
}
