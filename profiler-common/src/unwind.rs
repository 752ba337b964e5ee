//! Unwind-table types shared by the eBPF unwinder and the agent.
//!
//! A table is a sorted array of [`UnwindRow`]s compiled from one binary's `.eh_frame` (and
//! `.debug_frame`). Row `i` covers the PCs from `rows[i].pc` up to `rows[i + 1].pc`; the last
//! row of every table has kind [`CFA_NOT_COVERED`] and marks where coverage ends. Code without
//! CFI (16 bytes or more, i.e. more than alignment padding) gets a [`CFA_NOT_COVERED`] row too,
//! so a lookup never attributes one function's rule to the code after it.
//!
//! On x86-64 the return address is always at CFA - 8, so a row only needs the CFA rule and the
//! rule for the caller's rbp (the one callee-saved register that code without tables, such as
//! Go or JIT code, needs for frame-pointer unwinding).
//!
//! Rows are plain integers rather than Rust enums so that any bit pattern read from a map is a
//! valid value; the `CFA_*`, `RBP_*` and [`CFA_OFFSET_X8`] constants give the meaning of the
//! bits of [`UnwindRow::kinds`].

/// PC range has no CFI: fall back to frame pointers. Also the end-of-table sentinel.
pub const CFA_NOT_COVERED: u8 = 0;
/// CFA = rsp + `cfa_offset`.
pub const CFA_RSP: u8 = 1;
/// CFA = rbp + `cfa_offset`.
pub const CFA_RBP: u8 = 2;
/// The return address is undefined here: this is the outermost frame (`_start`, thread entry).
pub const CFA_END_OF_STACK: u8 = 3;
/// The CFI uses something this format cannot express: a DWARF expression other than the PLT
/// one, a CFA register other than rsp/rbp, a frame of 512 KiB or more, or rbp saved out of
/// range. The walk stops there.
pub const CFA_UNSUPPORTED: u8 = 4;
/// PLT stub (`.plt`/`.plt.sec` lazy-binding entries): CFA = rsp + 8, plus 8 more when
/// `(pc & 15) >= cfa_offset`. This is the one DWARF expression every linker emits, so it gets
/// its own kind instead of being reported as unsupported.
pub const CFA_PLT: u8 = 5;
/// Signal trampoline (`__restore_rt`, CIE augmentation "S"): rsp points at the kernel's
/// `ucontext_t`, which holds the interrupted registers at the `UCONTEXT_*` offsets. The
/// recovered rip is the interrupted instruction itself, not a return address.
pub const CFA_SIGNAL_FRAME: u8 = 6;

/// The caller runs on another stack: Go's `asmcgocall`, which C code called through cgo returns
/// into on the system stack, before it switches back to the goroutine's stack. Its CFI does not
/// describe the switch, but it set up a frame pointer on the goroutine stack first: follow rbp
/// (saved rbp at rbp, return address at rbp + 8) without requiring the caller's frame to lie
/// above this one. The depth limit bounds a bogus chain.
pub const CFA_STACK_SWITCH: u8 = 7;

/// Offsets from rsp in `__restore_rt` to the saved registers: `ucontext_t.uc_mcontext` starts
/// 40 bytes in (flags, link, 24-byte `stack_t`), then `gregs[REG_RBP = 10]`,
/// `gregs[REG_RSP = 15]` and `gregs[REG_RIP = 16]`, 8 bytes each. This one: rbp.
pub const UCONTEXT_RBP: u64 = 40 + 8 * 10;
/// Offset of the saved rsp in `ucontext_t`.
pub const UCONTEXT_RSP: u64 = 40 + 8 * 15;
/// Offset of the saved rip in `ucontext_t`.
pub const UCONTEXT_RIP: u64 = 40 + 8 * 16;

/// Flag in `UnwindRow::kinds`: `cfa_offset` counts 8-byte words, not bytes. Lets 16 bits
/// describe frames up to 512 KiB (big stack arrays); smaller offsets use bytes.
pub const CFA_OFFSET_X8: u8 = 0x80;

/// The caller's rbp equals the current rbp (not saved, or not yet clobbered).
pub const RBP_UNCHANGED: u8 = 0;
/// The caller's rbp is saved at CFA + 8 * `rbp_offset`.
pub const RBP_AT_CFA: u8 = 1;

/// One unwind rule, 8 bytes.
///
/// `pc` is an offset from the table's [`UnwindTableInfo::pc_base`] rather than an absolute
/// address: a single binary's code is far smaller than 4 GiB, and 32 bits halve the row
/// compared to a u64 PC with padding. Hosts can have millions of rows, so bytes per row matter
/// more than the one subtraction per lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnwindRow {
    /// First PC this row covers, relative to [`UnwindTableInfo::pc_base`].
    pub pc: u32,
    /// Offset added to the CFA base register: bytes, or 8-byte words with [`CFA_OFFSET_X8`]
    /// (use [`UnwindRow::cfa_offset_bytes`]). For [`CFA_PLT`], the threshold on `pc & 15`.
    pub cfa_offset: u16,
    /// Where the caller's rbp is saved, in 8-byte units from the CFA (for [`RBP_AT_CFA`]).
    pub rbp_offset: i8,
    /// Bits 0-3: `CFA_*`; bits 4-6: `RBP_*`; bit 7: [`CFA_OFFSET_X8`].
    pub kinds: u8,
}

impl UnwindRow {
    /// A row with `cfa_offset` in bytes.
    pub const fn new(pc: u32, cfa_kind: u8, cfa_offset: u16, rbp_kind: u8, rbp_offset: i8) -> Self {
        UnwindRow {
            pc,
            cfa_offset,
            rbp_offset,
            kinds: (cfa_kind & 0x0f) | ((rbp_kind & 0x07) << 4),
        }
    }
    /// A row for a CFA offset of `bytes`, in whichever unit fits; `None` if none does.
    pub const fn with_cfa_offset(
        pc: u32,
        cfa_kind: u8,
        bytes: u64,
        rbp_kind: u8,
        rbp_offset: i8,
    ) -> Option<Self> {
        if bytes <= u16::MAX as u64 {
            return Some(Self::new(pc, cfa_kind, bytes as u16, rbp_kind, rbp_offset));
        }
        if !bytes.is_multiple_of(8) || bytes / 8 > u16::MAX as u64 {
            return None;
        }
        let row = Self::new(pc, cfa_kind, (bytes / 8) as u16, rbp_kind, rbp_offset);
        Some(UnwindRow {
            kinds: row.kinds | CFA_OFFSET_X8,
            ..row
        })
    }
    /// The `CFA_*` rule kind.
    pub const fn cfa_kind(&self) -> u8 {
        self.kinds & 0x0f
    }
    /// The `RBP_*` rule kind.
    pub const fn rbp_kind(&self) -> u8 {
        (self.kinds >> 4) & 0x07
    }
    /// The CFA offset in bytes (at most 65535 * 8).
    pub const fn cfa_offset_bytes(&self) -> u64 {
        if self.kinds & CFA_OFFSET_X8 != 0 {
            self.cfa_offset as u64 * 8
        } else {
            self.cfa_offset as u64
        }
    }
    /// The same rule at another PC; used to merge and compare rows.
    pub const fn same_rule(&self, other: &UnwindRow) -> bool {
        self.cfa_offset == other.cfa_offset
            && self.rbp_offset == other.rbp_offset
            && self.kinds == other.kinds
    }
}

const _: () = assert!(core::mem::size_of::<UnwindRow>() == 8);
const _: () = assert!(core::mem::align_of::<UnwindRow>() == 4);

/// Per-binary table metadata. The rows of every table live in one shared array; this says
/// where this binary's rows are and what their PCs are relative to. The row count is read from
/// here at run time, which also keeps the verifier from treating binary-search bounds as
/// constants: with a constant row count, a 17-step binary search over 100k rows already
/// exhausted the verifier's 1M-instruction budget at 8 frames (measured on 6.18).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindTableInfo {
    /// ELF virtual address that row PCs are relative to (the first covered PC).
    pub pc_base: u64,
    /// Index of the table's first row in the shared row array.
    pub first_row: u32,
    /// Number of rows, including the final [`CFA_NOT_COVERED`] sentinel.
    pub row_count: u32,
}

const _: () = assert!(core::mem::size_of::<UnwindTableInfo>() == 16);
const _: () = assert!(core::mem::align_of::<UnwindTableInfo>() == 8);

/// `UnwindMapping::table_id` of code without a table: unwind it with frame pointers.
pub const NO_TABLE: u32 = u32::MAX;

/// Per-process executable mapping, the value of an LPM trie keyed by [`MappingKey`]: one
/// mapping is stored as the few aligned address blocks that exactly cover it, so finding the
/// mapping of a pc is a single map lookup with no loop for the verifier to follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    /// ELF vaddr = pc - bias (wrapping): mapping start - file offset + p_offset - p_vaddr of
    /// the PT_LOAD it maps.
    pub bias: u64,
    /// Index of the binary's [`UnwindTableInfo`], or [`NO_TABLE`].
    /// Index into `UNWIND_TABLES`, or `NO_TABLE`.
    pub table_id: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<UnwindMapping>() == 16);

/// Data part of the LPM trie key (the trie prepends its own u32 prefix length). Big-endian,
/// so that prefixes run from the pid's top bit down to the address's low bits; byte arrays,
/// so there is no padding for the trie to compare.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MappingKey {
    /// The tgid, big-endian so it is the key's leading prefix.
    pub pid: [u8; 4],
    /// The address, big-endian so LPM prefixes cover address ranges.
    pub addr: [u8; 8],
}

impl MappingKey {
    /// Bits in the key: a full-length prefix matches exactly one (pid, address).
    pub const BITS: u32 = 96;

    /// The key for `addr` in process `pid`.
    pub const fn new(pid: u32, addr: u64) -> Self {
        MappingKey {
            pid: pid.to_be_bytes(),
            addr: addr.to_be_bytes(),
        }
    }
}

const _: () = assert!(core::mem::size_of::<MappingKey>() == 12);

/// Unwinding registers of one frame: exactly what a row's rules read and produce.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRegs {
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Frame pointer.
    pub rbp: u64,
}

const _: () = assert!(core::mem::size_of::<UnwindRegs>() == 24);

crate::indexed_enum! {
    /// Why a stack walk ended. Also the index into the unwinder's stop counters.
    pub enum StopReason {
        /// Normal end: the CFI marks the outermost frame, rbp was 0 in frame-pointer mode, or
        /// the return address was 0.
        EndOfStack => "end_of_stack",
        /// No table for the PC, and the frame-pointer fallback found no plausible frame.
        NoTable => "no_table",
        /// The binary has a table but the PC falls outside every FDE, and the frame-pointer
        /// fallback found no plausible frame.
        PcNotCovered => "pc_not_covered",
        /// Stack memory (return address or saved rbp) could not be read.
        ReadFailure => "read_failure",
        /// The walk hit the frame limit.
        DepthLimit => "depth_limit",
        /// The row's rule cannot be evaluated (see [`CFA_UNSUPPORTED`]).
        UnsupportedRow => "unsupported_row",
        /// The rules produced an impossible frame: the CFA did not move up the stack, or a
        /// lookup structure was inconsistent.
        BadFrame => "bad_frame",
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: UnwindRow is repr(C) with only integer fields and no padding (size assertion:
    // 4 + 2 + 1 + 1 = 8), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::UnwindRow {}
    // SAFETY: repr(C), integers only, no padding (8 + 4 + 4 = 16, checked above).
    unsafe impl aya::Pod for super::UnwindTableInfo {}
    // SAFETY: repr(C), three u64s, no padding (checked above).
    unsafe impl aya::Pod for super::UnwindRegs {}
    // SAFETY: repr(C), u64 + u32 + explicit u32 padding field = 16 bytes (checked above).
    unsafe impl aya::Pod for super::UnwindMapping {}
    // SAFETY: repr(C), byte arrays only (12 bytes, checked above), any bit pattern is valid.
    unsafe impl aya::Pod for super::MappingKey {}
}
