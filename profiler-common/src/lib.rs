//! Every type and constant that crosses the kernel/user boundary.
//!
//! All types are `#[repr(C)]` with fixed-width fields and explicit padding, so the eBPF
//! program and the agent agree on the layout byte for byte. Sizes are checked at compile time.
#![no_std]
#![warn(missing_docs)]

pub mod unwind;

/// Frames kept per stack. Matches the kernel's default `kernel.perf_event_max_stack`.
pub const MAX_STACK_DEPTH: usize = 127;
/// Length of `task_struct.comm`.
pub const COMM_LEN: usize = 16;
/// Upper bound on pids in the in-kernel filter.
pub const MAX_FILTER_PIDS: u32 = 1024;
/// Upper bound on processes with a trace-context source.
pub const MAX_CONTEXT_PROCESSES: u32 = 16384;

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
    /// CPU the sample was taken on.
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
    /// The trace context and labels the thread ran under, if its process has a source.
    pub context: RawContext,
}

/// Labels copied per sample; peers use the same bound.
pub const MAX_LABELS: usize = 8;
/// Longest label key kept (longer keys are truncated and counted).
pub const LABEL_KEY_LEN: usize = 16;
/// Longest label value kept; a 32-hex trace id fits.
pub const LABEL_VALUE_LEN: usize = 48;

/// One key/value label as read from the process, truncated to the fixed sizes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawLabel {
    /// Valid bytes in `key`.
    pub key_len: u8,
    /// Valid bytes in `value`.
    pub value_len: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 6],
    /// The key, truncated to `LABEL_KEY_LEN`.
    pub key: [u8; LABEL_KEY_LEN],
    /// The value, truncated to `LABEL_VALUE_LEN`.
    pub value: [u8; LABEL_VALUE_LEN],
}

/// Where a sample's context came from.
pub const CONTEXT_SOURCE_NONE: u8 = 0;
/// Go pprof labels of the running goroutine.
pub const CONTEXT_SOURCE_GO: u8 = 1;
/// An OpenTelemetry thread-context record (OTEP 4947) in native TLS.
pub const CONTEXT_SOURCE_OTEL: u8 = 2;

/// `trace_id` and `span_id` are set.
pub const CONTEXT_FLAG_IDS: u8 = 1 << 0;
/// More labels existed than `MAX_LABELS`, or a key or value was cut.
pub const CONTEXT_FLAG_TRUNCATED: u8 = 1 << 1;

/// The trace context of one sample.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawContext {
    /// `CONTEXT_SOURCE_*`; NONE means the rest is meaningless.
    pub source: u8,
    /// `CONTEXT_FLAG_*`.
    pub flags: u8,
    /// W3C trace flags of an OTel record (bit 0: sampled).
    pub trace_flags: u8,
    /// Valid entries in `labels`.
    pub n_labels: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 4],
    /// W3C trace id (OTel records).
    pub trace_id: [u8; 16],
    /// W3C span id (OTel records).
    pub span_id: [u8; 8],
    /// Go labels, `n_labels` of them valid.
    pub labels: [RawLabel; MAX_LABELS],
}

const _: () = assert!(core::mem::size_of::<RawLabel>() == 8 + LABEL_KEY_LEN + LABEL_VALUE_LEN);
const _: () = assert!(
    core::mem::size_of::<RawContext>() == 32 + MAX_LABELS * core::mem::size_of::<RawLabel>()
);

/// Go's `runtime.g.labels` is a `*map[string]string` (Go 1.19, 1.21 to 1.23).
pub const GO_LABELS_MAP: u32 = 1;
/// Go's `runtime.g.labels` points at a sorted `[]struct{key, value string}` (Go 1.24+).
pub const GO_LABELS_SLICE: u32 = 2;

/// OTel: skip records whose W3C sampled bit is clear.
pub const CONFIG_FLAG_REQUIRE_SAMPLED: u32 = 1 << 0;

/// How to find the trace context of one process, written by the agent per tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextConfig {
    /// `CONTEXT_SOURCE_*` as u32.
    pub source: u32,
    /// `GO_LABELS_*` for Go.
    pub go_labels_layout: u32,
    /// Offset from the thread pointer (fsbase): Go's `g` slot, or the OTel TLS variable.
    pub tls_offset: i64,
    /// Go: offsetof(runtime.g, m).
    pub go_g_m: u32,
    /// Go: offsetof(runtime.m, curg).
    pub go_m_curg: u32,
    /// Go: offsetof(runtime.g, labels).
    pub go_g_labels: u32,
    /// `CONFIG_FLAG_*`.
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<ContextConfig>() == 32);

/// The user stack could not be collected (`bpf_get_stack` failed).
pub const SAMPLE_FLAG_USER_STACK_ERROR: u32 = 1 << 0;
/// The kernel stack could not be collected.
pub const SAMPLE_FLAG_KERNEL_STACK_ERROR: u32 = 1 << 1;
/// The user stack filled all `MAX_STACK_DEPTH` slots and may be truncated.
pub const SAMPLE_FLAG_USER_STACK_TRUNCATED: u32 = 1 << 2;
/// The kernel stack filled all `MAX_STACK_DEPTH` slots and may be truncated.
pub const SAMPLE_FLAG_KERNEL_STACK_TRUNCATED: u32 = 1 << 3;

const _: () = assert!(
    core::mem::size_of::<RawSample>()
        == 48 + 2 * 8 * MAX_STACK_DEPTH + core::mem::size_of::<RawContext>()
);
const _: () = assert!(core::mem::align_of::<RawSample>() == 8);

/// Declares a `#[repr(u32)]` enum whose variants are numbered from 0 in declaration order,
/// with `COUNT`, `ALL` and `name()` generated from the one list, and a compile-time check that
/// `ALL[i] as u32 == i` (so the enum can index a kernel array).
#[macro_export]
macro_rules! indexed_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $label:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Number of variants.
            pub const COUNT: u32 = [$($label),+].len() as u32;
            /// Every variant, in index order.
            pub const ALL: [$name; Self::COUNT as usize] = [$($name::$variant),+];

            /// The snake_case name used in logs, profile comments and metrics.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }

        const _: () = {
            let mut i = 0;
            while i < $name::ALL.len() {
                assert!($name::ALL[i] as usize == i);
                i += 1;
            }
        };
    };
}

indexed_enum! {
    /// Per-CPU counters kept by the eBPF program, indexed by `Counter as u32`.
    pub enum Counter {
        /// Perf events that fired and passed the idle and pid filters: samples taken.
        SamplesTaken => "samples_taken",
        /// Samples lost because the ring buffer was full.
        RingBufferFull => "ring_buffer_full",
        /// Samples whose user stack could not be read (`bpf_get_stack` failed).
        UserStackError => "user_stack_error",
        /// Samples whose kernel stack could not be read.
        KernelStackError => "kernel_stack_error",
        /// Perf events that landed on the idle task and were skipped.
        IdleSkipped => "idle_skipped",
        /// Perf events discarded by the pid filter.
        FilteredOut => "filtered_out",
        /// A pointer on the way to a trace context could not be read.
        ContextReadError => "context_read_error",
        /// An OTel record was mid-update (`valid != 1`).
        ContextInvalid => "context_invalid",
        /// An OTel record was not sampled and so not copied.
        ContextUnsampled => "context_unsampled",
        /// Labels were cut to `MAX_LABELS` or to the key/value size.
        LabelsTruncated => "labels_truncated",
        /// Samples that carry a trace context or labels.
        ContextCaptured => "context_captured",
        /// Lifecycle events and requests lost because the event ring was full.
        EventRingFull => "event_ring_full",
        /// `exec`s seen by the `sched_process_exec` tracepoint (of filtered pids only).
        ProcessExecs => "process_execs",
        /// Process exits seen by `sched_process_exit` (thread-group leaders only).
        ProcessExits => "process_exits",
        /// Samples from a pid the agent had not heard of, which woke it at once.
        NewPidEvents => "new_pid_events",
        /// Table walks that ended outside every known mapping or table, reported (at most
        /// once a second per process) so the agent re-reads that process's mappings.
        UnwindMissEvents => "unwind_miss_events",
        /// User stacks walked with unwind tables (the process had table mappings).
        UnwindStacks => "unwind_stacks",
        /// Frames of those walks recovered by the frame-pointer fallback.
        UnwindFpFrames => "unwind_fp_frames",
        /// Table walks by why they ended, in [`unwind::StopReason`] order (checked below).
        UnwindStopEndOfStack => "unwind_stop_end_of_stack",
        /// See [`unwind::StopReason::NoTable`].
        UnwindStopNoTable => "unwind_stop_no_table",
        /// See [`unwind::StopReason::PcNotCovered`].
        UnwindStopPcNotCovered => "unwind_stop_pc_not_covered",
        /// See [`unwind::StopReason::ReadFailure`].
        UnwindStopReadFailure => "unwind_stop_read_failure",
        /// See [`unwind::StopReason::DepthLimit`].
        UnwindStopDepthLimit => "unwind_stop_depth_limit",
        /// See [`unwind::StopReason::UnsupportedRow`].
        UnwindStopUnsupportedRow => "unwind_stop_unsupported_row",
        /// See [`unwind::StopReason::BadFrame`].
        UnwindStopBadFrame => "unwind_stop_bad_frame",
    }
}

impl Counter {
    /// The counter of a table walk that ended for `reason`: the stop counters follow the
    /// stop reasons in order, which the assertion below checks name by name.
    pub const fn for_stop(reason: unwind::StopReason) -> Counter {
        use unwind::StopReason as R;
        // A match, not an index into ALL: the eBPF build must not carry a bounds check.
        match reason {
            R::EndOfStack => Counter::UnwindStopEndOfStack,
            R::NoTable => Counter::UnwindStopNoTable,
            R::PcNotCovered => Counter::UnwindStopPcNotCovered,
            R::ReadFailure => Counter::UnwindStopReadFailure,
            R::DepthLimit => Counter::UnwindStopDepthLimit,
            R::UnsupportedRow => Counter::UnwindStopUnsupportedRow,
            R::BadFrame => Counter::UnwindStopBadFrame,
        }
    }
}

/// `a == b`, usable in constants.
const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// `name == "unwind_stop_" + reason`.
const fn is_stop_counter_name(name: &str, reason: &str) -> bool {
    let prefix = b"unwind_stop_";
    let n = name.as_bytes();
    if n.len() != prefix.len() + reason.len() {
        return false;
    }
    let mut i = 0;
    while i < prefix.len() {
        if n[i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    let (_, tail) = n.split_at(prefix.len());
    match core::str::from_utf8(tail) {
        Ok(t) => str_eq(t, reason),
        Err(_) => false,
    }
}

const _: () = {
    let mut i = 0;
    while i < unwind::StopReason::ALL.len() {
        let reason = unwind::StopReason::ALL[i];
        assert!(is_stop_counter_name(
            Counter::for_stop(reason).name(),
            reason.name()
        ));
        assert!(
            Counter::for_stop(reason) as u32 == Counter::UnwindStopEndOfStack as u32 + i as u32
        );
        i += 1;
    }
    assert!(Counter::UnwindStopEndOfStack as u32 + unwind::StopReason::COUNT == Counter::COUNT);
};

/// A process lifecycle event, or a request from the sampler, on the small `EVENTS` ring:
/// samples cannot crowd these out, and each one wakes the agent at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessEvent {
    /// `bpf_ktime_get_ns()`, the clock of [`RawSample::time_ns`].
    pub time_ns: u64,
    /// `EVENT_*`.
    pub kind: u32,
    /// The process (tgid).
    pub pid: u32,
    /// The thread that caused it.
    pub tid: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<ProcessEvent>() == 24);

/// The process replaced its image (`sched_process_exec`).
pub const EVENT_EXEC: u32 = 1;
/// The process exited (`sched_process_exit` of its thread-group leader).
pub const EVENT_EXIT: u32 = 2;
/// A sample came from a pid not reported before (a fork without exec, or a process that
/// predates the agent).
pub const EVENT_NEW_PID: u32 = 3;
/// A table walk ended at `no_table` or `pc_not_covered`: a mapping the agent has not loaded
/// (`dlopen`, JIT code, a library the loader mapped after exec).
pub const EVENT_UNWIND_MISS: u32 = 4;

/// Pids the kernel has reported to the agent (an LRU map: forgetting one only costs one
/// more event).
pub const MAX_KNOWN_PIDS: u32 = 32768;
/// Nanoseconds between two unwind-miss reports of one process.
pub const UNWIND_MISS_INTERVAL_NS: u64 = 1_000_000_000;

/// Name of the eBPF program in the object file.
pub const PROGRAM_NAME: &str = "profile_cpu";
/// Map and global names, shared so neither side hard-codes a string twice.
pub mod names {
    /// The sample ring buffer.
    pub const SAMPLES: &str = "SAMPLES";
    /// Per-CPU [`Counter`](super::Counter) array.
    pub const COUNTERS: &str = "COUNTERS";
    /// Pids to sample when `FILTER_ENABLED` is set.
    pub const FILTER_PIDS: &str = "FILTER_PIDS";
    /// Lifecycle events and requests ([`super::ProcessEvent`]).
    pub const EVENTS: &str = "EVENTS";
    /// Pids already reported to the agent.
    pub const KNOWN_PIDS: &str = "KNOWN_PIDS";
    /// Per pid, when an unwind miss was last reported.
    pub const UNWIND_MISS_AT: &str = "UNWIND_MISS_AT";
    /// The `sched_process_exec` tracepoint program.
    pub const EXEC_PROGRAM: &str = "process_exec";
    /// The `sched_process_exit` tracepoint program.
    pub const EXIT_PROGRAM: &str = "process_exit";
    /// `.rodata` global: non-zero when only pids in `FILTER_PIDS` are sampled.
    pub const FILTER_ENABLED: &str = "FILTER_ENABLED";
    /// `.rodata` global (u64): unread ring-buffer bytes at which the reader is woken.
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
    /// Per-process trace-context configuration, keyed by tgid.
    pub const CONTEXT_CONFIG: &str = "CONTEXT_CONFIG";
    /// `.rodata` global (u64): offsetof(task_struct, thread.fsbase), from kernel BTF.
    pub const TASK_FSBASE_OFFSET: &str = "TASK_FSBASE_OFFSET";
    /// Unwind-table rows of every binary (`Array<UnwindRow>`, sized by the agent).
    pub const UNWIND_ROWS: &str = "UNWIND_ROWS";
    /// Per-table metadata (`Array<UnwindTableInfo>`).
    pub const UNWIND_TABLES: &str = "UNWIND_TABLES";
    /// (tgid, address) -> table and bias (`LpmTrie<MappingKey, UnwindMapping>`).
    pub const UNWIND_MAPPINGS: &str = "UNWIND_MAPPINGS";
}

/// Entries in `UNWIND_TABLES`: distinct binaries with a table loaded at once.
pub const MAX_UNWIND_TABLES: u32 = 8192;
/// Entries in `UNWIND_MAPPINGS` (allocated on use): LPM blocks over all tracked processes.
pub const MAX_UNWIND_MAPPING_BLOCKS: u32 = 1 << 18;
/// Default size of `UNWIND_ROWS`: 2M rows of 8 bytes = 16 MiB.
pub const DEFAULT_UNWIND_ROWS: u32 = 2 << 20;

#[cfg(feature = "user")]
mod user {
    // SAFETY: RawSample is repr(C), made only of integers and integer arrays, with no padding
    // (checked by the size assertion), so every bit pattern is valid.
    unsafe impl aya::Pod for super::RawSample {}
    // SAFETY: repr(C), integer fields only, no padding (size asserted).
    unsafe impl aya::Pod for super::ContextConfig {}
    // SAFETY: repr(C), integers only, explicit padding field (size asserted: 8 + 4 * 4).
    unsafe impl aya::Pod for super::ProcessEvent {}
}
