//! The enrichment thread: unwind tables and trace-context configs are built here, off the
//! thread that drains the ring, so reading and compiling a large binary never delays a
//! drain. Requests arrive over a bounded channel; when it is full they are dropped and
//! counted (`enrich_queue_full`), and the process is caught up by the next request for it.
use std::{
    sync::{mpsc, Arc},
    thread::JoinHandle,
};

use anyhow::{Context as _, Result};
use tracing::{error, warn};

use crate::{
    enrich::{context_sources::ContextConfigs, unwind_tables::UnwindTables},
    stats::{AgentCounter, AgentStats},
};

/// Requests queued at most.
const QUEUE: usize = 4096;

/// What to do for a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// A process seen for the first time: tables and context config.
    Prepare(u32),
    /// The process exec'd: its old entries go, the new image's come.
    Exec(u32),
    /// Its mappings changed (dlopen, libraries mapped after exec): re-sync the tables.
    Resync(u32),
    /// It exited: take its entries out of the kernel maps.
    Exited(u32),
    /// A profile interval ended: sweep what exited unnoticed.
    EndInterval,
}

/// The handle the agent loop keeps.
pub struct EnrichWorker {
    tx: Option<mpsc::SyncSender<Request>>,
    handle: Option<JoinHandle<()>>,
    stats: Arc<AgentStats>,
}

impl EnrichWorker {
    /// Starts the thread with the stages it owns from now on.
    pub fn spawn(
        mut unwind: Option<UnwindTables>,
        mut contexts: Option<ContextConfigs>,
        stats: Arc<AgentStats>,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Request>(QUEUE);
        let handle = std::thread::Builder::new()
            .name("enrich".into())
            .spawn(move || {
                for request in rx {
                    handle(request, unwind.as_mut(), contexts.as_mut());
                }
            })
            .context("starting the enrichment thread")?;
        Ok(EnrichWorker {
            tx: Some(tx),
            handle: Some(handle),
            stats,
        })
    }

    /// Queues a request without waiting.
    pub fn send(&self, request: Request) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(request) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => self.stats.inc(AgentCounter::EnrichQueueFull),
            Err(mpsc::TrySendError::Disconnected(_)) => {
                self.stats.inc(AgentCounter::EnrichQueueFull);
                warn!("the enrichment thread is gone");
            }
        }
    }

    /// Lets the queue run dry and stops the thread. Call off the async runtime's threads.
    pub fn finish(mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                error!("enrichment thread panicked");
            }
        }
    }
}

fn handle(
    request: Request,
    unwind: Option<&mut UnwindTables>,
    contexts: Option<&mut ContextConfigs>,
) {
    match request {
        Request::Prepare(pid) => {
            if let Some(c) = contexts {
                c.on_new_process(pid);
            }
            if let Some(u) = unwind {
                u.on_new_process(pid);
            }
        }
        Request::Exec(pid) => {
            if let Some(c) = contexts {
                c.forget(pid);
                c.on_new_process(pid);
            }
            if let Some(u) = unwind {
                u.sync(pid);
            }
        }
        Request::Resync(pid) => {
            if let Some(u) = unwind {
                u.sync(pid);
            }
        }
        Request::Exited(pid) => {
            if let Some(c) = contexts {
                c.forget(pid);
            }
            if let Some(u) = unwind {
                u.remove_process(pid);
            }
        }
        Request::EndInterval => {
            if let Some(c) = contexts {
                c.sweep_exited();
            }
            if let Some(u) = unwind {
                u.sweep_exited();
            }
        }
    }
}
