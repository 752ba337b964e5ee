//! The agent's event loop: drain the ring when the kernel wakes us or the drain timer fires,
//! close an interval on the profile timer, stop on a signal or the deadline. The stages it
//! wires are owned by [`Pipeline`]; finished intervals go to the writer thread over a bounded
//! channel, so nothing on this thread waits for symbolization or disk.
use std::{collections::VecDeque, sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};

use anyhow::{Context as _, Result};
use tokio::{
    io::unix::{AsyncFd, AsyncFdReadyMutGuard},
    signal::unix::{signal, SignalKind},
    time::{interval_at, sleep, Instant, MissedTickBehavior},
};
use tracing::{debug, info, warn};

use crate::{
    bpf::{
        events::{self, Lifecycle},
        loader::KernelCounters,
        ring, LoadedMaps, LoadedProgram, ProgramOptions,
    },
    config::Config,
    enrich::{
        context_sources::ContextConfigs,
        unwind_tables::UnwindTables,
        worker::{EnrichWorker, Request},
    },
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
    aggregator: Aggregator,
    /// Unwind tables and trace-context configs, on their own thread.
    enrich: EnrichWorker,
    writer: ProfileWriter,
    stats: Arc<AgentStats>,
    /// Counters at the end of the last interval.
    last: Snapshot,
    /// Maps to read again shortly after an exec: the loader maps libraries after it.
    rereads: VecDeque<(Instant, u32)>,
}

/// When after an exec the new image's mappings are read again: the loader maps the
/// libraries within a millisecond or two; the later look catches a slow start.
const REREADS_AFTER_EXEC: [Duration; 2] = [Duration::from_millis(3), Duration::from_millis(30)];
/// Pending re-reads kept at most (one per exec; a flood of execs only loses re-reads).
const MAX_PENDING_REREADS: usize = 4096;

impl Pipeline {
    /// Handles every lifecycle event, then takes every sample in the ring: a process is
    /// prepared before its first samples are aggregated.
    fn drain(&mut self, events: Option<&mut RingBuf<MapData>>, ring: &mut RingBuf<MapData>) {
        if let Some(events) = events {
            self.handle_events(events);
        }
        let Pipeline {
            processes,
            aggregator,
            stats,
            ..
        } = self;
        let now_ns = monotonic_ns();
        let mut oldest_ns = u64::MAX;
        ring::drain(ring, stats, |sample| {
            oldest_ns = oldest_ns.min(sample.time_ns);
            aggregator.add(sample, processes)
        });
        if let Some(age_ns) = now_ns.checked_sub(oldest_ns) {
            stats.raise(AgentCounter::SampleWaitMsMax, age_ns / 1_000_000);
        }
        for pid in self.processes.take_new_pids() {
            self.enrich.send(Request::Prepare(pid));
        }
    }

    fn handle_events(&mut self, events: &mut RingBuf<MapData>) {
        while let Some(record) = events.next() {
            match events::decode(&record) {
                Ok(event) => self.on_event(event),
                Err(error) => {
                    self.stats.inc(AgentCounter::MalformedEvents);
                    debug!(%error, "bad lifecycle record");
                }
            }
        }
    }

    fn on_event(&mut self, event: Lifecycle) {
        debug!(?event, "lifecycle");
        match event {
            Lifecycle::Exec { pid, time_ns } => {
                self.processes.on_exec(pid, time_ns);
                // This one is taken by the exec request below; others still need preparing.
                for other in self.processes.take_new_pids() {
                    if other != pid {
                        self.enrich.send(Request::Prepare(other));
                    }
                }
                self.enrich.send(Request::Exec(pid));
                for after in REREADS_AFTER_EXEC {
                    if self.rereads.len() < MAX_PENDING_REREADS {
                        self.insert_reread(Instant::now() + after, pid);
                    }
                }
            }
            Lifecycle::NewPid { pid } => self.processes.on_new_pid(pid),
            Lifecycle::Exit { pid, time_ns } => {
                self.processes.on_exit(pid, time_ns);
                self.enrich.send(Request::Exited(pid));
            }
            Lifecycle::UnwindMiss { pid } => {
                self.processes.reread(pid);
                self.enrich.send(Request::Resync(pid));
            }
        }
    }

    /// Keeps the re-read queue in deadline order (two delays interleave).
    fn insert_reread(&mut self, at: Instant, pid: u32) {
        let idx = self.rereads.partition_point(|&(t, _)| t <= at);
        self.rereads.insert(idx, (at, pid));
    }

    /// Re-reads the mappings of processes that exec'd a moment ago.
    fn due_rereads(&mut self) {
        let now = Instant::now();
        while let Some(&(at, pid)) = self.rereads.front() {
            if at > now {
                break;
            }
            self.rereads.pop_front();
            self.processes.reread(pid);
            self.enrich.send(Request::Resync(pid));
        }
    }

    /// When the next re-read is due.
    fn next_reread(&self) -> Option<Instant> {
        self.rereads.front().map(|&(at, _)| at)
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
        self.enrich.send(Request::EndInterval);
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

/// Readiness of the event ring, or never when there is none.
async fn readable(
    events: Option<&mut AsyncFd<RingBuf<MapData>>>,
) -> std::io::Result<AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
    match events {
        Some(e) => e.readable_mut().await,
        None => std::future::pending().await,
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of the samples' `bpf_ktime_get_ns()`.
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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
        events,
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
    let mut unwind = unwind.map(|m| {
        UnwindTables::new(
            m,
            PROC,
            config.unwind_table_rows,
            profiler_common::MAX_UNWIND_TABLES,
            stats.clone(),
        )
    });
    let mut contexts = contexts
        .filter(|_| config.trace_context)
        .map(|m| ContextConfigs::new(m, PROC, !config.include_unsampled, stats.clone()));
    // Processes already running are prepared before sampling counts, on this thread.
    let initial_pids = process::initial_pids(PROC.as_ref(), &config.pids);
    if let Some(u) = unwind.as_mut() {
        u.scan_existing(&initial_pids);
    }
    if let Some(c) = contexts.as_mut() {
        c.scan_existing(&initial_pids);
    }
    let lifecycle = if events.is_some() { "on" } else { "off" };
    let mut pipeline = Pipeline {
        processes: Processes::new(PROC, stats.clone()).with_max_processes(config.max_processes),
        aggregator: Aggregator::new(
            LabelFilter {
                allow: config.label_allow.clone(),
            },
            config.max_stacks,
            stats.clone(),
        ),
        enrich: EnrichWorker::spawn(unwind, contexts, stats.clone())?,
        writer,
        stats: stats.clone(),
        last: Snapshot::default(),
        rereads: VecDeque::new(),
    };
    info!(output_dir = %config.output_dir.display(), interval_secs = config.profile_interval.as_secs(), lifecycle, "profiling started");

    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, for as long as the
    // AsyncFd that wraps it exists.
    let mut ring =
        unsafe { AsyncFd::register(ring) }.context("registering the ring buffer with epoll")?;
    let mut events = match events {
        // SAFETY: as above, for the lifecycle ring.
        Some(e) => Some(unsafe { AsyncFd::register(e) }.context("registering the event ring")?),
        None => None,
    };
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
        let reread_at = pipeline.next_reread();
        let cpu_before = thread_cpu();
        let turn = tokio::select! {
            guard = ring.readable_mut() => {
                let began = std::time::Instant::now();
                let mut guard = guard.context("waiting on the ring buffer")?;
                pipeline.drain(events.as_mut().map(|e| e.get_mut()), guard.get_inner_mut());
                guard.clear_ready();
                began
            }
            guard = readable(events.as_mut()) => {
                let began = std::time::Instant::now();
                let mut guard = guard.context("waiting on the event ring")?;
                pipeline.drain(Some(guard.get_inner_mut()), ring.get_mut());
                guard.clear_ready();
                began
            }
            _ = sleep_until_opt(reread_at) => {
                let began = std::time::Instant::now();
                pipeline.due_rereads();
                began
            }
            _ = drain_tick.tick() => {
                let began = std::time::Instant::now();
                pipeline.drain(events.as_mut().map(|e| e.get_mut()), ring.get_mut());
                began
            }
            _ = profile_tick.tick() => {
                let began = std::time::Instant::now();
                pipeline.drain(events.as_mut().map(|e| e.get_mut()), ring.get_mut());
                pipeline.end_interval(program.counters());
                began
            }
            _ = sigint.recv() => { info!("SIGINT: writing the last profile"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: writing the last profile"); break; }
            _ = &mut deadline => { info!("duration reached: writing the last profile"); break; }
        };
        // Each handler above returns when it began; the turn ends here.
        let busy_ms = turn.elapsed().as_millis() as u64;
        stats.raise(AgentCounter::RingStallMsMax, busy_ms);
        let cpu_ms = thread_cpu().saturating_sub(cpu_before).as_millis() as u64;
        stats.raise(AgentCounter::RingTurnCpuMsMax, cpu_ms);
    }

    // Read before detaching: the kernel forgets the program's statistics once it is unloaded.
    let run_stats = program.run_stats();
    // Stop sampling first, so that the final counters and the drained ring agree exactly.
    program.detach();
    pipeline.drain(events.as_mut().map(|e| e.get_mut()), ring.get_mut());
    pipeline.end_interval(program.counters());
    let Pipeline { writer, enrich, .. } = pipeline;
    tokio::task::spawn_blocking(move || {
        enrich.finish();
        writer.finish();
    })
    .await
    .context("waiting for the enrichment and writer threads")?;

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

/// CPU time the calling thread has used (waiting in `select!` uses none).
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}
