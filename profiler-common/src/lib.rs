//! Every type and constant that crosses the kernel/user boundary.
//!
//! All types are `#[repr(C)]` with fixed-width fields and explicit padding, so the eBPF
//! program and the agent agree on the layout byte for byte. Sizes are checked at compile time.
#![no_std]

pub mod unwind;

/// Frames kept per stack. Matches the kernel's default `kernel.perf_event_max_stack`.
pub const MAX_STACK_DEPTH: usize = 127;
/// Length of `task_struct.comm`.
pub const COMM_LEN: usize = 16;
/// Upper bound on pids in the in-kernel filter.
pub const MAX_FILTER_PIDS: u32 = 1024;

/// One stack sample, written by the eBPF program straight into a ring-buffer entry.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawSample {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub time_ns: u64,
    /// Process id (the kernel's tgid).
    pub pid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    pub cpu: u32,
    /// Number of valid entries in `user_stack`; 0 when the stack was empty or unreadable.
    pub user_len: u32,
    /// Number of valid entries in `kernel_stack`.
    pub kernel_len: u32,
    /// `SAMPLE_FLAG_*` bits.
    pub flags: u32,
    /// The thread's `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// Innermost first: the interrupted instruction pointer, then return addresses.
    pub user_stack: [u64; MAX_STACK_DEPTH],
    /// Innermost first.
    pub kernel_stack: [u64; MAX_STACK_DEPTH],
}

/// The user stack could not be collected (`bpf_get_stack` failed).
pub const SAMPLE_FLAG_USER_STACK_ERROR: u32 = 1 << 0;
/// The kernel stack could not be collected.
pub const SAMPLE_FLAG_KERNEL_STACK_ERROR: u32 = 1 << 1;
/// The user stack filled all `MAX_STACK_DEPTH` slots and may be truncated.
pub const SAMPLE_FLAG_USER_STACK_TRUNCATED: u32 = 1 << 2;
/// The kernel stack filled all `MAX_STACK_DEPTH` slots and may be truncated.
pub const SAMPLE_FLAG_KERNEL_STACK_TRUNCATED: u32 = 1 << 3;

const _: () = assert!(core::mem::size_of::<RawSample>() == 48 + 2 * 8 * MAX_STACK_DEPTH);
const _: () = assert!(core::mem::align_of::<RawSample>() == 8);

/// Per-CPU counters kept by the eBPF program, indexed by `Counter as u32`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Perf events that fired and passed the idle and pid filters: samples taken.
    SamplesTaken = 0,
    /// Samples lost because the ring buffer was full.
    RingBufferFull = 1,
    /// Samples whose user stack could not be read (`bpf_get_stack` failed).
    UserStackError = 2,
    /// Samples whose kernel stack could not be read.
    KernelStackError = 3,
    /// Perf events that landed on the idle task and were skipped.
    IdleSkipped = 4,
    /// Perf events discarded by the pid filter.
    FilteredOut = 5,
}

impl Counter {
    pub const COUNT: u32 = 6;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::SamplesTaken,
        Counter::RingBufferFull,
        Counter::UserStackError,
        Counter::KernelStackError,
        Counter::IdleSkipped,
        Counter::FilteredOut,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::SamplesTaken => "samples_taken",
            Counter::RingBufferFull => "ring_buffer_full",
            Counter::UserStackError => "user_stack_error",
            Counter::KernelStackError => "kernel_stack_error",
            Counter::IdleSkipped => "idle_skipped",
            Counter::FilteredOut => "filtered_out",
        }
    }
}

/// Name of the eBPF program in the object file.
pub const PROGRAM_NAME: &str = "profile_cpu";
/// Map and global names, shared so neither side hard-codes a string twice.
pub mod names {
    pub const SAMPLES: &str = "SAMPLES";
    pub const COUNTERS: &str = "COUNTERS";
    pub const FILTER_PIDS: &str = "FILTER_PIDS";
    /// `.rodata` global: non-zero when only pids in `FILTER_PIDS` are sampled.
    pub const FILTER_ENABLED: &str = "FILTER_ENABLED";
    /// `.rodata` global (u64): unread ring-buffer bytes at which the reader is woken.
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: RawSample is repr(C), made only of integers and integer arrays, with no padding
    // (checked by the size assertion), so every bit pattern is valid.
    unsafe impl aya::Pod for super::RawSample {}
}
