//! Command-line flags and the configuration resolved from them.
use std::{path::PathBuf, time::Duration};

use clap::Parser;

use crate::sink::file::Retention;

/// eBPF continuous CPU profiler: samples every CPU, symbolizes, and writes pprof files.
#[derive(Parser, Debug, Clone)]
#[command(name = "profiler-agent", version)]
pub struct Args {
    /// Samples per second per CPU.
    #[arg(long, default_value_t = 19, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub frequency: u64,

    /// Seconds between written profiles.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub profile_interval: u64,

    /// Directory for the pprof files (created if missing; checked writable at start).
    #[arg(long, default_value = "./profiles")]
    pub output_dir: PathBuf,

    /// Profiles older than this many seconds are removed from the output directory.
    #[arg(long, default_value_t = 24 * 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub output_max_age_secs: u64,

    /// The oldest profiles are removed once the output directory holds more than this many
    /// bytes of them.
    #[arg(long, default_value_t = 1 << 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub output_max_bytes: u64,

    /// Processes tracked at most; past it the least recently sampled are forgotten (and
    /// counted), so a pid flood cannot grow the agent without bound.
    #[arg(long, default_value_t = crate::process::DEFAULT_MAX_PROCESSES as u64, value_parser = clap::value_parser!(u64).range(8..=4_194_304))]
    pub max_processes: u64,

    /// Distinct stacks kept per profile interval. Samples of further new stacks are kept
    /// as one `[stack limit reached]` stack per process, and counted.
    #[arg(long, default_value_t = 32_768, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_stacks: u64,

    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    pub duration: Option<u64>,

    /// Only sample these processes (repeatable). Filtered in the kernel.
    #[arg(long = "pid")]
    pub pids: Vec<u32>,

    /// Ring-buffer size in bytes (rounded up to a power of two pages). Default: room for a
    /// one-second burst at the chosen frequency on every CPU, doubled.
    #[arg(long)]
    pub ring_buffer_bytes: Option<u64>,

    /// How often the agent drains the ring buffer, in milliseconds. It is also woken early
    /// when the ring is a quarter full.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub drain_interval_ms: u64,

    /// Keep only these Go pprof label keys (repeatable); trace_id and span_id are always
    /// kept. Default: every label.
    #[arg(long = "label-allow")]
    pub label_allow: Vec<String>,

    /// Also copy OTel thread contexts whose W3C sampled flag is clear (skipped by default).
    #[arg(long)]
    pub include_unsampled: bool,

    /// Do not read trace contexts or Go labels at all.
    #[arg(long)]
    pub no_trace_context: bool,

    /// Do not build unwind tables from .eh_frame: walk user stacks by frame pointers only.
    #[arg(long)]
    pub no_unwind_tables: bool,

    /// Budget for unwind-table rows over all binaries (8 bytes each, allocated at start).
    /// A binary whose table does not fit is unwound by frame pointers, and counted.
    #[arg(long, default_value_t = profiler_common::DEFAULT_UNWIND_ROWS, value_parser = clap::value_parser!(u32).range(1..))]
    pub unwind_table_rows: u32,
}

/// Validated settings the stages use.
#[derive(Debug, Clone)]
pub struct Config {
    /// Samples per second per CPU.
    pub frequency: u64,
    /// Time between profiles.
    pub profile_interval: Duration,
    /// Where profiles go.
    pub output_dir: PathBuf,
    /// How much of the output directory to keep.
    pub retention: Retention,
    /// Distinct stacks per interval.
    pub max_stacks: usize,
    /// Processes tracked at most.
    pub max_processes: usize,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Only these processes (empty: all).
    pub pids: Vec<u32>,
    /// Ring size requested on the command line.
    pub ring_buffer_bytes: Option<u64>,
    /// Drain timer.
    pub drain_interval: Duration,
    /// Go label keys to keep besides trace and span ids (empty: all).
    pub label_allow: Vec<String>,
    /// Copy OTel records whose sampled flag is clear.
    pub include_unsampled: bool,
    /// Read trace contexts at all.
    pub trace_context: bool,
    /// Build unwind tables.
    pub unwind_tables: bool,
    /// Row budget of the unwind tables.
    pub unwind_table_rows: u32,
}

impl From<Args> for Config {
    fn from(a: Args) -> Self {
        Config {
            frequency: a.frequency,
            profile_interval: Duration::from_secs(a.profile_interval),
            output_dir: a.output_dir,
            retention: Retention {
                max_age: Duration::from_secs(a.output_max_age_secs),
                max_bytes: a.output_max_bytes,
            },
            max_stacks: usize::try_from(a.max_stacks).unwrap_or(usize::MAX),
            max_processes: usize::try_from(a.max_processes).unwrap_or(usize::MAX),
            duration: a.duration.map(Duration::from_secs),
            pids: a.pids,
            ring_buffer_bytes: a.ring_buffer_bytes,
            drain_interval: Duration::from_millis(a.drain_interval_ms),
            label_allow: a.label_allow,
            include_unsampled: a.include_unsampled,
            trace_context: !a.no_trace_context,
            unwind_tables: !a.no_unwind_tables,
            unwind_table_rows: a.unwind_table_rows,
        }
    }
}

impl Config {
    /// Nanoseconds of CPU time one sample stands for.
    pub fn period_ns(&self) -> i64 {
        (1_000_000_000 / self.frequency) as i64
    }
}
