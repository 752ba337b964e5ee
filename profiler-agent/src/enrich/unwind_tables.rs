//! Compiles `.eh_frame` unwind tables for the executable mappings of profiled processes and
//! keeps the eBPF program's table maps in step: rows and table info once per binary (shared
//! across processes), LPM mapping entries per process, removed when the process exits.
use crate::error_chain::chain;
use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::{Context as _, Result};
use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, MapData,
};
use profiler_common::unwind::{MappingKey, UnwindMapping, UnwindRow, UnwindTableInfo, NO_TABLE};
use profiler_unwind::{
    compile_elf, load_segments, lpm_blocks, mapping_bias, CompileOptions, LoadSegment, TableStore,
};
use tracing::{debug, info, warn};

use crate::{
    bpf::mapped_rows::MappedRows,
    process::{
        file_id::FileIdentity,
        mapped_file::{open_error_counter, open_mapped, MappedFile},
        maps::{self, MapEntry},
        read_start_time,
    },
    stats::{AgentCounter, AgentStats},
};

/// A binary's identity, as every other cache of the agent sees it.
type FileKey = FileIdentity;
/// A mapping's file as `/proc/PID/maps` shows it: (device major, device minor, inode).
type MapsFile = (u32, u32, u64);

/// Binaries remembered as failed at most: past it the marks are dropped and retried.
const MAX_FAILED_MARKS: usize = 16384;

/// The eBPF program's three table maps.
pub struct UnwindMaps {
    /// Every table's rows, mapped into the agent.
    pub rows: MappedRows,
    /// Per-table metadata.
    pub tables: Array<MapData, UnwindTableInfo>,
    /// (pid, address range) to table and bias.
    pub mappings: LpmTrie<MapData, MappingKey, UnwindMapping>,
}

/// What is loaded right now (the counters live in the agent's registry).
#[derive(Debug, Default, Clone, Copy)]
pub struct UnwindTableLevels {
    /// Processes with at least one table-covered mapping.
    pub processes: u64,
    /// Binaries whose table is loaded.
    pub tables: u64,
    /// Their rows.
    pub rows: u64,
}

/// A loaded table and the segments needed to compute each mapping's bias.
struct LoadedFile {
    table_id: u32,
    segments: Vec<LoadSegment>,
}

/// One executable mapping: start, end, file offset, file.
type MappingId = (u64, u64, u64, MapsFile);

/// What one mapping put into the maps, so it can be taken out again.
#[derive(Default)]
struct MappingEntries {
    keys: Vec<Key<MappingKey>>,
    /// The table the mapping holds a use of; None when the binary has no usable table.
    table_id: Option<u32>,
}

/// What one process put into the maps.
#[derive(Default)]
struct ProcessEntries {
    /// `/proc/PID/stat` start time when first synced: a pid found with another start time
    /// was reused, and its entries belong to the process that had it before.
    start_time: Option<u64>,
    /// A fault (a binary that could not be opened) was logged for this process already.
    fault_logged: bool,
    /// The process-wide `NO_TABLE` entry, present once any mapping has a table.
    process_key: Option<Key<MappingKey>>,
    mappings: HashMap<MappingId, MappingEntries>,
}

/// Owns the table maps and what each process put into them.
pub struct UnwindTables {
    maps: UnwindMaps,
    proc_root: PathBuf,
    row_budget: u32,
    store: TableStore<FileKey>,
    files: HashMap<FileKey, LoadedFile>,
    /// Binaries that failed to compile, or whose table exceeds the whole budget: not
    /// retried while the agent runs.
    failed: HashSet<FileKey>,
    /// Binaries that did not fit: retried once some table is released.
    over_budget: HashSet<FileKey>,
    procs: HashMap<u32, ProcessEntries>,
    levels: UnwindTableLevels,
    stats: Arc<AgentStats>,
}

impl UnwindTables {
    /// `row_budget` rows and `max_tables` tables at most, as the maps were sized.
    pub fn new(
        maps: UnwindMaps,
        proc_root: impl Into<PathBuf>,
        row_budget: u32,
        max_tables: u32,
        stats: Arc<AgentStats>,
    ) -> Self {
        UnwindTables {
            maps,
            proc_root: proc_root.into(),
            row_budget,
            store: TableStore::new(row_budget, max_tables),
            files: HashMap::new(),
            failed: HashSet::new(),
            over_budget: HashSet::new(),
            procs: HashMap::new(),
            levels: UnwindTableLevels::default(),
            stats,
        }
    }

    /// Loads tables for processes already running (see `process::initial_pids`), so that
    /// their first samples are already unwound with them.
    pub fn scan_existing(&mut self, pids: &[u32]) {
        let started = Instant::now();
        for &pid in pids {
            self.on_new_process(pid);
        }
        let l = self.levels;
        info!(
            processes = l.processes,
            tables = l.tables,
            rows = l.rows,
            table_bytes = l.rows * std::mem::size_of::<UnwindRow>() as u64,
            compile_failed = self.stats.get(AgentCounter::UnwindCompileFailed),
            over_budget = self.stats.get(AgentCounter::UnwindOverBudget),
            build_ms = started.elapsed().as_millis() as u64,
            "unwind tables loaded"
        );
    }

    /// Adds the mapping entries of `pid`, compiling and loading the tables it still lacks.
    /// Entries left by an earlier process with the same pid are dropped first.
    pub fn on_new_process(&mut self, pid: u32) {
        if let Some(entries) = self.procs.get(&pid) {
            if entries.start_time == read_start_time(&self.pid_dir(pid)) {
                return;
            }
            self.remove_process(pid);
        }
        self.sync(pid);
    }

    fn pid_dir(&self, pid: u32) -> PathBuf {
        self.proc_root.join(pid.to_string())
    }

    /// Brings the entries of `pid` in line with its current maps: mappings that appeared
    /// (dlopen, exec) are added, mappings that went away are removed with their tables.
    pub fn sync(&mut self, pid: u32) {
        let started = Instant::now();
        let dir = self.pid_dir(pid);
        // Kernel threads and processes that already exited have no maps: nothing to add.
        let maps = match maps::read_maps(&dir.join("maps")) {
            Ok(read) => {
                self.stats
                    .add(AgentCounter::MapsTornReads, u64::from(read.torn_reads));
                read.entries
            }
            Err(_) => {
                self.remove_process(pid);
                return;
            }
        };
        let wanted: HashMap<MappingId, &MapEntry> = maps
            .iter()
            .filter(|m| m.executable && m.is_file())
            .map(|m| {
                (
                    (
                        m.start,
                        m.end,
                        m.offset,
                        (m.dev_major, m.dev_minor, m.inode),
                    ),
                    m,
                )
            })
            .collect();
        let mut entries = self.procs.remove(&pid).unwrap_or_else(|| ProcessEntries {
            start_time: read_start_time(&dir),
            ..ProcessEntries::default()
        });
        let stale: Vec<MappingId> = entries
            .mappings
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        for id in stale {
            if let Some(old) = entries.mappings.remove(&id) {
                self.remove_mapping(pid, old);
            }
        }
        for (id, entry) in wanted {
            if entries.mappings.contains_key(&id) {
                continue;
            }
            let mut added = MappingEntries::default();
            if let Err(error) =
                self.add_mapping(pid, &dir, entry, &mut added, &mut entries.fault_logged)
            {
                self.stats.inc(AgentCounter::UnwindMapErrors);
                warn!(pid, path = %entry.path, error = format!("{error:#}"), "cannot add unwind mapping");
            }
            entries.mappings.insert(id, added);
        }
        let has_tables = entries.mappings.values().any(|m| m.table_id.is_some());
        if has_tables && entries.process_key.is_none() {
            // Addresses outside every table-covered mapping (vdso, JIT code) still match this
            // process-wide entry, so the whole stack is walked by the table-aware unwinder,
            // falling back to frame pointers there.
            let key = Key::new(32, MappingKey::new(pid, 0));
            let value = UnwindMapping {
                bias: 0,
                table_id: NO_TABLE,
                _pad: 0,
            };
            match self.maps.mappings.insert(&key, value, 0) {
                Ok(()) => {
                    entries.process_key = Some(key);
                    self.levels.processes += 1;
                }
                Err(error) => {
                    self.stats.inc(AgentCounter::UnwindMapErrors);
                    warn!(pid, error = %chain(&error), "cannot add the process-wide unwind entry");
                }
            }
        }
        self.procs.insert(pid, entries);
        self.stats.add(
            AgentCounter::UnwindBuildMs,
            started.elapsed().as_millis() as u64,
        );
    }

    fn add_mapping(
        &mut self,
        pid: u32,
        dir: &Path,
        entry: &MapEntry,
        out: &mut MappingEntries,
        fault_logged: &mut bool,
    ) -> Result<()> {
        let opened = match open_mapped(dir, entry, &self.stats) {
            Ok(opened) => opened,
            Err(error) => {
                // Nothing to unwind with, and nothing to remember: a later sync retries.
                self.stats.inc(open_error_counter(&error));
                if !std::mem::replace(fault_logged, true) {
                    info!(pid, path = %entry.path, error = %chain(&error), "cannot open a mapped binary for its unwind table; frame pointers there (logged once per process)");
                }
                return Ok(());
            }
        };
        let file = opened.identity;
        let Some(table_id) = self.table_for(pid, entry, opened) else {
            return Ok(());
        };
        let Some(loaded) = self.files.get(&file) else {
            return Ok(());
        };
        let Some(bias) = mapping_bias(
            entry.start,
            entry.end - entry.start,
            entry.offset,
            &loaded.segments,
        ) else {
            self.stats.inc(AgentCounter::UnwindNoSegment);
            debug!(pid, path = %entry.path, offset = entry.offset, "no PT_LOAD segment for this mapping");
            self.release(table_id);
            return Ok(());
        };
        out.table_id = Some(table_id);
        let value = UnwindMapping {
            bias,
            table_id,
            _pad: 0,
        };
        for (data, prefix) in lpm_blocks(pid, entry.start, entry.end) {
            let key = Key::new(prefix, data);
            self.maps
                .mappings
                .insert(&key, value, 0)
                .context("inserting an LPM block")?;
            out.keys.push(key);
        }
        Ok(())
    }

    fn remove_mapping(&mut self, pid: u32, entries: MappingEntries) {
        for key in &entries.keys {
            if let Err(error) = self.maps.mappings.remove(key) {
                debug!(pid, error = %chain(&error), "removing an LPM block failed");
            }
        }
        if let Some(table_id) = entries.table_id {
            self.release(table_id);
        }
    }

    /// Takes out everything `pid` put into the maps (it exited).
    pub fn remove_process(&mut self, pid: u32) {
        let Some(entries) = self.procs.remove(&pid) else {
            return;
        };
        if let Some(key) = entries.process_key {
            if let Err(error) = self.maps.mappings.remove(&key) {
                debug!(pid, error = %chain(&error), "removing the process-wide entry failed");
            }
            self.levels.processes = self.levels.processes.saturating_sub(1);
        }
        for (_, mapping) in entries.mappings {
            self.remove_mapping(pid, mapping);
        }
    }

    /// The table id for `file`, loading its table if no other process has; one more user
    /// either way. `None` when the binary has no usable table.
    fn table_for(&mut self, pid: u32, entry: &MapEntry, opened: MappedFile) -> Option<u32> {
        let file = opened.identity;
        if self.failed.contains(&file) || self.over_budget.contains(&file) {
            return None;
        }
        if let Some(placement) = self.store.share(&file) {
            self.stats.inc(AgentCounter::UnwindTableCacheHits);
            return Some(placement.table_id);
        }
        // SAFETY: a private read-only mapping of a file the agent only reads. A file
        // truncated while compiling would fault the reads past its new end (SIGBUS); binaries
        // that run are replaced by rename, not rewritten in place (the symbolizer accepts the
        // same risk for the same reason).
        let data = match unsafe { memmap2::Mmap::map(&opened.file) } {
            Ok(data) => data,
            Err(error) => {
                self.stats.inc(AgentCounter::UnwindCompileFailed);
                self.mark_failed(file);
                debug!(pid, path = %entry.path, error = %error, "cannot map binary for its unwind table");
                return None;
            }
        };
        let opts = CompileOptions {
            max_rows: self.row_budget as usize,
        };
        let compiled = match compile_elf(&data, &opts) {
            Err(profiler_unwind::Error::TooManyRows { limit }) => {
                // Never fits, however much is freed: not retried.
                self.stats.inc(AgentCounter::UnwindOverBudget);
                self.mark_failed(file);
                warn!(pid, path = %entry.path, limit, "unwind table larger than the whole row budget; frame pointers only (raise --unwind-table-rows)");
                return None;
            }
            compiled => compiled
                .map_err(anyhow::Error::from)
                .and_then(|table| Ok((table, load_segments(&data)?))),
        };
        let (table, segments) = match compiled {
            Ok(ok) => ok,
            Err(error) => {
                self.stats.inc(AgentCounter::UnwindCompileFailed);
                self.mark_failed(file);
                debug!(pid, path = %entry.path, error = format!("{error:#}"), "no unwind table; frame pointers only");
                return None;
            }
        };
        let placement = match self.store.insert(&file, &table) {
            Ok(p) => p,
            Err(error) => {
                self.stats.inc(AgentCounter::UnwindOverBudget);
                self.over_budget.insert(file);
                warn!(pid, path = %entry.path, rows = table.rows.len(), error = %chain(&error), "unwind table over budget; frame pointers only (raise --unwind-table-rows)");
                return None;
            }
        };
        if let Err(error) = self.write_table(placement.table_id, &placement.info, &table.rows) {
            self.stats.inc(AgentCounter::UnwindMapErrors);
            warn!(pid, path = %entry.path, error = format!("{error:#}"), "cannot write unwind table");
            self.store.release(placement.table_id);
            self.mark_failed(file);
            return None;
        }
        self.levels.tables += 1;
        self.stats.inc(AgentCounter::UnwindTablesBuilt);
        self.levels.rows = u64::from(self.row_budget - self.store.free_rows());
        self.stats.raise(
            AgentCounter::UnwindTableBytesPeak,
            self.levels.rows * std::mem::size_of::<UnwindRow>() as u64,
        );
        debug!(
            path = %entry.path,
            rows = table.rows.len(),
            bytes = table.size_bytes(),
            fdes = table.stats.fdes,
            unsupported = table.stats.unsupported.total(),
            "unwind table loaded"
        );
        self.files.insert(
            file,
            LoadedFile {
                table_id: placement.table_id,
                segments,
            },
        );
        Some(placement.table_id)
    }

    fn write_table(
        &mut self,
        table_id: u32,
        info: &UnwindTableInfo,
        rows: &[UnwindRow],
    ) -> Result<()> {
        self.maps.rows.write(info.first_row, rows)?;
        // The info goes last: until it is written the kernel finds an empty table.
        self.maps
            .tables
            .set(table_id, info, 0)
            .context("writing the table info")
    }

    /// Drops one user of `table_id`, freeing the table when it was the last.
    fn release(&mut self, table_id: u32) {
        if !self.store.release(table_id) {
            return;
        }
        if let Err(error) = self
            .maps
            .tables
            .set(table_id, UnwindTableInfo::default(), 0)
        {
            warn!(table_id, error = %chain(&error), "cannot clear unwind table info");
        }
        if let Some((&file, _)) = self.files.iter().find(|(_, f)| f.table_id == table_id) {
            self.files.remove(&file);
            self.levels.tables = self.levels.tables.saturating_sub(1);
        }
        self.levels.rows = u64::from(self.row_budget - self.store.free_rows());
        // Room was freed: binaries that did not fit may fit now.
        self.over_budget.clear();
    }

    /// Takes out the entries of processes that exited, or whose pid now belongs to another
    /// process, in case their exit event was lost. Called once per profile interval. The
    /// mappings of live processes are followed by exec events and by the kernel's
    /// unwind-miss requests, not by reading every process's maps again.
    pub fn sweep_exited(&mut self) {
        let gone: Vec<u32> = self
            .procs
            .iter()
            .filter(|(&pid, entries)| {
                let now = read_start_time(&self.pid_dir(pid));
                now.is_none() || now != entries.start_time
            })
            .map(|(&pid, _)| pid)
            .collect();
        for pid in gone {
            self.remove_process(pid);
        }
    }

    /// Remembers a binary that has no usable table, so it is not read again.
    fn mark_failed(&mut self, file: FileKey) {
        if self.failed.len() >= MAX_FAILED_MARKS {
            self.failed.clear();
        }
        self.failed.insert(file);
    }
}
