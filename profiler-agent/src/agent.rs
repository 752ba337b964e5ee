//! The agent's event loop: drain the ring when the kernel wakes us or the drain timer fires,
//! close an interval on the profile timer, stop on a signal or the deadline. The stages it
//! wires are owned by [`Pipeline`]; finished intervals go to the writer thread over a bounded
//! channel, so nothing on this thread waits for symbolization or disk.
use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    time::{interval_at, sleep, Instant, MissedTickBehavior},
};
use tracing::{info, warn};

use crate::{
    bpf::{loader::KernelCounters, ring, LoadedMaps, LoadedProgram, ProgramOptions},
    config::Config,
    enrich::{context_sources::ContextConfigs, unwind_tables::UnwindTables},
    process::{self, Processes},
    profile::{
        aggregate::Aggregator,
        labels::LabelFilter,
        writer::{Job, KernelSymbolPaths, ProfileWriter},
    },
    sink::file::FileSink,
    stats::{AgentCounter, AgentStats, KernelCounter, Snapshot, Stat},
};

const PROC: &str = "/proc";

/// The stages between the ring and the writer, in data-path order.
struct Pipeline {
    processes: Processes,
    unwind: Option<UnwindTables>,
    contexts: Option<ContextConfigs>,
    aggregator: Aggregator,
    writer: ProfileWriter,
    stats: Arc<AgentStats>,
    /// Counters at the end of the last interval.
    last: Snapshot,
}

impl Pipeline {
    /// Takes every record in the ring, then prepares the processes it revealed.
    fn drain(&mut self, ring: &mut aya::maps::RingBuf<aya::maps::MapData>) {
        let Pipeline {
            processes,
            aggregator,
            stats,
            ..
        } = self;
        ring::drain(ring, stats, |sample| aggregator.add(sample, processes));
        self.prepare_new_processes();
    }

    /// Unwind tables and trace-context configs for processes seen for the first time.
    fn prepare_new_processes(&mut self) {
        for pid in self.processes.take_new_pids() {
            if let Some(c) = self.contexts.as_mut() {
                c.on_new_process(pid);
            }
            if let Some(u) = self.unwind.as_mut() {
                u.on_new_process(pid);
            }
        }
    }

    /// Closes the interval: hands its stacks and counters to the writer, then lets every
    /// stage forget what exited.
    fn end_interval(&mut self, kernel: KernelCounters) {
        let now = self.stats.snapshot(kernel);
        let counters = now.since(&self.last);
        self.last = now;
        let ring_full = counters.get(Stat::Kernel(KernelCounter::RingBufferFull));
        if ring_full > 0 {
            warn!(
                drops = ring_full,
                "ring buffer was full; samples were dropped (raise --ring-buffer-bytes)"
            );
        }
        let interval = self.aggregator.take(&mut self.processes);
        self.processes.end_interval();
        if let Some(c) = self.contexts.as_mut() {
            c.sweep_exited();
        }
        if let Some(u) = self.unwind.as_mut() {
            u.refresh();
        }
        self.writer.submit(Job { interval, counters });
    }
}

/// Warns about `--pid` values with no process behind them: they are filtered in the kernel
/// and would silently never produce a sample.
fn check_pids(pids: &[u32]) {
    for &pid in pids {
        if !std::path::Path::new(PROC).join(pid.to_string()).exists() {
            warn!(
                pid,
                "--pid names no running process; nothing will be sampled for it"
            );
        }
    }
}

/// Runs the agent until a signal or the deadline, then writes the last profile.
pub async fn run(config: Config) -> Result<()> {
    let stats = Arc::new(AgentStats::default());
    // Checked before anything is loaded: a sink that cannot write would lose every interval.
    let sink = FileSink::open(&config.output_dir, config.retention, stats.clone())?;
    check_pids(&config.pids);
    let (mut program, maps) = LoadedProgram::load_and_attach(ProgramOptions {
        frequency: config.frequency,
        pids: &config.pids,
        ring_request: config.ring_buffer_bytes,
        unwind_rows: config.unwind_tables.then_some(config.unwind_table_rows),
        trace_context: config.trace_context,
    })?;
    stats.set(
        AgentCounter::AttachFailedCpus,
        program.failed_cpus.len() as u64,
    );
    let LoadedMaps {
        ring,
        contexts,
        unwind,
    } = maps;
    let writer = ProfileWriter::spawn(
        Box::new(sink),
        config.period_ns(),
        KernelSymbolPaths {
            kallsyms: "/proc/kallsyms".into(),
            modules: "/proc/modules".into(),
        },
        stats.clone(),
    )?;
    let mut pipeline = Pipeline {
        processes: Processes::new(PROC, stats.clone()),
        unwind: unwind.map(|m| {
            UnwindTables::new(
                m,
                PROC,
                config.unwind_table_rows,
                profiler_common::MAX_UNWIND_TABLES,
                stats.clone(),
            )
        }),
        contexts: contexts
            .filter(|_| config.trace_context)
            .map(|m| ContextConfigs::new(m, PROC, !config.include_unsampled, stats.clone())),
        aggregator: Aggregator::new(
            LabelFilter {
                allow: config.label_allow.clone(),
            },
            config.max_stacks,
            stats.clone(),
        ),
        writer,
        stats: stats.clone(),
        last: Snapshot::default(),
    };
    let initial_pids = process::initial_pids(PROC.as_ref(), &config.pids);
    if let Some(u) = pipeline.unwind.as_mut() {
        u.scan_existing(&initial_pids);
    }
    if let Some(c) = pipeline.contexts.as_mut() {
        c.scan_existing(&initial_pids);
    }
    info!(output_dir = %config.output_dir.display(), interval_secs = config.profile_interval.as_secs(), "profiling started");

    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, for as long as the
    // AsyncFd that wraps it exists.
    let mut ring =
        unsafe { AsyncFd::register(ring) }.context("registering the ring buffer with epoll")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let deadline = sleep(config.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    let start = Instant::now();
    let mut profile_tick = interval_at(start + config.profile_interval, config.profile_interval);
    profile_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut drain_tick = interval_at(start + config.drain_interval, config.drain_interval);
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                pipeline.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = drain_tick.tick() => pipeline.drain(ring.get_mut()),
            _ = profile_tick.tick() => {
                pipeline.drain(ring.get_mut());
                pipeline.end_interval(program.counters());
            }
            _ = sigint.recv() => { info!("SIGINT: writing the last profile"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: writing the last profile"); break; }
            _ = &mut deadline => { info!("duration reached: writing the last profile"); break; }
        }
    }

    // Read before detaching: the kernel forgets the program's statistics once it is unloaded.
    let run_stats = program.run_stats();
    // Stop sampling first, so that the final counters and the drained ring agree exactly.
    program.detach();
    pipeline.drain(ring.get_mut());
    pipeline.end_interval(program.counters());
    let Pipeline { writer, .. } = pipeline;
    tokio::task::spawn_blocking(move || writer.finish())
        .await
        .context("waiting for the profile writer")?;

    info!("totals {}", stats.snapshot(program.counters()).line());
    info!(
        cpus = program.attached_cpus.len(),
        ring_bytes = program.ring_bytes,
        "detached"
    );
    if let Some((run_time, runs)) = run_stats {
        if let Some(ns_per_run) = (run_time.as_nanos() as u64).checked_div(runs) {
            info!(runs, ns_per_run, "bpf program run time");
        }
    }
    Ok(())
}
