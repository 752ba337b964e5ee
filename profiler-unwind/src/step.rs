//! One frame up: apply a row's rules, or follow the frame-pointer chain.

use profiler_common::unwind::{
    StopReason, UnwindRegs as Regs, UnwindRow, CFA_END_OF_STACK, CFA_NOT_COVERED, CFA_PLT, CFA_RBP,
    CFA_RSP, CFA_SIGNAL_FRAME, CFA_STACK_SWITCH, RBP_AT_CFA, RBP_UNCHANGED, UCONTEXT_RBP,
    UCONTEXT_RIP, UCONTEXT_RSP,
};

/// The caller's registers according to `row`, which must be the row covering `regs.rip`.
/// `read_u64` reads 8 bytes of the target's memory (`bpf_probe_read_user` in the kernel).
/// For a `CFA_SIGNAL_FRAME` row the result is the interrupted context, whose rip is exact.
#[inline(always)]
pub fn step(
    regs: &Regs,
    row: &UnwindRow,
    mut read_u64: impl FnMut(u64) -> Option<u64>,
) -> Result<Regs, StopReason> {
    if row.cfa_kind() == CFA_SIGNAL_FRAME {
        return signal_step(regs, read_u64);
    }
    if row.cfa_kind() == CFA_STACK_SWITCH {
        return frame_record_step(regs, read_u64, false);
    }
    let offset = row.cfa_offset_bytes();
    let cfa = match row.cfa_kind() {
        CFA_RSP => regs.rsp.checked_add(offset),
        CFA_RBP => regs.rbp.checked_add(offset),
        // Past the PLT entry's `push` (at byte `cfa_offset` of the 16-byte entry) one more
        // word is on the stack.
        CFA_PLT => {
            let pushed = if regs.rip & 15 >= offset { 16 } else { 8 };
            regs.rsp.checked_add(pushed)
        }
        CFA_END_OF_STACK => return Err(StopReason::EndOfStack),
        CFA_NOT_COVERED => return Err(StopReason::PcNotCovered),
        _ => return Err(StopReason::UnsupportedRow),
    };
    // The CFA is the caller's rsp, which is above ours: anything else would loop or go down.
    let cfa = match cfa {
        Some(cfa) if cfa > regs.rsp => cfa,
        _ => return Err(StopReason::BadFrame),
    };
    let rbp = match row.rbp_kind() {
        RBP_UNCHANGED => regs.rbp,
        RBP_AT_CFA => {
            let at = cfa.wrapping_add_signed(i64::from(row.rbp_offset) * 8);
            read_u64(at).ok_or(StopReason::ReadFailure)?
        }
        _ => return Err(StopReason::UnsupportedRow),
    };
    let ra_at = cfa.checked_sub(8).ok_or(StopReason::BadFrame)?;
    let ra = read_u64(ra_at).ok_or(StopReason::ReadFailure)?;
    if ra == 0 {
        return Err(StopReason::EndOfStack);
    }
    Ok(Regs {
        rip: ra,
        rsp: cfa,
        rbp,
    })
}

/// The interrupted registers saved in the signal frame at rsp.
#[inline(always)]
fn signal_step(
    regs: &Regs,
    mut read_u64: impl FnMut(u64) -> Option<u64>,
) -> Result<Regs, StopReason> {
    let at = |off: u64| regs.rsp.checked_add(off).ok_or(StopReason::BadFrame);
    let rip = read_u64(at(UCONTEXT_RIP)?).ok_or(StopReason::ReadFailure)?;
    let rsp = read_u64(at(UCONTEXT_RSP)?).ok_or(StopReason::ReadFailure)?;
    let rbp = read_u64(at(UCONTEXT_RBP)?).ok_or(StopReason::ReadFailure)?;
    // The interrupted code may run on another stack (sigaltstack), so rsp need not grow; the
    // depth limit bounds a chain of bogus signal frames.
    if rip == 0 {
        return Err(StopReason::EndOfStack);
    }
    Ok(Regs { rip, rsp, rbp })
}

/// The caller's registers by the frame-pointer convention: rbp points at the saved rbp, with
/// the return address above it. An implausible rbp (below rsp, misaligned) gives
/// [`StopReason::BadFrame`], which callers translate into why they had to guess.
#[inline(always)]
pub fn fp_step(regs: &Regs, read_u64: impl FnMut(u64) -> Option<u64>) -> Result<Regs, StopReason> {
    frame_record_step(regs, read_u64, true)
}

/// The frame record at rbp; `same_stack` requires it to lie above rsp (anything else is a
/// guess gone wrong, except across a known stack switch).
#[inline(always)]
fn frame_record_step(
    regs: &Regs,
    mut read_u64: impl FnMut(u64) -> Option<u64>,
    same_stack: bool,
) -> Result<Regs, StopReason> {
    if regs.rbp == 0 {
        return Err(StopReason::EndOfStack);
    }
    if (same_stack && regs.rbp < regs.rsp) || regs.rbp & 7 != 0 {
        return Err(StopReason::BadFrame);
    }
    let caller_rsp = regs.rbp.checked_add(16).ok_or(StopReason::BadFrame)?;
    let ra_at = regs.rbp + 8;
    let saved_rbp = read_u64(regs.rbp).ok_or(StopReason::ReadFailure)?;
    let ra = read_u64(ra_at).ok_or(StopReason::ReadFailure)?;
    if ra == 0 {
        return Err(StopReason::EndOfStack);
    }
    Ok(Regs {
        rip: ra,
        rsp: caller_rsp,
        rbp: saved_rbp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::unwind::CFA_UNSUPPORTED;

    /// Little-endian words at `base`, `base + 8`, ...
    fn mem(base: u64, words: &[u64]) -> impl FnMut(u64) -> Option<u64> + '_ {
        move |addr| {
            let off = addr.checked_sub(base)?;
            if off % 8 != 0 {
                return None;
            }
            words.get((off / 8) as usize).copied()
        }
    }

    #[test]
    fn rsp_rule_with_saved_rbp() {
        // push rbp; sub $16,rsp: CFA = rsp + 32, rbp at CFA - 16, RA at CFA - 8.
        let stack = [0, 0, 0xdead_0000, 0x40_1234];
        let regs = Regs {
            rip: 0x1000,
            rsp: 0x7000,
            rbp: 5,
        };
        let row = UnwindRow::new(0, CFA_RSP, 32, RBP_AT_CFA, -2);
        let up = step(&regs, &row, mem(0x7000, &stack)).unwrap();
        assert_eq!(
            up,
            Regs {
                rip: 0x40_1234,
                rsp: 0x7020,
                rbp: 0xdead_0000
            }
        );
    }

    #[test]
    fn rbp_rule_and_unchanged_rbp() {
        let stack = [0x7100, 0x40_5678];
        let regs = Regs {
            rip: 0x1000,
            rsp: 0x6f00,
            rbp: 0x7000,
        };
        let row = UnwindRow::new(0, CFA_RBP, 16, RBP_AT_CFA, -2);
        let up = step(&regs, &row, mem(0x7000, &stack)).unwrap();
        assert_eq!(
            up,
            Regs {
                rip: 0x40_5678,
                rsp: 0x7010,
                rbp: 0x7100
            }
        );
        let row = UnwindRow::new(0, CFA_RBP, 16, RBP_UNCHANGED, 0);
        assert_eq!(step(&regs, &row, mem(0x7000, &stack)).unwrap().rbp, 0x7000);
    }

    #[test]
    fn plt_rule() {
        let stack = [0, 0x40_0001];
        let row = UnwindRow::new(0, CFA_PLT, 11, RBP_UNCHANGED, 0);
        let at_start = Regs {
            rip: 0x1020,
            rsp: 0x7000,
            rbp: 0,
        };
        assert_eq!(
            step(&at_start, &row, mem(0x7000, &[0x40_0002]))
                .unwrap()
                .rsp,
            0x7008
        );
        let after_push = Regs {
            rip: 0x102b,
            rsp: 0x7000,
            rbp: 0,
        };
        assert_eq!(
            step(&after_push, &row, mem(0x7000, &stack)).unwrap().rip,
            0x40_0001
        );
    }

    #[test]
    fn large_frames() {
        // A 256 KiB frame: CFA = rsp + 0x40008, stored in 8-byte words.
        let row = UnwindRow::with_cfa_offset(0, CFA_RSP, 0x4_0008, RBP_UNCHANGED, 0).unwrap();
        assert_eq!(
            (
                row.cfa_offset,
                row.cfa_offset_bytes(),
                row.cfa_kind(),
                row.rbp_kind()
            ),
            (0x8001, 0x4_0008, CFA_RSP, 0)
        );
        let regs = Regs {
            rip: 0x1000,
            rsp: 0x10_0000,
            rbp: 0,
        };
        let up = step(&regs, &row, |a| (a == 0x14_0000).then_some(0x40_1000)).unwrap();
        assert_eq!(up.rsp, 0x14_0008);
        assert_eq!(UnwindRow::with_cfa_offset(0, CFA_RSP, 0x4_0004, 0, 0), None);
        assert_eq!(UnwindRow::with_cfa_offset(0, CFA_RSP, 8 << 16, 0, 0), None);
        assert_eq!(
            UnwindRow::with_cfa_offset(0, CFA_RSP, 65535, 0, 0)
                .unwrap()
                .cfa_offset_bytes(),
            65535
        );
    }

    #[test]
    fn signal_frame() {
        let mut uc = [0u64; 22];
        uc[10 + 5] = 0x7100; // rbp
        uc[15 + 5] = 0x7200; // rsp
        uc[16 + 5] = 0x40_4242; // rip
        let regs = Regs {
            rip: 0x1000,
            rsp: 0x7000,
            rbp: 1,
        };
        let row = UnwindRow::new(0, CFA_SIGNAL_FRAME, 0, RBP_UNCHANGED, 0);
        assert_eq!(
            step(&regs, &row, mem(0x7000, &uc)),
            Ok(Regs {
                rip: 0x40_4242,
                rsp: 0x7200,
                rbp: 0x7100
            })
        );
        assert_eq!(
            step(&regs, &row, mem(0x7000, &uc[..21])),
            Err(StopReason::ReadFailure)
        );
        let high = Regs {
            rsp: u64::MAX - 100,
            ..regs
        };
        assert_eq!(step(&high, &row, |_| Some(1)), Err(StopReason::BadFrame));
    }

    #[test]
    fn stops() {
        let regs = Regs {
            rip: 0x1000,
            rsp: 0x7000,
            rbp: 0,
        };
        let read = |_| Some(1);
        let kinds = [
            (CFA_END_OF_STACK, StopReason::EndOfStack),
            (CFA_NOT_COVERED, StopReason::PcNotCovered),
            (CFA_UNSUPPORTED, StopReason::UnsupportedRow),
            (15, StopReason::UnsupportedRow),
        ];
        for (kind, want) in kinds {
            assert_eq!(
                step(&regs, &UnwindRow::new(0, kind, 8, 0, 0), read),
                Err(want)
            );
        }
        // CFA not above rsp: rbp-based with rbp = 0.
        assert_eq!(
            step(&regs, &UnwindRow::new(0, CFA_RBP, 16, 0, 0), read),
            Err(StopReason::BadFrame)
        );
        assert_eq!(
            step(&regs, &UnwindRow::new(0, CFA_RSP, 0, 0, 0), read),
            Err(StopReason::BadFrame)
        );
        // Overflow.
        let high = Regs {
            rsp: u64::MAX - 4,
            ..regs
        };
        assert_eq!(
            step(&high, &UnwindRow::new(0, CFA_RSP, 8, 0, 0), read),
            Err(StopReason::BadFrame)
        );
        assert_eq!(
            step(&regs, &UnwindRow::new(0, CFA_RSP, 8, 0, 0), |_| None),
            Err(StopReason::ReadFailure)
        );
        assert_eq!(
            step(&regs, &UnwindRow::new(0, CFA_RSP, 8, 0, 0), |_| Some(0)),
            Err(StopReason::EndOfStack)
        );
        assert_eq!(
            step(&regs, &UnwindRow::new(0, CFA_RSP, 8, 7, 0), read),
            Err(StopReason::UnsupportedRow)
        );
    }

    #[test]
    fn stack_switch_follows_rbp_to_a_lower_stack() {
        // On the system stack at 0x9000; the goroutine's frame record is at 0x7000, below.
        let regs = Regs {
            rip: 0x1000,
            rsp: 0x9000,
            rbp: 0x7000,
        };
        let row = UnwindRow::new(0, CFA_STACK_SWITCH, 0, RBP_UNCHANGED, 0);
        let stack = [0x7100, 0x40_0042];
        assert_eq!(
            step(&regs, &row, mem(0x7000, &stack)),
            Ok(Regs {
                rip: 0x40_0042,
                rsp: 0x7010,
                rbp: 0x7100
            })
        );
        // Plain frame pointers refuse the same frame.
        assert_eq!(
            fp_step(&regs, mem(0x7000, &stack)),
            Err(StopReason::BadFrame)
        );
        assert_eq!(
            step(
                &Regs {
                    rbp: 0x7004,
                    ..regs
                },
                &row,
                |_| Some(1)
            ),
            Err(StopReason::BadFrame)
        );
        assert_eq!(
            step(&Regs { rbp: 0, ..regs }, &row, |_| Some(1)),
            Err(StopReason::EndOfStack)
        );
    }

    #[test]
    fn frame_pointers() {
        let stack = [0x7100, 0x40_0042];
        let regs = Regs {
            rip: 0x1000,
            rsp: 0x6ff0,
            rbp: 0x7000,
        };
        assert_eq!(
            fp_step(&regs, mem(0x7000, &stack)),
            Ok(Regs {
                rip: 0x40_0042,
                rsp: 0x7010,
                rbp: 0x7100
            })
        );
        assert_eq!(
            fp_step(&Regs { rbp: 0, ..regs }, |_| Some(1)),
            Err(StopReason::EndOfStack)
        );
        assert_eq!(
            fp_step(
                &Regs {
                    rbp: 0x6000,
                    ..regs
                },
                |_| Some(1)
            ),
            Err(StopReason::BadFrame)
        );
        assert_eq!(
            fp_step(
                &Regs {
                    rbp: 0x7004,
                    ..regs
                },
                |_| Some(1)
            ),
            Err(StopReason::BadFrame)
        );
        assert_eq!(
            fp_step(&Regs { rbp: !7, ..regs }, |_| Some(1)),
            Err(StopReason::BadFrame)
        );
        assert_eq!(
            fp_step(
                &Regs {
                    rbp: u64::MAX - 15,
                    ..regs
                },
                |_| Some(1)
            ),
            Err(StopReason::BadFrame)
        );
        assert_eq!(fp_step(&regs, |_| None), Err(StopReason::ReadFailure));
    }
}
