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
    pub key_len: u8,
    pub value_len: u8,
    pub _pad: [u8; 6],
    pub key: [u8; LABEL_KEY_LEN],
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
    pub _pad: [u8; 4],
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub labels: [RawLabel; MAX_LABELS],
}

const _: () = assert!(core::mem::size_of::<RawLabel>() == 8 + LABEL_KEY_LEN + LABEL_VALUE_LEN);
const _: () = assert!(
    core::mem::size_of::<RawContext>() == 32 + MAX_LABELS * core::mem::size_of::<RawLabel>()
);

/// Go's `runtime.g.labels` is a `*map[string]string` (Go 1.17 to 1.23).
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
    /// A pointer on the way to a trace context could not be read.
    ContextReadError = 6,
    /// An OTel record was mid-update (`valid != 1`).
    ContextInvalid = 7,
    /// An OTel record was not sampled and so not copied.
    ContextUnsampled = 8,
    /// Labels were cut to `MAX_LABELS` or to the key/value size.
    LabelsTruncated = 9,
    /// Samples that carry a trace context or labels.
    ContextCaptured = 10,
    /// User stacks walked with unwind tables (the process had table mappings).
    UnwindStacks = 11,
    /// Frames of those walks recovered by the frame-pointer fallback.
    UnwindFpFrames = 12,
    /// Table walks by why they ended: `UnwindStopEndOfStack + StopReason as u32`.
    UnwindStopEndOfStack = 13,
    UnwindStopNoTable = 14,
    UnwindStopPcNotCovered = 15,
    UnwindStopReadFailure = 16,
    UnwindStopDepthLimit = 17,
    UnwindStopUnsupportedRow = 18,
    UnwindStopBadFrame = 19,
}

impl Counter {
    pub const COUNT: u32 = 20;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::SamplesTaken,
        Counter::RingBufferFull,
        Counter::UserStackError,
        Counter::KernelStackError,
        Counter::IdleSkipped,
        Counter::FilteredOut,
        Counter::ContextReadError,
        Counter::ContextInvalid,
        Counter::ContextUnsampled,
        Counter::LabelsTruncated,
        Counter::ContextCaptured,
        Counter::UnwindStacks,
        Counter::UnwindFpFrames,
        Counter::UnwindStopEndOfStack,
        Counter::UnwindStopNoTable,
        Counter::UnwindStopPcNotCovered,
        Counter::UnwindStopReadFailure,
        Counter::UnwindStopDepthLimit,
        Counter::UnwindStopUnsupportedRow,
        Counter::UnwindStopBadFrame,
    ];

    /// The counter of a table walk that ended for `reason`.
    pub const fn for_stop(reason: unwind::StopReason) -> Counter {
        match reason {
            unwind::StopReason::EndOfStack => Counter::UnwindStopEndOfStack,
            unwind::StopReason::NoTable => Counter::UnwindStopNoTable,
            unwind::StopReason::PcNotCovered => Counter::UnwindStopPcNotCovered,
            unwind::StopReason::ReadFailure => Counter::UnwindStopReadFailure,
            unwind::StopReason::DepthLimit => Counter::UnwindStopDepthLimit,
            unwind::StopReason::UnsupportedRow => Counter::UnwindStopUnsupportedRow,
            unwind::StopReason::BadFrame => Counter::UnwindStopBadFrame,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Counter::SamplesTaken => "samples_taken",
            Counter::RingBufferFull => "ring_buffer_full",
            Counter::UserStackError => "user_stack_error",
            Counter::KernelStackError => "kernel_stack_error",
            Counter::IdleSkipped => "idle_skipped",
            Counter::FilteredOut => "filtered_out",
            Counter::ContextReadError => "context_read_error",
            Counter::ContextInvalid => "context_invalid",
            Counter::ContextUnsampled => "context_unsampled",
            Counter::LabelsTruncated => "labels_truncated",
            Counter::ContextCaptured => "context_captured",
            Counter::UnwindStacks => "unwind_stacks",
            Counter::UnwindFpFrames => "unwind_fp_frames",
            Counter::UnwindStopEndOfStack => "unwind_stop_end_of_stack",
            Counter::UnwindStopNoTable => "unwind_stop_no_table",
            Counter::UnwindStopPcNotCovered => "unwind_stop_pc_not_covered",
            Counter::UnwindStopReadFailure => "unwind_stop_read_failure",
            Counter::UnwindStopDepthLimit => "unwind_stop_depth_limit",
            Counter::UnwindStopUnsupportedRow => "unwind_stop_unsupported_row",
            Counter::UnwindStopBadFrame => "unwind_stop_bad_frame",
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
}
