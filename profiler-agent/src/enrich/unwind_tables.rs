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
        maps::{self, MapEntry},
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
    pub fn on_new_process(&mut self, pid: u32) {
        if !self.procs.contains_key(&pid) {
            self.sync(pid);
        }
    }

    /// Brings the entries of `pid` in line with its current maps: mappings that appeared
    /// (dlopen, exec) are added, mappings that went away are removed with their tables.
    pub fn sync(&mut self, pid: u32) {
        let started = Instant::now();
        let dir = self.proc_root.join(pid.to_string());
        // Kernel threads and processes that already exited have no maps: nothing to add.
        let maps = std::fs::read_to_string(dir.join("maps"))
            .ok()
            .and_then(|t| maps::parse_maps(&t).ok());
        let Some(maps) = maps else {
            self.remove_process(pid);
            return;
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
        let mut entries = self.procs.remove(&pid).unwrap_or_default();
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
            if let Err(error) = self.add_mapping(pid, &dir, entry, &mut added) {
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
    ) -> Result<()> {
        let file = match mapped_file_identity(dir, entry) {
            Ok(file) => file,
            Err(error) => {
                // Gone before we looked: nothing to unwind with, and nothing to remember.
                debug!(pid, path = %entry.path, error = %chain(&error), "mapped file not found");
                return Ok(());
            }
        };
        let Some(table_id) = self.table_for(pid, dir, entry, file) else {
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
    fn table_for(&mut self, pid: u32, dir: &Path, entry: &MapEntry, file: FileKey) -> Option<u32> {
        if self.failed.contains(&file) || self.over_budget.contains(&file) {
            return None;
        }
        if let Some(placement) = self.store.share(&file) {
            return Some(placement.table_id);
        }
        let data = match read_mapped_file(dir, entry) {
            Ok(data) => data,
            Err(error) => {
                self.stats.inc(AgentCounter::UnwindCompileFailed);
                self.mark_failed(file);
                debug!(pid, path = %entry.path, error = format!("{error:#}"), "cannot read binary for its unwind table");
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

    /// Removes the entries of processes that exited and frees tables no process uses, and
    /// follows the mappings of the others (dlopen, dlclose, exec). Called once per profile
    /// interval.
    pub fn refresh(&mut self) {
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        for pid in pids {
            self.sync(pid);
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

/// The identity of the file behind a mapping, found the same way as its bytes.
fn mapped_file_identity(dir: &Path, entry: &MapEntry) -> std::io::Result<FileIdentity> {
    let by_range = dir
        .join("map_files")
        .join(format!("{:x}-{:x}", entry.start, entry.end));
    FileIdentity::of(&by_range)
        .or_else(|_| FileIdentity::of(&dir.join("root").join(entry.path.trim_start_matches('/'))))
}

/// The file behind a mapping: through map_files (works for deleted files and other mount
/// namespaces), else through the process's root.
fn read_mapped_file(dir: &Path, entry: &MapEntry) -> Result<Vec<u8>> {
    let by_range = dir
        .join("map_files")
        .join(format!("{:x}-{:x}", entry.start, entry.end));
    std::fs::read(&by_range)
        .or_else(|_| std::fs::read(dir.join("root").join(entry.path.trim_start_matches('/'))))
        .with_context(|| format!("reading {}", entry.path))
}
