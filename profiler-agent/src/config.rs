//! Command-line flags and the configuration resolved from them.
use std::{path::PathBuf, time::Duration};

use clap::Parser;

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

    /// Directory for the pprof files (created if missing).
    #[arg(long, default_value = "./profiles")]
    pub output_dir: PathBuf,

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

    /// Testing aid: do not read the ring buffer for this many seconds, to provoke drops.
    #[arg(long, hide = true, default_value_t = 0)]
    pub stall_reader_secs: u64,
}

/// Validated settings the stages use.
#[derive(Debug, Clone)]
pub struct Config {
    pub frequency: u64,
    pub profile_interval: Duration,
    pub output_dir: PathBuf,
    pub duration: Option<Duration>,
    pub pids: Vec<u32>,
    pub ring_buffer_bytes: Option<u64>,
    pub drain_interval: Duration,
    pub stall_reader: Duration,
    pub label_allow: Vec<String>,
    pub include_unsampled: bool,
    pub trace_context: bool,
    pub unwind_tables: bool,
    pub unwind_table_rows: u32,
}

impl From<Args> for Config {
    fn from(a: Args) -> Self {
        Config {
            frequency: a.frequency,
            profile_interval: Duration::from_secs(a.profile_interval),
            output_dir: a.output_dir,
            duration: a.duration.map(Duration::from_secs),
            pids: a.pids,
            ring_buffer_bytes: a.ring_buffer_bytes,
            drain_interval: Duration::from_millis(a.drain_interval_ms),
            stall_reader: Duration::from_secs(a.stall_reader_secs),
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
