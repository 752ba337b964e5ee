//! Finds each process's trace-context source (Go labels or an OTel thread-context record)
//! and keeps the eBPF program's per-process configuration map in step.
use crate::error_chain::chain;
use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use profiler_common::{
    ContextConfig, CONFIG_FLAG_REQUIRE_SAMPLED, CONTEXT_SOURCE_GO, CONTEXT_SOURCE_OTEL,
};
use symbolizer::Binary;
use tracing::{debug, info, warn};

use crate::{
    enrich::go_runtime,
    process::file_id::FileIdentity,
    stats::{AgentCounter, AgentStats},
};

/// The OTEP 4947 thread-local pointer to the current context record.
pub const OTEL_TLS_SYMBOL: &str = "otel_thread_ctx_v1";

/// What a binary offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// No source the eBPF program can read.
    None,
    /// A Go binary of a release in the offset table: the running goroutine's labels.
    Go {
        /// `go1.21.13`.
        version: String,
        /// What the kernel needs to find the labels.
        config: ContextConfig,
    },
    /// A Go release outside the offset table: no labels, logged once per binary.
    UnknownGo {
        /// `go1.99.0`.
        version: String,
    },
    /// An executable that defines the OTEP 4947 TLS pointer.
    Otel {
        /// What the kernel needs to find the record.
        config: ContextConfig,
    },
}

/// Inspects an executable. `require_sampled` sets the early-discard flag for OTel records.
pub fn inspect(path: &Path, require_sampled: bool) -> Result<Source, symbolizer::Error> {
    let binary = Binary::open(path)?;
    let Ok(obj) = object::File::parse(binary.bytes()) else {
        return Ok(Source::None);
    };
    if let Some(version) = go_runtime::go_version(&obj) {
        let Some(offsets) =
            go_runtime::parse_version(&version).and_then(|(a, b)| go_runtime::offsets_for(a, b))
        else {
            return Ok(Source::UnknownGo { version });
        };
        let config = ContextConfig {
            source: u32::from(CONTEXT_SOURCE_GO),
            go_labels_layout: offsets.layout,
            tls_offset: go_runtime::g_tls_offset(&obj),
            go_g_m: offsets.g_m,
            go_m_curg: offsets.m_curg,
            go_g_labels: offsets.g_labels,
            flags: 0,
        };
        return Ok(Source::Go { version, config });
    }
    if let Some(tls_offset) = go_runtime::static_tls_offset(&obj, OTEL_TLS_SYMBOL) {
        let config = ContextConfig {
            source: u32::from(CONTEXT_SOURCE_OTEL),
            tls_offset,
            flags: if require_sampled {
                CONFIG_FLAG_REQUIRE_SAMPLED
            } else {
                0
            },
            ..Default::default()
        };
        return Ok(Source::Otel { config });
    }
    Ok(Source::None)
}

/// Owns the eBPF program's `CONTEXT_CONFIG` map.
pub struct ContextConfigs {
    map: BpfHashMap<MapData, u32, ContextConfig>,
    proc_root: PathBuf,
    require_sampled: bool,
    /// Per executable: what it offers, so each binary is inspected once.
    by_binary: HashMap<FileIdentity, Source>,
    configured: HashSet<u32>,
    stats: Arc<AgentStats>,
}

/// Executables remembered at most; past it the memory is dropped and binaries are inspected
/// again as their processes appear (a churning host runs ever new binaries).
const MAX_REMEMBERED_BINARIES: usize = 4096;

impl ContextConfigs {
    /// Takes over the kernel map; `require_sampled` skips OTel records without the W3C
    /// sampled flag in the kernel.
    pub fn new(
        map: BpfHashMap<MapData, u32, ContextConfig>,
        proc_root: impl Into<PathBuf>,
        require_sampled: bool,
        stats: Arc<AgentStats>,
    ) -> Self {
        ContextConfigs {
            map,
            proc_root: proc_root.into(),
            require_sampled,
            by_binary: HashMap::new(),
            configured: HashSet::new(),
            stats,
        }
    }

    /// Configures processes already running (see `process::initial_pids`), so their first
    /// samples already carry context.
    pub fn scan_existing(&mut self, pids: &[u32]) {
        for &pid in pids {
            self.on_new_process(pid);
        }
        info!(
            go = self.stats.get(AgentCounter::GoProcesses),
            otel = self.stats.get(AgentCounter::OtelProcesses),
            "trace-context sources found"
        );
    }

    /// Finds the source of a process seen for the first time and tells the kernel about it.
    pub fn on_new_process(&mut self, pid: u32) {
        if self.configured.contains(&pid) {
            return;
        }
        let exe = self.proc_root.join(pid.to_string()).join("exe");
        // Kernel threads and processes already gone have no exe.
        let Ok(key) = FileIdentity::of(&exe) else {
            return;
        };
        let source = match self.by_binary.get(&key) {
            Some(s) => s.clone(),
            None => {
                let s = self.inspect_new(pid, &exe);
                if self.by_binary.len() >= MAX_REMEMBERED_BINARIES {
                    self.by_binary.clear();
                }
                self.by_binary.insert(key, s.clone());
                s
            }
        };
        let config = match source {
            Source::Go {
                config,
                ref version,
            } => {
                self.stats.inc(AgentCounter::GoProcesses);
                debug!(pid, %version, "Go labels enabled");
                config
            }
            Source::Otel { config } => {
                self.stats.inc(AgentCounter::OtelProcesses);
                debug!(pid, "OTel thread context enabled");
                config
            }
            Source::None | Source::UnknownGo { .. } => return,
        };
        match self.map.insert(pid, config, 0) {
            Ok(()) => {
                self.configured.insert(pid);
            }
            Err(error) => {
                self.stats.inc(AgentCounter::ContextMapFull);
                warn!(pid, error = %chain(&error), "cannot add trace-context config (map full?)");
            }
        }
    }

    fn inspect_new(&self, pid: u32, exe: &Path) -> Source {
        let source = match inspect(exe, self.require_sampled) {
            Ok(s) => s,
            Err(error) => {
                self.stats.inc(AgentCounter::ContextInspectFailed);
                debug!(pid, error = %chain(&error), "cannot inspect executable for a trace-context source");
                Source::None
            }
        };
        if let Source::UnknownGo { version } = &source {
            self.stats.inc(AgentCounter::UnknownGoVersions);
            warn!(pid, %version, exe = ?std::fs::read_link(exe).ok(), "Go version outside the label-offset table; its samples get no labels");
        }
        source
    }

    /// Forgets one process (it exited, or exec'd into another binary).
    pub fn forget(&mut self, pid: u32) {
        if self.configured.remove(&pid) {
            if let Err(error) = self.map.remove(&pid) {
                debug!(pid, error = %chain(&error), "removing a process's context config failed");
            }
        }
    }

    /// Forgets processes that exited, so the map stays bounded by live processes and a
    /// reused pid is inspected afresh.
    pub fn sweep_exited(&mut self) {
        let root = &self.proc_root;
        let gone: Vec<u32> = self
            .configured
            .iter()
            .copied()
            .filter(|pid| !root.join(pid.to_string()).exists())
            .collect();
        for pid in gone {
            self.configured.remove(&pid);
            if let Err(error) = self.map.remove(&pid) {
                debug!(pid, error = %chain(&error), "removing an exited process's context config failed");
            }
        }
    }
}
