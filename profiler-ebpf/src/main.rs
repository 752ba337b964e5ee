//! Samples the interrupted task's user and kernel stacks on every `cpu-clock` tick and writes
//! them into a ring buffer. Everything it drops is counted.
#![no_std]
#![no_main]
// Map lookups take the key by reference on purpose: passing it by value, as this lint
// suggests, cost the verifier 3k more instructions (80k instead of 77k, measured on 6.18).
#![allow(clippy::needless_borrows_for_generic_args)]

mod context;
mod lifecycle;
mod unwind;
mod user_memory;

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{
            bpf_get_current_comm, bpf_get_smp_processor_id, bpf_get_stack, bpf_ktime_get_ns,
        },
    },
    macros::{map, perf_event},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::PerfEventContext,
    EbpfContext,
};
use profiler_common::{
    ContextConfig, Counter, RawSample, COMM_LEN, MAX_CONTEXT_PROCESSES, MAX_FILTER_PIDS,
    MAX_STACK_DEPTH, SAMPLE_FLAG_KERNEL_STACK_ERROR, SAMPLE_FLAG_KERNEL_STACK_TRUNCATED,
    SAMPLE_FLAG_USER_STACK_ERROR, SAMPLE_FLAG_USER_STACK_TRUNCATED,
};

/// Sized by the agent at load time; this default only has to be a valid power of two.
#[map]
static SAMPLES: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Processes (tgids) to sample when `FILTER_ENABLED` is set.
#[map]
static FILTER_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_FILTER_PIDS, 0);

/// How to read the trace context of each process that has one, keyed by tgid.
#[map]
static CONTEXT_CONFIG: HashMap<u32, ContextConfig> =
    HashMap::with_max_entries(MAX_CONTEXT_PROCESSES, 0);

/// Set by the agent before load; frozen, so the verifier prunes the filter when it is off.
#[no_mangle]
static FILTER_ENABLED: u8 = 0;

/// Unread bytes in the ring at which the reader is woken. Below it, records are submitted
/// without a wakeup and the agent drains on its own timer: one wakeup per sample would cost
/// the agent far more CPU than the sampling itself.
#[no_mangle]
static WAKEUP_BYTES: u64 = 64 * 1024;

const BPF_RB_NO_WAKEUP: u64 = 1;
pub(crate) const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

const STACK_BYTES: u32 = (MAX_STACK_DEPTH * size_of::<u64>()) as u32;

/// Whether `pid` is sampled: always, unless the agent filters by pid.
#[inline(always)]
pub(crate) fn filtered_in(pid: u32) -> bool {
    // SAFETY: a volatile read of a frozen .rodata global that the loader may have overridden.
    if unsafe { core::ptr::read_volatile(&FILTER_ENABLED) } == 0 {
        return true;
    }
    // SAFETY: the value is only tested for presence, never dereferenced.
    let listed = unsafe { FILTER_PIDS.get(&pid) }.is_some();
    listed
}

#[inline(always)]
pub(crate) fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from a per-CPU array slot, which only this CPU touches while
        // the program runs (perf_event programs do not nest on one CPU).
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub(crate) fn count_n(counter: Counter, n: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: as in `count`.
        unsafe { *slot += n };
    }
}

#[perf_event]
pub fn profile_cpu(ctx: PerfEventContext) -> u32 {
    sample(&ctx);
    0
}

#[inline(always)]
fn sample(ctx: &PerfEventContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let pid = (pid_tgid >> 32) as u32;
    if tid == 0 {
        count(Counter::IdleSkipped);
        return;
    }
    if !filtered_in(pid) {
        count(Counter::FilteredOut);
        return;
    }
    count(Counter::SamplesTaken);
    lifecycle::note_sampled(pid, tid);

    let Some(mut entry) = SAMPLES.reserve::<RawSample>(0) else {
        count(Counter::RingBufferFull);
        return;
    };
    let out = entry.as_mut_ptr();
    // SAFETY: `out` points at a reserved ring-buffer entry of exactly size_of::<RawSample>()
    // bytes, owned by this program until submit. Fields are written in place, because a
    // RawSample does not fit on the 512-byte BPF stack.
    unsafe {
        (*out).time_ns = bpf_ktime_get_ns();
        (*out).pid = pid;
        (*out).tid = tid;
        (*out).cpu = bpf_get_smp_processor_id();
        let mut flags = 0u32;
        if bpf_get_current_comm((*out).comm.as_mut_ptr() as *mut c_void, COMM_LEN as u32) < 0 {
            (*out).comm = [0; COMM_LEN];
        }

        // Processes the agent loaded tables for are walked with them; everything else
        // (and the agent's --no-unwind-tables) keeps the kernel's frame-pointer walk.
        let user = match unwind::unwind_user(pid, tid, (*out).user_stack.as_mut_ptr()) {
            Some(frames) => i64::from(frames) * 8,
            None => bpf_get_stack(
                ctx.as_ptr(),
                (*out).user_stack.as_mut_ptr() as *mut c_void,
                STACK_BYTES,
                BPF_F_USER_STACK as u64,
            ),
        };
        (*out).user_len = stack_len(
            user,
            &mut flags,
            Counter::UserStackError,
            SAMPLE_FLAG_USER_STACK_ERROR,
            SAMPLE_FLAG_USER_STACK_TRUNCATED,
        );

        let kernel = bpf_get_stack(
            ctx.as_ptr(),
            (*out).kernel_stack.as_mut_ptr() as *mut c_void,
            STACK_BYTES,
            0,
        );
        (*out).kernel_len = stack_len(
            kernel,
            &mut flags,
            Counter::KernelStackError,
            SAMPLE_FLAG_KERNEL_STACK_ERROR,
            SAMPLE_FLAG_KERNEL_STACK_TRUNCATED,
        );
        (*out).flags = flags;

        // A process without a context source pays for this one lookup only.
        let ctx = &mut *core::ptr::addr_of_mut!((*out).context);
        let config = CONTEXT_CONFIG.get(&pid);
        match config {
            Some(cfg) => context::capture(cfg, ctx),
            None => ctx.source = 0,
        }
    }
    // SAFETY: a volatile read of a frozen .rodata global.
    let wakeup_bytes = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
    let wakeup = if SAMPLES.query(BPF_RB_AVAIL_DATA) >= wakeup_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wakeup);
}

/// Frames in a stack from a `bpf_get_stack`-style result (bytes, or a negative error),
/// flagging and counting an error and marking a full stack as possibly truncated.
#[inline(always)]
fn stack_len(
    ret: i64,
    flags: &mut u32,
    error: Counter,
    error_flag: u32,
    truncated_flag: u32,
) -> u32 {
    if ret < 0 {
        *flags |= error_flag;
        count(error);
        return 0;
    }
    let frames = (ret as u32) / 8;
    if frames as usize >= MAX_STACK_DEPTH {
        *flags |= truncated_flag;
    }
    frames
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // `loop {}` compiles to a back-edge the verifier rejects as an infinite loop. No panic
    // path may survive in this program anyway: a surviving call to this handler fails to
    // load ("last insn is not an exit or jmp").
    // SAFETY: every index and arithmetic step is bounded so that no panic path remains, and
    // the verifier refuses any object where one does; this point is never reached.
    unsafe { core::hint::unreachable_unchecked() }
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
