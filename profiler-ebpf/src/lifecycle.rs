//! Process lifecycle for the agent: `exec` and exit from the scheduler's tracepoints, and two
//! requests from the sampler (a pid never reported, an unwind walk outside every known
//! mapping). They go on their own small ring, with a forced wakeup, so samples cannot crowd
//! them out and the agent prepares a new process within milliseconds.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_ktime_get_ns},
    macros::{map, raw_tracepoint},
    maps::{LruHashMap, RingBuf},
    programs::RawTracePointContext,
};
use profiler_common::{
    Counter, ProcessEvent, EVENT_EXEC, EVENT_EXIT, EVENT_NEW_PID, EVENT_UNWIND_MISS,
    MAX_KNOWN_PIDS, UNWIND_MISS_INTERVAL_NS,
};

use crate::{count, filtered_in, BPF_RB_FORCE_WAKEUP};

/// Events are rare next to samples: 64 KiB holds 2,700 of them.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// Pids already reported to the agent, by exec or by a first sample.
#[map]
static KNOWN_PIDS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(MAX_KNOWN_PIDS, 0);

/// When each process last reported an unwind miss.
#[map]
static UNWIND_MISS_AT: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_KNOWN_PIDS, 0);

const BPF_NOEXIST: u64 = 1;

#[inline(always)]
fn emit(kind: u32, pid: u32, tid: u32) {
    let event = ProcessEvent {
        // SAFETY: a helper without arguments.
        time_ns: unsafe { bpf_ktime_get_ns() },
        kind,
        pid,
        tid,
        _pad: 0,
    };
    if EVENTS
        .output::<ProcessEvent>(&event, BPF_RB_FORCE_WAKEUP)
        .is_err()
    {
        count(Counter::EventRingFull);
    }
}

// Raw tracepoints: no tracefs needed (it is often unmounted, and absent in containers).
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn process_exec(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if !filtered_in(pid) {
        return 0;
    }
    count(Counter::ProcessExecs);
    // Reported now: its samples need not report it again.
    let _ = KNOWN_PIDS.insert(pid, 1, 0);
    let _ = UNWIND_MISS_AT.remove(pid);
    emit(EVENT_EXEC, pid, tid);
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn process_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // Threads come and go; the process ends with its leader.
    if pid != tid || !filtered_in(pid) {
        return 0;
    }
    count(Counter::ProcessExits);
    // A reused pid must be reported afresh.
    let _ = KNOWN_PIDS.remove(pid);
    let _ = UNWIND_MISS_AT.remove(pid);
    emit(EVENT_EXIT, pid, tid);
    0
}

/// Called for every sample: reports a pid the agent has not heard of yet, once. A function
/// of its own (a BPF-to-BPF call): inlined, its two outcomes doubled the states the verifier
/// walked through the rest of the sampler.
#[inline(never)]
pub fn note_sampled(pid: u32, tid: u32) {
    // SAFETY: the value is only tested for presence.
    if unsafe { KNOWN_PIDS.get(&pid) }.is_some() {
        return;
    }
    // NOEXIST: of two CPUs racing on one new pid, one reports it.
    if KNOWN_PIDS.insert(pid, 1, BPF_NOEXIST).is_ok() {
        count(Counter::NewPidEvents);
        emit(EVENT_NEW_PID, pid, tid);
    }
}

/// A table walk of `pid` ended outside every known mapping: asks the agent to re-read its
/// mappings, at most once a second per process.
#[inline(never)]
pub fn note_unwind_miss(pid: u32, tid: u32) {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the value is copied out at once; a concurrent update only moves the limit.
    if let Some(&last) = unsafe { UNWIND_MISS_AT.get(&pid) } {
        if now.wrapping_sub(last) < UNWIND_MISS_INTERVAL_NS {
            return;
        }
    }
    let _ = UNWIND_MISS_AT.insert(pid, now, 0);
    count(Counter::UnwindMissEvents);
    emit(EVENT_UNWIND_MISS, pid, tid);
}
