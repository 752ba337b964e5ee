//! profiler-agent: loads the eBPF sampler, drains its ring buffer, aggregates and symbolizes
//! samples, and writes a pprof file every profile interval.

use std::{process::ExitCode, time::Duration};

use anyhow::Result;
use clap::Parser as _;
use profiler_common::Counter;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    time::{interval_at, sleep, Instant, MissedTickBehavior},
};
use tracing::{error, info, warn};

use profiler_agent::{
    aggregate::Aggregator,
    config::{Args, Config},
    context_sources::ContextConfigs,
    ebpf_loader::{KernelCounters, LoadedProgram},
    processes,
    processes::Processes,
    profile_writer::{Job, ProfileWriter},
    ring_reader::{self, ReaderStats},
    trace_context::LabelFilter,
    unwind_tables::UnwindTables,
};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config: Config = Args::parse().into();
    // One thread is plenty for draining the ring; symbolization has its own thread.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "profiler-agent failed");
            ExitCode::FAILURE
        }
    }
}

/// Drop counters of one interval, written into the profile's comments.
fn interval_comments(
    k: &KernelCounters,
    delivered: u64,
    reader: &ReaderStats,
    procs: &processes::ProcessStats,
) -> Vec<String> {
    let mut c: Vec<String> = Counter::ALL
        .iter()
        .map(|&x| format!("{}={}", x.name(), k.get(x)))
        .collect();
    c.push(format!("delivered={delivered}"));
    c.push(format!("malformed_records={}", reader.malformed));
    c.push(format!("maps_unreadable={}", procs.maps_unreadable));
    c.push(format!("binary_open_failed={}", procs.binary_open_failed));
    c
}

async fn run(config: Config) -> Result<()> {
    let unwind_rows = config.unwind_tables.then_some(config.unwind_table_rows);
    let (mut program, maps) = LoadedProgram::load_and_attach(
        config.frequency,
        &config.pids,
        config.ring_buffer_bytes,
        unwind_rows,
    )?;
    let ring = maps.ring;
    let mut unwind = maps.unwind.map(|m| {
        UnwindTables::new(
            m,
            "/proc",
            config.unwind_table_rows,
            profiler_common::MAX_UNWIND_TABLES,
        )
    });
    let initial_pids = processes::initial_pids("/proc".as_ref(), &config.pids);
    if let Some(u) = unwind.as_mut() {
        u.scan_existing(&initial_pids);
    }
    let mut contexts = maps
        .contexts
        .filter(|_| config.trace_context)
        .map(|m| ContextConfigs::new(m, "/proc", !config.include_unsampled));
    if let Some(c) = contexts.as_mut() {
        c.scan_existing(&initial_pids);
    }
    info!(output_dir = %config.output_dir.display(), interval_secs = config.profile_interval.as_secs(), "profiling started");
    let writer = ProfileWriter::spawn(config.output_dir.clone(), config.period_ns())?;
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, for as long as the
    // AsyncFd that wraps it exists.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("registering the ring buffer with epoll: {e}"))?;
    let mut processes = Processes::new("/proc");
    let mut agg = Aggregator::new(LabelFilter {
        allow: config.label_allow.clone(),
    });
    let mut reader = ReaderStats::default();
    let mut last_counters = KernelCounters::default();
    let mut last_delivered = 0u64;

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let deadline = sleep(config.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    let start = Instant::now();
    let mut flush = interval_at(start + config.profile_interval, config.profile_interval);
    flush.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut drain_tick = interval_at(start + config.stall_reader, config.drain_interval);
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let stall_until = start + config.stall_reader;

    let mut flush_now = |agg: &mut Aggregator,
                         processes: &mut Processes,
                         contexts: &mut Option<ContextConfigs>,
                         unwind: &mut Option<UnwindTables>,
                         program: &LoadedProgram,
                         reader: &ReaderStats|
     -> Result<()> {
        let counters = program.counters();
        let delta = counters.delta_since(&last_counters);
        let delivered = reader.delivered - last_delivered;
        last_counters = counters;
        last_delivered = reader.delivered;
        let comments = interval_comments(&delta, delivered, reader, &processes.stats);
        let drops = delta.get(Counter::RingBufferFull);
        if drops > 0 {
            warn!(
                drops,
                "ring buffer was full; samples were dropped (raise --ring-buffer-bytes)"
            );
        }
        let interval = agg.take(processes);
        processes.end_interval();
        if let Some(c) = contexts.as_mut() {
            c.sweep_exited();
        }
        if let Some(u) = unwind.as_mut() {
            u.refresh();
        }
        writer.submit(Job {
            interval,
            comments,
            drops,
        })
    };

    loop {
        for pid in processes.take_new_pids() {
            if let Some(c) = contexts.as_mut() {
                c.on_new_process(pid);
            }
            if let Some(u) = unwind.as_mut() {
                u.on_new_process(pid);
            }
        }
        tokio::select! {
            guard = ring.readable_mut(), if Instant::now() >= stall_until => {
                let mut guard = guard?;
                ring_reader::drain(guard.get_inner_mut(), &mut agg, &mut processes, &mut reader);
                guard.clear_ready();
            }
            _ = drain_tick.tick() => {
                ring_reader::drain(ring.get_mut(), &mut agg, &mut processes, &mut reader);
            }
            _ = flush.tick() => {
                if Instant::now() >= stall_until {
                    ring_reader::drain(ring.get_mut(), &mut agg, &mut processes, &mut reader);
                }
                flush_now(&mut agg, &mut processes, &mut contexts, &mut unwind, &program, &reader)?;
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
    ring_reader::drain(ring.get_mut(), &mut agg, &mut processes, &mut reader);
    flush_now(
        &mut agg,
        &mut processes,
        &mut contexts,
        &mut unwind,
        &program,
        &reader,
    )?;
    writer.finish();

    let totals = program.counters();
    let kernel: Vec<String> = Counter::ALL
        .iter()
        .map(|&c| format!("{}={}", c.name(), totals.get(c)))
        .collect();
    let (go, otel, unknown_go) = contexts
        .as_ref()
        .map(|c| {
            (
                c.stats.go_processes,
                c.stats.otel_processes,
                c.stats.unknown_go_versions,
            )
        })
        .unwrap_or_default();
    let kernel = kernel.join(" ");
    let delivered = reader.delivered;
    let malformed = reader.malformed;
    let maps_unreadable = processes.stats.maps_unreadable;
    let binary_open_failed = processes.stats.binary_open_failed;
    let attach_failed = program.failed_cpus.len();
    let u = unwind.as_ref().map(|u| u.stats).unwrap_or_default();
    let (u_tables, u_bytes, u_failed, u_over, u_map_errors, u_build_ms) = (
        u.tables_built,
        u.peak_rows * std::mem::size_of::<profiler_common::unwind::UnwindRow>() as u64,
        u.compile_failed,
        u.over_budget,
        u.map_errors,
        u.build_time.as_millis() as u64,
    );
    info!(
        "totals {kernel} delivered={delivered} malformed_records={malformed} maps_unreadable={maps_unreadable} \
         binary_open_failed={binary_open_failed} attach_failed_cpus={attach_failed} go_processes={go} \
         otel_processes={otel} unknown_go_versions={unknown_go} unwind_tables_built={u_tables} \
         unwind_table_bytes_peak={u_bytes} unwind_compile_failed={u_failed} unwind_over_budget={u_over} \
         unwind_map_errors={u_map_errors} unwind_build_ms={u_build_ms}"
    );
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
