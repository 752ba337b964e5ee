//! Tracks processes and their mappings, and normalizes user addresses into
//! (binary, ELF virtual address) while the process is still alive.
use std::{
    collections::{hash_map::Entry, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
};

use symbolizer::Binary;
use tracing::debug;

use crate::proc_maps::{self, MapEntry};

/// Stable handle of an opened binary; never reused within one agent run.
pub type BinaryKey = u32;

/// A binary as the pprof writer needs it.
#[derive(Clone)]
pub struct BinaryInfo {
    /// The path as the process saw it.
    pub path: String,
    pub binary: Arc<Binary>,
}

/// A user address after normalization.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UserFrame {
    /// Inside an ELF file: `vaddr` is the address in the file's own address space.
    Binary { binary: BinaryKey, vaddr: u64 },
    /// Inside a mapping that could not be tied to a readable ELF file (`[vdso]`, anonymous
    /// JIT memory, a binary that vanished): keep the region's name and the offset into it.
    Region { name: Arc<str>, offset: u64 },
    /// No mapping contains the address.
    Unmapped { addr: u64 },
}

/// Counters for everything that went wrong while tracking processes.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessStats {
    pub maps_unreadable: u64,
    pub maps_rereads: u64,
    pub binary_open_failed: u64,
    pub unmapped_addresses: u64,
}

struct Process {
    name: String,
    maps: Vec<MapEntry>,
    /// Opened binary per map entry, filled lazily; `Some(None)` means opening failed.
    opened: Vec<Option<Option<BinaryKey>>>,
    last_seen: u64,
    reread_in_generation: bool,
}

impl Process {
    fn empty(generation: u64) -> Process {
        Process {
            name: String::new(),
            maps: Vec::new(),
            opened: Vec::new(),
            last_seen: generation,
            reread_in_generation: false,
        }
    }
}

pub struct Processes {
    proc_root: PathBuf,
    procs: HashMap<u32, Process>,
    by_file: HashMap<(u32, u32, u64), BinaryKey>,
    binaries: HashMap<BinaryKey, BinaryInfo>,
    next_key: BinaryKey,
    generation: u64,
    new_pids: Vec<u32>,
    pub stats: ProcessStats,
}

/// The processes to prepare for at start: `filter` when profiling only those, else every
/// pid under `proc_root`. Read once and shared by every stage that prepares processes.
pub fn initial_pids(proc_root: &Path, filter: &[u32]) -> Vec<u32> {
    if !filter.is_empty() {
        return filter.to_vec();
    }
    std::fs::read_dir(proc_root)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Processes {
    /// `proc_root` is `/proc` in production; tests pass a fake tree.
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Processes {
            proc_root: proc_root.into(),
            procs: HashMap::new(),
            by_file: HashMap::new(),
            binaries: HashMap::new(),
            next_key: 1,
            generation: 0,
            new_pids: Vec::new(),
            stats: ProcessStats::default(),
        }
    }

    pub fn binary(&self, key: BinaryKey) -> Option<&BinaryInfo> {
        self.binaries.get(&key)
    }

    pub fn process_name(&mut self, pid: u32) -> &str {
        &self.process(pid).name
    }

    /// Processes seen for the first time since the last call.
    pub fn take_new_pids(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.new_pids)
    }

    pub fn tracked_processes(&self) -> usize {
        self.procs.len()
    }

    fn process(&mut self, pid: u32) -> &mut Process {
        let generation = self.generation;
        let fresh = if self.procs.contains_key(&pid) {
            None
        } else {
            self.new_pids.push(pid);
            Some(self.read_process(pid))
        };
        let p = match self.procs.entry(pid) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(fresh.unwrap_or_else(|| Process::empty(generation))),
        };
        p.last_seen = generation;
        p
    }

    fn read_process(&mut self, pid: u32) -> Process {
        let dir = self.proc_root.join(pid.to_string());
        let name = std::fs::read_to_string(dir.join("comm"))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default();
        let maps = self.read_maps(pid);
        let opened = vec![None; maps.len()];
        Process {
            name,
            maps,
            opened,
            last_seen: self.generation,
            reread_in_generation: false,
        }
    }

    fn read_maps(&mut self, pid: u32) -> Vec<MapEntry> {
        let path = self.proc_root.join(pid.to_string()).join("maps");
        match std::fs::read_to_string(&path) {
            Ok(text) => match proc_maps::parse_maps(&text) {
                Ok(maps) => maps,
                Err(error) => {
                    self.stats.maps_unreadable += 1;
                    debug!(pid, %error, "unparsable maps; its frames stay unsymbolized");
                    Vec::new()
                }
            },
            Err(error) => {
                self.stats.maps_unreadable += 1;
                debug!(pid, %error, "maps unreadable (process exited?); its frames stay unsymbolized");
                Vec::new()
            }
        }
    }

    /// Normalizes a user stack, innermost first.
    pub fn normalize(&mut self, pid: u32, addrs: &[u64]) -> Vec<UserFrame> {
        let mut out = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            let frame = self.normalize_one(pid, addr);
            out.push(frame);
        }
        out
    }

    fn normalize_one(&mut self, pid: u32, addr: u64) -> UserFrame {
        let mut idx = self.find_entry(pid, addr);
        if idx.is_none() {
            // The process may have mapped something new since we read its maps (dlopen).
            let p = self.process(pid);
            if !p.reread_in_generation && !p.maps.is_empty() {
                p.reread_in_generation = true;
                self.stats.maps_rereads += 1;
                let maps = self.read_maps(pid);
                let p = self.process(pid);
                if !maps.is_empty() {
                    p.opened = vec![None; maps.len()];
                    p.maps = maps;
                }
                idx = self.find_entry(pid, addr);
            }
        }
        let Some(idx) = idx else {
            self.stats.unmapped_addresses += 1;
            return UserFrame::Unmapped { addr };
        };
        let (start, offset, is_file) = {
            let e = &self.process(pid).maps[idx];
            (e.start, e.offset, e.is_file())
        };
        let file_offset = addr - start + offset;
        if is_file {
            if let Some(key) = self.open_binary(pid, idx) {
                if let Some(vaddr) = self.binaries[&key].binary.file_offset_to_vaddr(file_offset) {
                    return UserFrame::Binary { binary: key, vaddr };
                }
            }
        }
        let path = &self.process(pid).maps[idx].path;
        let name: Arc<str> = if path.is_empty() {
            Arc::from("[anon]")
        } else {
            Arc::from(path.as_str())
        };
        UserFrame::Region {
            name,
            offset: if is_file { file_offset } else { addr - start },
        }
    }

    fn find_entry(&mut self, pid: u32, addr: u64) -> Option<usize> {
        proc_maps::find_index(&self.process(pid).maps, addr)
    }

    /// The binary behind map entry `idx`, opened the first time any of its addresses is seen.
    fn open_binary(&mut self, pid: u32, idx: usize) -> Option<BinaryKey> {
        if let Some(done) = self.process(pid).opened[idx] {
            return done;
        }
        let entry = &self.process(pid).maps[idx].clone();
        let file_id = (entry.dev_major, entry.dev_minor, entry.inode);
        let key = match self.by_file.get(&file_id) {
            Some(&key) => Some(key),
            None => self.open_new(pid, entry).map(|info| {
                let key = self.next_key;
                self.next_key += 1;
                self.binaries.insert(key, info);
                self.by_file.insert(file_id, key);
                key
            }),
        };
        self.process(pid).opened[idx] = Some(key);
        key
    }

    fn open_new(&mut self, pid: u32, entry: &MapEntry) -> Option<BinaryInfo> {
        // map_files works even when the file was deleted or lives in another mount namespace.
        let pid_dir = self.proc_root.join(pid.to_string());
        let candidates = [
            pid_dir
                .join("map_files")
                .join(format!("{:x}-{:x}", entry.start, entry.end)),
            pid_dir
                .join("root")
                .join(entry.path.trim_start_matches('/')),
        ];
        let mut last_error = None;
        for candidate in candidates {
            match Binary::open(&candidate) {
                Ok(binary) => {
                    return Some(BinaryInfo {
                        path: entry.path.clone(),
                        binary,
                    })
                }
                Err(error) => last_error = Some(error),
            }
        }
        self.stats.binary_open_failed += 1;
        if let Some(error) = last_error {
            debug!(pid, path = %entry.path, %error, "cannot open binary; its frames stay unsymbolized");
        }
        None
    }

    /// Called after each profile is handed off: forgets processes and binaries not seen for
    /// two intervals, so memory stays bounded by what is live.
    pub fn end_interval(&mut self) {
        self.generation += 1;
        let keep_after = self.generation.saturating_sub(2);
        self.procs.retain(|_, p| p.last_seen >= keep_after);
        for p in self.procs.values_mut() {
            p.reread_in_generation = false;
        }
        let mut live = std::collections::HashSet::new();
        for p in self.procs.values() {
            live.extend(p.opened.iter().flatten().flatten().copied());
        }
        self.binaries.retain(|key, _| live.contains(key));
        self.by_file.retain(|_, key| live.contains(key));
    }

    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }
}
