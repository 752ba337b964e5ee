//! The counter registry: every counter the agent reports, kernel-side or agent-side, named
//! once. The kernel's per-CPU counters are declared in `profiler_common::Counter`; the agent's
//! own are declared below. One [`Snapshot`] type carries both, and feeds the profile
//! comments, the per-interval summary, the totals line at exit and (later) the metrics
//! endpoint, so no list of counters is ever written out twice.
use std::sync::atomic::{AtomicU64, Ordering};

pub use profiler_common::Counter as KernelCounter;
use symbolizer::Miss;

/// How a counter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Something that happened; fine in itself.
    Count,
    /// Something was lost or degraded: a sample, a frame, a symbol, a table.
    Drop,
    /// A level, not a sum: an interval reports the latest value, not a difference.
    Gauge,
}

macro_rules! agent_counters {
    ($( $(#[$doc:meta])* $variant:ident => ($name:literal, $kind:ident), )+) => {
        profiler_common::indexed_enum! {
            /// Counters kept by the agent itself.
            pub enum AgentCounter {
                $( $(#[$doc])* $variant => $name, )+
            }
        }

        impl AgentCounter {
            /// Whether the counter reports a loss.
            pub const fn kind(self) -> Kind {
                match self {
                    $(AgentCounter::$variant => Kind::$kind,)+
                }
            }
        }
    };
}

agent_counters! {
    /// Records read from the ring buffer, malformed ones included.
    Delivered => ("delivered", Count),
    /// Ring records too short to be a sample.
    MalformedRecords => ("malformed_records", Drop),
    /// Samples of a new stack after the interval reached `--max-stacks` distinct stacks:
    /// kept, folded into one `[stack limit reached]` stack per process.
    StackLimitSamples => ("stack_limit_samples", Drop),
    /// User stacks cut at an address that cannot be user code: non-canonical, or below
    /// `mmap_min_addr` (0, mostly) — garbage from a frame-pointer walk through code without
    /// frame pointers.
    UserStacksNonCanonical => ("user_stacks_non_canonical", Drop),
    /// User stacks cut at a return address outside every executable mapping (heap, stack,
    /// data, or no mapping): what a frame-pointer walk finds past code without frame pointers.
    UserStacksOutsideCode => ("user_stacks_outside_code", Drop),
    /// `/proc/PID/maps` could not be read or parsed (the process exited first, mostly).
    MapsUnreadable => ("maps_unreadable", Drop),
    /// Lifecycle ring records that could not be decoded.
    MalformedEvents => ("malformed_events", Drop),
    /// Requests to the enrichment thread dropped because its queue was full.
    EnrichQueueFull => ("enrich_queue_full", Drop),
    /// Longest turn of the ring thread's loop, in milliseconds (a drain, an interval handed
    /// off, lifecycle events): the longest time the thread could not come back to the ring.
    RingStallMsMax => ("ring_stall_ms_max", Gauge),
    /// Most CPU time the ring thread spent in one turn of its loop, in milliseconds. Far
    /// below `ring_stall_ms_max`, the stall was the scheduler's (a host with more runnable
    /// threads than cores), not the agent's work.
    RingTurnCpuMsMax => ("ring_turn_cpu_ms_max", Gauge),
    /// Oldest sample's age when it was read from the ring, in milliseconds. By design up to
    /// the drain interval (`--drain-interval-ms`) or less when the ring's wakeup threshold
    /// fills first; more means the ring thread was late.
    SampleWaitMsMax => ("sample_wait_ms_max", Gauge),
    /// Maps re-read because an address fell outside every known mapping.
    MapsRereads => ("maps_rereads", Count),
    /// Processes forgotten because the process table was full (`--max-processes`); their
    /// later samples are read afresh.
    ProcessEvictions => ("process_evictions", Drop),
    /// Binaries that could not be opened: their frames stay addresses.
    BinaryOpenFailed => ("binary_open_failed", Drop),
    /// Reads of `/proc/PID/maps` thrown away because the mappings changed during the read
    /// (they are read again).
    MapsTornReads => ("maps_torn_reads", Count),
    /// `/proc/PID/map_files` opens refused (no `CAP_CHECKPOINT_RESTORE`): the file is looked
    /// up in the process's root instead, where deleted files cannot be found.
    MapFilesRefused => ("map_files_refused", Count),
    /// Mapped files not opened because the process or the mapping went away first.
    MappedFileGone => ("mapped_file_gone", Drop),
    /// Mapped files not opened because both ways in were refused.
    MappedFileRefused => ("mapped_file_refused", Drop),
    /// Files at a mapped path that are not the mapped file (device or inode differ): replaced
    /// after exec, remapped since the maps were read, or a link planted in the process's root.
    MappedFileReplaced => ("mapped_file_replaced", Drop),
    /// User addresses outside every mapping of their process.
    UnmappedAddresses => ("unmapped_addresses", Drop),
    /// Unwind tables compiled and loaded.
    UnwindTablesBuilt => ("unwind_tables_built", Count),
    /// Mappings given a table already loaded for the same file (another process, an
    /// earlier run of the same binary): no read, no compilation.
    UnwindTableCacheHits => ("unwind_table_cache_hits", Count),
    /// Binaries without a usable unwind table (unreadable, no `.eh_frame`, malformed).
    UnwindCompileFailed => ("unwind_compile_failed", Drop),
    /// Tables skipped because the row budget or the table ids ran out.
    UnwindOverBudget => ("unwind_over_budget", Drop),
    /// Mappings skipped because no PT_LOAD segment matched them.
    UnwindNoSegment => ("unwind_no_segment", Drop),
    /// Unwind map writes that failed (LPM trie full, for example).
    UnwindMapErrors => ("unwind_map_errors", Drop),
    /// Most unwind-row bytes loaded at once.
    UnwindTableBytesPeak => ("unwind_table_bytes_peak", Gauge),
    /// Milliseconds spent reading, compiling and loading unwind tables.
    UnwindBuildMs => ("unwind_build_ms", Count),
    /// Processes whose Go labels are read.
    GoProcesses => ("go_processes", Count),
    /// Processes whose OTel thread context is read.
    OtelProcesses => ("otel_processes", Count),
    /// Go binaries of a release outside the label-offset table.
    UnknownGoVersions => ("unknown_go_versions", Drop),
    /// Executables that could not be inspected for a trace-context source.
    ContextInspectFailed => ("context_inspect_failed", Drop),
    /// Trace-context configs that did not fit the kernel map.
    ContextMapFull => ("context_map_full", Drop),
    /// CPUs the perf event could not be attached to.
    AttachFailedCpus => ("attach_failed_cpus", Gauge),
    /// Frames in written profiles, user and kernel.
    Frames => ("frames", Count),
    /// Frames written as an address because no symbol was found, for whatever reason.
    FramesUnsymbolized => ("frames_unsymbolized", Drop),
    /// User addresses the symbolizer found no symbol for: the binary has symbols, none here.
    SymbolMissUnknownAddress => ("symbol_miss_unknown_address", Drop),
    /// User addresses in a binary with no symbol source at all.
    SymbolMissNoSymbols => ("symbol_miss_no_symbols", Drop),
    /// User addresses whose symbol source uses a format the symbolizer does not read.
    SymbolMissUnsupported => ("symbol_miss_unsupported", Drop),
    /// User addresses whose symbol source is corrupt there.
    SymbolMissMalformed => ("symbol_miss_malformed", Drop),
    /// Binaries the symbolizer could not read at all (each costs all its frames).
    SymbolBinaryErrors => ("symbol_binary_errors", Drop),
    /// Kernel addresses without a kallsyms symbol.
    KernelSymbolMiss => ("kernel_symbol_miss", Drop),
    /// kallsyms reloads after the set of kernel modules changed.
    KallsymsReloads => ("kallsyms_reloads", Count),
    /// Profiles written by the sink.
    ProfilesWritten => ("profiles_written", Count),
    /// Profiles the sink failed to write: their intervals are lost.
    ProfileWriteFailed => ("profile_write_failed", Drop),
    /// Profiles dropped because the writer was still busy with two earlier ones.
    WriterBusyProfiles => ("writer_busy_profiles", Drop),
    /// Samples in those dropped profiles.
    WriterBusySamples => ("writer_busy_samples", Drop),
    /// Old profiles removed from the output directory by the retention limits.
    OutputFilesPruned => ("output_files_pruned", Count),
    /// Bytes of those files.
    OutputBytesPruned => ("output_bytes_pruned", Count),
}

impl AgentCounter {
    /// The counter for a symbolizer miss of this reason.
    pub const fn for_miss(miss: Miss) -> AgentCounter {
        match miss {
            Miss::UnknownAddress => AgentCounter::SymbolMissUnknownAddress,
            Miss::NoSymbols => AgentCounter::SymbolMissNoSymbols,
            Miss::Unsupported => AgentCounter::SymbolMissUnsupported,
            Miss::Malformed => AgentCounter::SymbolMissMalformed,
        }
    }
}

/// What each kernel counter means for the reader.
pub const fn kernel_kind(c: KernelCounter) -> Kind {
    use KernelCounter as K;
    match c {
        K::RingBufferFull
        | K::EventRingFull
        | K::UserStackError
        | K::KernelStackError
        | K::ContextReadError
        | K::ContextInvalid
        | K::LabelsTruncated
        | K::UnwindStopNoTable
        | K::UnwindStopPcNotCovered
        | K::UnwindStopReadFailure
        | K::UnwindStopDepthLimit
        | K::UnwindStopUnsupportedRow
        | K::UnwindStopBadFrame => Kind::Drop,
        K::SamplesTaken
        | K::IdleSkipped
        | K::FilteredOut
        | K::ContextUnsampled
        | K::ContextCaptured
        | K::ProcessExecs
        | K::ProcessExits
        | K::NewPidEvents
        | K::UnwindMissEvents
        | K::UnwindStacks
        | K::UnwindFpFrames
        | K::UnwindStopEndOfStack => Kind::Count,
    }
}

/// One counter of either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stat {
    /// Summed over the eBPF program's per-CPU array.
    Kernel(KernelCounter),
    /// Kept by the agent.
    Agent(AgentCounter),
}

impl Stat {
    /// Every counter, kernel ones first, each exactly once.
    pub fn all() -> impl Iterator<Item = Stat> {
        KernelCounter::ALL
            .into_iter()
            .map(Stat::Kernel)
            .chain(AgentCounter::ALL.into_iter().map(Stat::Agent))
    }

    /// The name in logs, profile comments and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Stat::Kernel(c) => c.name(),
            Stat::Agent(c) => c.name(),
        }
    }

    /// How the counter reads.
    pub const fn kind(self) -> Kind {
        match self {
            Stat::Kernel(c) => kernel_kind(c),
            Stat::Agent(c) => c.kind(),
        }
    }
}

const AGENT_COUNT: usize = AgentCounter::COUNT as usize;
const KERNEL_COUNT: usize = KernelCounter::COUNT as usize;

/// The agent's live counters, shared by every stage (one atomic add each; no lock).
#[derive(Debug)]
pub struct AgentStats([AtomicU64; AGENT_COUNT]);

impl Default for AgentStats {
    fn default() -> Self {
        AgentStats(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl AgentStats {
    /// Adds `n` to a counter.
    pub fn add(&self, c: AgentCounter, n: u64) {
        self.0[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to a counter.
    pub fn inc(&self, c: AgentCounter) {
        self.add(c, 1);
    }

    /// Sets a gauge.
    pub fn set(&self, c: AgentCounter, v: u64) {
        self.0[c as usize].store(v, Ordering::Relaxed);
    }

    /// Raises a gauge to at least `v`.
    pub fn raise(&self, c: AgentCounter, v: u64) {
        self.0[c as usize].fetch_max(v, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self, c: AgentCounter) -> u64 {
        self.0[c as usize].load(Ordering::Relaxed)
    }

    /// Every agent counter now, beside the given kernel counters.
    pub fn snapshot(&self, kernel: [u64; KERNEL_COUNT]) -> Snapshot {
        Snapshot {
            kernel,
            agent: std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed)),
        }
    }
}

/// Values of every counter at one moment, or over one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    kernel: [u64; KERNEL_COUNT],
    agent: [u64; AGENT_COUNT],
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            kernel: [0; KERNEL_COUNT],
            agent: [0; AGENT_COUNT],
        }
    }
}

impl Snapshot {
    /// The value of one counter.
    pub fn get(&self, s: Stat) -> u64 {
        match s {
            Stat::Kernel(c) => self.kernel[c as usize],
            Stat::Agent(c) => self.agent[c as usize],
        }
    }

    /// Overrides one counter (the writer fills in what it measured for its own interval).
    pub fn set(&mut self, s: Stat, v: u64) {
        match s {
            Stat::Kernel(c) => self.kernel[c as usize] = v,
            Stat::Agent(c) => self.agent[c as usize] = v,
        }
    }

    /// What happened since `earlier`; gauges keep their current value.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let mut out = *self;
        for s in Stat::all() {
            if s.kind() != Kind::Gauge {
                out.set(s, self.get(s).saturating_sub(earlier.get(s)));
            }
        }
        out
    }

    /// Every counter with its value, in registry order.
    pub fn iter(&self) -> impl Iterator<Item = (Stat, u64)> + '_ {
        Stat::all().map(|s| (s, self.get(s)))
    }

    /// `name=value` for every counter: a profile's comments.
    pub fn comments(&self) -> Vec<String> {
        self.iter()
            .map(|(s, v)| format!("{}={v}", s.name()))
            .collect()
    }

    /// Every counter on one line: the totals logged at exit.
    pub fn line(&self) -> String {
        self.comments().join(" ")
    }

    /// The loss counters that are not zero, `name=value` joined by spaces ("" if none).
    pub fn nonzero_drops(&self) -> String {
        self.iter()
            .filter(|(s, v)| s.kind() == Kind::Drop && *v > 0)
            .map(|(s, v)| format!("{}={v}", s.name()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A snapshot where counter i has value 1000 + i, so a counter reported under another's
    /// name, or not at all, shows up.
    fn distinct() -> Snapshot {
        let mut s = Snapshot::default();
        for (i, stat) in Stat::all().enumerate() {
            s.set(stat, 1000 + i as u64);
        }
        s
    }

    #[test]
    fn names_are_unique_and_snake_case() {
        let mut seen = HashSet::new();
        for s in Stat::all() {
            assert!(seen.insert(s.name()), "duplicate counter name {}", s.name());
            assert!(
                s.name()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                s.name()
            );
        }
        assert_eq!(
            seen.len(),
            (KernelCounter::COUNT + AgentCounter::COUNT) as usize
        );
    }

    #[test]
    fn every_counter_is_in_the_comments_and_the_totals_line() {
        let snap = distinct();
        let comments: HashSet<String> = snap.comments().into_iter().collect();
        let line: HashSet<String> = snap.line().split(' ').map(str::to_string).collect();
        for (i, s) in Stat::all().enumerate() {
            let field = format!("{}={}", s.name(), 1000 + i);
            assert!(comments.contains(&field), "{field} missing from comments");
            assert!(
                line.contains(&field),
                "{field} missing from the totals line"
            );
        }
        assert_eq!(comments.len(), Stat::all().count());
    }

    #[test]
    fn intervals_subtract_counts_but_keep_gauges() {
        let stats = AgentStats::default();
        stats.add(AgentCounter::Delivered, 5);
        stats.raise(AgentCounter::UnwindTableBytesPeak, 800);
        let mut kernel = [0; KERNEL_COUNT];
        kernel[KernelCounter::RingBufferFull as usize] = 3;
        let first = stats.snapshot(kernel);
        stats.add(AgentCounter::Delivered, 2);
        stats.raise(AgentCounter::UnwindTableBytesPeak, 500);
        kernel[KernelCounter::RingBufferFull as usize] = 7;
        let delta = stats.snapshot(kernel).since(&first);
        assert_eq!(delta.get(Stat::Agent(AgentCounter::Delivered)), 2);
        assert_eq!(delta.get(Stat::Kernel(KernelCounter::RingBufferFull)), 4);
        assert_eq!(
            delta.get(Stat::Agent(AgentCounter::UnwindTableBytesPeak)),
            800
        );
        assert_eq!(delta.nonzero_drops(), "ring_buffer_full=4");
    }

    #[test]
    fn every_miss_reason_has_its_own_counter() {
        let misses = [
            Miss::UnknownAddress,
            Miss::NoSymbols,
            Miss::Unsupported,
            Miss::Malformed,
        ];
        let counters: HashSet<_> = misses.iter().map(|&m| AgentCounter::for_miss(m)).collect();
        assert_eq!(counters.len(), misses.len());
        for m in misses {
            assert!(AgentCounter::for_miss(m).name().ends_with(m.as_str()));
        }
    }
}
