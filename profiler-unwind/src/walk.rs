//! The stack walk: table rows where a binary has them, frame pointers where it does not
//! (Go, JIT code, binaries without `.eh_frame`), mixed freely within one stack.
//!
//! The eBPF program cannot use [`unwind`] as is (it needs `bpf_loop` around the frame loop),
//! so the per-frame logic is [`next_frame`], which a `bpf_loop` callback can call directly.

use crate::step::{fp_step, step};
use profiler_common::unwind::{
    StopReason, UnwindRegs as Regs, UnwindRow, CFA_NOT_COVERED, CFA_SIGNAL_FRAME,
};

/// One step up the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The caller's rip (a return address, unless `exact_pc`), rsp and rbp.
    pub regs: Regs,
    /// Recovered by the frame-pointer fallback rather than a table row.
    pub by_frame_pointer: bool,
    /// `regs.rip` is an exact instruction (the context a signal interrupted), not a return
    /// address: look it up as is, not at rip - 1. Pass it as `exact_pc` of the next step.
    pub exact_pc: bool,
}

/// The caller of the frame in `regs`.
///
/// `lookup(pc)` returns the row covering an absolute `pc`: `Ok(None)` when no table covers the
/// binary (the frame-pointer fallback then runs), `Ok(Some(row))` otherwise (a
/// `CFA_NOT_COVERED` row also falls back to frame pointers), or `Err` to stop.
/// `exact_pc` is true for the sampled frame (and after a signal frame): its rip is the
/// interrupted instruction. Every other rip is a return address, looked up at rip - 1 so that a
/// call at the very end of a function finds that function's row, not the next one's.
#[inline(always)]
pub fn next_frame(
    regs: &Regs,
    exact_pc: bool,
    mut lookup: impl FnMut(u64) -> Result<Option<UnwindRow>, StopReason>,
    read_u64: impl FnMut(u64) -> Option<u64>,
) -> Result<Caller, StopReason> {
    let pc = if exact_pc {
        regs.rip
    } else {
        regs.rip.wrapping_sub(1)
    };
    let why_guessing = match lookup(pc)? {
        Some(row) if row.cfa_kind() != CFA_NOT_COVERED => {
            let regs = step(regs, &row, read_u64)?;
            let exact_pc = row.cfa_kind() == CFA_SIGNAL_FRAME;
            return Ok(Caller {
                regs,
                by_frame_pointer: false,
                exact_pc,
            });
        }
        Some(_) => StopReason::PcNotCovered,
        None => StopReason::NoTable,
    };
    match fp_step(regs, read_u64) {
        Ok(regs) => Ok(Caller {
            regs,
            by_frame_pointer: true,
            exact_pc: false,
        }),
        Err(StopReason::BadFrame) => Err(why_guessing),
        Err(e) => Err(e),
    }
}

/// How a walk went: `depth` frames were written, then it stopped for `stop`. Frames are as
/// found on the stack: return addresses (symbolize at addr - 1), except the first and any
/// frame right after a signal frame, which are exact (see [`Caller::exact_pc`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unwound {
    /// Frames written, the sampled rip included.
    pub depth: u32,
    /// Why the walk ended ([`StopReason::EndOfStack`] for a complete stack).
    pub stop: StopReason,
    /// Frames recovered by the frame-pointer fallback rather than a table row.
    pub fp_frames: u32,
}

/// Walks the stack from `regs`, writing the sampled rip and then each return address into
/// `frames` (innermost first), at most `max_depth` and at most `frames.len()` of them.
pub fn unwind(
    regs: Regs,
    mut lookup: impl FnMut(u64) -> Result<Option<UnwindRow>, StopReason>,
    mut read_u64: impl FnMut(u64) -> Option<u64>,
    max_depth: u32,
    frames: &mut [u64],
) -> Unwound {
    let limit = frames.len().min(max_depth as usize);
    let mut fp_frames = 0;
    let Some(first) = frames.first_mut().filter(|_| limit > 0) else {
        return Unwound {
            depth: 0,
            stop: StopReason::DepthLimit,
            fp_frames,
        };
    };
    *first = regs.rip;
    let mut regs = regs;
    let mut exact_pc = true;
    for depth in 1..limit {
        match next_frame(&regs, exact_pc, &mut lookup, &mut read_u64) {
            Ok(caller) => {
                if let Some(slot) = frames.get_mut(depth) {
                    *slot = caller.regs.rip;
                }
                fp_frames += u32::from(caller.by_frame_pointer);
                regs = caller.regs;
                exact_pc = caller.exact_pc;
            }
            Err(stop) => {
                return Unwound {
                    depth: depth as u32,
                    stop,
                    fp_frames,
                }
            }
        }
    }
    Unwound {
        depth: limit as u32,
        stop: StopReason::DepthLimit,
        fp_frames,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::unwind::{
        CFA_END_OF_STACK, CFA_RSP, CFA_STACK_SWITCH, RBP_AT_CFA, RBP_UNCHANGED,
    };

    const TABLE_START: u64 = 0x40_0000;
    const TABLE_END: u64 = 0x40_1000;

    /// A binary with a table at [TABLE_START, TABLE_END): a function at +0x100 that pushed rbp
    /// but keeps no frame pointer (CFA = rsp + 16, rbp saved at CFA - 16), an outermost
    /// function at +0x800, and a gap without CFI at +0x900. Everything else has no table
    /// (think Go or JIT code).
    fn lookup(pc: u64) -> Result<Option<UnwindRow>, StopReason> {
        if !(TABLE_START..TABLE_END).contains(&pc) {
            return Ok(None);
        }
        let rows = [
            UnwindRow::new(0x100, CFA_RSP, 16, RBP_AT_CFA, -2),
            UnwindRow::new(0x800, CFA_END_OF_STACK, 0, RBP_UNCHANGED, 0),
            UnwindRow::new(0x900, CFA_NOT_COVERED, 0, RBP_UNCHANGED, 0),
        ];
        let rel = (pc - TABLE_START) as u32;
        Ok(Some(
            crate::find_row(&rows, rel).copied().unwrap_or_default(),
        ))
    }

    fn memory(words: &[(u64, u64)]) -> impl FnMut(u64) -> Option<u64> + '_ {
        move |addr| words.iter().find(|w| w.0 == addr).map(|w| w.1)
    }

    #[test]
    fn mixes_tables_and_frame_pointers() {
        // Frame 0: Go code at 0x90_0000 (no table), rbp chain -> frame 1.
        // Frame 1: C code with a table at TABLE_START + 0x150, CFA = rsp + 16.
        // Frame 2: Go code again, frame pointer chain -> frame 3.
        // Frame 3: the outermost C function.
        let mem = [
            // Frame 0's rbp = 0x7000: saved rbp, then the return address into frame 1.
            (0x7000, 0x7100),
            (0x7008, TABLE_START + 0x151),
            // Frame 1 (rsp = 0x7010): CFA = 0x7020, rbp at 0x7010, RA at 0x7018.
            (0x7010, 0x7200),
            (0x7018, 0x90_0100),
            // Frame 2 (rsp = 0x7020, rbp = 0x7200): frame pointer chain.
            (0x7200, 0x7300),
            (0x7208, TABLE_START + 0x801),
        ];
        let regs = Regs {
            rip: 0x90_0000,
            rsp: 0x6ff0,
            rbp: 0x7000,
        };
        let mut frames = [0u64; 16];
        let got = unwind(regs, lookup, memory(&mem), 16, &mut frames);
        // Frames 0 and 2 are Go code, unwound by frame pointers.
        assert_eq!(
            got,
            Unwound {
                depth: 4,
                stop: StopReason::EndOfStack,
                fp_frames: 2
            }
        );
        assert_eq!(
            frames[..4],
            [
                0x90_0000,
                TABLE_START + 0x151,
                0x90_0100,
                TABLE_START + 0x801
            ]
        );
    }

    #[test]
    fn return_address_is_looked_up_minus_one() {
        // The return address equals the start of the end-of-stack row; the call belongs to
        // the row before, so the walk continues past it.
        let mem = [
            (0x7000, 0),
            (0x7008, TABLE_START + 0x800),
            (0x7010, 0),
            (0x7018, 0x90_0000),
        ];
        let regs = Regs {
            rip: 0x90_0000,
            rsp: 0x6ff0,
            rbp: 0x7000,
        };
        let mut frames = [0u64; 8];
        let got = unwind(regs, lookup, memory(&mem), 8, &mut frames);
        assert_eq!(got.depth, 3);
        // Frame 2 is Go code with rbp = 0: the end of the chain.
        assert_eq!(got.stop, StopReason::EndOfStack);
    }

    #[test]
    fn fallback_reasons() {
        let mut frames = [0u64; 8];
        // No table and rbp below rsp.
        let regs = Regs {
            rip: 0x90_0000,
            rsp: 0x7000,
            rbp: 0x10,
        };
        assert_eq!(
            unwind(regs, lookup, |_| Some(1), 8, &mut frames).stop,
            StopReason::NoTable
        );
        // In the gap and rbp misaligned.
        let regs = Regs {
            rip: TABLE_START + 0x950,
            rsp: 0x7000,
            rbp: 0x7003,
        };
        assert_eq!(
            unwind(regs, lookup, |_| Some(1), 8, &mut frames).stop,
            StopReason::PcNotCovered
        );
        // Before the first row of the table: the lookup gives a default (not covered) row.
        let regs = Regs {
            rip: TABLE_START + 0x10,
            rsp: 0x7000,
            rbp: 0x10,
        };
        assert_eq!(
            unwind(regs, lookup, |_| Some(1), 8, &mut frames).stop,
            StopReason::PcNotCovered
        );
    }

    #[test]
    fn depth_limits() {
        // A self-referencing frame-pointer loop cannot spin: rsp must grow every frame.
        let regs = Regs {
            rip: 0x90_0000,
            rsp: 0x6ff0,
            rbp: 0x7000,
        };
        let looping = |addr: u64| {
            Some(if addr.is_multiple_of(16) {
                addr
            } else {
                0x90_0000
            })
        };
        let mut frames = [0u64; 8];
        let got = unwind(regs, lookup, looping, 8, &mut frames);
        assert_eq!(got.stop, StopReason::NoTable);
        assert_eq!(got.depth, 2);
        // An endless but growing chain hits the depth limit.
        let growing = |addr: u64| {
            Some(if addr.is_multiple_of(16) {
                addr + 16
            } else {
                0x90_0000
            })
        };
        let got = unwind(regs, lookup, growing, 5, &mut frames);
        assert_eq!(
            got,
            Unwound {
                depth: 5,
                stop: StopReason::DepthLimit,
                fp_frames: 4
            }
        );
        assert_eq!(unwind(regs, lookup, growing, 100, &mut frames).depth, 8);
        assert_eq!(unwind(regs, lookup, growing, 0, &mut frames).depth, 0);
        assert_eq!(unwind(regs, lookup, growing, 8, &mut []).depth, 0);
    }

    #[test]
    fn random_tables_and_memory_terminate() {
        // Garbage rows and garbage stack memory: every walk ends within the limit, and every
        // recovered frame moved the stack pointer up.
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let rows: [UnwindRow; 4] = core::array::from_fn(|i| {
                let r = rand();
                UnwindRow::new(
                    i as u32 * 0x40,
                    (r & 7) as u8,
                    (r >> 8) as u16,
                    ((r >> 24) & 3) as u8,
                    (r >> 32) as i8,
                )
            });
            let lookup = |pc: u64| -> Result<Option<UnwindRow>, StopReason> {
                if pc & 0x100 != 0 {
                    return Ok(None);
                }
                Ok(crate::find_row(&rows, (pc & 0xff) as u32).copied())
            };
            let seed = rand();
            let read = |addr: u64| {
                let x = (addr ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                (!x.is_multiple_of(7)).then_some(x >> (x & 31))
            };
            let start = Regs {
                rip: rand(),
                rsp: rand() >> 1,
                rbp: rand() >> 1,
            };
            let mut frames = [0u64; 64];
            let got = unwind(start, lookup, read, 64, &mut frames);
            assert!(got.depth <= 64 && got.fp_frames < got.depth.max(1));
            let mut regs = start;
            let mut exact = true;
            for _ in 0..64 {
                let pc = if exact {
                    regs.rip
                } else {
                    regs.rip.wrapping_sub(1)
                };
                let switched =
                    matches!(lookup(pc), Ok(Some(row)) if row.cfa_kind() == CFA_STACK_SWITCH);
                match next_frame(&regs, exact, lookup, read) {
                    Ok(caller) => {
                        // Only signal frames and known stack switches may move down.
                        assert!(caller.regs.rsp > regs.rsp || caller.exact_pc || switched);
                        regs = caller.regs;
                        exact = caller.exact_pc;
                    }
                    Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn lookup_errors_stop() {
        let regs = Regs {
            rip: 0x90_0000,
            rsp: 0x6ff0,
            rbp: 0x7000,
        };
        let mut frames = [0u64; 8];
        let got = unwind(
            regs,
            |_| Err(StopReason::BadFrame),
            |_| Some(1),
            8,
            &mut frames,
        );
        assert_eq!(
            got,
            Unwound {
                depth: 1,
                stop: StopReason::BadFrame,
                fp_frames: 0
            }
        );
    }
}
