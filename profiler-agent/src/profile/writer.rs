//! The writer thread: symbolizes, builds, encodes and hands each profile to the sink, so the
//! async runtime that reads the ring buffer never waits on symbolization or I/O.
use crate::error_chain::chain;
use std::{
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use symbolizer::{Symbolizer, SymbolizerConfig};
use tokio::sync::mpsc::{self, error::TrySendError};
use tracing::{error, info, warn};

use crate::{
    profile::{
        aggregate::Interval,
        build::{build_profile, ProfileMeta},
        pprof, summary,
        symbols::Symbols,
    },
    sink::{EncodedProfile, Sink},
    stats::{AgentCounter, AgentStats, Snapshot, Stat},
};

/// One interval to write, with the counters of that interval.
pub struct Job {
    /// The aggregated stacks.
    pub interval: Interval,
    /// Every counter's change over the interval.
    pub counters: Snapshot,
}

/// Profiles queued at most. If symbolization falls this far behind, later intervals are
/// dropped and counted rather than memory growing or the ring reader waiting.
const QUEUE: usize = 2;

/// The handle the agent loop keeps.
pub struct ProfileWriter {
    tx: Option<mpsc::Sender<Job>>,
    handle: Option<JoinHandle<()>>,
    stats: Arc<AgentStats>,
}

/// Where the writer finds kernel symbols.
pub struct KernelSymbolPaths {
    /// `/proc/kallsyms`.
    pub kallsyms: std::path::PathBuf,
    /// `/proc/modules`.
    pub modules: std::path::PathBuf,
}

impl ProfileWriter {
    /// Starts the thread. `sink` receives every profile in order.
    pub fn spawn(
        sink: Box<dyn Sink>,
        period_ns: i64,
        kernel: KernelSymbolPaths,
        stats: Arc<AgentStats>,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
        let thread_stats = stats.clone();
        let handle = std::thread::Builder::new()
            .name("profile-writer".into())
            .spawn(move || {
                // Debug files were found by the process tracker, inside each process's root
                // while it lived; searching again here would follow paths into roots that
                // are gone or hostile.
                let config = SymbolizerConfig {
                    search_debug_files: false,
                    ..SymbolizerConfig::default()
                };
                let symbols =
                    Symbols::new(Symbolizer::new(config), &kernel.kallsyms, &kernel.modules);
                WriterThread {
                    symbols,
                    sink,
                    period_ns,
                    seq: 0,
                    stats: thread_stats,
                }
                .run(rx);
            })
            .context("starting the profile writer thread")?;
        Ok(ProfileWriter {
            tx: Some(tx),
            handle: Some(handle),
            stats,
        })
    }

    /// Queues a profile without waiting. When two are already queued, this one is dropped
    /// and counted (`writer_busy_profiles`, `writer_busy_samples`).
    pub fn submit(&self, job: Job) {
        let Some(tx) = self.tx.as_ref() else {
            return;
        };
        match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                self.stats.inc(AgentCounter::WriterBusyProfiles);
                self.stats
                    .add(AgentCounter::WriterBusySamples, job.interval.samples);
                warn!(
                    samples = job.interval.samples,
                    "the profile writer is two intervals behind; this interval is dropped"
                );
            }
            Err(TrySendError::Closed(job)) => {
                self.stats.inc(AgentCounter::ProfileWriteFailed);
                error!(
                    samples = job.interval.samples,
                    "the profile writer thread is gone; this interval is lost"
                );
            }
        }
    }

    /// Waits for every queued profile to be written. Call off the async runtime's threads
    /// (`spawn_blocking`), or at exit.
    pub fn finish(mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                error!("profile writer thread panicked");
            }
        }
    }
}

struct WriterThread {
    symbols: Symbols,
    sink: Box<dyn Sink>,
    period_ns: i64,
    seq: u64,
    stats: Arc<AgentStats>,
}

impl WriterThread {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(job) = rx.blocking_recv() {
            self.seq += 1;
            self.write_one(job);
        }
    }

    fn write_one(&mut self, job: Job) {
        if self.symbols.refresh_kernel() {
            self.stats.inc(AgentCounter::KallsymsReloads);
        }
        let Job {
            interval,
            mut counters,
        } = job;
        let (mut profile, symbol_stats) = build_profile(
            &interval,
            &mut self.symbols,
            &ProfileMeta {
                period_ns: self.period_ns,
                comments: &[],
            },
        );
        // What the writer measured for this interval replaces the lagging global deltas.
        for (c, v) in symbol_stats.counters() {
            counters.set(Stat::Agent(c), v);
            self.stats.add(c, v);
        }
        pprof::append_comments(&mut profile, &counters.comments());
        let bytes = match pprof::encode_gzip(&profile) {
            Ok(b) => b,
            Err(error) => {
                self.stats.inc(AgentCounter::ProfileWriteFailed);
                error!(error = %chain(&error), "encoding the profile failed; this interval is lost");
                return;
            }
        };
        let encoded = EncodedProfile {
            start: interval.start,
            end: interval.end,
            seq: self.seq,
            bytes,
        };
        let secs = interval
            .end
            .duration_since(interval.start)
            .unwrap_or(Duration::from_secs(1))
            .as_secs_f64()
            .max(1e-3);
        match self.sink.write(&encoded) {
            Ok(place) => {
                self.stats.inc(AgentCounter::ProfilesWritten);
                info!(
                    to = %place,
                    samples = interval.samples,
                    samples_per_sec = format!("{:.1}", interval.samples as f64 / secs),
                    drops = %counters.nonzero_drops(),
                    processes = interval
                        .stacks
                        .iter()
                        .map(|s| s.pid)
                        .collect::<std::collections::HashSet<_>>()
                        .len(),
                    frames = symbol_stats.frames,
                    unsymbolized_frames = symbol_stats.unsymbolized,
                    top = %summary::format_top(&summary::top_functions(&profile, 5)),
                    "wrote profile"
                );
            }
            Err(error) => {
                self.stats.inc(AgentCounter::ProfileWriteFailed);
                error!(
                    error = format!("{error:#}"),
                    age_secs = SystemTime::now()
                        .duration_since(interval.end)
                        .unwrap_or_default()
                        .as_secs(),
                    "writing the profile failed; this interval is lost"
                );
            }
        }
    }
}
