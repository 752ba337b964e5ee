//! User-stack unwinding from the agent's `.eh_frame` tables, one frame per `bpf_loop`
//! iteration. The frame logic itself is `profiler_unwind::next_frame`, shared with the
//! agent's unit tests; this module only supplies the map lookups and memory reads.
use core::{ffi::c_void, ptr::null_mut};

use aya_ebpf::{
    bindings::{pt_regs, BPF_F_MMAPABLE},
    helpers::generated::{
        bpf_get_current_task_btf, bpf_loop, bpf_probe_read_kernel, bpf_task_pt_regs,
    },
    macros::map,
    maps::{lpm_trie::Key, Array, LpmTrie, PerCpuArray},
};
use profiler_common::{
    unwind::{
        MappingKey, StopReason, UnwindMapping, UnwindRegs, UnwindRow, UnwindTableInfo, NO_TABLE,
    },
    Counter, DEFAULT_UNWIND_ROWS, MAX_STACK_DEPTH, MAX_UNWIND_MAPPING_BLOCKS, MAX_UNWIND_TABLES,
};

use crate::{count, count_n, user_memory::read_u64};

/// Sized by the agent at load time (the row budget); mappable so the agent writes rows with
/// plain memory copies.
#[map]
static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(DEFAULT_UNWIND_ROWS, BPF_F_MMAPABLE);

#[map]
static UNWIND_TABLES: Array<UnwindTableInfo> = Array::with_max_entries(MAX_UNWIND_TABLES, 0);

#[map]
static UNWIND_MAPPINGS: LpmTrie<MappingKey, UnwindMapping> =
    LpmTrie::with_max_entries(MAX_UNWIND_MAPPING_BLOCKS, 0);

/// Slots in `Scratch::frames`: a power of two above `MAX_STACK_DEPTH`, so a masked index is
/// always in bounds.
const FRAME_SLOTS: usize = 128;
const _: () = assert!(FRAME_SLOTS > MAX_STACK_DEPTH && FRAME_SLOTS.is_power_of_two());

/// Walk state, per CPU: too big for the 512-byte stack, and `bpf_loop` callbacks reach it
/// through the map rather than through a pointer.
#[repr(C)]
struct Scratch {
    regs: UnwindRegs,
    pid: u32,
    depth: u32,
    exact_pc: u32,
    stop: u32,
    fp_frames: u32,
    /// Binary-search bounds, kept in map memory so the verifier does not track them.
    search_lo: u32,
    search_hi: u32,
    _pad: u32,
    frames: [u64; FRAME_SLOTS],
}

#[map]
static UNWIND_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// `Scratch::stop` while the walk goes on.
const RUNNING: u32 = u32::MAX;

/// The mapping entry covering `pc` in process `pid`: the exact mapping, or the process-wide
/// `NO_TABLE` entry the agent adds for every process it has tables for.
#[inline(always)]
fn mapping(pid: u32, pc: u64) -> Option<UnwindMapping> {
    let key = Key::new(MappingKey::BITS, MappingKey::new(pid, pc));
    UNWIND_MAPPINGS.get(&key).copied()
}

#[inline(always)]
fn lookup(st: *mut Scratch, pid: u32, pc: u64) -> Result<Option<UnwindRow>, StopReason> {
    let Some(m) = mapping(pid, pc) else {
        return Ok(None);
    };
    if m.table_id == NO_TABLE {
        return Ok(None);
    }
    let info = UNWIND_TABLES.get(m.table_id).ok_or(StopReason::BadFrame)?;
    let launder = |lo: u32, hi: u32| {
        // SAFETY: `st` is this CPU's scratch slot; the fields are plain u32s.
        unsafe {
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*st).search_lo), lo);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*st).search_hi), hi);
            (
                core::ptr::read_volatile(core::ptr::addr_of!((*st).search_lo)),
                core::ptr::read_volatile(core::ptr::addr_of!((*st).search_hi)),
            )
        }
    };
    profiler_unwind::lookup_row_with(
        info,
        pc.wrapping_sub(m.bias),
        |i| UNWIND_ROWS.get(i).copied(),
        launder,
    )
    .map(Some)
}

/// One frame; returns 1 to end the loop.
extern "C" fn unwind_step(_index: u32, _ctx: *mut c_void) -> i64 {
    let Some(sp) = UNWIND_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: a per-CPU array slot, used only by this CPU while the program runs. Fields are
    // copied out so that no reference is live while `lookup` writes the search bounds.
    let (depth, pid, regs, exact_pc) = unsafe {
        (
            (*sp).depth as usize,
            (*sp).pid,
            (*sp).regs,
            (*sp).exact_pc != 0,
        )
    };
    if depth >= MAX_STACK_DEPTH {
        // SAFETY: as above.
        unsafe { (*sp).stop = StopReason::DepthLimit as u32 };
        return 1;
    }
    let next = profiler_unwind::next_frame(&regs, exact_pc, |pc| lookup(sp, pid, pc), read_u64);
    // SAFETY: as above; `lookup` is done with the slot.
    let st = unsafe { &mut *sp };
    match next {
        Ok(caller) => {
            st.frames[depth & (FRAME_SLOTS - 1)] = caller.regs.rip;
            st.depth += 1;
            st.fp_frames += u32::from(caller.by_frame_pointer);
            st.regs = caller.regs;
            st.exact_pc = u32::from(caller.exact_pc);
            0
        }
        Err(reason) => {
            st.stop = reason as u32;
            1
        }
    }
}

/// Unwinds the current task's user stack with tables into `out` (MAX_STACK_DEPTH slots) if
/// its process has any; returns the frame count, or `None` to leave the stack to
/// `bpf_get_stack`.
#[inline(always)]
pub fn unwind_user(pid: u32, tid: u32, out: *mut u64) -> Option<u32> {
    // SAFETY: bpf_get_current_task_btf has no preconditions; bpf_task_pt_regs takes the
    // trusted task pointer it returns and gives that task's user-mode registers.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    if regs.is_null() {
        return None;
    }
    // SAFETY: `regs` is the kernel's BTF-typed pt_regs of the current task; the verifier
    // checks each field load.
    let (rip, rsp, rbp) = unsafe { ((*regs).rip, (*regs).rsp, (*regs).rbp) };
    mapping(pid, rip)?;
    let st = UNWIND_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU array slot, used only by this CPU while the program runs.
    let st = unsafe { &mut *st };
    st.regs = UnwindRegs { rip, rsp, rbp };
    st.pid = pid;
    st.depth = 1;
    st.exact_pc = 1;
    st.stop = RUNNING;
    st.fp_frames = 0;
    st.frames[0] = rip;
    // SAFETY: the callback has the signature bpf_loop expects and ignores its context.
    unsafe {
        bpf_loop(
            MAX_STACK_DEPTH as u32,
            unwind_step as *mut c_void,
            null_mut(),
            0,
        );
    }
    count(Counter::UnwindStacks);
    count_n(Counter::UnwindFpFrames, u64::from(st.fp_frames));
    let stop = match st.stop {
        0 => StopReason::EndOfStack,
        1 => StopReason::NoTable,
        2 => StopReason::PcNotCovered,
        3 => StopReason::ReadFailure,
        5 => StopReason::UnsupportedRow,
        6 => StopReason::BadFrame,
        _ => StopReason::DepthLimit,
    };
    count(Counter::for_stop(stop));
    if matches!(stop, StopReason::NoTable | StopReason::PcNotCovered) {
        crate::lifecycle::note_unwind_miss(pid, tid);
    }
    // SAFETY: both buffers hold at least MAX_STACK_DEPTH u64s; `out` points into the caller's
    // reserved ring-buffer entry.
    unsafe {
        bpf_probe_read_kernel(
            out as *mut c_void,
            (MAX_STACK_DEPTH * 8) as u32,
            st.frames.as_ptr() as *const c_void,
        );
    }
    Some(st.depth.min(MAX_STACK_DEPTH as u32))
}
