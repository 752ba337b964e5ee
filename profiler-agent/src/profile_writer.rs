//! The worker thread that symbolizes, builds and writes each profile, so the async runtime
//! that reads the ring buffer never blocks on symbolization or disk.
use std::{path::PathBuf, sync::mpsc, thread::JoinHandle, time::Duration};

use anyhow::{anyhow, Result};
use symbolizer::{Symbolizer, SymbolizerConfig};
use tracing::{error, info};

use crate::{
    aggregate::Interval,
    output, pprof,
    profile_build::{build_profile, ProfileMeta, Symbols},
    summary,
};

/// One profile to write, with the drop counters of its interval.
pub struct Job {
    pub interval: Interval,
    pub comments: Vec<String>,
    pub drops: u64,
}

pub struct ProfileWriter {
    tx: Option<mpsc::SyncSender<Job>>,
    handle: Option<JoinHandle<()>>,
}

impl ProfileWriter {
    pub fn spawn(output_dir: PathBuf, period_ns: i64) -> Result<Self> {
        // Two queued intervals at most: if symbolization falls that far behind, the reader
        // waits rather than memory growing without bound.
        let (tx, rx) = mpsc::sync_channel::<Job>(2);
        let handle = std::thread::Builder::new()
            .name("profile-writer".into())
            .spawn(move || {
                let mut symbols = Symbols::new(
                    Symbolizer::new(SymbolizerConfig::default()),
                    "/proc/kallsyms".as_ref(),
                );
                let mut seq = 0u64;
                for job in rx {
                    seq += 1;
                    write_one(&job, &mut symbols, &output_dir, period_ns, seq);
                }
            })?;
        Ok(ProfileWriter {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// Queues a profile; blocks briefly if two are already waiting.
    pub fn submit(&self, job: Job) -> Result<()> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| anyhow!("writer already closed"))?;
        tx.send(job)
            .map_err(|_| anyhow!("profile writer thread is gone"))
    }

    /// Waits for every queued profile to be written.
    pub fn finish(mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                error!("profile writer thread panicked");
            }
        }
    }
}

fn write_one(job: &Job, symbols: &mut Symbols, dir: &std::path::Path, period_ns: i64, seq: u64) {
    let interval = &job.interval;
    let (profile, stats) = build_profile(
        interval,
        symbols,
        &ProfileMeta {
            period_ns,
            comments: &job.comments,
        },
    );
    let bytes = match pprof::encode_gzip(&profile) {
        Ok(b) => b,
        Err(e) => {
            error!(error = %e, "encoding the profile failed");
            return;
        }
    };
    let name = output::file_name(interval.start, seq);
    let secs = interval
        .end
        .duration_since(interval.start)
        .unwrap_or(Duration::from_secs(1))
        .as_secs_f64()
        .max(1e-3);
    match output::write_atomically(dir, &name, &bytes) {
        Ok(path) => info!(
            file = %path.display(),
            samples = interval.samples,
            samples_per_sec = format!("{:.1}", interval.samples as f64 / secs),
            drops = job.drops,
            processes = interval.process_names.len(),
            unsymbolized_frames = stats.unsymbolized,
            frames = stats.frames,
            top = %summary::format_top(&summary::top_functions(&profile, 5)),
            "wrote profile"
        ),
        Err(e) => error!(
            error = format!("{e:#}"),
            "writing the profile failed; this interval is lost"
        ),
    }
}
